//! The framing guard (`gerbang_proxy::framing::FramingGuard`) differentially against hyper.
//!
//! Input: a byte choosing how many bytes each read returns (1 to all), then what a client sends
//! on one connection. Three readings of the same bytes:
//!
//! - A: hyper's HTTP/1.1 server (the gateway's settings: 256 headers, 8 KiB buffer) on the raw
//!   bytes;
//! - B: the same server behind the guard, as the gateway runs it;
//! - M: a model written here from RFC 9112 and hyper's documented rules (httparse for heads,
//!   a whole-buffer chunked decoder), which also sees the raw heads that hyper hides (hyper
//!   drops `Content-Length` when `Transfer-Encoding` is present).
//!
//! Invariants:
//! 1. the guard's output is its input with `Content-Length` names renamed to the marker, nothing
//!    else changed (unless it refuses an oversized head, where hyper answers 431 and stops);
//! 2. B delivers exactly the requests A delivers (method, target, version, headers, body bytes,
//!    trailers, and whether the body ended cleanly), except for the marker header: the guard never
//!    shifts a message boundary, never refuses or alters what hyper accepts. The handler answers
//!    a marked request as the gateway does, 400 with `Connection: close` (hyper alone closes
//!    after a request with both fields; behind the guard it no longer sees both, so the close
//!    must come from the gateway: this checks that it suffices). Where hyper alone refuses a
//!    head for an invalid `Content-Length` that `Transfer-Encoding` follows, the guard marks it
//!    and the gateway refuses it instead: B may have that one request more, marked, last. And a
//!    CL+TE head that fits hyper's buffer only before the rename (the marker is longer) is
//!    refused by hyper (431) behind the guard: B may lack that one request, the last;
//! 3. M agrees with A on every request A delivers, and A delivers no request M does not: the
//!    model's boundaries are hyper's;
//! 4. a request B delivers carries the marker exactly when its raw head had both
//!    `Content-Length` and `Transfer-Encoding`, once per `Content-Length` line;
//! 5. no request that reaches the handler had an obsolete line fold, whitespace before a colon,
//!    `Transfer-Encoding` in HTTP/1.0, a final coding other than chunked, or `Content-Length`
//!    values that are invalid or disagree (hyper refuses them; this holds it to that).
#![no_main]

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use gerbang_proxy::framing::{FramingGuard, AMBIGUOUS_FRAMING_MARKER};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// hyper's smallest buffer, so that oversized heads are within the fuzzer's reach.
const MAX_BUF: usize = 8192;
const MAX_HEADERS: usize = 256;
/// hyper's limits for chunked bodies (`proto/h1/decode.rs`).
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
const TRAILER_LIMIT: usize = 16 * 1024;

/// A client that sends `data` in reads of at most `step` bytes and ignores what it gets back.
struct Client {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this
            .step
            .min(this.data.len() - this.pos)
            .min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A request as the handler sees it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    uri: String,
    http11: bool,
    /// Name and value, grouped by name as `HeaderMap` iterates (first appearance, then order).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    complete: bool,
}

fn header_list(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

async fn serve<T: AsyncRead + AsyncWrite + Unpin + 'static>(io: T) -> Vec<Seen> {
    let seen: Rc<RefCell<Vec<Seen>>> = Rc::default();
    let record = Rc::clone(&seen);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let record = Rc::clone(&record);
        async move {
            let (parts, mut body) = req.into_parts();
            let marked = parts.headers.contains_key(AMBIGUOUS_FRAMING_MARKER);
            let index = {
                let mut list = record.borrow_mut();
                list.push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    http11: parts.version == http::Version::HTTP_11,
                    headers: header_list(&parts.headers),
                    body: Vec::new(),
                    trailers: Vec::new(),
                    complete: false,
                });
                list.len() - 1
            };
            loop {
                match body.frame().await {
                    None => {
                        record.borrow_mut()[index].complete = true;
                        break;
                    }
                    Some(Err(_)) => break,
                    Some(Ok(frame)) => {
                        let mut list = record.borrow_mut();
                        match frame.into_data() {
                            Ok(d) => list[index].body.extend_from_slice(&d),
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    list[index].trailers.extend(header_list(&t));
                                }
                            }
                        }
                    }
                }
            }
            let mut res = Response::new(Empty::<Bytes>::new());
            if marked {
                // As the gateway answers a marked request: 400 and the connection closes
                // (without the guard, hyper closes after such a request by itself).
                *res.status_mut() = http::StatusCode::BAD_REQUEST;
                res.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(res)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        // The client's end of stream is not a reason to drop a request in flight (without
        // this, hyper may fail the body of a last request it has fully buffered, depending on
        // when it sees the end: noise for the comparison, not a framing difference).
        .half_close(true)
        .serve_connection(TokioIo::new(io), service);
    let _ = conn.await;
    let out = seen.borrow().clone();
    out
}

