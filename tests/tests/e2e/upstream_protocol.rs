//! How the gateway speaks HTTP/1.1 to plain upstreams: response framings, informational
//! responses, HEAD, connection reuse and connections the upstream closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gerbang_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that keeps connections alive, answers every request with `response`, and counts
/// the connections it accepted.
async fn keep_alive_upstream(response: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn chunked_response_with_trailers_is_passed_on() {
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
        5\r\nhallo\r\n7;ext=1\r\n, dunia\r\n0\r\nX-Checksum: abc\r\n\r\n";
    let (url, accepted) = keep_alive_upstream(resp).await;
    let gw = TestGateway::single(&[url], "").await;
    for _ in 0..3 {
        let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hallo, dunia");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the chunked body ended cleanly: connection reused"
    );
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (url, accepted) =
        keep_alive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = TestGateway::single(&[url], "").await;
    for _ in 0..20 {
        let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connection_close_from_the_upstream_is_respected() {
    let (url, accepted) =
        keep_alive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    let gw = TestGateway::single(&[url], "").await;
    for _ in 0..3 {
        assert_eq!(raw_request(gw.addr, &get("/a/s/x", "")).await.body, b"ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "no reuse after Connection: close"
    );
}

#[tokio::test]
async fn upstream_closing_idle_connections_causes_no_errors() {
    // Answers without `Connection: close`, then closes: the pooled connection is dead.
    let up = raw_upstream(RawBehaviour::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    ))
    .await;
    let gw = TestGateway::single(&[up.url()], "").await;
    for i in 0..20 {
        let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
        assert_eq!(
            r.status,
            200,
            "request {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn close_delimited_response_body_is_read_to_the_end() {
    let up = raw_upstream(RawBehaviour::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsampai koneksi ditutup".to_vec(),
    ))
    .await;
    let gw = TestGateway::single(&[up.url()], "").await;
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"sampai koneksi ditutup");
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    let (url, _) = keep_alive_upstream(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
    )
    .await;
    let gw = TestGateway::single(&[url], "").await;
    let r = raw_request(
        gw.addr,
        b"POST /a/s/x HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body, b"done");
}

#[tokio::test]
async fn head_and_204_responses_have_no_body_and_keep_the_connection() {
    let (url, accepted) =
        keep_alive_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
    let gw = TestGateway::single(&[url], "").await;
    for _ in 0..3 {
        let r = raw_head_request(
            gw.addr,
            b"HEAD /a/s/x HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.body.is_empty());
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("5"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let (url, accepted) = keep_alive_upstream(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = TestGateway::single(&[url], "").await;
    for _ in 0..3 {
        assert_eq!(raw_request(gw.addr, &get("/a/s/x", "")).await.status, 204);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_request_body_reaches_the_upstream_intact() {
    let echo = backend(gerbang::demo::Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&authed(b"POST /a/s/x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"))
        .await
        .unwrap();
    let mut all = Vec::new();
    for i in 0..50u8 {
        let part = vec![b'a' + (i % 26); 1000 + i as usize];
        all.extend_from_slice(&part);
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["body_bytes"], all.len());
    assert_eq!(
        v["body_sha256"],
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &all))
    );
    assert_eq!(v["headers"]["transfer-encoding"], "chunked");
}

#[tokio::test]
async fn connection_header_cannot_strip_content_length() {
    // `Connection: content-length` must not make the body travel unframed (request smuggling):
    // the upstream sees exactly one request, with its body.
    let echo = backend(gerbang::demo::Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;
    let smuggled = "GET /a/s/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!(
        "POST /a/s/x HTTP/1.1\r\nHost: g\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&authed(req.as_bytes())).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["path"], "/x");
    assert_eq!(v["body_bytes"], smuggled.len());
    assert_eq!(v["headers"]["content-length"], smuggled.len().to_string());
}

#[tokio::test]
async fn response_with_both_framings_is_read_as_chunked_and_not_reused() {
    let (url, accepted) = keep_alive_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let gw = TestGateway::single(&[url], "").await;
    for _ in 0..2 {
        let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"ok");
        assert_ne!(r.header("content-length"), Some("100"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "ambiguous framing: no reuse"
    );
}

/// An upstream that answers the first request of each connection (keep-alive) and, on the
/// second, reads it and closes without an answer. Returns its URL and the requests it read.
async fn answers_once_per_connection() -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                for answer in [true, false] {
                    if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if answer {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn an_idempotent_request_is_retried_once_when_a_reused_connection_dies() {
    let (url, seen) = answers_once_per_connection().await;
    let gw = TestGateway::single(&[url], "").await;
    assert_eq!(raw_request(gw.addr, &get("/a/s/1", "")).await.status, 200);
    // Reuses the connection, which dies; sent again on a fresh one.
    assert_eq!(raw_request(gw.addr, &get("/a/s/2", "")).await.status, 200);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_non_idempotent_request_is_never_sent_twice() {
    let (url, seen) = answers_once_per_connection().await;
    let gw = TestGateway::single(&[url], "").await;
    let post = b"POST /a/s/x HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(gw.addr, post).await.status, 200);
    // Reuses the connection, which dies after the upstream read the POST: not retried.
    let r = raw_request(gw.addr, post).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_failed");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}
