//! Listeners: accept TCP (optionally TLS), serve HTTP/1.1 and HTTP/2 with hyper, and shut down
//! gracefully: stop accepting, let requests in flight finish up to a deadline.
//!
//! Each connection's first bytes tell its protocol (the HTTP/2 preface, or HTTP/1.1). An
//! HTTP/1.1 connection that stays idle is parked (see [`crate::parking`]): hyper's state is
//! released and the connection waits for its next request holding only its socket (and, with
//! TLS, its TLS session).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::framing::FramingGuard;
use crate::gateway::{ConnInfo, Gateway};
use crate::parking::{Activity, ConnIo, ServedBody, Transport};
use crate::response_body::ResponseBody;
use crate::tls_stream::TlsServerStream;

/// Handles requests of one listener.
///
/// The handler's future owns what it needs (`self` is an `Arc`), so that the server boxes it
/// as it is: a future that borrowed the handler would have to be wrapped in one that owns it,
/// and the pipeline's future (kilobytes) would be copied once more per request.
pub trait Handler: Send + Sync + 'static {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static;
}

impl Handler for Gateway {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        Gateway::handle(self, req, conn)
    }
}

/// Connection-level settings of a listener.
#[derive(Clone)]
pub struct ListenerSettings {
    /// Terminate TLS with this configuration (ALPN picks HTTP/2 or HTTP/1.1).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time allowed for a client to send a request head (and, with TLS, the handshake); also
    /// how long a keep-alive connection may stay idle between requests.
    pub header_read_timeout: Duration,
    /// Largest request head hyper buffers; set above the gateway's own limits so that the
    /// gateway, not hyper, answers oversized requests with its JSON error.
    pub max_head_bytes: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// Most client connections served at once; beyond it the listener stops accepting (new
    /// connections wait in the kernel's backlog) until one closes.
    pub max_connections: usize,
    /// Counts the listener's open connections (a metrics gauge), when set.
    pub open_connections: Option<prometheus::IntGauge>,
    /// An HTTP/1.1 connection (plain, or TLS with its session drained) idle this long is
    /// parked: hyper's buffers and state are released until its next request arrives.
    pub park_idle_after: Duration,
}

impl ListenerSettings {
    /// The default of [`ListenerSettings::park_idle_after`]: long enough that a client sending
    /// requests back to back is never parked between them (parking and resuming cost about
    /// a request's allocations), short enough that a burst of connections which then go idle
    /// never holds hyper's buffers for many of them at once.
    pub const PARK_IDLE_AFTER: Duration = Duration::from_millis(100);
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10_000,
            open_connections: None,
            park_idle_after: Self::PARK_IDLE_AFTER,
        }
    }
}

/// How a listener's shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every connection finished its requests within the grace period.
    Drained,
    /// The grace period ran out; remaining connections were closed.
    DeadlineExceeded,
}

/// What every connection of a listener shares.
struct Shared {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// The same bound as hyper's buffer, so that the framing guard gives up only where hyper
    /// does.
    max_head: usize,
    head_timeout: Duration,
    park_after: Duration,
}

impl Shared {
    fn new(settings: &ListenerSettings) -> Self {
        let max_head = settings.max_head_bytes.max(8192);
        let mut h1 = http1::Builder::new();
        // No head timer of hyper's: `serve_http1` keeps one per connection instead of hyper's
        // one per request (a boxed sleep, registered with the timer wheel and removed again
        // for every request on a busy connection).
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_head)
            // hyper's own default: room for 100 header fields on the stack (99 fit: the parser
            // wants a free entry to see the end of the block). A larger limit made hyper
            // allocate two buffers of that many entries for every request it parsed. More
            // fields get hyper's 431 (tests/e2e limits.rs).
            .max_headers(100)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_head_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        Self {
            h1,
            h2,
            max_head,
            head_timeout: settings.header_read_timeout,
            park_after: settings.park_idle_after,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()>,
) -> ShutdownOutcome {
    let shared = Arc::new(Shared::new(&settings));
    let acceptor = settings.tls.clone();
    let proto: &'static str = if acceptor.is_some() { "https" } else { "http" };
    // Shutdown: `true` tells every connection to finish; the listener has drained when every
    // connection has dropped its receiver.
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo::new(remote, proto);
        let stop = stop_rx.clone();
        let shared = Arc::clone(&shared);
        let handler = Arc::clone(&handler);
        let acceptor = acceptor.clone();
        let handshake_timeout = settings.header_read_timeout;
        let open = settings.open_connections.clone().map(OpenConnection::new);
        // Plain and TLS connections are separate tasks: a task's allocation is the size of its
        // largest state, and a plain connection has no reason to carry room for a TLS stream.
        match acceptor {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    serve_connection(stream, &shared, handler, conn, stop).await;
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    let tls = TlsHandshake {
                        config: acceptor,
                        timeout: handshake_timeout,
                    };
                    serve_tls_connection(stream, tls, &shared, handler, conn, stop).await;
                });
            }
        }
    }
    drop(listener);
    stop_tx.send_replace(true);
    drop(stop_rx);
    tokio::select! {
        () = stop_tx.closed() => ShutdownOutcome::Drained,
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
            ShutdownOutcome::DeadlineExceeded
        }
    }
}