/// A request as the model reads it from the raw bytes.
#[derive(Debug)]
struct Modelled {
    /// What hyper should show the handler.
    seen: Seen,
    /// Raw `Content-Length` lines, and whether `Transfer-Encoding` was present.
    cl_lines: usize,
    te: bool,
    /// Raw lines that already carry the marker's name (a client may send it).
    marker_lines: usize,
    /// Bytes of the head, empty lines before it included (what hyper buffers for it).
    head_len: usize,
}

fn from_digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        if c.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

fn last_coding_is_chunked(v: &[u8]) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
    })
}

enum BodyEnd {
    /// The body ended; bytes of framing consumed.
    Complete(usize),
    /// The input ended first, or the framing is invalid: hyper fails the connection.
    Failed,
}

/// RFC 9112 §7.1 as hyper applies it: CRLF everywhere, `;` extensions up to a bare LF (refused)
/// or CR, trailers as CRLF-terminated lines.
fn decode_chunked(b: &[u8], data: &mut Vec<u8>, trailers: &mut Vec<(String, Vec<u8>)>) -> BodyEnd {
    let mut i = 0;
    let mut ext = 0u64;
    let next = |i: &mut usize| -> Option<u8> {
        let c = b.get(*i).copied();
        *i += 1;
        c
    };
    loop {
        // Size line.
        let mut size: u64 = 0;
        let mut digits = 0;
        loop {
            let Some(c) = next(&mut i) else {
                return BodyEnd::Failed;
            };
            if let Some(d) = (c as char).to_digit(16) {
                let Some(s) = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(d)))
                else {
                    return BodyEnd::Failed;
                };
                size = s;
                digits += 1;
                continue;
            }
            if digits == 0 {
                return BodyEnd::Failed;
            }
            let mut c = c;
            while c == b' ' || c == b'\t' {
                let Some(n) = next(&mut i) else {
                    return BodyEnd::Failed;
                };
                c = n;
            }
            if c == b';' {
                loop {
                    match next(&mut i) {
                        None | Some(b'\n') => return BodyEnd::Failed,
                        Some(b'\r') => break,
                        Some(_) => {
                            ext += 1;
                            if ext >= EXTENSIONS_LIMIT {
                                return BodyEnd::Failed;
                            }
                        }
                    }
                }
                c = b'\r';
            }
            if c != b'\r' || next(&mut i) != Some(b'\n') {
                return BodyEnd::Failed;
            }
            break;
        }
        if size == 0 {
            break;
        }
        let take = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(b.len() - i.min(b.len()));
        data.extend_from_slice(&b[i..i + take]);
        if (take as u64) < size {
            return BodyEnd::Failed;
        }
        i += take;
        if next(&mut i) != Some(b'\r') || next(&mut i) != Some(b'\n') {
            return BodyEnd::Failed;
        }
    }
    // Trailer section: lines ending in CRLF, then an empty line.
    let start = i;
    let mut lines = 0usize;
    loop {
        match next(&mut i) {
            None => return BodyEnd::Failed,
            Some(b'\r') => {
                if next(&mut i) != Some(b'\n') {
                    return BodyEnd::Failed;
                }
                break;
            }
            Some(_) => loop {
                match next(&mut i) {
                    None => return BodyEnd::Failed,
                    Some(b'\r') => {
                        if next(&mut i) != Some(b'\n') {
                            return BodyEnd::Failed;
                        }
                        if lines >= MAX_HEADERS {
                            return BodyEnd::Failed;
                        }
                        lines += 1;
                        break;
                    }
                    Some(_) => {}
                }
                if i - start >= TRAILER_LIMIT {
                    return BodyEnd::Failed;
                }
            },
        }
        if i - start >= TRAILER_LIMIT {
            return BodyEnd::Failed;
        }
    }
    if lines > 0 {
        let mut slots = vec![httparse::EMPTY_HEADER; lines];
        match httparse::parse_headers(&b[start..i], &mut slots) {
            Ok(httparse::Status::Complete((_, hs))) => {
                for h in hs.iter() {
                    let (Ok(n), Ok(v)) = (
                        http::HeaderName::from_bytes(h.name.as_bytes()),
                        http::HeaderValue::from_bytes(h.value),
                    ) else {
                        return BodyEnd::Failed;
                    };
                    trailers.push((n.as_str().to_owned(), v.as_bytes().to_vec()));
                }
            }
            _ => return BodyEnd::Failed,
        }
    }
    BodyEnd::Complete(i)
}

