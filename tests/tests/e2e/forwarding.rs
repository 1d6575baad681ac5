use gerbang::demo::Kind;
use gerbang_e2e::*;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(&[&agency("diskominfo", "echo", &[echo.url()], "")], "", "").await;
    let req = "GET /diskominfo/echo/h HTTP/1.1\r\nHost: gw.example:8080\r\n\
        Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
        TE: trailers\r\nProxy-Authorization: Basic eDp5\r\nUpgrade: h2c\r\n\
        X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil.example\r\n\
        Forwarded: for=10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\nX-Kept: yes\r\n\r\n";
    let r = raw_request(gw.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    for gone in [
        "x-hop-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(
            h.get(gone).is_none(),
            "{gone} must not reach the upstream: {h}"
        );
    }
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gw.example:8080");
    assert_eq!(h["host"], echo.addr.to_string(), "Host is the upstream's");
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_response_are_removed() {
    let resp = "HTTP/1.1 200 OK\r\nConnection: close, X-Up-Hop\r\nX-Up-Hop: 1\r\nKeep-Alive: timeout=1\r\n\
        X-Up-Kept: 1\r\nContent-Length: 2\r\n\r\nok";
    let up = raw_upstream(RawBehaviour::Respond(resp.as_bytes().to_vec())).await;
    let gw = TestGateway::single(&[up.url()], "").await;
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    assert!(r.header("x-up-hop").is_none(), "{:?}", r.headers);
    assert!(r.header("keep-alive").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("x-up-kept"), Some("1"));
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(&[&agency("diskominfo", "echo", &[echo.url()], "")], "", "").await;

    let r = raw_request(
        gw.addr,
        &get("/diskominfo/echo/x", "X-Request-Id: abc-123\r\n"),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.json()["headers"]["x-request-id"], "abc-123");

    for sent in [
        "",
        "X-Request-Id: has space\r\n",
        "X-Request-Id: a\"b<c>\r\n",
    ] {
        let r = raw_request(gw.addr, &get("/diskominfo/echo/x", sent)).await;
        let id = r.header("x-request-id").unwrap().to_owned();
        assert_eq!(id.len(), 36, "a generated UUID: {id}");
        assert_eq!(r.json()["headers"]["x-request-id"], id.as_str());
    }
    // Two requests never share a generated id.
    let a = raw_request(gw.addr, &get("/diskominfo/echo/x", "")).await;
    let b = raw_request(gw.addr, &get("/diskominfo/echo/x", "")).await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[tokio::test]
async fn client_sent_gateway_identity_headers_never_reach_the_provider() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(&[&agency("diskominfo", "echo", &[echo.url()], "")], "", "").await;
    let r = raw_request(
        gw.addr,
        &get(
            "/diskominfo/echo/x",
            "X-Gerbang-Consumer: dukcapil/siak\r\nX-GERBANG-Consumer-Agency: dukcapil\r\n\
             X-Gerbang-Assertion: forged\r\nX-Gerbang-Purpose: pelayanan-kesehatan\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let h = r.json()["headers"].clone();
    // The provider sees the identity the gateway verified, never what the client claimed.
    assert_eq!(h["x-gerbang-consumer"], "test/client", "{h}");
    assert_eq!(h["x-gerbang-consumer-agency"], "test", "{h}");
    assert_ne!(h["x-gerbang-assertion"], "forged", "{h}");
    assert_eq!(h["x-gerbang-purpose"], "pelayanan-kesehatan");
    // Credentials meant for the gateway are not passed on.
    assert!(h.get("x-api-key").is_none(), "{h}");
    assert!(h.get("authorization").is_none(), "{h}");
}

#[tokio::test]
async fn w3c_traceparent_is_passed_on_when_valid_and_started_otherwise() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = raw_request(
        gw.addr,
        &get(
            "/a/s/x",
            &format!("traceparent: {valid}\r\ntracestate: v=1\r\n"),
        ),
    )
    .await;
    let h = r.json()["headers"].clone();
    assert_eq!(h["traceparent"], valid);
    assert_eq!(h["tracestate"], "v=1");
    let mut seen = std::collections::HashSet::new();
    for sent in [
        "",
        "traceparent: 00-zz-yy-01\r\n",
        "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n",
    ] {
        let r = raw_request(gw.addr, &get("/a/s/x", sent)).await;
        let tp = r.json()["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            gerbang_proxy::headers::valid_traceparent(tp.as_bytes()),
            "{tp}"
        );
        assert!(tp.ends_with("-01"), "sampled: {tp}");
        assert!(
            seen.insert(tp[3..35].to_owned()),
            "a new trace each time: {tp}"
        );
    }
}
