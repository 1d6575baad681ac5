//! OTLP span export (cargo feature `otlp`): a mock collector on 127.0.0.1:0 receives the
//! gateway's spans over OTLP/HTTP; the upstream sees the gateway's span as its parent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use gerbang::demo::Kind;
use gerbang_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// (path, content-type, body) of every request the collector received.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let store = Arc::clone(&got);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request at a time: head, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 8192];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    store
                        .lock()
                        .unwrap()
                        .push((path, header("content-type"), body));
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    (url, got)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn calls_become_spans_at_the_collector_and_the_upstream_is_their_child() {
    let (url, received) = collector().await;
    let up = backend(Kind::Echo, "e").await;
    let mut gw = TestGateway::start(
        &[&agency("a", "s", &[up.url()], "")],
        "",
        &format!("[tracing]\notlp_endpoint = \"{url}\"\nservice_name = \"gerbang-test\"\n"),
    )
    .await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = raw_request(
        gw.addr,
        &get(
            "/a/s/x",
            &format!("traceparent: 00-{client_trace}-{client_span}-01\r\n"),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let upstream_tp = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = upstream_tp.split('-').collect();
    assert_eq!(parts[1], client_trace, "the client's trace continues");
    assert_ne!(
        parts[2], client_span,
        "the upstream's parent is the gateway's span"
    );
    let gateway_span = parts[2].to_owned();
    // A call without a traceparent starts a trace; a refused call is a span too.
    assert_eq!(
        raw_request_as_is(gw.addr, &get("/a/s/x", "")).await.status,
        401
    );
    gw.shutdown().await;

    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "the collector received nothing");
    let body: Vec<u8> = got.iter().flat_map(|(_, _, b)| b.clone()).collect();
    for (path, content_type, _) in &got {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
    }
    assert!(contains(&body, &unhex(client_trace)), "trace id");
    assert!(
        contains(&body, &unhex(client_span)),
        "the client's span as parent"
    );
    assert!(
        contains(&body, &unhex(&gateway_span)),
        "the gateway's span id"
    );
    assert!(contains(&body, b"gerbang-test"), "service.name");
    assert!(
        contains(&body, b"a/s"),
        "the service as span name/attribute"
    );
    assert!(
        contains(&body, b"missing_credentials"),
        "the refused call's reason"
    );
}
