//! The pooled HTTP client that forwards to upstream instances (HTTP/1.1, or HTTP/2 when a TLS
//! upstream offers it by ALPN).

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;

use crate::body::RequestBody;

/// The client type used for every upstream.
pub type UpstreamClient = Client<Limited<HttpsConnector<HttpConnector>>, RequestBody>;

/// The circuit breaker's limit on connections being opened, for the pooled client.
#[derive(Clone)]
pub struct ConnectLimit {
    pub load: Arc<gerbang_registry::ServiceLoad>,
    pub settings: gerbang_registry::BreakerSettings,
}

/// Connecting is refused because `max_pending` connections are being opened already.
#[derive(Debug, thiserror::Error)]
#[error("too many connections being opened to the service")]
pub struct TooManyPending;

/// A connector that bounds a whole connect, TCP and TLS handshake, by `timeout` (the TCP
/// connector's own timeout does not cover the handshake) and holds a breaker slot while it
/// connects (no limit: no slot).
#[derive(Clone)]
pub struct Limited<C> {
    inner: C,
    limit: Option<ConnectLimit>,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower::Service<http::Uri> for Limited<C>
where
    C: tower::Service<http::Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let slot = match &self.limit {
            Some(l) => match l.load.pending(&l.settings) {
                Some(slot) => Some(slot),
                None => return Box::pin(async { Err(Box::new(TooManyPending) as BoxError) }),
            },
            None => None,
        };
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            let result = match tokio::time::timeout(timeout, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting (TCP and TLS) timed out",
                )) as BoxError),
            };
            drop(slot);
            result
        })
    }
}

/// Settings shared by every upstream connection pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Idle pooled connections are closed after this long.
    pub idle_timeout: Duration,
    /// Most idle connections kept per upstream instance.
    pub max_idle_per_host: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 256,
        }
    }
}

/// Builds a pooled client whose TCP connects give up after `connect_timeout`.
pub fn build_client(
    tls: Arc<ClientConfig>,
    connect_timeout: Duration,
    pool: &PoolSettings,
    limit: Option<ConnectLimit>,
) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let connector = Limited {
        inner: connector,
        limit,
        timeout: connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}
