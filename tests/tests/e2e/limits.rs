use gerbang::demo::Kind;
use gerbang_e2e::*;
use tokio::io::AsyncWriteExt;

async fn gateway_with_limit() -> (Upstream, TestGateway) {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "max_body_bytes = 1000").await;
    (echo, gw)
}

#[tokio::test]
async fn uri_longer_than_8_kib_is_414() {
    let (_e, gw) = gateway_with_limit().await;
    let ok = format!("/a/s/{}", "x".repeat(8000));
    assert_eq!(raw_request(gw.addr, &get(&ok, "")).await.status, 200);
    let long = format!("/a/s/{}", "x".repeat(8200));
    let r = raw_request(gw.addr, &get(&long, "")).await;
    assert_eq!(r.status, 414);
    assert_eq!(r.error_code(), "uri_too_long");
    let long_query = format!("/a/s/x?q={}", "y".repeat(8200));
    assert_eq!(
        raw_request(gw.addr, &get(&long_query, "")).await.status,
        414
    );
}

#[tokio::test]
async fn header_block_over_32_kib_is_431() {
    let (_e, gw) = gateway_with_limit().await;
    let fits = format!("X-Big: {}\r\n", "v".repeat(30_000));
    assert_eq!(
        raw_request(gw.addr, &get("/a/s/x", &fits)).await.status,
        200
    );
    let over = format!(
        "X-Big: {}\r\nX-Big2: {}\r\n",
        "v".repeat(20_000),
        "w".repeat(14_000)
    );
    let r = raw_request(gw.addr, &get("/a/s/x", &over)).await;
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "headers_too_large");
}

/// Up to 99 header fields are parsed (hyper's default room for 100 entries on the stack; the
/// parser wants one free entry to see the end of the block); 100 or more are refused with 431
/// by the HTTP parser itself, before the pipeline (so without the JSON body) and before any
/// upstream is asked.
#[tokio::test]
async fn a_hundred_header_fields_or_more_are_431() {
    let up = raw_upstream(RawBehaviour::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
    ))
    .await;
    let gw = TestGateway::single(&[up.url()], "").await;
    let fields = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    // Host and Connection make two more: 99 fields in all.
    let r = raw_request(gw.addr, &get("/a/s/x", &fields(97))).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.accepted(), 1);
    // 100.
    let r = raw_request(gw.addr, &get("/a/s/x", &fields(98))).await;
    assert_eq!(r.status, 431);
    assert_eq!(up.accepted(), 1, "the upstream was asked");
}

#[tokio::test]
async fn body_over_the_service_limit_is_413() {
    let (_e, gw) = gateway_with_limit().await;
    // Declared length within and over the limit.
    let within = format!(
        "POST /a/s/x HTTP/1.1\r\nHost: g\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{}",
        "b".repeat(1000)
    );
    let r = raw_request(gw.addr, within.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 1000);
    let over = format!(
        "POST /a/s/x HTTP/1.1\r\nHost: g\r\nContent-Length: 1001\r\nConnection: close\r\n\r\n{}",
        "b".repeat(1001)
    );
    let r = raw_request(gw.addr, over.as_bytes()).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "body_too_large");

    // Chunked: no length up front, the limit trips while streaming.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&authed(b"POST /a/s/x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"))
        .await
        .unwrap();
    for _ in 0..3 {
        s.write_all(format!("200\r\n{}\r\n", "c".repeat(0x200)).as_bytes())
            .await
            .unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "body_too_large");
}

#[tokio::test]
async fn no_body_limit_unless_the_service_sets_one() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;
    let body = "z".repeat(3 * 1024 * 1024);
    let req = format!(
        "PUT /a/s/x HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw_request(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], body.len());
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let (_e, gw) = gateway_with_limit().await;
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\ncontent-length: 5",
        "Content-Length: 5\r\nTransfer-Encoding: gzip, chunked",
    ] {
        let req =
            format!("POST /a/s/x HTTP/1.1\r\nHost: g\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let r = raw_request(gw.addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{head}");
        assert_eq!(r.error_code(), "ambiguous_framing", "{head}");
        assert_eq!(r.header("connection"), Some("close"), "{head}");
    }
    // The same connection carries an ordinary request first: only the ambiguous one is refused.
    let req = "GET /a/s/first HTTP/1.1\r\nHost: g\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&authed(req.as_bytes())).await.unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    assert_ambiguous_request_refused(&mut s).await;
}

