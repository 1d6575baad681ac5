//! Load balancing, health and resilience against real upstream servers: each algorithm's
//! distribution, passive ejection and return of a killed instance, active health checks,
//! retries that never repeat a non-idempotent request, and the circuit breaker.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gerbang_e2e::*;
use gerbang_proxy::response_body::{self, ResponseBody};
use gerbang_proxy::server::Handler;
use gerbang_proxy::ConnInfo;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A backend whose answers a test steers: status, delay, health-check status; it counts calls.
#[derive(Default)]
struct Script {
    status: AtomicU16,
    health: AtomicU16,
    delay_ms: AtomicU64,
    gets: AtomicUsize,
    posts: AtomicUsize,
    /// The body of each POST, as received.
    post_bodies: std::sync::Mutex<Vec<Vec<u8>>>,
}

struct Scripted {
    name: &'static str,
    script: Arc<Script>,
}

impl Handler for Scripted {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let script = Arc::clone(&self.script);
        let name = self.name;
        async move {
            let status = if req.uri().path() == "/health" {
                script.health.load(Ordering::SeqCst)
            } else {
                if req.method() == http::Method::POST {
                    script.posts.fetch_add(1, Ordering::SeqCst);
                    let body = http_body_util::BodyExt::collect(req.into_body())
                        .await
                        .map(|b| b.to_bytes().to_vec())
                        .unwrap_or_default();
                    script.post_bodies.lock().unwrap().push(body);
                } else {
                    script.gets.fetch_add(1, Ordering::SeqCst);
                }
                let delay = script.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                script.status.load(Ordering::SeqCst)
            };
            let mut res = Response::new(response_body::full(Bytes::from(format!(
                "{{\"instance\":\"{name}\"}}"
            ))));
            *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            res.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            res.headers_mut()
                .insert("x-demo-instance", name.parse().unwrap());
            res
        }
    }
}

/// A scripted backend on `addr` (port 0 for a new one), stopped by dropping `stop`.
struct Running {
    addr: SocketAddr,
    script: Arc<Script>,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    async fn start(name: &'static str, addr: SocketAddr, script: Arc<Script>) -> Running {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let settings = gerbang_proxy::ListenerSettings {
            shutdown_grace: Duration::from_millis(200),
            ..Default::default()
        };
        tokio::spawn(gerbang_proxy::serve(
            listener,
            Arc::new(Scripted {
                name,
                script: Arc::clone(&script),
            }),
            settings,
            async {
                let _ = rx.await;
            },
        ));
        Running {
            addr,
            script,
            stop: Some(tx),
        }
    }

    async fn new(name: &'static str) -> Running {
        let script = Arc::new(Script::default());
        script.status.store(200, Ordering::SeqCst);
        script.health.store(200, Ordering::SeqCst);
        Running::start(name, "127.0.0.1:0".parse().unwrap(), script).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(&mut self) {
        self.stop.take();
    }

    fn hits(&self) -> usize {
        self.script.gets.load(Ordering::SeqCst) + self.script.posts.load(Ordering::SeqCst)
    }
}

/// An agency file for service `a/s` with `settings` and instances (name, URL, weight).
fn service(settings: &str, instances: &[(&str, String, u32)]) -> String {
    let mut s = format!(
        "[agency]\nid = \"a\"\nname = \"a\"\n\n[[service]]\nid = \"s\"\nname = \"s\"\n{settings}\n"
    );
    for (name, url, weight) in instances {
        s.push_str(&format!(
            "\n[[service.instance]]\nname = \"{name}\"\nurl = \"{url}\"\nweight = {weight}\n"
        ));
    }
    s
}

async fn call(gw: SocketAddr, extra: &str) -> (u16, String) {
    let r = raw_request(gw, &get("/a/s/x", extra)).await;
    (
        r.status,
        r.header("x-demo-instance").unwrap_or("-").to_owned(),
    )
}