fn model(input: &[u8]) -> Vec<Modelled> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = req.parse(&input[pos..]) else {
            break;
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            break;
        };
        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
            break;
        };
        let Ok(uri) = http::Uri::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes())) else {
            break;
        };
        let http11 = version == 1;
        let raw_head = &input[pos..pos + len];
        // Property 5, on the raw head: no fold, no whitespace before a colon.
        // httparse skips empty lines before the request line.
        let lines = raw_head
            .split(|&c| c == b'\n')
            .skip_while(|l| l.is_empty() || *l == b"\r")
            .skip(1);
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            assert!(
                line[0] != b' ' && line[0] != b'\t',
                "httparse accepted an obsolete line fold"
            );
            let colon = line.iter().position(|&c| c == b':');
            assert!(
                colon.is_some_and(|c| c > 0 && !matches!(line[c - 1], b' ' | b'\t')),
                "httparse accepted a field line without a proper name: {:?}",
                String::from_utf8_lossy(line)
            );
        }
        let mut te = false;
        let mut chunked = false;
        let mut cl: Option<u64> = None;
        let mut cl_lines = 0;
        let mut marker_lines = 0;
        let mut failed = false;
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            if name == AMBIGUOUS_FRAMING_MARKER {
                marker_lines += 1;
            }
            match name.as_str() {
                "transfer-encoding" => {
                    if !http11 {
                        failed = true;
                        break;
                    }
                    te = true;
                    chunked = last_coding_is_chunked(h.value);
                }
                "content-length" => {
                    cl_lines += 1;
                    if te {
                        continue;
                    }
                    let Some(n) = from_digits(h.value) else {
                        failed = true;
                        break;
                    };
                    if cl.is_some_and(|c| c != n) {
                        failed = true;
                        break;
                    }
                    if cl.is_some() {
                        continue;
                    }
                    cl = Some(n);
                }
                _ => {}
            }
            headers.push((name, h.value.to_vec()));
        }
        if failed || (te && !chunked) || cl.is_some_and(|n| n > u64::MAX - 2) {
            break;
        }
        if te {
            headers.retain(|(n, _)| n != "content-length");
        }
        // HeaderMap order: grouped by name in order of first appearance.
        let mut grouped: Vec<(String, Vec<u8>)> = Vec::with_capacity(headers.len());
        let mut names: Vec<&str> = Vec::new();
        for (n, _) in &headers {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        for n in names {
            grouped.extend(headers.iter().filter(|(m, _)| m == n).cloned());
        }
        let mut seen = Seen {
            method: method.to_string(),
            uri: uri.to_string(),
            http11,
            headers: grouped,
            body: Vec::new(),
            trailers: Vec::new(),
            complete: false,
        };
        let rest = &input[pos + len..];
        let used = if te {
            match decode_chunked(rest, &mut seen.body, &mut seen.trailers) {
                BodyEnd::Complete(n) => Some(n),
                BodyEnd::Failed => None,
            }
        } else {
            let n = cl.unwrap_or(0);
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
            seen.body.extend_from_slice(&rest[..take]);
            ((take as u64) == n).then_some(take)
        };
        seen.complete = used.is_some();
        out.push(Modelled {
            seen,
            cl_lines,
            te,
            marker_lines,
            head_len: len,
        });
        let Some(used) = used else {
            break;
        };
        pos += len + used;
    }
    out
}

fn without_marker(s: &Seen) -> Seen {
    let mut s = s.clone();
    s.headers.retain(|(n, _)| n != AMBIGUOUS_FRAMING_MARKER);
    s
}

/// `s` with its headers and trailers stably sorted by name (the order within one name kept).
fn by_name(s: &Seen) -> Seen {
    let mut s = s.clone();
    s.headers = sorted(&s.headers);
    s.trailers = sorted(&s.trailers);
    s
}

