//! The floor of a proxy built on hyper's HTTP/1 server: what `benches/proxy_load.sh` measures
//! as `hyper-floor`, to tell the cost of the gateway's work from the cost of the parts it is
//! built on (and that issue 15 asks it to keep).
//!
//! One thread (a current-thread Tokio runtime, as the gateway runs with `worker_threads = 1`),
//! hyper's HTTP/1 server, and per request the least a reverse proxy can do: take a pooled
//! keep-alive connection to the one upstream, write the client's method, target and header
//! fields to it, read the response head (httparse) and a `Content-Length` body, and answer with
//! the upstream's status, header fields and body. No authentication, no policy, no header
//! rewriting, no metrics, no audit, no timeouts, no request bodies, no chunked responses: it is
//! a measuring stick for GET requests of a benchmark, not a proxy to deploy.
//!
//! ```sh
//! hyper-floor 127.0.0.1:18230 127.0.0.1:18200   # listen, upstream
//! ```

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Idle upstream connections with their read buffers.
struct Pool {
    upstream: SocketAddr,
    idle: Mutex<Vec<(TcpStream, BytesMut)>>,
}

impl Pool {
    fn checkout(&self) -> Option<(TcpStream, BytesMut)> {
        self.idle.lock().ok()?.pop()
    }

    fn checkin(&self, conn: (TcpStream, BytesMut)) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}

/// A parsed upstream response: status, header fields, and where the body starts.
struct Head {
    status: u16,
    fields: Vec<(HeaderName, HeaderValue)>,
    len: usize,
    content_length: usize,
    /// The upstream ends the connection after this response (`Connection: close`).
    close: bool,
}

fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut storage);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let mut content_length = 0;
    let mut close = false;
    let mut fields = Vec::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h.value.eq_ignore_ascii_case(b"close");
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        fields.push((name, value));
    }
    Ok(Some(Head {
        status: res.code.unwrap_or(502),
        fields,
        len,
        content_length,
        close,
    }))
}

/// One exchange; a pooled connection the upstream closed while it was idle (its keep-alive
/// timeout) fails before any byte of a response and is retried once on a new connection, as
/// every pooling proxy does.
async fn exchange(pool: &Pool, req: &Request<Incoming>) -> io::Result<Response<Full<Bytes>>> {
    if let Some(conn) = pool.checkout() {
        match exchange_on(pool, req, conn).await {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) => {}
            other => return other,
        }
    }
    let s = TcpStream::connect(pool.upstream).await?;
    s.set_nodelay(true)?;
    exchange_on(pool, req, (s, BytesMut::with_capacity(16 * 1024))).await
}

async fn exchange_on(
    pool: &Pool,
    req: &Request<Incoming>,
    (mut stream, mut buf): (TcpStream, BytesMut),
) -> io::Result<Response<Full<Bytes>>> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).await?;
    buf.clear();
    let head = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
    };
    while buf.len() < head.len + head.content_length {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let body = buf
        .split_to(head.len + head.content_length)
        .freeze()
        .slice(head.len..);
    if !head.close {
        if buf.capacity() < 4096 {
            buf = BytesMut::with_capacity(16 * 1024);
        }
        pool.checkin((stream, buf));
    }
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = res.headers_mut();
    for (name, value) in head.fields {
        headers.append(name, value);
    }
    Ok(res)
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: hyper-floor LISTEN UPSTREAM",
        )
    };
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let upstream: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let pool = Arc::new(Pool {
            upstream,
            idle: Mutex::new(Vec::new()),
        });
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let pool = pool.clone();
                    async move {
                        Ok::<_, Infallible>(match exchange(&pool, &req).await {
                            Ok(res) => res,
                            Err(_) => {
                                let mut res = Response::new(Full::new(Bytes::new()));
                                *res.status_mut() = StatusCode::BAD_GATEWAY;
                                res
                            }
                        })
                    }
                });
                // A client that goes away ends its connection; nothing to report.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
