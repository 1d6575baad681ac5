//! An inline HTTP/1.1 client for plain `http://` upstreams.
//!
//! The request's own task checks a connection out of the instance's pool, writes the request,
//! reads the response head, and hands the connection to the response body, which streams the
//! rest and puts the connection back when the body ends cleanly. There is no connection task and
//! no channel between tasks (hyper-util's pooled client has both), which is where a proxy spends
//! much of its per-request CPU; Pingora's connectors work the same way. `https://` upstreams
//! still go through hyper-util with rustls.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::{RequestBody, RequestBodyError};
use crate::headers;

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted from an upstream.
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;
/// Emptied header maps kept per worker thread (see [`recycle_map`]), and the largest kept.
const SPARE_MAPS: usize = 64;
const SPARE_MAP_CAPACITY: usize = 64;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `map`, a finished call's request fields, emptied, for a later response head on this
/// thread. The maps go round: hyper parses each request into the map of the response it last
/// wrote (it keeps that map), the call gets it, and the response head the inline client
/// parses next takes it back from here. Without this, every call allocated a map for its
/// response (two allocations) and freed its request's (two frees). A map grown beyond
/// [`SPARE_MAP_CAPACITY`] fields (a client that sent many) is let go.
pub(crate) fn recycle_map(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARE_MAPS {
                spare.push(map);
            }
        }
    });
}

/// An empty map with room for `n` fields: a recycled one when there is one.
fn spare_map(n: usize) -> HeaderMap {
    let spare = SPARE.with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()));
    match spare {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}
/// Longest chunk size line (size and extensions) accepted from an upstream.
const MAX_CHUNK_SIZE_LINE: usize = 4096;
/// Longest trailer line, and all trailers together, accepted from an upstream.
const MAX_TRAILER_LINE: usize = 8 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("request body: {0}")]
    ClientBody(RequestBodyError),
    #[error("write failed: {0}")]
    Write(io::Error),
    #[error("read failed: {0}")]
    Read(io::Error),
    #[error("upstream closed the connection before a complete response head")]
    Closed,
    #[error("invalid response from upstream: {0}")]
    Invalid(&'static str),
    #[error("too many connections being opened to the service")]
    Overloaded,
    /// The try's deadline passed before the response head arrived.
    #[error("no response head before the try's deadline")]
    TimedOut,
}

/// A pooled connection with its read buffer (kept to spare an allocation per request) and its
/// deadline timer (see [`by_deadline`]).
struct Idle {
    stream: TcpStream,
    buf: BytesMut,
    timer: Timer,
    since: Instant,
}

/// A connection's timer for the deadlines of the tries it carries.
type Timer = Pin<Box<tokio::time::Sleep>>;

/// Idle keep-alive connections to one upstream instance.
pub struct InstancePool {
    authority: String,
    /// `Host` for requests to this instance (its authority), made once instead of per call.
    host: Option<HeaderValue>,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl InstancePool {
    pub fn new(authority: &str, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            authority: authority.to_owned(),
            host: HeaderValue::from_str(authority).ok(),
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// The `Host` value of requests to this instance; `None` when its authority is not a valid
    /// header value.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// A live idle connection, most recently used first; closed and expired ones are dropped
    /// (by their idle time at `now`, the call's reading of the clock).
    fn checkout(&self, now: Instant) -> Option<(TcpStream, BytesMut, Timer)> {
        loop {
            let idle = {
                let mut list = self.idle.lock().ok()?;
                list.pop()?
            };
            if now.duration_since(idle.since) > self.idle_timeout {
                continue;
            }
            // An idle connection must have nothing to read: EOF or stray bytes mean the
            // upstream closed it or is out of step.
            let mut probe = [0u8; 1];
            match idle.stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Some((idle.stream, idle.buf, idle.timer))
                }
                _ => continue,
            }
        }
    }

    /// Idle connections held (checked in, not yet probed). For tests and the fuzz target,
    /// which check that a connection is kept only after a response that ended cleanly.
    #[doc(hidden)]
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |l| l.len())
    }

    fn checkin(&self, stream: TcpStream, mut buf: BytesMut, timer: Timer) {
        buf.clear();
        if let Ok(mut list) = self.idle.lock() {
            if list.len() < self.max_idle {
                list.push(Idle {
                    stream,
                    buf,
                    timer,
                    since: Instant::now(),
                });
            }
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<TcpStream, H1Error> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.authority.as_str()))
            .await
            .map_err(|_| H1Error::ConnectTimeout)?
            .map_err(H1Error::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// A failed [`send`]: the error and whether it came before any of the body was read (the
/// connection could not be made), so that the call, body and all, can go to another instance.
pub struct SendError {
    pub error: H1Error,
    pub unsent: bool,
}

impl From<H1Error> for SendError {
    fn from(error: H1Error) -> Self {
        Self {
            error,
            unsent: false,
        }
    }
}

/// The times of one [`send`].
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Longest wait for a new connection.
    pub connect_timeout: Duration,
    /// The call's reading of the clock: it judges the pooled connections' idle time.
    pub now: Instant,
    /// By when the response head must have arrived, connecting included.
    pub deadline: Instant,
}

impl Times {
    /// Five seconds to connect and `d` to answer, from now (tests, the fuzz target).
    #[doc(hidden)]
    pub fn within(d: Duration) -> Self {
        let now = Instant::now();
        Self {
            connect_timeout: Duration::from_secs(5),
            now,
            deadline: now + d,
        }
    }
}

/// Where a request goes below its instance: the service's base path, then the normalised
/// rest of the client's path (`/` when both are empty), then the client's query byte for
/// byte (from `parts.uri`, which the rewrite leaves as the client sent it).
///
/// [`send`] writes the pieces straight into the request line: no intermediate string, no
/// `Uri` to allocate and check again. Each piece is checked where it is made, and none may
/// hold a byte that ends the target or the line: the base path when the registry is built
/// (`gerbang_registry::valid_base_path`; the configuration asks for a normalised path), the
/// rest by the normalisation (visible ASCII without `?`, `#`, `\`, `;`; see `crate::path`),
/// the query by hyper's and http's parse of the client's target (no controls, space or `#`).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub base: &'a str,
    pub rest: &'a str,
}

impl Target<'_> {
    /// The target's length, with `query`.
    fn len(&self, query: Option<&str>) -> usize {
        (self.base.len() + self.rest.len()).max(1) + query.map_or(0, |q| "?".len() + q.len())
    }

    /// Writes the target, with `query`, into `head`.
    fn write(&self, query: Option<&str>, head: &mut BytesMut) {
        if self.base.is_empty() && self.rest.is_empty() {
            head.put_u8(b'/');
        } else {
            head.put_slice(self.base.as_bytes());
            head.put_slice(self.rest.as_bytes());
        }
        if let Some(q) = query {
            head.put_u8(b'?');
            head.put_slice(q.as_bytes());
        }
    }
}

/// Bounds the connections being opened at once (the circuit breaker's `max_pending`).
pub struct PendingLimit<'a> {
    pub load: &'a Arc<gerbang_registry::ServiceLoad>,
    pub settings: &'a gerbang_registry::BreakerSettings,
}

