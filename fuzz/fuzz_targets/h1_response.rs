//! The inline HTTP/1.1 client's response decoder (`gerbang_proxy::h1::send` and
//! `UpstreamBody`): a loopback upstream answers a GET (or HEAD) with the fuzzed bytes, written in
//! fuzzed pieces, then closes.
//!
//! Input: a flags byte (bit 0: HEAD; bits 1-3: size of the upstream's writes), then the bytes
//! the upstream sends.
//!
//! Invariants, against a whole-buffer model of the decoder's documented rules (RFC 9112 §6.3
//! framing, 1xx skipped, 101 refused, limits on size and trailer lines):
//! - `send` fails exactly when the model finds no usable head; otherwise status, version and
//!   headers agree (`Content-Length` removed when `Transfer-Encoding` makes it ambiguous, the
//!   hop-by-hop fields as `headers::remove_hop_by_hop` removes them);
//! - the body's bytes and whether it ended cleanly agree, whatever the read splits;
//! - the connection goes back to the pool only after a response that the model says ended
//!   cleanly, by length or chunked framing, on a keep-alive HTTP/1.1 exchange without
//!   ambiguity, and within the bytes sent; and it does go back when all that holds and the
//!   response was all the upstream sent;
//! - where hyper's client also reads the whole response, it finds the same status and body.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gerbang_proxy::body::RequestBody;
use gerbang_proxy::h1::{send, InstancePool, Target, Times};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_HEADERS: usize = 128;
const MAX_SIZE_LINE: usize = 4096;
const MAX_TRAILER_LINE: usize = 8 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

struct Fixture {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        Fixture { rt, listener, addr }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
struct Expected {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
    complete: bool,
    framing: Framing,
    keep_alive: bool,
    /// Bytes of the whole response when it ended cleanly.
    end: Option<usize>,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Chunked body at the start of `b`: data, and where the body ended (`None`: it did not).
fn chunked(b: &[u8], data: &mut Vec<u8>) -> Option<usize> {
    let mut i = 0;
    loop {
        let end = find_crlf(&b[i..])?;
        if end > MAX_SIZE_LINE {
            return None;
        }
        let line = &b[i..i + end];
        let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let after = &line[digits..];
        let ws = after
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t'))
            .count();
        let after = &after[ws..];
        if digits == 0 || digits > 16 || !(after.is_empty() || after[0] == b';') {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        i += end + 2;
        if size == 0 {
            break;
        }
        let avail = (b.len() - i) as u64;
        let take = size.min(avail) as usize;
        data.extend_from_slice(&b[i..i + take]);
        if (take as u64) < size {
            return None;
        }
        i += take;
        if !b[i..].starts_with(b"\r\n") {
            return None;
        }
        i += 2;
    }
    let mut total = 0;
    loop {
        let end = find_crlf(&b[i..])?;
        if end > MAX_TRAILER_LINE {
            return None;
        }
        total += end + 2;
        if total > MAX_TRAILERS {
            return None;
        }
        i += end + 2;
        if end == 0 {
            return Some(i);
        }
    }
}

fn has_token(v: &http::HeaderValue, token: &str) -> bool {
    v.to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The response as the decoder's rules read it from the whole input; `None` when no usable
/// head comes first.
fn model(input: &[u8], is_head: bool) -> Option<Expected> {
    let mut pos = 0;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = res.parse(&input[pos..]) else {
            return None;
        };
        let status = StatusCode::from_u16(res.code?).ok()?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        if status.is_informational() {
            pos += len;
            continue;
        }
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut headers = HeaderMap::new();
        for h in res.headers.iter() {
            headers.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                http::HeaderValue::from_bytes(h.value).ok()?,
            );
        }
        let framing =
            if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Framing::Length(0)
            } else if let Some(te) = headers
                .get_all(http::header::TRANSFER_ENCODING)
                .iter()
                .last()
            {
                let last = te.to_str().ok().and_then(|s| s.rsplit(',').next());
                if last.is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked")) {
                    Framing::Chunked
                } else {
                    Framing::UntilClose
                }
            } else {
                let mut length: Option<u64> = None;
                for v in headers.get_all(http::header::CONTENT_LENGTH) {
                    let s = v.to_str().ok()?.trim();
                    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    let n: u64 = s.parse().ok()?;
                    if length.is_some_and(|l| l != n) {
                        return None;
                    }
                    length = Some(n);
                }
                length.map_or(Framing::UntilClose, Framing::Length)
            };
        let ambiguous = headers.contains_key(http::header::TRANSFER_ENCODING)
            && headers.contains_key(http::header::CONTENT_LENGTH)
            && framing != Framing::Length(0);
        if ambiguous {
            headers.remove(http::header::CONTENT_LENGTH);
        }
        let keep_alive = !ambiguous
            && version == Version::HTTP_11
            && !headers
                .get_all(http::header::CONNECTION)
                .iter()
                .any(|v| has_token(v, "close"));
        // The hop-by-hop fields are the client's own: the decoder passes on only the
        // end-to-end ones (what the gateway's map-based strip leaves).
        gerbang_proxy::headers::remove_hop_by_hop(&mut headers);
        let rest = &input[pos + len..];
        let mut body = Vec::new();
        let used = match framing {
            Framing::Length(n) => {
                let take = n.min(rest.len() as u64) as usize;
                body.extend_from_slice(&rest[..take]);
                ((take as u64) == n).then_some(take)
            }
            Framing::UntilClose => {
                body.extend_from_slice(rest);
                Some(rest.len())
            }
            Framing::Chunked => chunked(rest, &mut body),
        };
        return Some(Expected {
            status,
            version,
            headers,
            body,
            complete: used.is_some(),
            framing,
            keep_alive,
            end: used.map(|u| pos + len + u),
        });
    }
}

