#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::test_redis::TestRedis;

fn settings(url: &str, timeout_ms: u64) -> SharedLimitSettings {
    SharedLimitSettings {
        url: url.to_owned(),
        on_failure: FailureMode::Local,
        expected_replicas: 3,
        timeout: Duration::from_millis(timeout_ms),
        connections: 2,
    }
}

fn metrics() -> StoreMetrics {
    StoreMetrics {
        duration: Histogram::with_opts(prometheus::HistogramOpts::new("d", "d")).unwrap(),
        errors: IntCounterVec::new(prometheus::Opts::new("e", "e"), &["kind"]).unwrap(),
        fallback: IntGauge::new("f", "f").unwrap(),
        fallback_decisions: IntCounter::new("fd", "fd").unwrap(),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rate(limit: u32, burst: u32) -> Option<RateSpec> {
    Some(RateSpec {
        limit,
        per: RatePeriod::Second,
        burst,
    })
}

fn call<'a>(app: &'a str, rate: Option<RateSpec>, quota: Option<QuotaSpec>) -> LimitCall<'a> {
    LimitCall {
        agreement: "pks-1",
        application: app,
        rate,
        quota,
        now: unix_now(),
    }
}

fn passed(o: &LimitOutcome) -> bool {
    matches!(o, LimitOutcome::Pass { .. })
}

/// An agreement without limits is decided without Redis (here: nothing listens at the URL).
#[tokio::test]
async fn no_limits_no_round_trip() {
    let m = metrics();
    let s = SharedLimits::new(&settings("redis://127.0.0.1:1/0", 200), Some(m.clone())).unwrap();
    let started = Instant::now();
    for _ in 0..100 {
        let o = s.check(&call("a/x", None, None)).await.unwrap();
        assert_eq!(o, LimitOutcome::Pass { rate: None });
    }
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(m.duration.get_sample_count(), 0);
    assert!(!s.is_down());
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn gcra_gives_the_burst_then_the_rate() {
    let redis = TestRedis::start();
    let s = SharedLimits::new(&settings(&redis.url, 500), None).unwrap();
    let c = call("a/x", rate(10, 5), None);
    // The burst at once, with the remaining count going down.
    for i in 0..5u32 {
        match s.check(&c).await.unwrap() {
            LimitOutcome::Pass { rate: Some(r) } => {
                assert_eq!(r.limit, 5);
                assert_eq!(r.remaining, 4 - i, "call {i}");
                assert!(r.reset_secs >= 1);
            }
            other => panic!("call {i}: {other:?}"),
        }
    }
    match s.check(&c).await.unwrap() {
        LimitOutcome::Limited {
            reason,
            retry_after_secs,
            rate: Some(r),
        } => {
            assert_eq!(reason, Reason::RateLimited);
            assert_eq!(retry_after_secs, 1);
            assert_eq!(r.remaining, 0);
        }
        other => panic!("{other:?}"),
    }
    // Another application has its own burst.
    assert!(passed(
        &s.check(&call("a/y", rate(10, 5), None)).await.unwrap()
    ));
    // Then 10 per second: after 0.35 s, three more (one every 100 ms), not four.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut granted = 0;
    for _ in 0..10 {
        if passed(&s.check(&c).await.unwrap()) {
            granted += 1;
        }
    }
    assert_eq!(granted, 3);
    // A changed rate is another key: a fresh burst.
    let changed = call("a/x", rate(10, 6), None);
    assert!(passed(&s.check(&changed).await.unwrap()));
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn quota_is_exact_and_a_refused_call_spends_nothing() {
    let redis = TestRedis::start();
    let s = SharedLimits::new(&settings(&redis.url, 500), None).unwrap();
    let quota = Some(QuotaSpec {
        limit: 7,
        per: QuotaPeriod::Day,
    });
    // Many concurrent calls: exactly 7 pass.
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let s = std::sync::Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.check(&call("a/x", None, quota)).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|o| passed(o)).count(), 7);
    for o in results.iter().filter(|o| !passed(o)) {
        match o {
            LimitOutcome::Limited {
                reason,
                retry_after_secs,
                rate: Some(r),
            } => {
                assert_eq!(*reason, Reason::QuotaExhausted);
                assert!((1..=86_400).contains(retry_after_secs));
                assert_eq!(r.limit, 7);
                assert_eq!(r.remaining, 0);
            }
            other => panic!("{other:?}"),
        }
    }
    // With a rate as well: a call refused by the rate spends no quota.
    let both = call(
        "a/z",
        rate(1, 2),
        Some(QuotaSpec {
            limit: 3,
            per: QuotaPeriod::Month,
        }),
    );
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(s.check(&both).await.unwrap());
    }
    assert!(passed(&outcomes[0]) && passed(&outcomes[1]));
    assert!(matches!(
        outcomes[2],
        LimitOutcome::Limited {
            reason: Reason::RateLimited,
            ..
        }
    ));
    let key = quota_key(
        "pks-1",
        "a/z",
        QuotaPeriod::Month,
        period_of(QuotaPeriod::Month, unix_now()).0,
    );
    assert_eq!(redis.command(&format!("GET {key}")), "$1\r\n2\r\n");
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn keys_are_prefixed_and_expire() {
    let redis = TestRedis::start();
    let s = SharedLimits::new(&settings(&redis.url, 500), None).unwrap();
    let spec = RateSpec {
        limit: 10,
        per: RatePeriod::Second,
        burst: 30,
    };
    let now = unix_now();
    let c = call(
        "a/x",
        Some(spec),
        Some(QuotaSpec {
            limit: 100,
            per: QuotaPeriod::Day,
        }),
    );
    assert!(passed(&s.check(&c).await.unwrap()));
    let rate_key = rate_params("pks-1", "a/x", &spec).0;
    assert!(
        rate_key.starts_with("gerbang:rate:pks-1:a/x:"),
        "{rate_key}"
    );
    // The TAT is 100 ms ahead: the key lives about 1.1 s.
    let pttl: i64 = redis
        .command(&format!("PTTL {rate_key}"))
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!((900..=1100).contains(&pttl), "{pttl}");
    let (period, next) = period_of(QuotaPeriod::Day, now);
    let qkey = quota_key("pks-1", "a/x", QuotaPeriod::Day, period);
    let ttl: i64 = redis
        .command(&format!("TTL {qkey}"))
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    let expected = next + QUOTA_KEY_MARGIN_SECS - now;
    assert!(
        (expected - 5..=expected).contains(&ttl),
        "{ttl} vs {expected}"
    );
    // Idle keys vanish: the rate key after the burst is full again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(redis.command(&format!("EXISTS {rate_key}")), ":0\r\n");
    assert_eq!(redis.command("KEYS *").matches("gerbang:").count(), 1);
}