/// Sends a request (`target`, the query of `parts.uri`, `parts` with `Host` set and hop-by-hop
/// headers removed, and `body`) to the instance of `pool` and returns the response with its
/// body streaming,
/// or `TimedOut` when its head has not arrived by the deadline of `times` (connecting included).
/// The body is borrowed: the caller's future holds it once, not each level of the call.
// Not an `async fn`: that keeps each by-value argument twice in the future (see
// `Gateway::forward`).
#[allow(clippy::manual_async_fn)]
pub fn send<'a>(
    pool: &'a Arc<InstancePool>,
    times: Times,
    target: Target<'a>,
    parts: &'a http::request::Parts,
    added: [&'a [(headers::Field, HeaderValue)]; 2],
    body: &'a mut RequestBody,
    pending: Option<PendingLimit<'a>>,
) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
    async move {
        let Times {
            connect_timeout,
            now,
            deadline,
        } = times;
        let no_body = body.is_end_stream();
        let exact = body.size_hint().exact();
        let chunked = !no_body && exact.is_none();
        // Framing comes from the body hyper decoded, never from the client's headers.
        let length = if no_body { None } else { exact };
        let head = encode_head(target, parts, added, chunked, length);
        let is_head = parts.method == Method::HEAD;
        // Only an idempotent request without a body is sent again after a reused connection failed:
        // the first attempt may have reached the application before the connection broke.
        let retryable = no_body && parts.method.is_idempotent();

        // A request without a body can be sent again on a fresh connection when a pooled one turns
        // out to be dead (closed by the upstream just before use): nothing reached the application.
        let mut reused = pool.checkout(now);
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            let (mut stream, mut buf, mut timer, was_reused) = match reused.take() {
                Some((s, b, t)) => (s, b, t, true),
                None => {
                    // Nothing of the body has been read yet: a failure here hands it back.
                    let slot = match &pending {
                        Some(p) => match p.load.pending(p.settings) {
                            Some(slot) => Some(slot),
                            None => {
                                return Err(SendError {
                                    error: H1Error::Overloaded,
                                    unsent: true,
                                })
                            }
                        },
                        None => None,
                    };
                    let connected =
                        tokio::time::timeout_at(deadline, pool.connect(connect_timeout))
                            .await
                            .unwrap_or(Err(H1Error::TimedOut));
                    drop(slot);
                    match connected {
                        Ok(stream) => (
                            stream,
                            BytesMut::with_capacity(READ_CHUNK),
                            Box::pin(tokio::time::sleep_until(deadline)),
                            false,
                        ),
                        Err(error) => {
                            return Err(SendError {
                                error,
                                unsent: true,
                            })
                        }
                    }
                }
            };
            let exchanged = by_deadline(
                &mut timer,
                deadline,
                exchange_on(&mut stream, &mut buf, &head, body, chunked, is_head),
            )
            .await;
            let (head, reusable_request) = match exchanged {
                Ok(Ok(done)) => done,
                Ok(Err(Step::Unanswered(_))) if was_reused && retryable => continue,
                Ok(Err(Step::Unanswered(e) | Step::Failed(e))) | Err(e) => return Err(e.into()),
            };
            let keep_alive = !head.close && reusable_request && head.version == Version::HTTP_11;
            let mut res = Response::new(UpstreamBody {
                conn: Some(stream),
                timer: Some(timer),
                buf,
                framing: head.framing,
                keep_alive,
                pool: Arc::clone(pool),
            });
            *res.status_mut() = head.status;
            *res.version_mut() = head.version;
            *res.headers_mut() = head.fields;
            return Ok(res);
        }
    }
}

/// How an exchange on one connection failed.
enum Step {
    /// Before any byte of an answer, on a request without a body (or its head could not be
    /// written): on a reused connection, an idempotent request may go again on a fresh one.
    Unanswered(H1Error),
    Failed(H1Error),
}

/// Writes the request on `stream` and reads the response head; with it, whether the connection
/// may carry another request (not after the body could not be written wholly: the upstream
/// answered early, 413 or 401, and closed).
async fn exchange_on(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    head: &[u8],
    body: &mut RequestBody,
    chunked: bool,
    is_head: bool,
) -> Result<(Head, bool), Step> {
    if body.is_end_stream() {
        if let Err(e) = stream.write_all(head).await {
            return Err(Step::Unanswered(H1Error::Write(e)));
        }
    } else if let Err(e) = write_with_body(stream, head, body, chunked).await {
        return match e {
            // The upstream may have answered early (413, 401) and closed: use it.
            H1Error::Write(_) => read_head(stream, buf, is_head)
                .await
                .map(|h| (h, false))
                .map_err(|_| Step::Failed(e)),
            other => Err(Step::Failed(other)),
        };
    }
    match read_more(stream, buf).await {
        Err(e @ (H1Error::Closed | H1Error::Read(_))) if buf.is_empty() => {
            return Err(Step::Unanswered(e))
        }
        Err(e) => return Err(Step::Failed(e)),
        Ok(()) => {}
    }
    read_head(stream, buf, is_head)
        .await
        .map(|h| (h, true))
        .map_err(Step::Failed)
}

/// Runs `io` until `deadline`, on the connection's `timer`. The timer may be armed earlier, for
/// a request this connection carried before: it is moved on only when it fires, so a busy
/// connection re-arms it about once per timeout instead of registering a timer with the
/// runtime and removing it again for every request (tokio's `timeout_at`: about 950
/// instructions per request). It is polled once (which leaves this task's waker with it) and
/// then only after it has fired. While the connection is idle in the pool the timer may
/// still fire and wake the task of the request it last served, once.
///
/// A future of its own rather than an `async fn`: an `async fn` keeps its argument `io` twice
/// (as the argument and pinned), and this future is nested, and copied, at every level of the
/// call above it.
fn by_deadline<F: std::future::Future>(
    timer: &mut Timer,
    deadline: tokio::time::Instant,
    io: F,
) -> ByDeadline<'_, F> {
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    ByDeadline {
        timer,
        deadline,
        polled: false,
        io,
    }
}

pin_project_lite::pin_project! {
    /// [`by_deadline`]'s future.
    struct ByDeadline<'t, F> {
        timer: &'t mut Timer,
        deadline: tokio::time::Instant,
        // Whether the timer has been polled since it was last armed.
        polled: bool,
        #[pin]
        io: F,
    }
}

impl<F: std::future::Future> std::future::Future for ByDeadline<'_, F> {
    type Output = Result<F::Output, H1Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.io.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let timer = this.timer;
        loop {
            if !crate::server::needs_poll(timer, this.polled)
                || std::future::Future::poll(timer.as_mut(), cx).is_pending()
            {
                return Poll::Pending;
            }
            if timer.deadline() >= *this.deadline {
                return Poll::Ready(Err(H1Error::TimedOut));
            }
            // It fired for an earlier request's deadline: on to this one's.
            timer.as_mut().reset(*this.deadline);
            *this.polled = false;
        }
    }
}

/// Room for what `encode_head` writes beyond the method, target and fields: the spaces and
/// version of the request line, the longest framing line (`content-length: ` with 20 digits)
/// and the blank line.
const FRAMING_AND_END_ROOM: usize =
    " ".len() + " HTTP/1.1\r\n".len() + "content-length: \r\n".len() + 20 + "\r\n".len();