/// Serves `bytes` on the next connection: reads the request head, writes `bytes` in pieces of
/// `step`, closes.
async fn upstream(listener: &tokio::net::TcpListener, bytes: &[u8], step: usize) {
    let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
    else {
        return;
    };
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    for piece in bytes.chunks(step.max(1)) {
        if s.write_all(piece).await.is_err() {
            return;
        }
        let _ = s.flush().await;
        tokio::task::yield_now().await;
    }
    let _ = s.shutdown().await;
    // Read until the client closes, so that closing never resets what it has not read yet.
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

struct Got {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
    complete: bool,
    reused: bool,
}

async fn client(addr: SocketAddr, method: Method) -> Option<Got> {
    let pool = Arc::new(InstancePool::new(
        &addr.to_string(),
        4,
        Duration::from_secs(60),
    ));
    let (parts, ()) = http::Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "upstream")
        .body(())
        .unwrap()
        .into_parts();
    let res = send(
        &pool,
        Times::within(Duration::from_secs(5)),
        Target {
            base: "",
            rest: "/x",
        },
        &parts,
        [&[], &[]],
        &mut RequestBody::empty(),
        None,
    )
    .await
    .ok()?;
    let (p, mut body) = res.into_parts();
    let mut got = Got {
        status: p.status,
        version: p.version,
        headers: p.headers,
        body: Vec::new(),
        complete: false,
        reused: false,
    };
    loop {
        match body.frame().await {
            None => {
                got.complete = true;
                break;
            }
            Some(Err(_)) => break,
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    got.body.extend_from_slice(&d);
                }
            }
        }
    }
    // Checked in as the body ended, before the body is dropped.
    got.reused = pool.idle_count() > 0;
    // Closes the connection, pooled or not, so that the upstream finishes.
    drop(body);
    drop(pool);
    Some(got)
}

/// hyper's client on the same bytes: status and body when it read the whole response.
async fn hyper_reads(bytes: &[u8], method: Method) -> Option<(StatusCode, Vec<u8>)> {
    let (near, mut far) = tokio::io::duplex(1 << 16);
    let bytes = bytes.to_vec();
    let server = async move {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match far.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = far.write_all(&bytes).await;
        let _ = far.shutdown().await;
        drop(far);
    };
    let client = async move {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(near))
            .await
            .ok()?;
        let driver = async move {
            let _ = conn.await;
        };
        let call = async move {
            let req = http::Request::builder()
                .method(method)
                .uri("/x")
                .header("host", "upstream")
                .body(Empty::<Bytes>::new())
                .ok()?;
            let res = sender.send_request(req).await.ok()?;
            let status = res.status();
            let body = res.into_body().collect().await.ok()?.to_bytes();
            Some((status, body.to_vec()))
        };
        let (r, ()) = tokio::join!(call, driver);
        r
    };
    let ((), r) = tokio::join!(server, client);
    r
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let is_head = flags & 1 == 1;
    let step = [1, 2, 3, 7, 64, 1024, 16 * 1024, 1 << 20][usize::from((flags >> 1) & 7)];
    let method = if is_head { Method::HEAD } else { Method::GET };
    let f = fixture();
    let (_, got) = f.rt.block_on(async {
        tokio::join!(
            upstream(&f.listener, input, step),
            client(f.addr, method.clone())
        )
    });
    let expected = model(input, is_head);
    let (got, exp) = match (got, expected) {
        (None, None) => return,
        (Some(g), None) => panic!(
            "decoded a response the model refuses: {} {:?}",
            g.status, g.headers
        ),
        (None, Some(e)) => panic!("refused a response the model reads: {e:?}"),
        (Some(g), Some(e)) => (g, e),
    };
    assert_eq!(got.status, exp.status);
    assert_eq!(got.version, exp.version);
    assert_eq!(got.headers, exp.headers);
    assert_eq!(got.body, exp.body, "bodies differ (model {exp:?})");
    assert_eq!(
        got.complete, exp.complete,
        "body ends differ (model {exp:?})"
    );
    let definite = matches!(exp.framing, Framing::Length(_) | Framing::Chunked);
    if got.reused {
        assert!(
            exp.keep_alive && definite && exp.complete,
            "kept a connection after {exp:?}"
        );
        assert!(exp.end.is_some_and(|e| e <= input.len()));
    } else if exp.keep_alive && definite && exp.end == Some(input.len()) {
        panic!("did not keep the connection after a clean response: {exp:?}");
    }
    if got.complete {
        if let Some((status, body)) = f.rt.block_on(hyper_reads(input, method)) {
            assert_eq!(status, got.status, "hyper reads another status");
            assert_eq!(body, got.body, "hyper reads another body");
        }
    }
});
