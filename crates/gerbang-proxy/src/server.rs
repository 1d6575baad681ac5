//! Listeners: accept TCP (optionally TLS), serve HTTP/1.1 and HTTP/2 with hyper, and shut down
//! gracefully: stop accepting, let requests in flight finish up to a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::framing::FramingGuard;
use crate::gateway::{ConnInfo, Gateway};
use crate::response_body::ResponseBody;

/// Handles requests of one listener.
pub trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send;
}

impl Handler for Gateway {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send {
        self.handle(req, conn)
    }
}

/// Connection-level settings of a listener.
#[derive(Clone)]
pub struct ListenerSettings {
    /// Terminate TLS with this configuration (ALPN picks HTTP/2 or HTTP/1.1).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time allowed for a client to send a request head (and, with TLS, the handshake).
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

fn builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_head_bytes.max(8192))
        // hyper's own default: room for 100 header fields on the stack (99 fit: the parser
        // wants a free entry to see the end of the block). A larger limit made hyper allocate
        // two buffers of that many entries for every request it parsed. More fields get
        // hyper's 431 (tests/e2e limits.rs).
        .max_headers(100)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()>,
) -> ShutdownOutcome {
    let builder = Arc::new(builder(&settings));
    let acceptor = settings.tls.clone().map(TlsAcceptor::from);
    let proto: &'static str = if acceptor.is_some() { "https" } else { "http" };
    let graceful = GracefulShutdown::new();
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
        let conn = ConnInfo {
            remote,
            proto,
            client_cert: None,
        };
        let watcher = graceful.watcher();
        let builder = Arc::clone(&builder);
        let handler = Arc::clone(&handler);
        let acceptor = acceptor.clone();
        let handshake_timeout = settings.header_read_timeout;
        // The same bound as hyper's buffer, so that the guard gives up only where hyper does.
        let max_head = settings.max_head_bytes.max(8192);
        let open = settings.open_connections.clone().map(OpenConnection::new);
        // Plain and TLS connections are separate tasks: a task's allocation is the size of its
        // largest state, and a plain connection has no reason to carry room for a TLS stream.
        match acceptor {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    serve_stream(stream, max_head, &builder, watcher, handler, conn).await;
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    // The certificate rustls verified (mTLS): its pin and names, read once per
                    // connection.
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(|c| Arc::new(gerbang_auth::mtls::ClientCert::from_der(c)));
                    let conn = ConnInfo {
                        client_cert,
                        ..conn
                    };
                    serve_stream(tls, max_head, &builder, watcher, handler, conn).await;
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => ShutdownOutcome::Drained,
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "shutdown grace period over; closing remaining connections");
            ShutdownOutcome::DeadlineExceeded
        }
    }
}

/// Serves HTTP on one accepted (and, with TLS, handshaken) stream behind the framing guard
/// until the connection ends.
async fn serve_stream<T, H>(
    stream: T,
    max_head: usize,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    handler: Arc<H>,
    conn: ConnInfo,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let remote = conn.remote;
    let io = TokioIo::new(FramingGuard::new(stream, max_head));
    let result = watcher
        .watch(builder.serve_connection(io, boxed_service(handler, conn)))
        .await;
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// The service hyper calls for each request of one connection. The handler's future is boxed:
/// hyper keeps room for one service future in every connection for as long as it is open, and
/// the pipeline's future is kilobytes, so unboxed it made every idle keep-alive connection
/// that much larger. Boxed, the room is a pointer and the future lives only while a request is
/// in flight (one allocation per request).
fn boxed_service<H: Handler>(
    handler: Arc<H>,
    conn: ConnInfo,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send,
> + Send {
    hyper::service::service_fn(move |req| {
        let handler = Arc::clone(&handler);
        let conn = conn.clone();
        let call: std::pin::Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>> =
            Box::pin(async move { handler.call(req, conn).await });
        async move { Ok::<_, Infallible>(call.await) }
    })
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
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
            &self,
            req: Request<Incoming>,
            conn: ConnInfo,
        ) -> impl Future<Output = Response<ResponseBody>> + Send {
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let wait = req.uri().path() == "/wait";
            let gate = if wait {
                Some(self.gate.notified())
            } else {
                None
            };
            async move {
                if let Some(g) = gate {
                    g.await;
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
}
