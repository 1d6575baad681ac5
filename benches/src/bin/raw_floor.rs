//! `raw-floor`: the floor of `benches/proxy_load.sh` without hyper's server: the same upstream
//! side as `hyper-floor` ([`gerbang_benches::floor`]) behind a hand-written HTTP/1.1 server
//! loop. It parses each request head with httparse into the same `http` types hyper makes (a
//! method, a target, a `HeaderMap` of checked names and values sharing the read buffer), and
//! encodes the answer's status line and fields from them into one write.
//!
//! What it measures: the difference between the two floors is what hyper's server machinery
//! costs per request on this benchmark (its dispatcher, its buffers, its read for a closed
//! connection after each request), the most a server of the gateway's own could save. It is
//! not such a server: keep-alive GET requests only (a request with a body, a chunked request or
//! `Connection: close` ends the connection after its answer), no pipelining guarantees, no
//! timeouts, no limits beyond 64 fields and a 64 KiB head, no `Date` field.
//!
//! ```sh
//! raw-floor 127.0.0.1:18231 127.0.0.1:18200   # listen, upstream
//! ```

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gerbang_benches::floor::{Answer, Pool};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;

/// A request head: method, target, fields, and whether the connection ends after it.
struct RequestHead {
    method: Method,
    target: Bytes,
    fields: HeaderMap,
    last: bool,
}

/// Parses the head at the start of `buf` and takes it out; `None` until it is complete.
fn parse_request(buf: &mut BytesMut) -> io::Result<Option<RequestHead>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut storage);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(invalid("head too large")),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let method = Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
        .map_err(|_| invalid("method"))?;
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let target = span(req.path.unwrap_or("/").as_bytes());
    let mut last = req.version == Some(0);
    let mut fields = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid("name"))?;
        if name == http::header::CONNECTION {
            last |= h.value.eq_ignore_ascii_case(b"close");
        } else if name == http::header::TRANSFER_ENCODING
            || (name == http::header::CONTENT_LENGTH && h.value != b"0")
        {
            // No request bodies here: answer this one and end the connection.
            last = true;
        }
        fields.push((name, span(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(fields.len());
    for (name, (start, end)) in fields {
        let value =
            HeaderValue::from_maybe_shared(head.slice(start..end)).map_err(|_| invalid("value"))?;
        map.append(name, value);
    }
    Ok(Some(RequestHead {
        method,
        target: head.slice(target.0..target.1),
        fields: map,
        last,
    }))
}

/// The answer's head and body in `out`.
fn encode(answer: &Answer, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(answer.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        answer
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut length = false;
    for (name, value) in &answer.fields {
        length |= name == http::header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(answer.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&answer.body);
}

async fn serve(mut stream: TcpStream, pool: Arc<Pool>) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        let head = loop {
            if let Some(head) = parse_request(&mut buf)? {
                break head;
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let target = std::str::from_utf8(&head.target).unwrap_or("/");
        let answer = pool
            .exchange(&head.method, target, &head.fields)
            .await
            .unwrap_or_else(|_| Answer::bad_gateway());
        encode(&answer, &mut out);
        stream.write_all(&out).await?;
        if head.last {
            return Ok(());
        }
        // The head's fields are gone with `head`: the next reserve reuses the buffer in place.
    }
}

fn main() -> io::Result<()> {
    gerbang_benches::floor::run("raw-floor", |stream, pool| async move {
        let _ = serve(stream, pool).await;
    })
}
