use std::time::{Duration, Instant};

use gerbang_e2e::*;

#[tokio::test]
async fn refused_connection_is_502_upstream_unavailable() {
    let addr = refused_addr().await;
    let gw = TestGateway::single(&[format!("http://{addr}")], "").await;
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        !text.contains(&addr.to_string()),
        "no upstream address leaks: {text}"
    );
}

#[tokio::test]
async fn upstream_closing_without_answer_is_502_upstream_failed() {
    let up = raw_upstream(RawBehaviour::Close).await;
    let gw = TestGateway::single(&[up.url()], "").await;
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_failed");
}

#[tokio::test]
async fn upstream_sending_garbage_is_502_upstream_failed() {
    let up = raw_upstream(RawBehaviour::Respond(b"NOT HTTP AT ALL\r\n\r\n".to_vec())).await;
    let gw = TestGateway::single(&[up.url()], "").await;
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_failed");
}

#[tokio::test]
async fn silent_upstream_is_504_after_the_service_request_timeout() {
    let up = raw_upstream(RawBehaviour::Hang).await;
    let gw = TestGateway::single(&[up.url()], "request_timeout = \"300ms\"").await;
    let t = Instant::now();
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn slow_upstream_within_the_timeout_is_fine() {
    let up = raw_upstream(RawBehaviour::RespondAfter(
        Duration::from_millis(200),
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow".to_vec(),
    ))
    .await;
    let gw = TestGateway::single(&[up.url()], "request_timeout = \"2s\"").await;
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"slow");
}

/// A listener whose accept queue is full: further SYNs are dropped, so connects hang.
async fn blackhole() -> (
    std::net::SocketAddr,
    Vec<tokio::task::JoinHandle<()>>,
    tokio::net::TcpListener,
) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        fillers.push(tokio::spawn(async move {
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(s);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    (addr, fillers, listener)
}

#[tokio::test]
async fn connect_timeout_is_504_upstream_connect_timeout() {
    let (addr, fillers, _listener) = blackhole().await;
    let gw = TestGateway::single(
        &[format!("http://{addr}")],
        "connect_timeout = \"300ms\"\nrequest_timeout = \"10s\"",
    )
    .await;
    let t = Instant::now();
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 504, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "upstream_connect_timeout");
    assert!(t.elapsed() < Duration::from_secs(5));
    for f in fillers {
        f.abort();
    }
}

#[tokio::test]
async fn slow_client_body_is_408_not_blamed_on_the_upstream() {
    use tokio::io::AsyncWriteExt;
    let up = raw_upstream(RawBehaviour::Hang).await;
    let gw = TestGateway::single(&[up.url()], "request_timeout = \"300ms\"").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&authed(
        b"POST /a/s/x HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n\r\nonly-part",
    ))
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 408);
    assert_eq!(r.error_code(), "request_body_timeout");
}
