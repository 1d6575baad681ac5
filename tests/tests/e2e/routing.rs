use gerbang::demo::Kind;
use gerbang_e2e::*;

#[tokio::test]
async fn round_robin_over_two_instances() {
    let a = backend(Kind::Penduduk, "penduduk-a").await;
    let b = backend(Kind::Penduduk, "penduduk-b").await;
    let gw = TestGateway::start(
        &[&agency("dukcapil", "penduduk", &[a.url(), b.url()], "")],
        "",
        "",
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = raw_request(
            gw.addr,
            &get("/dukcapil/penduduk/penduduk/3603015505900001", ""),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["nik"], "3603015505900001");
        seen.push(r.header("x-demo-instance").unwrap().to_owned());
    }
    let a_count = seen.iter().filter(|s| *s == "penduduk-a").count();
    assert_eq!(a_count, 3, "{seen:?}");
    assert_ne!(seen[0], seen[1], "alternates: {seen:?}");
}

#[tokio::test]
async fn rest_of_path_and_query_reach_the_upstream_under_its_base_path() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(
        &[&agency(
            "diskominfo",
            "echo",
            &[echo.url()],
            "base_path = \"/api/v1\"",
        )],
        "",
        "",
    )
    .await;
    let r = raw_request(gw.addr, &get("/diskominfo/echo/a/b?x=1&y=%2F..%00&z", "")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["path"], "/api/v1/a/b");
    assert_eq!(v["query"], "x=1&y=%2F..%00&z", "query passes byte for byte");

    let r = raw_request(gw.addr, &get("/diskominfo/echo", "")).await;
    assert_eq!(r.json()["path"], "/api/v1");
}

#[tokio::test]
async fn service_root_without_base_path_is_slash() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(&[&agency("diskominfo", "echo", &[echo.url()], "")], "", "").await;
    let r = raw_request(gw.addr, &get("/diskominfo/echo", "")).await;
    assert_eq!(r.json()["path"], "/");
    let r = raw_request(gw.addr, &get("/diskominfo/echo/", "")).await;
    assert_eq!(r.json()["path"], "/");
}

#[tokio::test]
async fn unknown_agency_service_and_route_are_404_with_codes() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(&[&agency("diskominfo", "echo", &[echo.url()], "")], "", "").await;
    for (path, code) in [
        ("/nope/echo/x", "unknown_agency"),
        ("/diskominfo/nope/x", "unknown_service"),
        ("/diskominfo", "route_not_found"),
        ("/", "route_not_found"),
    ] {
        let r = raw_request(gw.addr, &get(path, "")).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), code, "{path}");
        assert_eq!(
            r.json()["error"]["request_id"].as_str(),
            r.header("x-request-id"),
            "the body's request id is the header's"
        );
    }
}

#[tokio::test]
async fn provider_errors_pass_through_untouched() {
    let body = "{\"pesan\":\"tidak ditemukan\"}";
    let resp = format!(
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nx-provider: yes\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let up = raw_upstream(RawBehaviour::Respond(resp.into_bytes())).await;
    let gw = TestGateway::start(&[&agency("dukcapil", "penduduk", &[up.url()], "")], "", "").await;
    let r = raw_request(gw.addr, &get("/dukcapil/penduduk/x", "")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(r.header("x-provider"), Some("yes"));
}
