//! The upstream side shared by the two floors of `benches/proxy_load.sh` (`hyper-floor` and
//! `raw-floor`): a pooled keep-alive connection to the one upstream, the client's method,
//! target and fields written to it, the response head parsed (httparse) into checked names and
//! values, and a `Content-Length` body read whole. The floors differ only in the server in
//! front of it. A measuring stick for GET requests of a benchmark, not a client to deploy.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A floor's `main`: `LISTEN UPSTREAM` from the arguments (`name` for the usage line), one
/// current-thread Tokio runtime (as the gateway runs with `worker_threads = 1`), and `serve`
/// spawned for each accepted connection (no delay set; a client that goes away ends its
/// connection, nothing to report).
pub fn run<F, Fut>(name: &str, serve: F) -> io::Result<()>
where
    F: Fn(TcpStream, Arc<Pool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut args = std::env::args().skip(1);
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("usage: {name} LISTEN UPSTREAM"),
        )
    };
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let upstream: SocketAddr = args.next().and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let pool = Arc::new(Pool::new(upstream));
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(serve(stream, Arc::clone(&pool)));
        }
    })
}

/// Idle upstream connections with their read buffers.
pub struct Pool {
    upstream: SocketAddr,
    idle: Mutex<Vec<(TcpStream, BytesMut)>>,
}

/// The upstream's answer: status, fields (`Connection` left out; `Content-Length` kept, the
/// body's length) and body.
pub struct Answer {
    pub status: StatusCode,
    pub fields: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Answer {
    /// The answer a floor gives when the upstream failed.
    pub fn bad_gateway() -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            fields: Vec::new(),
            body: Bytes::new(),
        }
    }
}

impl Pool {
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn checkout(&self) -> Option<(TcpStream, BytesMut)> {
        self.idle.lock().ok()?.pop()
    }

    fn checkin(&self, conn: (TcpStream, BytesMut)) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// One exchange; a pooled connection the upstream closed while it was idle (its keep-alive
    /// timeout) fails before any byte of a response and is retried once on a new connection,
    /// as every pooling proxy does.
    pub async fn exchange(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) -> io::Result<Answer> {
        if let Some(conn) = self.checkout() {
            match self.exchange_on(method, target, headers, conn).await {
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
        let s = TcpStream::connect(self.upstream).await?;
        s.set_nodelay(true)?;
        self.exchange_on(
            method,
            target,
            headers,
            (s, BytesMut::with_capacity(16 * 1024)),
        )
        .await
    }

    async fn exchange_on(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        (mut stream, mut buf): (TcpStream, BytesMut),
    ) -> io::Result<Answer> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
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
            self.checkin((stream, buf));
        }
        Ok(Answer {
            status: StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY),
            fields: head.fields,
            body,
        })
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
