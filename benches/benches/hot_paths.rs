//! Micro-benchmarks of per-request work: path normalisation and token handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use std::future::Future;
use std::sync::Arc;

use gerbang_auth::authn::{AppCredentials, Authenticator, Presented};
use gerbang_auth::cache::TokenCache;
use gerbang_auth::keys::{generate_pem, KeyRing, SigningKey};
use gerbang_auth::token::Issuer;
use gerbang_auth::{AuthMethod, Principal};

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("path");
    g.bench_function("normalize_plain", |b| {
        b.iter(|| {
            gerbang_proxy::path::normalize(black_box(
                "/dukcapil/penduduk/penduduk/3603015505900001",
            ))
        })
    });
    g.bench_function("normalize_encoded_dots", |b| {
        b.iter(|| {
            gerbang_proxy::path::normalize(black_box(
                "/dukcapil/penduduk/a/./b/%2e%2e/penduduk/%33603",
            ))
        })
    });
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let key = SigningKey::from_pem("bench", generate_pem().unwrap().as_bytes()).unwrap();
    let issuer = Issuer {
        issuer: "https://gerbang.bench".into(),
        audience: "gerbang".into(),
        ttl: Duration::from_secs(300),
        leeway: Duration::from_secs(30),
        keys: KeyRing::new(vec![key]).unwrap(),
    };
    let token = issuer.issue("dinkes/simpus", "dinkes", "").unwrap();
    let claims = issuer.verify(&token).unwrap();
    let cache = TokenCache::new(10_000);
    let principal = Arc::new(Principal {
        application: claims.sub.clone(),
        agency: claims.agency.clone(),
        method: AuthMethod::IssuedToken,
        scopes: Vec::new(),
        index: 0,
    });
    cache.insert(&token, principal, claims.exp);

    // The whole authentication step of a request with a token seen before.
    let mut app = AppCredentials {
        application: "dinkes/simpus".into(),
        agency: "dinkes".into(),
        ..Default::default()
    };
    app.methods.enable("client_secret");
    let issuer = Arc::new(issuer);
    let authn = Authenticator::new(Arc::clone(&issuer), &[app], Vec::new(), 10_000).unwrap();
    let header = format!("Bearer {token}");
    let presented = Presented {
        authorization: Some(header.as_bytes()),
        ..Default::default()
    };
    let authenticate = |p: Presented<'_>| {
        // A cached token never waits: one poll completes the future.
        let mut fut = std::pin::pin!(authn.authenticate(p));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r.unwrap(),
            std::task::Poll::Pending => panic!("a cached token does not wait"),
        }
    };
    authenticate(presented);

    let mut g = c.benchmark_group("token");
    g.bench_function("issue_es256", |b| {
        b.iter(|| {
            issuer
                .issue(black_box("dinkes/simpus"), "dinkes", "")
                .unwrap()
        })
    });
    g.bench_function("verify_es256_uncached", |b| {
        b.iter(|| issuer.verify(black_box(&token)).unwrap())
    });
    g.bench_function("verify_cached", |b| {
        b.iter(|| cache.get(black_box(&token)).unwrap())
    });
    g.bench_function("authenticate_cached_bearer", |b| {
        b.iter(|| authenticate(black_box(presented)))
    });
    g.bench_function("assertion_es256", |b| {
        b.iter(|| {
            issuer
                .assertion(
                    "dinkes/simpus",
                    "dinkes",
                    black_box("dukcapil/penduduk"),
                    Duration::from_secs(60),
                )
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, paths, tokens);
criterion_main!(benches);