/// What a TLS listener's handshake needs.
struct TlsHandshake {
    config: Arc<rustls::ServerConfig>,
    /// How long the handshake may take (the listener's head timeout).
    timeout: Duration,
}

/// Runs the TLS handshake on an accepted stream, then serves it as [`serve_connection`] does.
async fn serve_tls_connection<H: Handler>(
    stream: TcpStream,
    tls: TlsHandshake,
    shared: &Shared,
    handler: Arc<H>,
    conn: ConnInfo,
    stop: watch::Receiver<bool>,
) {
    let remote = conn.remote;
    let handshake = tokio::time::timeout(tls.timeout, TlsServerStream::accept(stream, tls.config));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    // The certificate rustls verified (mTLS): its pin and names, read once per connection.
    let client_cert = stream
        .session()
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| Arc::new(gerbang_auth::mtls::ClientCert::from_der(c)));
    let conn = ConnInfo {
        client_cert,
        ..conn
    };
    serve_connection(stream, shared, handler, conn, stop).await;
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): its first 24 bytes tell HTTP/2 with prior
/// knowledge from HTTP/1.1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Resolves `true` when `stop` says the listener is shutting down (or is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves HTTP on one accepted (and, with TLS, handshaken) stream behind the framing guard
/// until the connection ends.
async fn serve_connection<T: Transport, H: Handler>(
    stream: T,
    shared: &Shared,
    handler: Arc<H>,
    conn: ConnInfo,
    mut stop: watch::Receiver<bool>,
) {
    let remote = conn.remote;
    let mut io = ConnIo::new(
        FramingGuard::new(stream, shared.max_head),
        Arc::new(Activity::default()),
    );
    // Until the first bytes the connection holds nothing but its socket; they must come
    // within the head timeout, as every later request's head must.
    let deadline = Instant::now() + shared.head_timeout;
    if !wait_for_bytes(&io, deadline, &mut stop).await {
        return;
    }
    let h2 = tokio::select! {
        biased;
        () = stopping(&mut stop) => return,
        sniffed = tokio::time::timeout_at(deadline, sniff(&mut io)) => match sniffed {
            Ok(Ok(Some(h2))) => h2,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "connection failed before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "no request head within the timeout");
                return;
            }
        },
    };
    if h2 {
        // Boxed, as each hyper connection below: the task's own allocation stays the size of
        // a parked connection.
        Box::pin(serve_http2(io, shared, handler, conn, stop)).await;
        return;
    }
    // `deadline`: by when the next request must have started (see `serve_http1`).
    let mut deadline = deadline;
    loop {
        let Some((parked, next)) = Box::pin(serve_http1(
            io, shared, &handler, &conn, &mut stop, deadline,
        ))
        .await
        else {
            return;
        };
        (io, deadline) = (parked, next);
        // Parked: hyper's state is gone; the next bytes start a new one.
        if !wait_for_bytes(&io, deadline, &mut stop).await {
            return;
        }
    }
}

