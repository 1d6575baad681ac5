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
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

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
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}