/// The request head: `parts`' method, `target` with the query of `parts.uri`, `parts`' fields,
/// then the `added` fields (the gateway's, whose names `parts` does not hold), then the
/// framing this gateway decided.
fn encode_head(
    target: Target<'_>,
    parts: &http::request::Parts,
    added: [&[(headers::Field, HeaderValue)]; 2],
    chunked: bool,
    length: Option<u64>,
) -> BytesMut {
    let query = parts.uri.query();
    // The head's exact size up front (the identity assertion alone outgrew an estimate, so
    // every head was copied once more while being written): each line as the loops below
    // write it.
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .chain(
            added
                .into_iter()
                .flatten()
                .map(|(f, v)| f.head_prefix().len() + v.len() + "\r\n".len()),
        )
        .sum();
    let mut head = BytesMut::with_capacity(
        parts.method.as_str().len() + target.len(query) + fields + FRAMING_AND_END_ROOM,
    );
    head.put_slice(parts.method.as_str().as_bytes());
    head.put_u8(b' ');
    target.write(query, &mut head);
    head.put_slice(b" HTTP/1.1\r\n");
    let mut declared_length = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            declared_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    // The gateway's fields: each name with its separator is one static string.
    for (field, value) in added.into_iter().flatten() {
        head.put_slice(field.head_prefix());
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    if chunked {
        head.put_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = length {
        head.put_slice(format!("content-length: {n}\r\n").as_bytes());
    } else if declared_length {
        // The client declared an empty body.
        head.put_slice(b"content-length: 0\r\n");
    }
    head.put_slice(b"\r\n");
    head
}

async fn write_with_body(
    stream: &mut TcpStream,
    head: &[u8],
    body: &mut RequestBody,
    chunked: bool,
) -> Result<(), H1Error> {
    stream.write_all(head).await.map_err(H1Error::Write)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(H1Error::ClientBody)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut framed = BytesMut::with_capacity(data.len() + 20);
            framed.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
            framed.put_slice(&data);
            framed.put_slice(b"\r\n");
            stream.write_all(&framed).await.map_err(H1Error::Write)?;
        } else {
            stream.write_all(&data).await.map_err(H1Error::Write)?;
        }
    }
    if chunked {
        stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(H1Error::Write)?;
    }
    Ok(())
}

/// Reads more into `buf`; a connection that ends first is `Closed`.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), H1Error> {
    if buf.len() >= MAX_HEAD {
        return Err(H1Error::Invalid("response head too large"));
    }
    buf.reserve(READ_CHUNK);
    let n = tokio::io::AsyncReadExt::read_buf(stream, buf)
        .await
        .map_err(H1Error::Read)?;
    if n == 0 {
        return Err(H1Error::Closed);
    }
    Ok(())
}

/// Reads and parses the response head (skipping 1xx responses) from `buf` and `stream`.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Head, H1Error> {
    loop {
        if buf.is_empty() {
            read_more(stream, buf).await?;
        }
        // Parsing happens in a plain function: its 4 KiB header array then never becomes part
        // of this future's state (which is moved a few times per request).
        let Some(head) = parse_head(buf, is_head)? else {
            read_more(stream, buf).await?;
            continue;
        };
        if head.status.is_informational() {
            continue;
        }
        return Ok(head);
    }
}

/// A response head as the gateway passes it on.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    /// The end-to-end fields: the hop-by-hop ones (as [`headers::remove_hop_by_hop`] names
    /// them, `Transfer-Encoding` and what `Connection` lists included) are read, not kept, and
    /// `Content-Length` is dropped when `Transfer-Encoding` makes it ambiguous. Empty for 1xx.
    fields: HeaderMap,
    framing: Framing,
    /// The connection may not carry another exchange: `Connection: close`, or ambiguous
    /// framing (`Transfer-Encoding` with `Content-Length`, RFC 9112 §6.3).
    close: bool,
}

/// What a response field is to the client: the names it reads, the other hop-by-hop ones
/// ([`headers::is_hop_by_hop`]) it drops, compared without case and without making a
/// `HeaderName` of them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    Connection,
    TransferEncoding,
    ContentLength,
    /// Another hop-by-hop name: dropped.
    HopByHop,
    EndToEnd,
}

fn field_kind(name: &[u8]) -> FieldKind {
    let is = |lower: &str| name.eq_ignore_ascii_case(lower.as_bytes());
    match name.len() {
        10 if is("connection") => FieldKind::Connection,
        17 if is("transfer-encoding") => FieldKind::TransferEncoding,
        14 if is("content-length") => FieldKind::ContentLength,
        _ if headers::is_hop_by_hop(name) => FieldKind::HopByHop,
        _ => FieldKind::EndToEnd,
    }
}

/// The `HeaderName` of a response field. The names nearly every response carries, in their
/// usual spellings, are found by comparing bytes; any other goes through
/// `HeaderName::from_bytes`, which copies each byte lowercased into a buffer before it matches
/// the standard names (about 115 instructions a name).
fn response_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    Ok(match raw {
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"ETag" | b"Etag" | b"etag" => header::ETAG,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Vary" | b"vary" => header::VARY,
        _ => return HeaderName::from_bytes(raw),
    })
}

/// Parses a complete response head at the start of `buf` and consumes it; `None` when more
/// bytes are needed. A 1xx head is consumed and returned without fields. One pass over the
/// parsed fields decides the framing (RFC 9112 §6.3) and keeps only the end-to-end ones: the
/// hop-by-hop fields never enter the map, so no pass over it has to take them out again.
fn parse_head(buf: &mut BytesMut, is_head: bool) -> Result<Option<Head>, H1Error> {
    // Left uninitialised: httparse writes the fields it finds (setting 4 KiB of empty fields
    // first cost about 400 instructions per response).
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parse = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    );
    let len = match parse {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    let code = parsed.code.ok_or(H1Error::Invalid("no status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("bad status"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::Invalid("protocol upgrades are not proxied"));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Head {
            status,
            version,
            fields: HeaderMap::new(),
            framing: Framing::Length(0),
            close: false,
        }));
    }
    let no_body = is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let mut close = false;
    // The Connection values, when one names a field to drop.
    let mut connection: smallvec::SmallVec<[&[u8]; 2]> = smallvec::SmallVec::new();
    let mut connection_lists = false;
    // The last Transfer-Encoding field decides; `Some(chunked)` once there is one.
    let mut te_chunked: Option<bool> = None;
    let mut length: Result<Option<u64>, H1Error> = Ok(None);
    let mut has_length = false;
    // Where each kept value lies in the head, so that the values can share the head's bytes
    // instead of being copied one by one (as hyper does for requests).
    let base = buf.as_ptr() as usize;
    let mut kept = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let kind = field_kind(h.name.as_bytes());
        match kind {
            FieldKind::Connection => {
                // A token names a field to drop (`keep-alive` always goes); `close` is read
                // only from a value that is text (as `HeaderValue::to_str` has it).
                let text = visible_ascii(h.value);
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close |= text;
                        connection_lists = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        connection_lists = true;
                    }
                }
                connection.push(h.value);
                continue;
            }
            FieldKind::TransferEncoding => {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                te_chunked = Some(
                    visible_ascii(h.value) && last.trim_ascii().eq_ignore_ascii_case(b"chunked"),
                );
                continue;
            }
            FieldKind::HopByHop => continue,
            FieldKind::ContentLength => {
                has_length = true;
                if let Ok(prev) = length {
                    length = content_length(h.value).and_then(|n| match prev {
                        Some(l) if l != n => Err(H1Error::Invalid("conflicting content-length")),
                        _ => Ok(Some(n)),
                    });
                }
            }
            FieldKind::EndToEnd => {}
        }
        let name = if kind == FieldKind::ContentLength {
            header::CONTENT_LENGTH
        } else {
            response_name(h.name.as_bytes()).map_err(|_| H1Error::Invalid("bad header name"))?
        };
        let start = h.value.as_ptr() as usize - base;
        kept.push((kind, name, start, start + h.value.len()));
    }
    let framing = if no_body {
        Framing::Length(0)
    } else {
        match te_chunked {
            // Transfer-Encoding wins over Content-Length, even an invalid one.
            Some(true) => Framing::Chunked(ChunkState::Size),
            Some(false) => Framing::UntilClose,
            None => length?.map_or(Framing::UntilClose, Framing::Length),
        }
    };
    let ambiguous = te_chunked.is_some() && has_length && framing != Framing::Length(0);
    close |= ambiguous;
    if connection_lists {
        // `Connection` names further hop-by-hop fields; it may not take away Content-Length
        // (the framing relies on it) nor Host, as on requests.
        kept.retain(|(kind, name, _, _)| {
            *kind == FieldKind::ContentLength
                || name == header::HOST
                || !connection
                    .iter()
                    .any(|v| headers::connection_names(v, name.as_str()))
        });
    }
    // The parsed fields borrow the buffer, which is split next.
    drop(connection);
    let head = buf.split_to(len).freeze();
    let mut fields = spare_map(kept.len());
    for (kind, name, start, end) in kept {
        if ambiguous && kind == FieldKind::ContentLength {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| H1Error::Invalid("bad header value"))?;
        fields.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        fields,
        framing,
        close,
    }))
}