/// Serves HTTP/2 until the connection ends; on shutdown, hyper's graceful close (GOAWAY).
async fn serve_http2<T: Transport, H: Handler>(
    io: ConnIo<T>,
    shared: &Shared,
    handler: Arc<H>,
    conn: ConnInfo,
    mut stop: watch::Receiver<bool>,
) {
    let remote = conn.remote;
    let svc = service(handler, conn, None);
    let mut http = pin!(shared.h2.serve_connection(TokioIo::new(io), svc));
    let result = tokio::select! {
        result = http.as_mut() => result,
        () = stopping(&mut stop) => {
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// Waits until `io` has bytes to read; `false` at `deadline` (also when bytes are there by
/// then), on shutdown, or on a socket error (the connection is then closed).
async fn wait_for_bytes<T: Transport>(
    io: &ConnIo<T>,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    if Instant::now() >= deadline {
        return false;
    }
    if io.has_unread() {
        return true;
    }
    tokio::select! {
        biased;
        () = stopping(stop) => false,
        () = tokio::time::sleep_until(deadline) => false,
        ready = io.guard().get_ref().readable() => ready.is_ok(),
    }
}

/// Reads the connection's first bytes, enough to tell the HTTP/2 preface from anything else,
/// and puts them back in front of the stream. `Some(true)` for HTTP/2, `None` when the client
/// closed without sending a byte.
async fn sniff<T: Transport>(io: &mut ConnIo<T>) -> io::Result<Option<bool>> {
    // Room for a whole first request head in one read: the framing guard hands over complete
    // heads only, and a smaller buffer sends it down its copying path.
    let mut first = BytesMut::with_capacity(8192);
    while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
        if io.read_buf(&mut first).await? == 0 {
            break;
        }
    }
    if first.is_empty() {
        return Ok(None);
    }
    let h2 = first.starts_with(H2_PREFACE);
    io.unread(&first);
    Ok(Some(h2))
}

/// Serves HTTP/1.1 with one hyper connection until it ends (`None`) or until it has been idle
/// for `park_after`: then hyper lets it go and the stream comes back with the deadline for
/// its next request. `deadline` is by when a request must start: from accept for the first,
/// then from when the connection last went idle after a request. Until a request starts, the
/// connection is closed at it (hyper's own head timer would count from now, and a client could
/// restart it with every park), and bytes that start no request (a head still arriving, TLS
/// records without data) do not move it.
async fn serve_http1<T: Transport, H: Handler>(
    io: ConnIo<T>,
    shared: &Shared,
    handler: &Arc<H>,
    conn: &ConnInfo,
    stop: &mut watch::Receiver<bool>,
    deadline: Instant,
) -> Option<(ConnIo<T>, Instant)> {
    let activity = Arc::clone(io.activity());
    let svc = service(
        Arc::clone(handler),
        conn.clone(),
        Some(Arc::clone(&activity)),
    );
    // The caller boxes this future: the connection's task keeps room for its largest state,
    // and a parked connection should not carry hyper's.
    let mut http = Some(shared.h1.serve_connection(TokioIo::new(io), svc));
    // hyper's connection once it is asked to let go of an idle connection: run on until it is
    // done, then handed back without shutting the stream down (`without_shutdown`; hyper's
    // `poll_without_shutdown` would want the handler's future `Unpin`, and it is not).
    let mut letting_go = pin!(slot_for(&http, http1::Connection::without_shutdown));
    // A second view of the shutdown signal, to tell cheaply whether it moved: the wait for it
    // is polled once, and again only after it did (its first poll left this task's waker with
    // it). Polled on every wake of the connection it cost about 100 instructions each time.
    let stop_seen = stop.clone();
    let mut stop_polled = false;
    let mut stop_signal = pin!(stopping(stop));
    let mut park_timer = pin!(tokio::time::sleep(Duration::ZERO));
    // The events count when the park timer was armed; `None` while it is not.
    let mut armed: Option<u64> = None;
    let mut idle_since = Instant::now();
    let mut stopping_now = false;
    let mut parking = false;
    let requests = activity.requests();
    let mut head_timer = pin!(tokio::time::sleep_until(deadline));
    // Whether each timer has been polled since it was last armed: a polled timer holds this
    // task's waker and wakes it when it fires, so until then it needs no poll of its own (a
    // poll registers the waker again: about 120 instructions, and the connection's future is
    // polled several times per request).
    let mut head_polled = false;
    let mut park_polled = false;
    let ended = std::future::poll_fn(|cx| loop {
        // Until it is asked to let the connection go, hyper runs as it would on its own: when
        // it ends the connection, it flushes what it holds and shuts the stream down.
        let polled = match (letting_go.as_mut().as_pin_mut(), http.as_mut()) {
            (Some(back), _) => back.poll(cx).map(|parts| parts.map(Some)),
            (None, Some(h)) => Pin::new(h).poll(cx).map(|done| done.map(|()| None)),
            (None, None) => Poll::Ready(Ok(None)),
        };
        if let Poll::Ready(result) = polled {
            return Poll::Ready(Some(result));
        }
        if !stopping_now
            && poll_again(&mut stop_polled, stop_seen.has_changed().unwrap_or(true))
            && stop_signal.as_mut().poll(cx).is_ready()
        {
            stopping_now = true;
            if let Some(h) = http.as_mut() {
                Pin::new(h).graceful_shutdown();
            }
            continue;
        }
        if stopping_now || parking {
            return Poll::Pending;
        }
        if needs_poll(&head_timer, &mut head_polled) && head_timer.as_mut().poll(cx).is_ready() {
            match next_head_check(&activity, requests, shared.head_timeout, Instant::now()) {
                None => return Poll::Ready(None),
                Some(at) => {
                    head_timer.as_mut().reset(at);
                    head_polled = false;
                    continue;
                }
            }
        }
        if armed.is_none() {
            if !activity.quiet() {
                return Poll::Pending;
            }
            idle_since = Instant::now();
            armed = Some(activity.events());
            park_timer.as_mut().reset(idle_since + shared.park_after);
            park_polled = false;
        }
        if !needs_poll(&park_timer, &mut park_polled) || park_timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Idle the whole period: no byte moved and hyper holds nothing. `graceful_shutdown`
        // on an idle hyper connection ends it without a byte written. Otherwise the timer is
        // armed again the next time the connection is quiet.
        if armed.take() == Some(activity.events()) && activity.quiet() {
            if let Some(mut h) = http.take() {
                parking = true;
                Pin::new(&mut h).graceful_shutdown();
                letting_go.set(Some(h.without_shutdown()));
            }
        }
    })
    .await;
    match ended {
        Some(Ok(Some(parts))) => {
            let mut io = parts.io.into_inner();
            if stopping_now {
                // Shutdown came while hyper let an idle connection go: it held nothing.
                let _ = io.shutdown().await;
                return None;
            }
            io.unread(&parts.read_buf);
            io.release_buffers();
            let next = if activity.requests() == requests {
                deadline
            } else {
                idle_since + shared.head_timeout
            };
            Some((io, next))
        }
        // hyper ended the connection itself, flushed and shut down.
        Some(Ok(None)) => None,
        Some(Err(e)) => {
            tracing::debug!(remote = %conn.remote, error = %e, "connection ended with an error");
            None
        }
        None => {
            tracing::debug!(remote = %conn.remote, "no request head within the timeout");
            None
        }
    }
}

/// An empty slot for what `make` turns `conn`'s value into (names the type of a future that
/// can only be made later).
fn slot_for<C, F>(_conn: &Option<C>, _make: fn(C) -> F) -> Option<F> {
    None
}

/// Whether a timer of a connection's task must be polled now: not yet since it was armed
/// (`polled` false), or it has fired. Otherwise its earlier poll left this task's waker with
/// it, and it will wake the task when it fires. The poll that follows counts as one only when
/// the task has budget left: without, tokio's cooperative scheduling answers `Pending` before
/// the timer takes the waker. (The inline client's deadline timers follow the same rule.)
pub(crate) fn needs_poll(timer: &tokio::time::Sleep, polled: &mut bool) -> bool {
    poll_again(polled, timer.is_elapsed())
}

/// The rule of [`needs_poll`] for any future that keeps the task's waker once polled: poll
/// it when it has not been polled (with budget left) yet, or when what it waits for `moved`.
fn poll_again(polled: &mut bool, moved: bool) -> bool {
    if *polled && !moved {
        return false;
    }
    *polled = tokio::task::coop::has_budget_remaining();
    true
}

/// What the head timer of an HTTP/1.1 connection does when it fires at `now`: `None` when a
/// request head is late (the connection is closed), otherwise when to look again. Before the
/// first request of this hyper connection it was armed at that request's deadline (see
/// [`serve_http1`]); after it, hyper's own rule holds: the next head is due within
/// `head_timeout` of the moment the previous response was wholly handed over. The timer is
/// moved on only when it fires, so a busy connection arms it about once per `head_timeout`
/// rather than once per request.
fn next_head_check(
    activity: &Activity,
    requests_at_start: u64,
    head_timeout: Duration,
    now: Instant,
) -> Option<Instant> {
    if activity.requests() == requests_at_start {
        return None;
    }
    if activity.in_flight() > 0 {
        // A response is still going out: no head is due before it ends.
        return Some(now + head_timeout);
    }
    let due = activity.idle_at() + head_timeout;
    (now < due).then_some(due)
}

/// The service hyper calls for each request of one connection. The handler's future is not
/// boxed: hyper keeps one heap slot for the future in flight per HTTP/1.1 connection (made
/// when the connection starts, reused by every request on it) and spawns each HTTP/2
/// stream as its own task, so a box here was one more allocation of kilobytes per request. A
/// quiet HTTP/1.1 connection is parked and lets hyper's connection, slot included, go. With
/// `activity`, each request counts as in flight until its response body has been wholly
/// handed to hyper (parking waits for that).
fn service<H: Handler>(
    handler: Arc<H>,
    conn: ConnInfo,
    activity: Option<Arc<Activity>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ServedBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ServedBody>, Infallible>> + Send,
> + Send
       + Unpin {
    hyper::service::service_fn(move |req| {
        let in_flight = activity.as_ref().map(Activity::start_request);
        Served {
            response: Arc::clone(&handler).call(req, conn.clone()),
            in_flight,
        }
    })
}

pin_project_lite::pin_project! {
    /// The handler's future and the request's place in the connection's activity (an `async`
    /// block around the future would hold it, and copy it, once more).
    struct Served<F> {
        #[pin]
        response: F,
        in_flight: Option<crate::parking::InFlight>,
    }
}

impl<F: Future<Output = Response<ResponseBody>>> Future for Served<F> {
    type Output = Result<Response<ServedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx));
        Poll::Ready(Ok(
            response.map(|body| ServedBody::new(body, this.in_flight.take()))
        ))
    }
}

