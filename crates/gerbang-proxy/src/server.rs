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

use crate::body::ResponseBody;
use crate::framing::FramingGuard;
use crate::gateway::{ConnInfo, Gateway};

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
        .max_headers(256)
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
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let make_service = move |conn: ConnInfo| {
                hyper::service::service_fn(move |req| {
                    let handler = Arc::clone(&handler);
                    let conn = conn.clone();
                    async move { Ok::<_, Infallible>(handler.call(req, conn).await) }
                })
            };
            let result = match acceptor {
                None => {
                    let io = TokioIo::new(FramingGuard::new(stream, max_head));
                    watcher
                        .watch(builder.serve_connection(io, make_service(conn)))
                        .await
                }
                Some(acceptor) => {
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
                    let io = TokioIo::new(FramingGuard::new(tls, max_head));
                    watcher
                        .watch(builder.serve_connection(io, make_service(conn)))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
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