/// Whether a field value is text as `HeaderValue::to_str` has it: visible ASCII, space, tab.
fn visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// A `Content-Length` value: digits only (surrounding whitespace allowed), within `u64`.
fn content_length(value: &[u8]) -> Result<u64, H1Error> {
    let s = value.trim_ascii();
    let digits = (!s.is_empty()).then_some(s).and_then(|s| {
        s.iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit()
                .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
                .flatten()
        })
    });
    digits.ok_or(H1Error::Invalid("bad content-length"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    /// Trailer section; bytes of trailers so far.
    Trailers(usize),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
}

/// A response body streamed from a pooled upstream connection; the connection goes back to the
/// pool when the body ends cleanly, and is closed otherwise (dropped early, malformed, or not
/// keep-alive).
pub struct UpstreamBody {
    conn: Option<TcpStream>,
    /// The connection's deadline timer, back to the pool with it.
    timer: Option<Timer>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<InstancePool>,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let (Some(stream), Some(timer)) = (self.conn.take(), self.timer.take()) {
            if self.keep_alive && self.buf.is_empty() {
                // The data frames handed out share the buffer's allocation; once they are
                // dropped, `reserve` reclaims it instead of allocating anew.
                let buf = std::mem::take(&mut self.buf);
                self.pool.checkin(stream, buf, timer);
            }
        }
    }

    /// Up to `rem` body bytes from the buffer; `None` after reading more into an empty buffer
    /// (the caller looks again). The connection ending first is an error: the body is short.
    fn poll_take(&mut self, cx: &mut Context<'_>, rem: u64) -> Poll<io::Result<Option<Bytes>>> {
        if self.buf.is_empty() {
            if !ready!(self.poll_fill(cx))? {
                self.conn = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed before the end of the body",
                )));
            }
            return Poll::Ready(Ok(None));
        }
        let take = rem.min(self.buf.len() as u64);
        Poll::Ready(Ok(Some(self.buf.split_to(take as usize).freeze())))
    }

    /// Reads more from the connection; `Ok(false)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(stream) = self.conn.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(stream),
            cx,
            &mut self.buf
        ))?;
        Poll::Ready(Ok(n > 0))
    }

    fn chunk_step(&mut self, state: ChunkState) -> Result<Option<ChunkState>, io::Error> {
        let invalid = |m: &'static str| io::Error::new(io::ErrorKind::InvalidData, m);
        Ok(match state {
            ChunkState::Size => {
                let Some(end) =
                    line_end(&self.buf, MAX_CHUNK_SIZE_LINE, "chunk size line too long")?
                else {
                    return Ok(None);
                };
                let line = &self.buf[..end];
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let after = &line[digits..];
                let after = &after[after
                    .iter()
                    .take_while(|b| matches!(b, b' ' | b'\t'))
                    .count()..];
                if digits == 0 || digits > 16 || !(after.is_empty() || after[0] == b';') {
                    return Err(invalid("bad chunk size line"));
                }
                let size = std::str::from_utf8(&line[..digits])
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| invalid("bad chunk size"))?;
                self.buf.advance(end + 2);
                Some(if size == 0 {
                    ChunkState::Trailers(0)
                } else {
                    ChunkState::Data(size)
                })
            }
            ChunkState::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(invalid("chunk not followed by CRLF"));
                }
                self.buf.advance(2);
                Some(ChunkState::Size)
            }
            ChunkState::Trailers(total) => {
                // Trailer fields are read and dropped; the body ends at the empty line. Lines
                // and their sum are bounded, which also bounds rescanning a line that arrives
                // byte by byte.
                let Some(end) = line_end(&self.buf, MAX_TRAILER_LINE, "trailer line too long")?
                else {
                    return Ok(None);
                };
                let total = total + end + 2;
                if total > MAX_TRAILERS {
                    return Err(invalid("trailers too long"));
                }
                self.buf.advance(end + 2);
                Some(if end == 0 {
                    ChunkState::Done
                } else {
                    ChunkState::Trailers(total)
                })
            }
            ChunkState::Data(_) | ChunkState::Done => Some(state),
        })
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Where the CRLF-terminated line at the start of `buf` ends (its length without the CRLF), or
/// `None` while it is incomplete. A line longer than `max` is refused however it arrives: the
/// limit must not depend on how the stream was split into reads (it did: a long line that
/// came in one read passed, the same line in pieces was refused).
fn line_end(buf: &[u8], max: usize, too_long: &'static str) -> Result<Option<usize>, io::Error> {
    let so_far = match find_crlf(buf) {
        Some(end) if end <= max => return Ok(Some(end)),
        Some(end) => end,
        // All of it belongs to the line, except a final CR that may begin the CRLF.
        None => buf.len() - usize::from(buf.last() == Some(&b'\r')),
    };
    if so_far > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, too_long));
    }
    Ok(None)
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            match this.framing {
                Framing::Length(0) | Framing::Chunked(ChunkState::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(rem) => {
                    let Some(data) = ready!(this.poll_take(cx, rem))? else {
                        continue;
                    };
                    let left = rem - data.len() as u64;
                    this.framing = Framing::Length(left);
                    if left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose => {
                    if !this.buf.is_empty() {
                        let data = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if !ready!(this.poll_fill(cx))? {
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(ChunkState::Data(rem)) => {
                    let Some(data) = ready!(this.poll_take(cx, rem))? else {
                        continue;
                    };
                    let left = rem - data.len() as u64;
                    this.framing = Framing::Chunked(if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match this.chunk_step(state) {
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Ok(Some(next)) => this.framing = Framing::Chunked(next),
                    Ok(None) => {
                        if !ready!(this.poll_fill(cx))? {
                            this.conn = None;
                            return Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "upstream closed inside chunked framing",
                            ))));
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Length(0) | Framing::Chunked(ChunkState::Done)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: it is closed.
        if !self.is_end_stream() {
            self.conn = None;
        }
        self.finish();
    }
}

/// Hooks for the criterion benchmarks (`benches/benches/hot_paths.rs`): the inline client's
/// head work without a socket. Not an API.
#[doc(hidden)]
pub mod bench {
    use bytes::BytesMut;
    use http::HeaderValue;

    use super::{encode_head, parse_head, recycle_map, Target};
    use crate::headers::Field;

    /// Encodes the request head the inline client writes for `parts` to `{base}{rest}` with
    /// the gateway's fields `added`; its length.
    pub fn encode_request_head(
        parts: &http::request::Parts,
        base: &str,
        rest: &str,
        added: &[(Field, HeaderValue)],
    ) -> usize {
        encode_head(Target { base, rest }, parts, [added, &[]], false, None).len()
    }

    /// Parses an upstream response head from `buf` (consumed) as the inline client does, its
    /// map going back to the worker's spares as after an exchange; the number of end-to-end
    /// fields, `None` when the head is incomplete or refused.
    pub fn parse_response_head(buf: &mut BytesMut) -> Option<usize> {
        let head = parse_head(buf, false).ok().flatten()?;
        let fields = head.fields.len();
        recycle_map(head.fields);
        Some(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn parse(bytes: &[u8]) -> Result<Option<(StatusCode, Version, HeaderMap)>, H1Error> {
        parse_head(&mut BytesMut::from(bytes), false)
            .map(|h| h.map(|h| (h.status, h.version, h.fields)))
    }

    /// The framing of a response with these fields.
    fn framing(
        pairs: &[(&str, &str)],
        status: StatusCode,
        is_head: bool,
    ) -> Result<Framing, H1Error> {
        let mut head = format!("HTTP/1.1 {} X\r\n", status.as_u16());
        for (n, v) in pairs {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        parse_head(&mut BytesMut::from(head.as_bytes()), is_head).map(|h| h.unwrap().framing)
    }

    #[test]
    fn parses_a_response_head_and_consumes_exactly_it() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc"[..],
        );
        let (status, version, headers) = parse_head(&mut buf, false)
            .unwrap()
            .map(|h| (h.status, h.version, h.fields))
            .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(version, Version::HTTP_11);
        assert_eq!(headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"abc");

        let (_, version, _) = parse(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(version, Version::HTTP_10);
        // A bare LF ends lines too (httparse), and a reason phrase is optional.
        assert!(parse(b"HTTP/1.1 200\n\n").unwrap().is_some());
    }

    /// The byte comparisons give the name `HeaderName::from_bytes` makes: for every spelling
    /// of each compared name in every case, for names one byte off, and for invalid names.
    #[test]
    fn response_names_are_what_from_bytes_makes() {
        let names = [
            "date",
            "server",
            "content-type",
            "etag",
            "last-modified",
            "accept-ranges",
            "cache-control",
            "vary",
        ];
        let mut inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"Date:".to_vec(),
            b"Da te".to_vec(),
            b"Dat\0".to_vec(),
            b"X-Custom".to_vec(),
            b"\xffDate".to_vec(),
        ];
        for name in names {
            let letters: Vec<usize> = (0..name.len())
                .filter(|&i| name.as_bytes()[i].is_ascii_alphabetic())
                .collect();
            for mask in 0..1u32 << letters.len().min(13) {
                let mut v = name.as_bytes().to_vec();
                for (bit, &i) in letters.iter().enumerate() {
                    if mask >> bit & 1 == 1 {
                        v[i] = v[i].to_ascii_uppercase();
                    }
                }
                inputs.push(v.clone());
                let mut longer = v.clone();
                longer.push(b's');
                inputs.push(longer);
                v.pop();
                inputs.push(v);
            }
        }
        for input in &inputs {
            assert_eq!(
                response_name(input).ok(),
                HeaderName::from_bytes(input).ok(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_partial_head_asks_for_more_and_leaves_the_buffer() {
        let partial = &b"HTTP/1.1 200 OK\r\nContent-Len"[..];
        let mut buf = BytesMut::from(partial);
        assert!(parse_head(&mut buf, false).unwrap().is_none());
        assert_eq!(&buf[..], partial);
        assert!(parse(b"").unwrap().is_none());
    }

    #[test]
    fn malformed_heads_and_upgrades_are_refused() {
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(H1Error::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Err(H1Error::Invalid(_))));
    }

    /// The fields of a map in order, as text (maps compare without order).
    fn listed(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        map.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn hop_by_hop_fields_never_enter_the_map() {
        let (_, _, fields) = parse(
            b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Private\r\n\
              Keep-Alive: timeout=5\r\nX-Private: 1\r\nTE: trailers\r\nTrailer: x\r\n\
              Upgrade: h2c\r\nProxy-Connection: x\r\nProxy-Authenticate: Basic\r\n\
              Content-Length: 2\r\n\r\nok",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            listed(&fields),
            [
                ("server".to_owned(), b"up".to_vec()),
                ("content-length".to_owned(), b"2".to_vec())
            ]
        );
        // What Connection lists goes, except Content-Length and Host.
        let (_, _, fields) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: content-length, host, close\r\nHost: h\r\n\
              Close: 1\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            listed(&fields),
            [
                ("host".to_owned(), b"h".to_vec()),
                ("content-length".to_owned(), b"0".to_vec())
            ]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The one pass of `parse_head` keeps what the map-based strip (`remove_hop_by_hop`,
        /// used for the HTTPS client's responses) keeps, drops Content-Length where
        /// Transfer-Encoding makes it ambiguous, and reads `close` as a token of Connection.
        #[test]
        fn the_parse_strips_what_remove_hop_by_hop_strips(
            fields in proptest::collection::vec((0usize..16, 0usize..14), 0..8),
            status in proptest::sample::select(vec![200u16, 204, 304, 404]),
            is_head in proptest::bool::ANY,
        ) {
            const NAMES: [&str; 16] = [
                "Connection", "connection", "Keep-Alive", "Transfer-Encoding", "Content-Length",
                "TE", "Trailer", "Upgrade", "Proxy-Connection", "Host", "X-A", "x-b", "Close",
                "Server", "Proxy-Authorization", "Date",
            ];
            const VALUES: [&str; 14] = [
                "keep-alive", "close", "x-a", "X-A, x-b", "chunked", "gzip, chunked",
                "chunked, gzip", "5", "7", " 5 ", "Close , Server", "host, content-length",
                "", "\u{e9}t\u{e9}, close",
            ];
            let mut head = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            let mut pairs = Vec::new();
            for &(n, v) in &fields {
                head.extend_from_slice(format!("{}: {}\r\n", NAMES[n], VALUES[v]).as_bytes());
                // Whitespace around a value is not part of it (httparse drops it).
                pairs.push((NAMES[n], VALUES[v].trim()));
            }
            head.extend_from_slice(b"\r\n");
            let parsed = parse_head(&mut BytesMut::from(&head[..]), is_head);

            let mut expected = map(&pairs);
            let close = expected
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
                });
            let te = expected.contains_key(header::TRANSFER_ENCODING);
            let cl = expected.contains_key(header::CONTENT_LENGTH);
            headers::remove_hop_by_hop(&mut expected);
            match parsed {
                Ok(Some(head)) => {
                    let ambiguous = te && cl && head.framing != Framing::Length(0);
                    if ambiguous {
                        expected.remove(header::CONTENT_LENGTH);
                    }
                    // By name: a map's removals reorder its names (values keep their order).
                    let by_name = |map: &HeaderMap| {
                        let mut fields = listed(map);
                        fields.sort_by(|a, b| a.0.cmp(&b.0));
                        fields
                    };
                    proptest::prop_assert_eq!(by_name(&head.fields), by_name(&expected));
                    proptest::prop_assert_eq!(head.close, close || ambiguous);
                }
                Ok(None) => proptest::prop_assert!(false, "a complete head was partial"),
                // Only a bad Content-Length where it decides the framing fails.
                Err(e) => proptest::prop_assert!(
                    cl && !te && !is_head && status != 204 && status != 304,
                    "{e}"
                ),
            }
        }
    }

    #[test]
    fn informational_heads_are_consumed_without_their_fields() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        let (status, headers) = (head.status, head.fields);
        assert_eq!(status, StatusCode::EARLY_HINTS);
        assert!(headers.is_empty());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let ok = StatusCode::OK;
        let f = framing;
        let chunked = Framing::Chunked(ChunkState::Size);
        // No body, whatever the fields say.
        assert_eq!(
            f(&[("content-length", "5")], ok, true).unwrap(),
            Framing::Length(0)
        );
        assert_eq!(
            f(
                &[("transfer-encoding", "chunked")],
                StatusCode::NO_CONTENT,
                false
            )
            .unwrap(),
            Framing::Length(0)
        );
        assert_eq!(
            f(&[("content-length", "5")], StatusCode::NOT_MODIFIED, false).unwrap(),
            Framing::Length(0)
        );
        // Transfer-Encoding: chunked only when it is the last coding of the last field.
        assert_eq!(
            f(&[("transfer-encoding", "chunked")], ok, false).unwrap(),
            chunked
        );
        assert_eq!(
            f(&[("transfer-encoding", "gzip, CHUNKED ")], ok, false).unwrap(),
            chunked
        );
        assert_eq!(
            f(&[("transfer-encoding", "chunked, gzip")], ok, false).unwrap(),
            Framing::UntilClose
        );
        assert_eq!(
            f(
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "gzip")
                ],
                ok,
                false
            )
            .unwrap(),
            Framing::UntilClose
        );
        // Transfer-Encoding wins over Content-Length, even an invalid one.
        assert_eq!(
            f(
                &[("content-length", "x"), ("transfer-encoding", "chunked")],
                ok,
                false
            )
            .unwrap(),
            chunked
        );
        // Content-Length: digits only, repeated values must agree.
        assert_eq!(
            f(&[("content-length", " 42 ")], ok, false).unwrap(),
            Framing::Length(42)
        );
        assert_eq!(
            f(
                &[("content-length", "7"), ("content-length", "7")],
                ok,
                false
            )
            .unwrap(),
            Framing::Length(7)
        );
        for bad in ["+5", "-1", "", "5, 5", "0x10", "18446744073709551616"] {
            assert!(
                f(&[("content-length", bad)], ok, false).is_err(),
                "content-length {bad:?}"
            );
        }
        assert!(f(
            &[("content-length", "7"), ("content-length", "8")],
            ok,
            false
        )
        .is_err());
        // Neither: the body runs until the connection closes.
        assert_eq!(f(&[], ok, false).unwrap(), Framing::UntilClose);
    }

    /// A body over bytes already received (no connection: the end of `bytes` is end of
    /// stream). Returns the data and the error that ended it, if any.
    async fn decode(bytes: &[u8], framing: Framing) -> (Vec<u8>, Option<io::Error>) {
        let mut body = UpstreamBody {
            conn: None,
            timer: None,
            buf: BytesMut::from(bytes),
            framing,
            keep_alive: true,
            pool: Arc::new(InstancePool::new("127.0.0.1:9", 1, Duration::from_secs(1))),
        };
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => data.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => return (data, Some(e)),
            }
        }
        assert!(body.is_end_stream() || matches!(framing, Framing::UntilClose));
        (data, None)
    }

    async fn chunked(bytes: &[u8]) -> (Vec<u8>, Option<io::Error>) {
        decode(bytes, Framing::Chunked(ChunkState::Size)).await
    }

    #[tokio::test]
    async fn chunked_bodies_with_extensions_and_trailers() {
        let (data, err) = chunked(
            b"5;name=\"v;x\"\r\nhello\r\n6 \t; a ; b\r\n world\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n",
        )
        .await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(data, b"hello world");
        // Upper-case hex, leading zeros (up to 16 digits), no trailers.
        let (data, err) = chunked(b"000000000000000A\r\n0123456789\r\n0\r\n\r\n").await;
        assert!(err.is_none());
        assert_eq!(data, b"0123456789");
    }

    #[tokio::test]
    async fn bad_chunk_size_lines_are_refused() {
        for bad in [
            &b"\r\nx\r\n0\r\n\r\n"[..],             // no digits
            b"g\r\nx\r\n0\r\n\r\n",                 // not hex
            b"-1\r\nx\r\n0\r\n\r\n",                // sign
            b"0x1\r\nx\r\n0\r\n\r\n",               // prefix
            b"1 2\r\nx\r\n0\r\n\r\n",               // digits after whitespace
            b"1\x0b\r\nx\r\n0\r\n\r\n",             // other whitespace
            b"00000000000000001\r\nx\r\n0\r\n\r\n", // 17 digits: refused, not wrapped
        ] {
            let (data, err) = chunked(bad).await;
            assert_eq!(
                err.map(|e| e.kind()),
                Some(io::ErrorKind::InvalidData),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(data.is_empty());
        }
    }

    #[tokio::test]
    async fn the_largest_chunk_size_does_not_overflow() {
        // 16 hex digits of f: u64::MAX bytes announced; the stream ends first.
        let (data, err) = chunked(b"ffffffffffffffff\r\nabc").await;
        assert_eq!(data, b"abc");
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn chunk_data_must_end_with_crlf() {
        for bad in [
            &b"3\r\nabcd\r\n0\r\n\r\n"[..],
            b"3\r\nabc\n0\r\n\r\n",
            b"3\r\nabc\r\r",
        ] {
            let (data, err) = chunked(bad).await;
            assert_eq!(data, b"abc");
            assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
        }
    }

    #[tokio::test]
    async fn long_size_lines_and_trailers_are_refused() {
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'x', 5000));
        let (_, err) = chunked(&line).await;
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));

        let mut trailer = b"0\r\nX: ".to_vec();
        trailer.extend(std::iter::repeat_n(b'v', MAX_TRAILER_LINE + 1));
        let (_, err) = chunked(&trailer).await;
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));

        let mut many = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / 100 + 1) {
            many.extend_from_slice(&[b'x'; 98]);
            many.extend_from_slice(b"\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let (_, err) = chunked(&many).await;
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }

    /// Found by fuzz/h1_response: a size line or trailer line over the limit passed when it
    /// came in one read (its CRLF already there) and was refused when it came in pieces.
    #[tokio::test]
    async fn line_limits_hold_however_the_stream_is_split() {
        let size_line = |ext: usize| {
            let mut b = b"3;".to_vec();
            b.extend(std::iter::repeat_n(b'x', ext));
            b.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
            b
        };
        let (data, err) = chunked(&size_line(MAX_CHUNK_SIZE_LINE - 2)).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(data, b"abc");
        let (data, err) = chunked(&size_line(MAX_CHUNK_SIZE_LINE - 1)).await;
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
        assert!(data.is_empty());

        let trailer = |len: usize| {
            let mut b = b"0\r\nX: ".to_vec();
            b.extend(std::iter::repeat_n(b'v', len - 3));
            b.extend_from_slice(b"\r\n\r\n");
            b
        };
        assert!(chunked(&trailer(MAX_TRAILER_LINE)).await.1.is_none());
        let (_, err) = chunked(&trailer(MAX_TRAILER_LINE + 1)).await;
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));

        // A line at the limit whose CR arrived without its LF yet is not refused early.
        assert!(
            line_end(&[b'x'; MAX_CHUNK_SIZE_LINE], MAX_CHUNK_SIZE_LINE, "")
                .unwrap()
                .is_none()
        );
        let mut pending_cr = vec![b'x'; MAX_CHUNK_SIZE_LINE];
        pending_cr.push(b'\r');
        assert!(line_end(&pending_cr, MAX_CHUNK_SIZE_LINE, "")
            .unwrap()
            .is_none());
        pending_cr.insert(0, b'x');
        assert!(line_end(&pending_cr, MAX_CHUNK_SIZE_LINE, "").is_err());
    }

    #[tokio::test]
    async fn a_stream_ending_inside_chunked_framing_is_an_error() {
        for cut in [
            &b"5\r\nhel"[..],
            b"5\r\nhello",
            b"5\r\nhello\r\n",
            b"0\r\n",
            b"0\r\nX: 1\r\n",
            b"5",
        ] {
            let (_, err) = chunked(cut).await;
            assert_eq!(
                err.map(|e| e.kind()),
                Some(io::ErrorKind::UnexpectedEof),
                "{:?}",
                String::from_utf8_lossy(cut)
            );
        }
    }

    #[tokio::test]
    async fn length_and_close_delimited_bodies() {
        let (data, err) = decode(b"hello world", Framing::Length(5)).await;
        assert!(err.is_none());
        assert_eq!(data, b"hello");
        let (data, err) = decode(b"hel", Framing::Length(5)).await;
        assert_eq!(data, b"hel");
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::UnexpectedEof));
        let (data, err) = decode(b"", Framing::Length(0)).await;
        assert!(err.is_none() && data.is_empty());
        let (data, err) = decode(b"all of it", Framing::UntilClose).await;
        assert!(err.is_none());
        assert_eq!(data, b"all of it");
    }

    /// An upstream that answers each connection's requests with the next of `answers`, written
    /// in one piece after the request head, then (when `close`) closes. Returns its address
    /// and the number of connections accepted so far.
    async fn upstream(
        answers: Vec<&'static [u8]>,
        close: bool,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let Some(pos) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
                        break;
                    };
                    req.drain(..pos + 4);
                    let Some(answer) = answers.next() else {
                        return;
                    };
                    s.write_all(answer).await.unwrap();
                    if close {
                        let _ = s.shutdown().await;
                        break;
                    }
                }
            }
        });
        (addr, accepted)
    }

    /// The target of [`request`]'s requests.
    const X: Target<'static> = Target {
        base: "",
        rest: "/x",
    };

    fn request(method: Method) -> http::request::Parts {
        http::Request::builder()
            .method(method)
            .uri("/x")
            .header("host", "upstream")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    /// Sends `method` and reads the whole response: status, headers, body, and whether the
    /// connection went back to the pool.
    async fn call(
        pool: &Arc<InstancePool>,
        method: Method,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>, bool), H1Error> {
        call_by(pool, method, Duration::from_secs(5)).await
    }

    /// [`call`] with the try's deadline `within` from now.
    async fn call_by(
        pool: &Arc<InstancePool>,
        method: Method,
        within: Duration,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>, bool), H1Error> {
        let res = send(
            pool,
            Times::within(within),
            X,
            &request(method),
            [&[], &[]],
            &mut RequestBody::empty(),
            None,
        )
        .await
        .map_err(|e| e.error)?;
        let (parts, body) = res.into_parts();
        let data = body.collect().await.map_err(H1Error::Read)?.to_bytes();
        let pooled = pool.idle_count() == 1;
        Ok((parts.status, parts.headers, data.to_vec(), pooled))
    }

    fn pool(addr: &str) -> Arc<InstancePool> {
        Arc::new(InstancePool::new(addr, 4, Duration::from_secs(60)))
    }

    /// An upstream on one connection that answers its n-th request after `delays[n]`.
    async fn slow_upstream(delays: Vec<Duration>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            for delay in delays {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let pos = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                req.drain(..pos + 4);
                tokio::time::sleep(delay).await;
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Hold the connection open.
            let _ = s.read(&mut buf).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_pooled_connection_times_out_at_each_trys_own_deadline() {
        // The connection's timer was armed for the first call's far deadline; the second
        // call's is earlier and holds.
        let addr = slow_upstream(vec![Duration::ZERO, Duration::from_secs(5)]).await;
        let pool = pool(&addr);
        let (_, _, body, pooled) = call_by(&pool, Method::GET, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!((&body[..], pooled), (&b"ok"[..], true));
        let started = std::time::Instant::now();
        let second = tokio::time::timeout(
            Duration::from_secs(3),
            call_by(&pool, Method::GET, Duration::from_millis(200)),
        )
        .await
        .expect("the earlier deadline held");
        assert!(matches!(second, Err(H1Error::TimedOut)), "{second:?}");
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert_eq!(pool.idle_count(), 0, "a timed-out connection is not kept");
    }

    #[tokio::test]
    async fn a_timer_armed_for_an_earlier_call_moves_on_to_the_next_calls_deadline() {
        // The first call's deadline (300 ms) passes while the second call, on the same
        // connection with a deadline of 3 s, waits 700 ms for its answer.
        let addr = slow_upstream(vec![Duration::ZERO, Duration::from_millis(700)]).await;
        let pool = pool(&addr);
        let (_, _, _, pooled) = call_by(&pool, Method::GET, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(pooled);
        let (status, _, body, _) = call_by(&pool, Method::GET, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }

    #[tokio::test]
    async fn a_clean_keep_alive_response_returns_its_connection_for_the_next_call() {
        let (addr, accepted) = upstream(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            false,
        )
        .await;
        let pool = pool(&addr);
        let (status, _, body, pooled) = call(&pool, Method::GET).await.unwrap();
        assert_eq!(
            (status, &body[..], pooled),
            (StatusCode::OK, &b"hello"[..], true)
        );
        let (_, _, body, pooled) = call(&pool, Method::GET).await.unwrap();
        assert_eq!((&body[..], pooled), (&b"abc"[..], true));
        let (status, _, body, pooled) = call(&pool, Method::GET).await.unwrap();
        assert_eq!(
            (status, body.is_empty(), pooled),
            (StatusCode::NO_CONTENT, true, true)
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_that_cannot_be_reused_are_closed() {
        for answer in [
            // Close-delimited.
            &b"HTTP/1.1 200 OK\r\n\r\nuntil close"[..],
            // HTTP/1.0 (closes by default).
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            // Connection: close, as one token of several.
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
            // Bytes beyond the response: the connection is out of step.
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
            // A final coding other than chunked: read until close.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz",
        ] {
            let (addr, _) = upstream(vec![answer], true).await;
            let pool = pool(&addr);
            let (status, _, _, pooled) = call(&pool, Method::GET).await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert!(!pooled, "{:?}", String::from_utf8_lossy(answer));
        }
    }

    #[tokio::test]
    async fn content_length_with_transfer_encoding_is_read_as_chunked_and_not_passed_on() {
        let (addr, _) = upstream(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
            false,
        )
        .await;
        let pool = pool(&addr);
        let (_, headers, body, pooled) = call(&pool, Method::GET).await.unwrap();
        assert_eq!(body, b"abc");
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        assert!(
            !pooled,
            "an ambiguous response never leaves its connection for reuse"
        );
    }

    #[tokio::test]
    async fn informational_responses_are_skipped() {
        let (addr, _) = upstream(
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"],
            false,
        )
        .await;
        let (status, headers, body, _) = call(&pool(&addr), Method::GET).await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert!(!headers.contains_key("link"));
        assert_eq!(body, b"ok");
    }

    #[tokio::test]
    async fn a_head_response_has_no_body_whatever_its_length_says() {
        let (addr, _) = upstream(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"],
            false,
        )
        .await;
        let pool = pool(&addr);
        let (_, headers, body, pooled) = call(&pool, Method::HEAD).await.unwrap();
        assert!(body.is_empty());
        assert_eq!(headers[header::CONTENT_LENGTH], "10");
        assert!(pooled);
    }

    #[tokio::test]
    async fn errors_before_a_complete_head() {
        let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-"], true).await;
        assert!(matches!(
            call(&pool(&addr), Method::GET).await,
            Err(H1Error::Closed)
        ));
        let (addr, _) = upstream(vec![b"HTTP/1.1 101 Switching Protocols\r\n\r\n"], true).await;
        assert!(matches!(
            call(&pool(&addr), Method::GET).await,
            Err(H1Error::Invalid(_))
        ));
        let (addr, _) = upstream(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"],
            true,
        )
        .await;
        assert!(matches!(
            call(&pool(&addr), Method::GET).await,
            Err(H1Error::Invalid(_))
        ));
        // Nothing listens: a connect error, and the (empty) body comes back for another try.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let err = send(
            &pool(&addr),
            Times::within(Duration::from_secs(5)),
            X,
            &request(Method::POST),
            [&[], &[]],
            &mut RequestBody::empty(),
            None,
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err.error, H1Error::Connect(_)));
        assert!(err.unsent);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_not_used() {
        // Keep-alive response, then the upstream closes: the pooled connection is dead, and the
        // next call opens a new one instead of failing.
        let (addr, accepted) = upstream(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
            ],
            true,
        )
        .await;
        let pool = pool(&addr);
        let (_, _, body, pooled) = call(&pool, Method::GET).await.unwrap();
        assert_eq!((&body[..], pooled), (&b"a"[..], true));
        // Let the FIN arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, _, body, _) = call(&pool, Method::GET).await.unwrap();
        assert_eq!(body, b"b");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn request_heads_take_framing_from_the_body_not_the_client() {
        let mut parts = request(Method::POST);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let text = |h: BytesMut| String::from_utf8(h.to_vec()).unwrap();
        let h = text(encode_head(X, &parts, [&[], &[]], false, Some(5)));
        assert!(h.starts_with("POST /x HTTP/1.1\r\n"));
        assert!(h.ends_with("content-length: 5\r\n\r\n"));
        assert!(!h.contains("99") && !h.contains("transfer-encoding"));
        let h = text(encode_head(X, &parts, [&[], &[]], true, None));
        assert!(h.ends_with("transfer-encoding: chunked\r\n\r\n"));
        assert!(!h.contains("content-length"));
        // A declared empty body keeps saying so; no declaration, no field.
        assert!(text(encode_head(X, &parts, [&[], &[]], false, None))
            .ends_with("content-length: 0\r\n\r\n"));
        let get = request(Method::GET);
        let h = text(encode_head(X, &get, [&[], &[]], false, None));
        assert_eq!(h, "GET /x HTTP/1.1\r\nhost: upstream\r\n\r\n");
    }

    #[test]
    fn the_gateways_fields_follow_the_clients_in_the_head() {
        let get = request(Method::GET);
        let added = [
            (
                headers::Field::XGerbangConsumer,
                HeaderValue::from_static("dinkes/sik"),
            ),
            (headers::Field::XRequestId, HeaderValue::from_static("r1")),
        ];
        let h = encode_head(X, &get, [&added[..1], &added[1..]], false, None);
        assert_eq!(
            String::from_utf8(h.to_vec()).unwrap(),
            "GET /x HTTP/1.1\r\nhost: upstream\r\nx-gerbang-consumer: dinkes/sik\r\n\
             x-request-id: r1\r\n\r\n"
        );
        assert!(h.capacity() <= h.len() + FRAMING_AND_END_ROOM);
    }

    #[test]
    fn a_request_head_is_written_into_one_buffer_of_its_own_size() {
        // A long field (an identity assertion is about a kilobyte) and many short ones: the
        // head must fit the buffer it started with (a regrowth at least doubles it).
        let mut parts = request(Method::POST);
        parts.headers.insert(
            "x-gerbang-assertion",
            HeaderValue::from_str(&"a".repeat(1500)).unwrap(),
        );
        for i in 0..40 {
            parts.headers.append(
                HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        for (chunked, length) in [(false, Some(u64::MAX)), (true, None), (false, None)] {
            let h = encode_head(X, &parts, [&[], &[]], chunked, length);
            assert!(
                h.capacity() <= h.len() + FRAMING_AND_END_ROOM,
                "len {} capacity {}",
                h.len(),
                h.capacity()
            );
        }
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let h = encode_head(X, &parts, [&[], &[]], false, None);
        assert!(h.ends_with(b"content-length: 0\r\n\r\n"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// The request line's target is what the checked `PathAndQuery` of base path, rest
        /// and query was before the inline client wrote the pieces itself (and still is for
        /// hyper's client): for base paths the registry takes, rests the normalisation makes
        /// and queries a client's target can carry, and the line stays one line of three parts.
        #[test]
        fn the_written_target_is_the_checked_upstream_path(
            base in proptest::sample::select(vec!["", "/", "/api", "/api/v1", "/a%20b/~x.y", "/x/"]),
            tail in "(/|[a-zA-Z0-9._~!$&'()*+,=:@-]|%[0-9a-fA-F]{2}|\\.\\.|\\.){0,12}",
            query in proptest::option::of("[a-zA-Z0-9._~!$&'()*+,;=:@/?%\"{}|^`\\[\\]<>-]{0,16}"),
        ) {
            proptest::prop_assume!(gerbang_registry::valid_base_path(base));
            let raw = format!("/ag/svc{tail}");
            let Ok(normalized) = crate::path::normalize(&raw) else {
                return Ok(());
            };
            let Some((_, _, rest)) = normalized.route_parts() else {
                return Ok(());
            };
            // As the gateway passes it on (`Gateway::forward`).
            let rest = if rest == "/" || rest.is_empty() { "" } else { rest };
            let uri = match &query {
                Some(q) => format!("/p?{q}"),
                None => "/p".to_owned(),
            };
            // Only what a client's request can carry: a target http parses.
            let Ok(uri) = uri.parse::<http::Uri>() else {
                return Ok(());
            };
            let mut parts = request(Method::GET);
            parts.uri = uri;
            let expected =
                crate::phase::upstream_request::upstream_path(base, rest, parts.uri.query())
                    .unwrap();
            let head = encode_head(Target { base, rest }, &parts, [&[], &[]], false, None);
            let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = std::str::from_utf8(&head[..line_end]).unwrap();
            let mut words = line.split(' ');
            proptest::prop_assert_eq!(words.next(), Some("GET"));
            proptest::prop_assert_eq!(words.next(), Some(expected.as_str()));
            proptest::prop_assert_eq!(words.next(), Some("HTTP/1.1"));
            proptest::prop_assert_eq!(words.next(), None);
        }
    }

    fn spare_count() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    /// A finished call's request map comes back empty as the next response head's map: none
    /// of the request's fields (a credential among them) shows in the response.
    #[test]
    fn a_recycled_map_serves_the_next_response_empty() {
        let mut request = HeaderMap::new();
        request.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        request.append("x-a", HeaderValue::from_static("1"));
        request.append("x-a", HeaderValue::from_static("2"));
        let before = spare_count();
        recycle_map(request);
        assert_eq!(spare_count(), before + 1);
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-b: 3\r\n\r\n"[..]);
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(spare_count(), before, "the response took the recycled map");
        let fields: Vec<_> = head
            .fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(fields, [("content-length", &b"0"[..]), ("x-b", &b"3"[..])]);
    }

    /// A map grown by a client that sent many fields is not kept.
    #[test]
    fn a_large_map_is_not_kept() {
        let mut request = HeaderMap::new();
        for i in 0..200 {
            request.insert(
                HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        let before = spare_count();
        recycle_map(request);
        assert_eq!(spare_count(), before);
        for _ in 0..SPARE_MAPS + 5 {
            recycle_map(HeaderMap::with_capacity(4));
        }
        assert_eq!(spare_count(), SPARE_MAPS);
    }
}