/// One open connection in a gauge: counted up when made, down when dropped.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use bytes::Bytes;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::sync::{oneshot, Notify};

    use super::*;

    /// Answers `200` with the client's address and scheme as the connection saw them, after
    /// `gate` is notified when the path is `/wait`; counts calls that started.
    #[derive(Default)]
    struct Probe {
        gate: Notify,
        started: std::sync::atomic::AtomicUsize,
    }

    impl Handler for Probe {
        fn call(
            self: Arc<Self>,
            req: Request<Incoming>,
            conn: ConnInfo,
        ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let wait = req.uri().path() == "/wait";
            let big = req.uri().path() == "/big";
            async move {
                if wait {
                    self.gate.notified().await;
                }
                if big {
                    return Response::new(crate::response_body::full(Bytes::from(vec![b'x'; BIG])));
                }
                let text = format!("{} {}", conn.proto, conn.remote);
                Response::new(crate::response_body::full(Bytes::from(text)))
            }
        }
    }

    struct Server {
        addr: std::net::SocketAddr,
        probe: Arc<Probe>,
        stop: Option<oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<ShutdownOutcome>,
    }

    async fn start(settings: ListenerSettings) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = Arc::new(Probe::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(serve(listener, Arc::clone(&probe), settings, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            probe,
            stop: Some(stop),
            done,
        }
    }

    async fn wait_until(mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `GET path` with `Connection: close`; returns the whole answer.
    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_http1_with_the_connection_facts_and_counts_open_connections() {
        let gauge = prometheus::IntGauge::new("open", "open").unwrap();
        let server = start(ListenerSettings {
            open_connections: Some(gauge.clone()),
            ..Default::default()
        })
        .await;
        let mut held = TcpStream::connect(server.addr).await.unwrap();
        let local = held.local_addr().unwrap();
        wait_until(|| gauge.get() == 1).await;
        held.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        held.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with(&format!("http {local}")), "{out}");
        drop(held);
        wait_until(|| gauge.get() == 0).await;
    }

    #[tokio::test]
    async fn serves_http2_with_prior_knowledge() {
        let server = start(ListenerSettings::default()).await;
        let io = TokioIo::new(TcpStream::connect(server.addr).await.unwrap());
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("http://{}/x", server.addr))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_2);
    }

    #[tokio::test]
    async fn beyond_max_connections_a_client_waits_for_a_free_slot() {
        let server = start(ListenerSettings {
            max_connections: 1,
            ..Default::default()
        })
        .await;
        let probe = Arc::clone(&server.probe);
        let first = tokio::spawn(get(server.addr, "/wait"));
        wait_until(|| probe.started.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
        // The second is accepted by the kernel but not served while the slot is taken.
        let second = tokio::spawn(get(server.addr, "/x"));
        let waited = tokio::time::timeout(Duration::from_millis(200), async {
            wait_until(|| probe.started.load(std::sync::atomic::Ordering::SeqCst) == 2).await;
        })
        .await;
        assert!(waited.is_err(), "served beyond max_connections");
        probe.gate.notify_one();
        assert!(first.await.unwrap().starts_with("HTTP/1.1 200"));
        assert!(second.await.unwrap().starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn shutdown_drains_a_request_in_flight() {
        let mut server = start(ListenerSettings::default()).await;
        let probe = Arc::clone(&server.probe);
        let in_flight = tokio::spawn(get(server.addr, "/wait"));
        wait_until(|| probe.started.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
        server.stop.take().unwrap().send(()).unwrap();
        // Still draining: the request is running.
        tokio::task::yield_now().await;
        assert!(!server.done.is_finished());
        probe.gate.notify_one();
        assert!(in_flight.await.unwrap().starts_with("HTTP/1.1 200"));
        assert_eq!(server.done.await.unwrap(), ShutdownOutcome::Drained);
    }

    #[tokio::test]
    async fn shutdown_ends_a_busy_keep_alive_connection_after_its_response() {
        // Never parked here: the connection stays with hyper, whose shutdown must end it.
        let mut server = start(ListenerSettings {
            park_idle_after: Duration::from_secs(60),
            ..Default::default()
        })
        .await;
        let probe = Arc::clone(&server.probe);
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        // A request answered first: the connection's wait for shutdown has been polled and
        // the connection has woken since.
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        s.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        wait_until(|| probe.started.load(std::sync::atomic::Ordering::SeqCst) == 2).await;
        server.stop.take().unwrap().send(()).unwrap();
        probe.gate.notify_one();
        // The response, then the end of the connection: well before the 30 s grace period.
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the connection was not ended after its response")
            .unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let outcome = tokio::time::timeout(Duration::from_secs(5), server.done)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, ShutdownOutcome::Drained);
    }

    #[tokio::test]
    async fn shutdown_gives_up_after_the_grace_period() {
        let mut server = start(ListenerSettings {
            shutdown_grace: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        let probe = Arc::clone(&server.probe);
        let _in_flight = tokio::spawn(get(server.addr, "/wait"));
        wait_until(|| probe.started.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
        let t = std::time::Instant::now();
        server.stop.take().unwrap().send(()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), server.done)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, ShutdownOutcome::DeadlineExceeded);
        assert!(t.elapsed() >= Duration::from_millis(100));
    }

    /// Bytes of `/big`: more than the socket buffers of a client with a small receive buffer
    /// hold (see `a_connection_is_not_parked_while_...`), so that hyper is still writing when
    /// the client stops reading.
    const BIG: usize = 8 << 20;

    /// Sends `GET path` on a kept-alive connection and reads one whole response (by its
    /// Content-Length); returns the head and the body's length.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str) -> (String, usize) {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_response(s).await
    }

    async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (String, usize) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = s.read_u8().await.unwrap();
            head.push(b);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).await.unwrap();
        (head, length)
    }

    /// A connection to `server` that has had one request answered.
    async fn served_once(server: &Server) -> TcpStream {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let (head, _) = exchange(&mut s, "/x").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s
    }

    /// Sends a request head a byte at a time, `pause` apart, until the server answers or
    /// closes the connection; whether it did before the head was complete.
    async fn trickle_head(s: &mut TcpStream, pause: Duration) -> bool {
        let head = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for &b in head {
            if s.write_all(&[b]).await.is_err() {
                return true;
            }
            let mut buf = [0u8; 512];
            if tokio::time::timeout(pause, s.read(&mut buf)).await.is_ok() {
                return true;
            }
        }
        false
    }

    /// References to the handler: the test's, the listener's, the connection task's, and
    /// hyper's service while the connection is not parked.
    const PARKED_REFS: usize = 3;

    fn parking_settings() -> ListenerSettings {
        ListenerSettings {
            park_idle_after: Duration::from_millis(50),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_parked_and_serves_its_next_request() {
        let server = start(parking_settings()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let local = s.local_addr().unwrap();
        // Connected but silent: no hyper state yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(Arc::strong_count(&server.probe), PARKED_REFS);
        for round in 0..3 {
            let (head, _) = exchange(&mut s, "/x").await;
            assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
            assert!(!head.contains("connection: close"), "round {round}: {head}");
            // hyper's service goes with the rest of its state.
            wait_until(|| Arc::strong_count(&server.probe) == PARKED_REFS).await;
        }
        // The same connection all along.
        let (head, len) = exchange(&mut s, "/x").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(len, format!("http {local}").len());
        assert_eq!(
            server
                .probe
                .started
                .load(std::sync::atomic::Ordering::SeqCst),
            4
        );
    }

    #[tokio::test]
    async fn a_connection_is_not_parked_while_a_request_or_its_response_is_unfinished() {
        let server = start(parking_settings()).await;
        let probe = Arc::clone(&server.probe);
        // A fixed receive buffer: the kernel does not grow it to take the whole response.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut s = socket.connect(server.addr).await.unwrap();
        // A request the handler holds for several park periods.
        s.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        wait_until(|| probe.started.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            Arc::strong_count(&probe) > PARKED_REFS,
            "parked mid-request"
        );
        probe.gate.notify_one();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        // A response larger than the socket buffers, which the client leaves unread for
        // several park periods: hyper still holds its unwritten bytes and must keep them.
        s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            Arc::strong_count(&probe) > PARKED_REFS,
            "parked mid-response"
        );
        let (head, len) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(len, BIG);
        // And the connection goes on.
        let (head, _) = exchange(&mut s, "/x").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }

    #[tokio::test]
    async fn a_parked_connection_is_closed_when_idle_for_the_head_timeout() {
        let server = start(ListenerSettings {
            header_read_timeout: Duration::from_millis(400),
            ..parking_settings()
        })
        .await;
        let mut s = served_once(&server).await;
        let idle = std::time::Instant::now();
        wait_until(|| Arc::strong_count(&server.probe) == PARKED_REFS).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
            .await
            .expect("the idle connection was never closed")
            .unwrap();
        assert_eq!(n, 0, "closed without a byte");
        let waited = idle.elapsed();
        assert!(
            waited >= Duration::from_millis(350),
            "closed after {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_head_timeout() {
        let server = start(ListenerSettings {
            header_read_timeout: Duration::from_millis(300),
            ..parking_settings()
        })
        .await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
            .await
            .expect("a connection that never sent a byte stayed open")
            .unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_gets_no_more_than_the_head_timeout() {
        // Parking must not restart the head timer of a head still arriving (slowloris).
        let server = start(ListenerSettings {
            header_read_timeout: Duration::from_millis(500),
            ..parking_settings()
        })
        .await;
        let mut s = served_once(&server).await;
        let t = std::time::Instant::now();
        let closed = trickle_head(&mut s, Duration::from_millis(80)).await;
        assert!(
            closed,
            "the head was still being read after {:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "closed only after {:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn on_a_connection_that_does_not_park_the_next_head_is_due_within_the_head_timeout() {
        // The head timer of the requests after the first (hyper's own is off): after two
        // answered requests, a silent connection and a trickled head are both closed within
        // the head timeout of the last response, not kept open.
        let server = start(ListenerSettings {
            header_read_timeout: Duration::from_millis(400),
            park_idle_after: Duration::from_secs(60),
            ..Default::default()
        })
        .await;
        let mut s = served_once(&server).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (head, _) = exchange(&mut s, "/x").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let t = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("the silent connection was not closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(1200),
            "closed after {waited:?}"
        );
        let mut s = served_once(&server).await;
        let t = std::time::Instant::now();
        assert!(trickle_head(&mut s, Duration::from_millis(60)).await);
        assert!(
            t.elapsed() < Duration::from_millis(1200),
            "closed only after {:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_pipelined_head_that_pauses_past_the_park_delay_is_served() {
        // One whole request and the start of the next in one write, the rest of the second
        // after several park periods: the connection is not parked under the half head, and
        // both are answered in order.
        let server = start(parking_settings()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            Arc::strong_count(&server.probe) > PARKED_REFS,
            "parked under a partial head"
        );
        s.write_all(b"st: t\r\n\r\n").await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            server
                .probe
                .started
                .load(std::sync::atomic::Ordering::SeqCst),
            2
        );
    }

    #[tokio::test]
    async fn shutdown_delivers_the_whole_of_a_last_response_the_client_reads_slowly() {
        // A `Connection: close` response larger than the socket buffers, unread when shutdown
        // begins: hyper must write all of it before the connection ends.
        let mut server = start(parking_settings()).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut s = socket.connect(server.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.stop.take().unwrap().send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (head, len) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(len, BIG);
        let outcome = tokio::time::timeout(Duration::from_secs(5), server.done)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, ShutdownOutcome::Drained);
    }

    #[tokio::test]
    async fn a_parked_head_timeout_runs_from_idle_whatever_bytes_arrive() {
        // After a response the next head must be complete within the head timeout of the
        // connection going idle; bytes trickling in after it was parked start no new timer.
        let server = start(ListenerSettings {
            header_read_timeout: Duration::from_millis(400),
            ..parking_settings()
        })
        .await;
        let mut s = served_once(&server).await;
        let idle = std::time::Instant::now();
        wait_until(|| Arc::strong_count(&server.probe) == PARKED_REFS).await;
        // The first byte just before the deadline.
        tokio::time::sleep(Duration::from_millis(330).saturating_sub(idle.elapsed())).await;
        let closed = trickle_head(&mut s, Duration::from_millis(60)).await;
        assert!(closed, "still open after {:?}", idle.elapsed());
        assert!(
            idle.elapsed() < Duration::from_millis(650),
            "closed {:?} after going idle (head timeout 400 ms)",
            idle.elapsed()
        );
    }

    #[tokio::test]
    async fn shutdown_closes_parked_connections_at_once() {
        let mut server = start(parking_settings()).await;
        let mut s = served_once(&server).await;
        wait_until(|| Arc::strong_count(&server.probe) == PARKED_REFS).await;
        server.stop.take().unwrap().send(()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(2), server.done)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, ShutdownOutcome::Drained);
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_connection_task_is_no_larger_than_a_parked_connection_needs() {
        // A task's allocation is the size of its largest state, for as long as the connection
        // is open. hyper's HTTP/1.1 and HTTP/2 connections are boxed apart (HTTP/2 inline
        // made it 3.1 KiB in a debug build) so that a parked connection keeps only the
        // socket, the guard and its wait.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let shared = Shared::new(&ListenerSettings::default());
        let (_stop, stop_rx) = watch::channel(false);
        let conn = ConnInfo::new(stream.local_addr().unwrap(), "http");
        let task = serve_connection(stream, &shared, Arc::new(Probe::default()), conn, stop_rx);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "a connection's task is {size} bytes");
    }

    #[tokio::test]
    async fn a_tls_connection_task_keeps_its_session_out_of_line() {
        // The TLS session (1 KiB) is boxed inside the stream: inline, the slots the stream
        // leaves in each future it moves through made the task 4.9 KiB (debug build; 1.7 KiB
        // boxed, and 1 KiB for a plain connection).
        let (settings, _) = tls_settings();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let shared = Shared::new(&settings);
        let (_stop, stop_rx) = watch::channel(false);
        let conn = ConnInfo::new(stream.local_addr().unwrap(), "https");
        let tls = TlsHandshake {
            config: settings.tls.clone().unwrap(),
            timeout: Duration::from_secs(1),
        };
        let task = serve_tls_connection(
            stream,
            tls,
            &shared,
            Arc::new(Probe::default()),
            conn,
            stop_rx,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a TLS connection's task is {size} bytes");
    }

    /// A listener with TLS (a self-signed certificate for `localhost`) that parks after 50 ms,
    /// and a client configuration that trusts it.
    fn tls_settings() -> (ListenerSettings, Arc<rustls::ClientConfig>) {
        let (server, client) = crate::tls::test_configs();
        let settings = ListenerSettings {
            tls: Some(server),
            ..parking_settings()
        };
        (settings, client)
    }

    #[tokio::test]
    async fn an_idle_tls_connection_is_parked_and_serves_its_next_request() {
        let (settings, client) = tls_settings();
        let server = start(settings).await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(client)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        for round in 0..3 {
            let (head, _) = exchange(&mut s, "/x").await;
            assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
            assert!(!head.contains("connection: close"), "round {round}: {head}");
            wait_until(|| Arc::strong_count(&server.probe) == PARKED_REFS).await;
        }
        let (head, len) = exchange(&mut s, "/x").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            len,
            format!("https {}", s.get_ref().0.local_addr().unwrap()).len()
        );
    }

    #[tokio::test]
    async fn a_request_that_arrives_with_the_tls_handshake_is_served_at_once() {
        // The client's last handshake flight and its first request in one write: the server's
        // TLS session has decrypted the request by the time the handshake completes, and the
        // socket has nothing more to read. Waiting for it to become readable would wait for
        // the head timeout.
        let (settings, client) = tls_settings();
        let server = start(settings).await;
        let addr = server.addr;
        let head = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut tls =
                rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
            while tls.wants_write() {
                tls.write_tls(&mut sock).unwrap();
            }
            while tls.is_handshaking() {
                tls.read_tls(&mut sock).unwrap();
                tls.process_new_packets().unwrap();
            }
            tls.writer()
                .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut flight = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut flight).unwrap();
            }
            sock.write_all(&flight).unwrap();
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                tls.read_tls(&mut sock)
                    .expect("no answer: the request was not served");
                tls.process_new_packets().unwrap();
                let mut buf = [0u8; 4096];
                match tls.reader().read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            String::from_utf8(got).unwrap()
        })
        .await
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }

    #[tokio::test]
    async fn tls_records_without_a_request_do_not_keep_a_parked_connection_open() {
        // Key updates carry no plaintext: each wakes the parked connection, and none may move
        // its idle deadline.
        let (settings, client) = tls_settings();
        let server = start(ListenerSettings {
            header_read_timeout: Duration::from_millis(500),
            ..settings
        })
        .await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(client)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let (head, _) = exchange(&mut s, "/x").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let idle = std::time::Instant::now();
        let mut closed = false;
        while idle.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if s.get_mut().1.refresh_traffic_keys().is_err() || s.flush().await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 512];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "open {:?} after going idle", idle.elapsed());
        assert!(
            idle.elapsed() < Duration::from_millis(1200),
            "closed {:?} after going idle (head timeout 500 ms)",
            idle.elapsed()
        );
    }
}
