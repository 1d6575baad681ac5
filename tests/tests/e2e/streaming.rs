use aws_lc_rs::digest::{Context, SHA256};
use gerbang::demo::Kind;
use gerbang_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident set size of this process, in bytes (Linux).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_body_streams_with_flat_memory() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::single(&[echo.url()], "").await;

    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 512; // 512 MiB
    let mut block = vec![0u8; CHUNK];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let mut hasher = Context::new(&SHA256);
    let before = rss();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /a/s/upload HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        CHUNK * CHUNKS
    );
    s.write_all(&authed(head.as_bytes())).await.unwrap();
    let mut peak = before;
    for i in 0..CHUNKS {
        block[0] = i as u8; // every chunk differs
        hasher.update(&block);
        s.write_all(&block).await.unwrap();
        if i % 16 == 0 {
            peak = peak.max(rss());
        }
    }
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["body_bytes"], (CHUNK * CHUNKS) as u64);
    assert_eq!(v["body_sha256"], hex::encode(hasher.finish()));
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 96 << 20,
        "memory grew by {} MiB while streaming 512 MiB",
        growth >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_body_streams_back() {
    // An upstream that sends 64 MiB with a known digest.
    const SIZE: usize = 64 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut expected = Context::new(&SHA256);
    let block: Vec<u8> = (0..65536).map(|i| (i % 253) as u8).collect();
    for _ in 0..SIZE / block.len() {
        expected.update(&block);
    }
    let upstream_block = block.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
        s.write_all(&authed(head.as_bytes())).await.unwrap();
        for _ in 0..SIZE / upstream_block.len() {
            if s.write_all(&upstream_block).await.is_err() {
                return;
            }
        }
    });
    let gw = TestGateway::single(&[format!("http://{addr}")], "").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&authed(&get("/a/s/download", "")))
        .await
        .unwrap();
    // Read the head, then hash the body as it arrives.
    let mut buf = vec![0u8; 65536];
    let mut acc = Vec::new();
    let body_start = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        acc.extend_from_slice(&buf[..n]);
        if let Some(p) = acc.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    assert!(acc.starts_with(b"HTTP/1.1 200"));
    let mut got = Context::new(&SHA256);
    let mut total = acc.len() - body_start;
    got.update(&acc[body_start..]);
    while total < SIZE {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "cut short at {total}");
        got.update(&buf[..n]);
        total += n;
    }
    assert_eq!(total, SIZE);
    assert_eq!(got.finish().as_ref(), expected.finish().as_ref());
}