/// Sends a request with both `Transfer-Encoding` and `Content-Length` on `s`; it must get
/// 400 `ambiguous_framing`.
async fn assert_ambiguous_request_refused(s: &mut tokio::net::TcpStream) {
    s.write_all(&authed(b"POST /a/s/x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"))
        .await
        .unwrap();
    let r = read_response(s).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "ambiguous_framing");
}

/// A keep-alive connection idle between requests (long enough for the server to park it and
/// release hyper's state) is served on the same socket throughout, and its framing guard
/// still stands after each park.
#[tokio::test]
async fn a_keep_alive_connection_idle_between_requests_is_served_throughout() {
    let (_e, gw) = gateway_with_limit().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for round in 0..3 {
        let req = format!("GET /a/s/round{round} HTTP/1.1\r\nHost: g\r\n\r\n");
        s.write_all(&authed(req.as_bytes())).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200, "round {round}");
        assert_eq!(r.header("connection"), None, "round {round}");
        let echoed: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(echoed["path"], format!("/round{round}"));
        // Past the server's park delay (100 ms).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_ambiguous_request_refused(&mut s).await;
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(
        &[&agency("a", "s", &[echo.url()], "")],
        "max_connections = 2",
        "",
    )
    .await;
    let keep_alive = "GET /a/s/x HTTP/1.1\r\nHost: g\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    first
        .write_all(&authed(keep_alive.as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_response(&mut first).await.status, 200);
    let mut second = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    second
        .write_all(&authed(keep_alive.as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_response(&mut second).await.status, 200);

    // A third connection is not served while both slots are taken...
    let third = tokio::spawn(async move { raw_request(gw.addr, &get("/a/s/x", "")).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "served beyond max_connections");
    // ...and is served as soon as one closes.
    drop(first);
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), third)
        .await
        .expect("served after a slot freed")
        .unwrap();
    assert_eq!(r.status, 200);
    drop(second);
}

/// A call refused by the agreement's quota carries `RateLimit-*` like one refused by its rate:
/// the quota's limit, nothing remaining, and the seconds until the next period (the same as
/// `Retry-After`), also when the agreement has no rate limit.
#[tokio::test]
async fn quota_refusal_carries_ratelimit_headers() {
    let echo = backend(Kind::Echo, "echo").await;
    let registry = agency("a", "s", &[echo.url()], "");
    let agreement = "[[agreement]]\nid = \"pks-quota\"\ntitle = \"t\"\nlegal_basis = \"x\"\n\
        service = \"a/s\"\nconsumers = [\"test/client\"]\nmax_classification = \"sangat-rahasia\"\n\
        quota = { limit = 3, per = \"day\" }\n";
    let gw = TestGateway::start_with_agreements(&[&registry], Some(agreement), "", "").await;
    for _ in 0..3 {
        let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
        assert_eq!(r.status, 200);
    }
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "quota_exhausted");
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&reset), "{reset}");
    // Both count down to the same instant (the start of the next day in Jakarta).
    assert!(retry.abs_diff(reset) <= 1, "retry {retry}, reset {reset}");
}