fn sorted(h: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut h = h.to_vec();
    h.sort_by(|a, b| a.0.cmp(&b.0));
    h
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let step = [1, 2, 3, 5, 13, 64, 512, 1 << 20][usize::from(split % 8)];
    let client = |data: &[u8]| Client {
        data: data.to_vec(),
        pos: 0,
        step,
    };
    let rt = runtime();

    // 1. The guard's own output.
    let mut guarded = Vec::new();
    let refused = rt
        .block_on(FramingGuard::new(client(input), MAX_BUF).read_to_end(&mut guarded))
        .is_err();
    if !refused {
        let marker = AMBIGUOUS_FRAMING_MARKER.as_bytes();
        let (mut i, mut j) = (0, 0);
        while i < input.len() || j < guarded.len() {
            if guarded[j..].starts_with(marker)
                && input[i..].len() >= 14
                && input[i..i + 14].eq_ignore_ascii_case(b"content-length")
                && !input[i..].starts_with(marker)
            {
                i += 14;
                j += marker.len();
                continue;
            }
            assert_eq!(
                input.get(i),
                guarded.get(j),
                "the guard changed byte {i} of the input"
            );
            i += 1;
            j += 1;
        }
    }

    let a = rt.block_on(serve(client(input)));
    let b = rt.block_on(serve(FramingGuard::new(client(input), MAX_BUF)));
    let m = model(input);
    if std::env::var_os("FRAMING_DEBUG").is_some() {
        eprintln!("A: {a:#?}\nB: {b:#?}\nM: {m:#?}");
    }

    // 2. Behind the guard, hyper delivers what it delivers without it. One exception: a head
    //    with `Transfer-Encoding` and an invalid `Content-Length` before it, which hyper alone
    //    refuses (400, close), reaches the handler marked behind the guard, where the gateway
    //    refuses it (400, close): one more request, the last, and marked.
    //    And one less: the marker is longer than `Content-Length`, so a CL+TE head within a few
    //    bytes of hyper's buffer no longer fits once renamed, and hyper answers 431 where the
    //    gateway would answer 400 (refused either way; the gateway's own header limit is far
    //    below hyper's buffer).
    let marked = |s: &Seen| s.headers.iter().any(|(n, _)| n == AMBIGUOUS_FRAMING_MARKER);
    let grows = AMBIGUOUS_FRAMING_MARKER.len() - "content-length".len();
    let outgrown = |i: usize| {
        m.get(i)
            .is_some_and(|r| r.te && r.cl_lines > 0 && r.head_len + grows * r.cl_lines > MAX_BUF)
    };
    assert!(
        b.len() == a.len()
            || (b.len() == a.len() + 1 && b.last().is_some_and(marked))
            || (b.len() + 1 == a.len() && outgrown(b.len())),
        "hyper delivered {} requests, behind the guard {}",
        a.len(),
        b.len()
    );
    // Headers compare as HTTP does: the order of fields with one name matters, the order of
    // different names does not (`HeaderMap` reorders names when hyper removes one, e.g. the
    // `Content-Length` it drops beside `Transfer-Encoding`).
    for (x, y) in a.iter().zip(&b) {
        // A client may send the marker's name itself (the gateway then refuses the request
        // as ambiguous, which only hurts that client): it is left out on both sides.
        assert_eq!(
            by_name(&without_marker(x)),
            by_name(&without_marker(y)),
            "the guard changed a request"
        );
    }

    // 3. The model agrees with hyper on everything hyper delivered.
    assert!(
        a.len() <= m.len(),
        "hyper delivered {} requests, the model found {}: {a:#?} {m:#?}",
        a.len(),
        m.len()
    );
    for (x, y) in a.iter().zip(&m) {
        let y = &y.seen;
        assert_eq!((&x.method, &x.uri, x.http11), (&y.method, &y.uri, y.http11));
        assert_eq!(sorted(&x.headers), sorted(&y.headers), "headers differ");
        assert_eq!(x.body, y.body, "bodies differ");
        assert_eq!(x.complete, y.complete, "body ends differ");
        assert_eq!(sorted(&x.trailers), sorted(&y.trailers), "trailers differ");
    }

    // 4. Exactly the ambiguous heads are marked.
    for (y, mm) in b.iter().zip(&m) {
        let markers = y
            .headers
            .iter()
            .filter(|(n, _)| n == AMBIGUOUS_FRAMING_MARKER)
            .count();
        let expected = if mm.te && mm.cl_lines > 0 {
            mm.cl_lines
        } else {
            0
        };
        assert_eq!(
            markers,
            mm.marker_lines + expected,
            "marker count wrong for {:?}",
            mm.seen
        );
    }
});
