//! Micro-benchmarks of per-request work: path normalisation and token handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gerbang_auth::cache::TokenCache;
use gerbang_auth::keys::{generate_pem, KeyRing, SigningKey};
use gerbang_auth::token::Issuer;

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
    let cache = TokenCache::new(10_000);
    cache.insert(&token, issuer.verify(&token).unwrap());

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
    g.finish();
}

criterion_group!(benches, paths, tokens);
criterion_main!(benches);