/// One node: quota use is kept in the data directory, so a restart does not hand out a fresh
/// daily quota.
#[tokio::test]
async fn quota_use_survives_a_restart() {
    let echo = backend(Kind::Echo, "echo").await;
    let registry = agency("a", "s", &[echo.url()], "");
    let agreement = "[[agreement]]\nid = \"pks-quota\"\ntitle = \"t\"\nlegal_basis = \"x\"\n\
        service = \"a/s\"\nconsumers = [\"test/client\"]\nmax_classification = \"sangat-rahasia\"\n\
        quota = { limit = 3, per = \"day\" }\n";
    let mut gw = TestGateway::start_with_agreements(&[&registry], Some(agreement), "", "").await;
    for _ in 0..2 {
        assert_eq!(raw_request(gw.addr, &get("/a/s/x", "")).await.status, 200);
    }
    // Written within about a second while running.
    let file = gw.dir.path().join("data/quota-use.json");
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\"used\": 2"))
        })
        .await,
        "{} not written",
        file.display()
    );
    // A third call, then a graceful shutdown: written once more after the drain.
    assert_eq!(raw_request(gw.addr, &get("/a/s/x", "")).await.status, 200);
    gw.shutdown().await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"used\": 3"), "{text}");

    let cfg = gerbang::load(
        &gw.dir.path().join("gerbang.toml"),
        &gerbang::Overrides::default(),
    )
    .unwrap();
    let again = gerbang::start(cfg).await.unwrap();
    let r = raw_request(again.data_addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 429, "a restart handed out a fresh quota");
    assert_eq!(r.error_code(), "quota_exhausted");
    again.shutdown().await;
}

/// Cluster mode while Redis cannot be reached (nothing listens at `redis_url`; no redis-server
/// needed): `local` limits this replica alone at its share (burst 4 / 2 expected replicas = 2),
/// counted; `closed` refuses with 503 `limit_store_unavailable`. Neither waits long.
#[tokio::test]
async fn without_redis_limits_are_local_or_refused() {
    let echo = backend(Kind::Echo, "echo").await;
    let registry = agency("a", "s", &[echo.url()], "");
    let agreement = "[[agreement]]\nid = \"pks-rate\"\ntitle = \"t\"\nlegal_basis = \"x\"\n\
        service = \"a/s\"\nconsumers = [\"test/client\"]\nmax_classification = \"sangat-rahasia\"\n\
        rate_limit = { limit = 1, per = \"minute\", burst = 4 }\n";
    let dead = refused_addr().await;
    for mode in ["local", "closed"] {
        let extra = format!(
            "[auth]\nissuer = \"http://gw.test\"\n\n[cluster]\nreplica_id = \"r0\"\n\
             redis_url = \"redis://{dead}/0\"\non_redis_failure = \"{mode}\"\n\
             expected_replicas = 2\nredis_timeout = \"100ms\"\n"
        );
        let gw =
            TestGateway::start_with_agreements(&[&registry], Some(agreement), "", &extra).await;
        let started = std::time::Instant::now();
        let statuses: Vec<RawResponse> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(raw_request(gw.addr, &get("/a/s/x", "")).await);
            }
            v
        };
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{mode}: {:?}",
            started.elapsed()
        );
        let metrics =
            String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body)
                .unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l == "gerbang_limit_store_fallback 1"),
            "{mode}"
        );
        let codes: Vec<(u16, String)> = statuses
            .iter()
            .map(|r| {
                (
                    r.status,
                    if r.status == 200 {
                        String::new()
                    } else {
                        r.error_code()
                    },
                )
            })
            .collect();
        if mode == "local" {
            let ok = (200, String::new());
            let limited = (429, "rate_limited".to_owned());
            assert_eq!(codes, vec![ok.clone(), ok, limited.clone(), limited]);
            assert!(
                metrics
                    .lines()
                    .any(|l| l == "gerbang_limit_store_fallback_decisions_total 4"),
                "{metrics}"
            );
        } else {
            assert!(
                codes
                    .iter()
                    .all(|c| *c == (503, "limit_store_unavailable".to_owned())),
                "{codes:?}"
            );
            assert_eq!(statuses[0].header("retry-after"), Some("1"));
            assert!(metrics
                .lines()
                .any(|l| l == "gerbang_limit_store_fallback_decisions_total 0"));
        }
    }
}
