//! Micro-benchmarks of per-request work, phase by phase: path normalisation (route), the header
//! strip (upstream request), token handling (authenticate), policy and field rules (authorise,
//! filter), the inline client's head work (exchange), the audit chain and metrics (record).
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

/// The request path's strip (`strip_request`: hop-by-hop and client-controlled names, the
/// `Host` value and the gateway-set names noted), over the fields a browser-like client or an
/// SDK sends (a dozen, one of them a credential), with one configured extra name.
fn headers(c: &mut Criterion) {
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    let mut sent = HeaderMap::new();
    for (n, v) in [
        ("host", "gerbang.example"),
        ("user-agent", "sdk-java/2.1 (dinkes-sik)"),
        ("accept", "application/json"),
        ("accept-language", "id-ID,id;q=0.9"),
        ("accept-encoding", "gzip, br"),
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("authorization", "Bearer eyJhbGciOi.x.y"),
        ("x-request-id", "01a23b30-e9c3-7de9-b3d2-9b6cfd2f449e"),
        ("cookie", "session=abc"),
        ("cache-control", "no-cache"),
        ("x-correlation-id", "c-42"),
    ] {
        sent.append(n, HeaderValue::from_static(v));
    }
    let extra = [HeaderName::from_static("x-remote-user")];
    let mut g = c.benchmark_group("headers");
    g.bench_function("strip_request_12_fields", |b| {
        b.iter_batched_ref(
            || sent.clone(),
            |h| gerbang_proxy::headers::strip_request(h, &extra, &[]),
            criterion::BatchSize::SmallInput,
        )
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
                    &gerbang_auth::token::AssertedCall {
                        application: "dinkes/simpus",
                        agency: "dinkes",
                        audience: black_box("dukcapil/penduduk"),
                        agreement: "pks-2025-017",
                        purpose: Some("pelayanan-kesehatan"),
                    },
                    Duration::from_secs(60),
                )
                .unwrap()
        })
    });
    g.finish();
}

/// Decisions with 1,000 services (three endpoints each) and 10,000 agreements: ten consumer
/// applications per service, some by agency and some public.
fn policy(c: &mut Criterion) {
    use gerbang_policy::*;
    use std::collections::HashMap;
    let mut services = HashMap::new();
    let mut agreements = Vec::new();
    for s in 0..1000 {
        let id = format!("opd{s}/layanan");
        let ep = |m: &str, t: &str, c| {
            Endpoint::new(
                m,
                PathTemplate::parse(t).unwrap(),
                c,
                Some("nik".into()).filter(|_| t.contains("{nik}")),
            )
        };
        services.insert(
            id.clone(),
            ServicePolicy {
                endpoints: vec![
                    ep("GET", "/penduduk/{nik}", Classification::Rahasia),
                    ep("GET", "/penduduk/{nik}/keluarga", Classification::Rahasia),
                    ep("GET", "/statistik", Classification::Terbuka),
                ],
                classification: Classification::Terbatas,
                path_matching: PathMatching::Exact,
            },
        );
        for k in 0..10 {
            let consumers = match k {
                0 => vec![Consumer::Anyone],
                1 | 2 => vec![Consumer::Agency(format!("c{k}"))],
                _ => vec![Consumer::Application(format!("c{k}/app"))],
            };
            agreements.push(Agreement {
                id: format!("pks-{s}-{k}"),
                title: String::new(),
                legal_basis: String::new(),
                service: id.clone(),
                consumers,
                endpoints: if k == 0 {
                    vec!["GET /statistik".into()]
                } else {
                    vec!["GET /penduduk/{nik}".into()]
                },
                methods: vec![],
                purposes: if k == 0 {
                    vec![]
                } else {
                    vec!["pelayanan".into()]
                },
                valid_from: Some(0),
                valid_until: Some(4_000_000_000),
                suspended: false,
                max_classification: Classification::Rahasia,
                rate: None,
                quota: None,
                fields: FieldRules::default(),
            });
        }
    }
    let set = PolicySet::new(services, agreements);
    let allow = Request {
        application: "c7/app",
        agency: "c7",
        service: "opd512/layanan",
        method: "GET",
        path: "/penduduk/3603015505900001",
        query: None,
        purpose: Some("pelayanan"),
        now: 1_795_000_000,
    };
    assert!(matches!(set.decide(&allow).outcome, Outcome::Allow { .. }));
    let deny = Request {
        application: "c1/app",
        agency: "c1",
        purpose: Some("lain"),
        ..allow
    };
    assert!(matches!(set.decide(&deny).outcome, Outcome::Deny { .. }));
    let mut g = c.benchmark_group("policy");
    g.bench_function("decide_allow_1000_services_10000_agreements", |b| {
        b.iter(|| set.decide(black_box(&allow)))
    });
    g.bench_function("decide_deny_three_tiers", |b| {
        b.iter(|| set.decide(black_box(&deny)))
    });
    // The demo's masked agreement applied to a population record.
    let rules = FieldRules {
        deny: vec![FieldPath::parse("status_perkawinan").unwrap()],
        mask: vec![Mask {
            path: FieldPath::parse("nik").unwrap(),
            keep_first: 6,
            keep_last: 4,
        }],
        ..FieldRules::default()
    };
    let body = br#"{"nik":"3603015505900001","nama":"Siti Rahmawati","jenis_kelamin":"PEREMPUAN","tempat_lahir":"Serang","tanggal_lahir":"1990-05-15","alamat":"Jl. Melati No. 7, Serang","status_perkawinan":"KAWIN","pekerjaan":"Guru","keterangan":"FIKTIF"}"#;
    g.bench_function("field_rules_parse_apply_serialise_record", |b| {
        b.iter(|| {
            let mut v: serde_json::Value = serde_json::from_slice(black_box(body)).unwrap();
            rules.apply(&mut v);
            serde_json::to_vec(&v).unwrap()
        })
    });
    // What the gateway does since issue 15: only what a rule reaches is parsed.
    g.bench_function("field_rules_filter_json_record", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(body.len());
            rules.filter_json(black_box(body), &mut out).unwrap();
            out
        })
    });
    g.finish();
}