#[tokio::test]
#[ignore = "needs redis-server"]
async fn a_failed_redis_is_skipped_then_probed_and_shared_again() {
    let mut redis = TestRedis::start();
    let m = metrics();
    let s = SharedLimits::new(&settings(&redis.url, 200), Some(m.clone())).unwrap();
    let c = call("a/x", rate(1000, 1000), None);
    assert!(passed(&s.check(&c).await.unwrap()));
    assert!(!s.is_down());
    redis.kill();
    // The first call after the failure fails within the timeout; then calls skip Redis.
    let started = Instant::now();
    let e = s.check(&c).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(400), "{e}");
    assert!(s.is_down());
    assert_eq!(m.fallback.get(), 1);
    let started = Instant::now();
    for _ in 0..1000 {
        assert!(matches!(s.check(&c).await, Err(StoreError::Down)));
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    let errors: u64 = ERROR_KINDS
        .iter()
        .map(|k| m.errors.with_label_values(&[k]).get())
        .sum();
    assert_eq!(errors, 1, "one failed round trip, then no more tries");
    // While it stays down, one probe per second at most, each within the timeout.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        let t = Instant::now();
        let _ = s.check(&c).await;
        assert!(t.elapsed() < Duration::from_millis(400));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let errors: u64 = ERROR_KINDS
        .iter()
        .map(|k| m.errors.with_label_values(&[k]).get())
        .sum();
    assert!((2..=4).contains(&errors), "{errors}");
    // Back: shared again without a new store.
    redis.restart();
    let back = Instant::now();
    loop {
        if s.check(&c).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "Redis never used again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s.is_down());
    assert_eq!(m.fallback.get(), 0);
    // Both connections work again (the script is loaded again after the restart).
    for _ in 0..10 {
        assert!(s.check(&c).await.is_ok());
    }
}

/// A probe whose caller goes away mid-call (a client that disconnects) does not keep every
/// later call from probing.
#[tokio::test]
async fn an_abandoned_probe_does_not_block_later_probes() {
    // A listener that accepts and never answers: every round trip times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/0", silent.local_addr().unwrap());
    let s = SharedLimits::new(&settings(&url, 200), None).unwrap();
    let c = call("a/x", rate(10, 10), None);
    assert!(matches!(
        s.check(&c).await,
        Err(StoreError::Timeout(_) | StoreError::Connection(_))
    ));
    assert!(s.is_down());
    tokio::time::sleep(DOWN_FOR + Duration::from_millis(50)).await;
    // The probe starts, and its caller gives up after 20 ms.
    assert!(tokio::time::timeout(Duration::from_millis(20), s.check(&c))
        .await
        .is_err());
    // The next call may probe at once (not `Down`): it waits for Redis and fails by timeout.
    let started = Instant::now();
    let e = s.check(&c).await.unwrap_err();
    assert!(!matches!(e, StoreError::Down), "probing stayed blocked");
    assert!(started.elapsed() >= Duration::from_millis(150));
    drop(silent);
}

/// Without calls, the watch task finds Redis back (and the fallback gauge drops to 0).
#[tokio::test]
#[ignore = "needs redis-server"]
async fn the_watch_finds_redis_back_without_calls() {
    let mut redis = TestRedis::start();
    let m = metrics();
    let s = std::sync::Arc::new(
        SharedLimits::new(&settings(&redis.url, 200), Some(m.clone())).unwrap(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let watch = tokio::spawn(std::sync::Arc::clone(&s).watch(
        Duration::from_millis(200),
        async move {
            let _ = rx.await;
        },
    ));
    let c = call("a/x", rate(10, 10), None);
    assert!(s.check(&c).await.is_ok());
    redis.kill();
    assert!(s.check(&c).await.is_err());
    assert!(s.is_down());
    // Still down while Redis is away (the watch's probes fail).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(s.is_down());
    assert_eq!(m.fallback.get(), 1);
    redis.restart();
    let back = Instant::now();
    while s.is_down() {
        assert!(back.elapsed() < Duration::from_secs(10), "never found back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.fallback.get(), 0);
    let _ = tx.send(());
    watch.await.unwrap();
}

#[test]
fn spec_hash_tells_rates_apart() {
    let a = RateSpec {
        limit: 10,
        per: RatePeriod::Second,
        burst: 30,
    };
    let b = RateSpec {
        limit: 10,
        per: RatePeriod::Minute,
        burst: 30,
    };
    let c = RateSpec {
        limit: 10,
        per: RatePeriod::Second,
        burst: 31,
    };
    assert_eq!(spec_hash(&a).len(), 8);
    assert_ne!(spec_hash(&a), spec_hash(&b));
    assert_ne!(spec_hash(&a), spec_hash(&c));
    assert_eq!(spec_hash(&a), spec_hash(&a.clone()));
}

/// `rediss://`: TLS through rustls (aws-lc-rs), the server's certificate trusted through the
/// system roots (here `SSL_CERT_FILE`, which only this test sets).
#[tokio::test]
#[ignore = "needs redis-server"]
async fn rediss_urls_connect_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let redis = TestRedis::start_tls(&cert, &key);
    std::env::set_var("SSL_CERT_FILE", &cert);
    let s = SharedLimits::new(&settings(&redis.url, 2000), None).unwrap();
    let c = call("a/tls", rate(10, 2), None);
    let outcomes = [s.check(&c).await, s.check(&c).await, s.check(&c).await];
    std::env::remove_var("SSL_CERT_FILE");
    let outcomes: Vec<LimitOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(passed(&outcomes[0]) && passed(&outcomes[1]));
    assert!(matches!(
        outcomes[2],
        LimitOutcome::Limited {
            reason: Reason::RateLimited,
            ..
        }
    ));
    assert!(redis.command("KEYS gerbang:rate:*").contains("a/tls"));
}