fn post(body: &str) -> Vec<u8> {
    format!(
        "POST /a/s/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn readiness(gw: &TestGateway) -> serde_json::Value {
    raw_request_as_is(gw.admin, &get("/health/ready", ""))
        .await
        .json()
}

fn state_of(ready: &serde_json::Value, instance: &str) -> String {
    ready["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .find(|i| i["name"] == instance)
        .map(|i| i["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn each_algorithm_spreads_calls_as_configured() {
    let (a, b, c) = (
        Running::new("a").await,
        Running::new("b").await,
        Running::new("c").await,
    );
    let three = |w: [u32; 3]| {
        vec![
            ("a", a.url(), w[0]),
            ("b", b.url(), w[1]),
            ("c", c.url(), w[2]),
        ]
    };
    let tally = |v: &[String]| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for x in v {
            *m.entry(x.clone()).or_default() += 1;
        }
        m
    };

    // Round robin: exactly even.
    let gw = TestGateway::start(&[&service("", &three([1, 1, 1]))], "", "").await;
    let mut seen = Vec::new();
    for _ in 0..90 {
        let (st, who) = call(gw.addr, "").await;
        assert_eq!(st, 200);
        seen.push(who);
    }
    let t = tally(&seen);
    assert_eq!((t["a"], t["b"], t["c"]), (30, 30, 30));

    // Weighted 3:1:1: exactly in proportion.
    let gw = TestGateway::start(
        &[&service("load_balancing = \"weighted\"", &three([3, 1, 1]))],
        "",
        "",
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(call(gw.addr, "").await.1);
    }
    let t = tally(&seen);
    assert_eq!((t["a"], t["b"], t["c"]), (60, 20, 20));

    // Consistent hashing: a session stays on its instance; sessions spread over all three.
    let gw = TestGateway::start(
        &[&service(
            "load_balancing = \"consistent_hash\"\nhash_header = \"X-Session-Id\"",
            &three([1, 1, 1]),
        )],
        "",
        "",
    )
    .await;
    let mut owners = Vec::new();
    for k in 0..60 {
        let h = format!("X-Session-Id: sesi-{k}\r\n");
        let first = call(gw.addr, &h).await.1;
        for _ in 0..3 {
            assert_eq!(call(gw.addr, &h).await.1, first, "session {k} moved");
        }
        owners.push(first);
    }
    let t = tally(&owners);
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(t.values().all(|&n| n >= 8), "{t:?}");

    // Least request: a slow instance gets far less than its round-robin third.
    a.script.delay_ms.store(200, Ordering::SeqCst);
    let before = a.hits();
    let gw = Arc::new(
        TestGateway::start(
            &[&service(
                "load_balancing = \"least_request\"",
                &three([1, 1, 1]),
            )],
            "",
            "",
        )
        .await,
    );
    let mut workers = Vec::new();
    for _ in 0..6 {
        let gw = Arc::clone(&gw);
        workers.push(tokio::spawn(async move {
            for _ in 0..25 {
                assert_eq!(call(gw.addr, "").await.0, 200);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let slow_share = (a.hits() - before) as f64 / 150.0;
    assert!(
        slow_share < 0.2,
        "the slow instance took {slow_share:.2} of the calls"
    );
}

#[tokio::test]
async fn a_killed_instance_is_ejected_traffic_moves_and_it_returns() {
    let a = Running::new("a").await;
    let mut b = Running::new("b").await;
    let settings = "[service.outlier_detection]\nconsecutive_failures = 3\nbase_ejection = \"1s\"\nmax_ejection = \"5s\"";
    let gw = Arc::new(
        TestGateway::start(
            &[&service(settings, &[("a", a.url(), 1), ("b", b.url(), 1)])],
            "",
            "",
        )
        .await,
    );
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, failed, sent, running) = (
            Arc::clone(&gw),
            Arc::clone(&failed),
            Arc::clone(&sent),
            Arc::clone(&running),
        );
        workers.push(tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                let (st, _) = call(gw.addr, "").await;
                sent.fetch_add(1, Ordering::SeqCst);
                if st != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // The load reaches both instances before b stops.
    assert!(eventually(Duration::from_secs(5), || b.hits() > 10).await);
    let b_addr = b.addr;
    let b_script = Arc::clone(&b.script);
    b.stop();
    // Ejected while the load goes on.
    let mut ejected = false;
    for _ in 0..100 {
        if state_of(&readiness(&gw).await, "b") == "ejected" {
            ejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ejected, "b was not ejected");
    // b comes back on the same port and takes traffic again by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b2 = Running::start("b", b_addr, b_script).await;
    let hits_at_restart = b2.hits();
    let mut back = false;
    for _ in 0..300 {
        if b2.hits() > hits_at_restart + 5 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.store(false, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(back, "b did not take traffic after it recovered");
    assert!(sent.load(Ordering::SeqCst) > 100);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "of {} calls",
        sent.load(Ordering::SeqCst)
    );
    assert_eq!(state_of(&readiness(&gw).await, "b"), "healthy");
    let metrics =
        String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body).unwrap();
    assert!(
        metrics
            .contains("gerbang_upstream_ejections_total{service=\"a/s\",upstream_instance=\"b\"}"),
        "{metrics}"
    );
    assert!(metrics
        .contains("gerbang_upstream_retries_total{reason=\"connect_failure\",service=\"a/s\"}"));
    drop(a);
}

#[tokio::test]
async fn retries_never_repeat_a_non_idempotent_request() {
    let a = Running::new("a").await;
    let b = Running::new("b").await;
    for s in [&a, &b] {
        s.script.status.store(503, Ordering::SeqCst);
    }
    let gw = TestGateway::start(
        &[&service(
            "[service.outlier_detection]\nconsecutive_failures = 0",
            &[("a", a.url(), 1), ("b", b.url(), 1)],
        )],
        "",
        "",
    )
    .await;
    // A POST that got a 503 is not sent again.
    let r = raw_request(gw.addr, &post("{\"bayar\":1}")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        a.script.posts.load(Ordering::SeqCst) + b.script.posts.load(Ordering::SeqCst),
        1
    );
    // A GET is: once on each instance, then the last answer goes back.
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(a.hits() + b.hits(), 3);

    // A connect failure sent nothing: the POST goes to the other instance, body and all.
    let c = Running::new("c").await;
    let dead = refused_addr().await;
    let gw = TestGateway::start(
        &[&service(
            "[service.outlier_detection]\nconsecutive_failures = 0",
            &[("dead", format!("http://{dead}"), 1), ("c", c.url(), 1)],
        )],
        "",
        "",
    )
    .await;
    for _ in 0..4 {
        let r = raw_request(gw.addr, &post("{\"bayar\":2}")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(c.script.posts.load(Ordering::SeqCst), 4);
    assert_eq!(
        *c.script.post_bodies.lock().unwrap(),
        vec![b"{\"bayar\":2}".to_vec(); 4],
        "the body went on to the other instance whole"
    );
}

#[tokio::test]
async fn the_circuit_breaker_trips_at_once_and_recovers() {
    let a = Running::new("a").await;
    a.script.delay_ms.store(600, Ordering::SeqCst);
    let gw = Arc::new(
        TestGateway::start(
            &[&service(
                "[service.circuit_breaker]\nmax_requests = 2",
                &[("a", a.url(), 1)],
            )],
            "",
            "",
        )
        .await,
    );
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let gw = Arc::clone(&gw);
            tokio::spawn(async move { call(gw.addr, "").await.0 })
        })
        .collect();
    // Both hold their slot once the upstream has them (it answers after 600 ms).
    assert!(eventually(Duration::from_secs(5), || a.hits() == 2).await);
    let started = std::time::Instant::now();
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "upstream_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refused at once"
    );
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    a.script.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(call(gw.addr, "").await.0, 200, "closed again");
}

#[tokio::test]
async fn active_health_checks_take_an_instance_out_and_bring_it_back() {
    let a = Running::new("a").await;
    let b = Running::new("b").await;
    let settings = "[service.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2";
    let gw = TestGateway::start(
        &[&service(settings, &[("a", a.url(), 1), ("b", b.url(), 1)])],
        "",
        "",
    )
    .await;
    b.script.health.store(500, Ordering::SeqCst);
    let mut out = false;
    for _ in 0..100 {
        if state_of(&readiness(&gw).await, "b") == "unhealthy" {
            out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(out, "b was not marked unhealthy");
    let metrics =
        String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body).unwrap();
    assert!(metrics
        .contains("gerbang_upstream_instance_healthy{service=\"a/s\",upstream_instance=\"b\"} 0"));
    assert!(metrics
        .contains("gerbang_upstream_instance_healthy{service=\"a/s\",upstream_instance=\"a\"} 1"));
    for _ in 0..20 {
        assert_eq!(call(gw.addr, "").await, (200, "a".to_owned()));
    }
    // Every instance down: 503 no_healthy_upstream, and the readiness report says so.
    a.script.health.store(500, Ordering::SeqCst);
    let mut none = false;
    for _ in 0..100 {
        let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
        if r.status == 503 {
            assert_eq!(r.error_code(), "no_healthy_upstream");
            none = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(none);
    assert_eq!(readiness(&gw).await["services"][0]["available"], false);
    // Both recover.
    a.script.health.store(200, Ordering::SeqCst);
    b.script.health.store(200, Ordering::SeqCst);
    let mut back = false;
    for _ in 0..100 {
        let r = readiness(&gw).await;
        if state_of(&r, "a") == "healthy" && state_of(&r, "b") == "healthy" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(call(gw.addr, "").await.1);
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn a_reload_keeps_the_health_of_unchanged_instances() {
    let a = Running::new("a").await;
    let dead = refused_addr().await;
    let settings = "[service.outlier_detection]\nconsecutive_failures = 1\nbase_ejection = \"60s\"\nmax_ejection = \"60s\"";
    let gw = TestGateway::start(
        &[&service(
            settings,
            &[("a", a.url(), 1), ("dead", format!("http://{dead}"), 1)],
        )],
        "",
        "",
    )
    .await;
    // Calls until the dead instance has been tried once: ejected for a minute.
    let mut ejected = false;
    for _ in 0..10 {
        assert_eq!(
            call(gw.addr, "").await.0,
            200,
            "retried on the live instance"
        );
        if state_of(&readiness(&gw).await, "dead") == "ejected" {
            ejected = true;
            break;
        }
    }
    assert!(ejected);
    // A reload (same instances; another service setting changed) keeps the ejection.
    let file = gw.dir.path().join("registry/a0.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("name = \"s\"\n", "name = \"s (baru)\"\n");
    std::fs::write(&file, text).unwrap();
    gw.running
        .as_ref()
        .unwrap()
        .reloader
        .reload("test")
        .await
        .unwrap();
    assert_eq!(state_of(&readiness(&gw).await, "dead"), "ejected");
    let before = a.hits();
    for _ in 0..5 {
        assert_eq!(call(gw.addr, "").await, (200, "a".to_owned()));
    }
    assert_eq!(a.hits(), before + 5, "no call went to the ejected instance");
}

#[tokio::test]
async fn the_breaker_counts_a_call_until_its_body_has_been_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream whose response head comes at once and whose body takes 600 ms.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads_sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = Arc::clone(&heads_sent);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nmulai\r\n")
                    .await;
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(600)).await;
                let _ = s.write_all(b"7\r\nselesai\r\n0\r\n\r\n").await;
            });
        }
    });
    let gw = Arc::new(
        TestGateway::start(
            &[&service(
                "[service.circuit_breaker]\nmax_requests = 1",
                &[("slow", format!("http://{addr}"), 1)],
            )],
            "",
            "",
        )
        .await,
    );
    let first = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { raw_request(gw.addr, &get("/a/s/x", "")).await })
    };
    // The first call's head has left the upstream; its body ends 600 ms later.
    assert!(
        eventually(Duration::from_secs(5), || heads_sent.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 503, "the streaming call still holds the slot");
    assert_eq!(r.error_code(), "upstream_overloaded");
    let first = first.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"mulaiselesai");
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 200, "released when the body ended");
}

#[tokio::test]
async fn max_pending_bounds_connections_being_opened_to_tls_instances_too() {
    // A TLS instance whose handshake never finishes: each new connection stays pending.
    let hang = raw_upstream(RawBehaviour::Hang).await;
    let gw = Arc::new(
        TestGateway::start(
            &[&service(
                "request_timeout = \"1s\"\n[service.circuit_breaker]\nmax_pending = 1\n[service.retry]\nattempts = 1",
                &[("tls", format!("https://{}", hang.addr), 1)],
            )],
            "",
            "",
        )
        .await,
    );
    let first = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { raw_request(gw.addr, &get("/a/s/x", "")).await })
    };
    // Its connection is pending (TCP accepted, the TLS handshake never answered).
    assert!(eventually(Duration::from_secs(5), || hang.accepted() == 1).await);
    let started = std::time::Instant::now();
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "upstream_overloaded");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    let first = first.await.unwrap();
    assert_eq!(first.status, 504, "the pending one times out");
}

#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_a_connect_timeout() {
    let hang = raw_upstream(RawBehaviour::Hang).await;
    let gw = TestGateway::start(
        &[&service(
            "connect_timeout = \"300ms\"\nrequest_timeout = \"5s\"\n[service.retry]\nattempts = 1",
            &[("tls", format!("https://{}", hang.addr), 1)],
        )],
        "",
        "",
    )
    .await;
    let started = std::time::Instant::now();
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_connect_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the connect timeout covers the handshake: {:?}",
        started.elapsed()
    );
}
