//! The path table end to end: what the upstream receives is exactly the normalised path, and
//! every ambiguous path is refused with 400 before it reaches any upstream.

use gerbang::demo::Kind;
use gerbang_e2e::*;

#[tokio::test]
async fn path_table_end_to_end() {
    let echo = backend(Kind::Echo, "echo").await;
    // A second service: a traversal must never reach it.
    let other = backend(Kind::Penduduk, "other").await;
    let gw = TestGateway::start(
        &[
            &agency("a", "s", &[echo.url()], ""),
            &agency("b", "t", &[other.url()], ""),
        ],
        "",
        "",
    )
    .await;
    // (request target, Ok(path the upstream sees) | Err(error code))
    let table: &[(&str, Result<&str, &str>)] = &[
        ("/a/s/x/y", Ok("/x/y")),
        ("//a//s///x", Ok("/x")),
        ("/a/s/x/./y/../z", Ok("/x/z")),
        ("/a/s/%78%2Dy", Ok("/x-y")),
        ("/a/s/caf%c3%a9", Ok("/caf%C3%A9")),
        ("/a/s/100%25", Ok("/100%25")),
        ("/a/s/q%3Fx", Ok("/q%3Fx")),
        ("/a/s/../../b/t/x", Err("path_traversal")),
        ("/a/s/%2e%2e/%2e%2e/b/t/x", Err("path_traversal")),
        ("/a/s/..%2f..%2fb/t", Err("path_encoded_separator")),
        ("/a/s/x%5c..%5c..%5cb", Err("path_encoded_separator")),
        ("/a/s/x%00", Err("path_encoded_control")),
        ("/a/s/%252e%252e/b", Err("path_double_encoding")),
        ("/a/s/%25%32%46x", Err("path_double_encoding")),
        ("/a/s/..;/b/t", Err("path_invalid_character")),
        ("/a/s/x%C3%28", Err("path_invalid_utf8")),
        ("/a/s/x%zz", Err("path_invalid_encoding")),
        ("/a/s/x\\..\\b", Err("path_invalid_character")),
    ];
    for (target, want) in table {
        let r = raw_request(gw.addr, &get(target, "")).await;
        match want {
            Ok(path) => {
                assert_eq!(
                    r.status,
                    200,
                    "{target}: {:?}",
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(r.header("x-demo-instance"), Some("echo"), "{target}");
                assert_eq!(r.json()["path"], *path, "{target}");
            }
            Err(code) => {
                assert_eq!(
                    r.status,
                    400,
                    "{target}: {:?}",
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(r.error_code(), *code, "{target}");
            }
        }
    }
}

#[tokio::test]
async fn absolute_form_targets_route_on_their_path() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;
    let r = raw_request(
        gw.addr,
        b"GET http://elsewhere.example/a/s/x/../y HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/y");
    assert_eq!(r.json()["headers"]["host"], echo.addr.to_string());
}