/// The exchange's head work on the inline client, without a socket: the request head written
/// to the upstream (target, the client's fields, the gateway's forwarding and identity fields)
/// and the upstream's response head parsed (nginx's fields for a 1 KiB JSON file).
fn exchange(c: &mut Criterion) {
    use gerbang_proxy::h1::bench;
    use gerbang_proxy::headers::Field;
    use http::HeaderValue;
    let (parts, ()) = http::Request::builder()
        .method("GET")
        .uri("/bench/up/data/1")
        .header("host", "127.0.0.1:8080")
        .header("user-agent", "sdk-java/2.1 (dinkes-sik)")
        .header("accept", "application/json")
        .body(())
        .unwrap()
        .into_parts();
    let added = [
        (Field::XForwardedFor, HeaderValue::from_static("127.0.0.1")),
        (Field::XForwardedProto, HeaderValue::from_static("http")),
        (
            Field::XForwardedHost,
            HeaderValue::from_static("127.0.0.1:8080"),
        ),
        (
            Field::XRequestId,
            HeaderValue::from_static("01a23dfc-4ee0-7a8b-9975-b5bfaf2b439c"),
        ),
        (
            Field::XGerbangConsumer,
            HeaderValue::from_static("loadgen/client"),
        ),
        (
            Field::XGerbangConsumerAgency,
            HeaderValue::from_static("loadgen"),
        ),
        (
            Field::XGerbangAuthMethod,
            HeaderValue::from_static("bearer"),
        ),
    ];
    let head: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 22:17:55 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 1024\r\nLast-Modified: Thu, 03 Dec 2026 21:40:02 GMT\r\n\
Connection: keep-alive\r\nETag: \"6939b0f2-400\"\r\nAccept-Ranges: bytes\r\n\r\n";
    let mut check = bytes::BytesMut::from(head);
    assert_eq!(bench::parse_response_head(&mut check), Some(7));
    let mut g = c.benchmark_group("exchange");
    g.bench_function("encode_upstream_request_head", |b| {
        b.iter(|| bench::encode_request_head(black_box(&parts), "", "/data/1", &added))
    });
    // The copy into a fresh buffer (as read from the socket) is part of each iteration.
    g.bench_function("parse_upstream_response_head", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::from(black_box(head));
            bench::parse_response_head(&mut buf)
        })
    });
    g.finish();
}

/// What the record phase adds per call: the audit record appended to the hash chain (the
/// writer thread's work per record: the line assembled, SHA-256 over it, buffered; a batch
/// written every 64 records, as the writer does under load, no fsync) and the call's series
/// in the metrics.
fn record(c: &mut Criterion) {
    use gerbang_audit::chain::{Fsync, Writer, WriterSettings};
    use gerbang_audit::keys::SealKey;
    use gerbang_proxy::metrics::{Metrics, RequestKey};
    // A call record of the load benchmark's full pipeline, as the worker serialises it.
    let fields: &[u8] = br#"{"request_id":"01a23dfc-4ee0-7a8b-9975-b5bfaf2b439c","consumer":"loadgen/client","consumer_agency":"loadgen","service":"bench/up","endpoint":"GET /data/{id}","method":"GET","status":200,"decision":"allow","reason":null,"agreement":"bench-up","purpose":null,"client":"127.0.0.1","bytes_in":0,"bytes_out":1024,"duration_ms":0.166,"subject_hmac":null,"trace_id":"53bd3e0393ad93a838281c05bf3be687"}"#;
    let dir = tempfile::tempdir().unwrap();
    let key = SealKey::from_pkcs8(&SealKey::generate_pkcs8().unwrap()).unwrap();
    let mut writer = Writer::open(
        WriterSettings {
            dir: dir.path().to_path_buf(),
            max_file_bytes: 64 << 20,
            fsync: Fsync::Never,
            seal_every: u64::MAX,
            replica: None,
        },
        key,
    )
    .unwrap();
    let mut g = c.benchmark_group("record");
    g.bench_function("audit_chain_append_call_record", |b| {
        b.iter(|| {
            let seq = writer
                .append_raw_buffered("call", black_box(fields))
                .unwrap();
            if seq.is_multiple_of(64) {
                writer.finish_batch().unwrap();
            }
        })
    });
    let metrics = Metrics::new(false).unwrap();
    let service = metrics.for_service("bench/up");
    let key = RequestKey {
        application: 3,
        endpoint: 1,
        method: 0,
        status_class: 1,
        decision: 0,
    };
    let labels = [
        "loadgen/client",
        "loadgen",
        "bench/up",
        "GET /data/{id}",
        "GET",
        "2xx",
        "allow",
    ];
    g.bench_function("metrics_count_request_observe_upstream", |b| {
        b.iter(|| {
            service.count_request(&metrics, black_box(key), || labels);
            service.observe_upstream(&metrics, "bench/up", Duration::from_micros(166));
            metrics.audit_result(true).inc();
        })
    });
    g.finish();
    drop(writer);
}

criterion_group!(benches, paths, headers, tokens, policy, exchange, record);
criterion_main!(benches);
