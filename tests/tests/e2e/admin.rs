use gerbang::demo::Kind;
use gerbang_e2e::*;

#[tokio::test]
async fn health_probes_on_the_admin_listener() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;
    let r = raw_request(gw.admin, &get("/health/live", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "live");
    let r = raw_request(gw.admin, &get("/health/ready", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");

    gw.running.as_ref().unwrap().health.set_ready(false);
    let r = raw_request(gw.admin, &get("/health/ready", "")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "not_ready");
    let r = raw_request(gw.admin, &get("/health/live", "")).await;
    assert_eq!(r.status, 200, "live while not ready");
}

#[tokio::test]
async fn admin_errors_are_json() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;
    let r = raw_request(gw.admin, &get("/nope", "")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    let r = raw_request(
        gw.admin,
        b"POST /health/live HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // The data plane is not on the admin listener, and the admin is not on the data plane.
    let r = raw_request(gw.addr, &get("/health/live", "")).await;
    assert_eq!(r.status, 404);
}
