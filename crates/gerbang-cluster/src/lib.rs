//! Cluster mode: what N replicas share through Redis so that they behave as one gateway.
//!
//! - [`limits`]: agreement rate limits (GCRA) and quotas, atomic in Redis, one round trip per
//!   limited call, with a local fallback or a closed failure mode while Redis is away;
//! - [`quota_file`]: one node's quota use, kept in the data directory across restarts;
//! - [`revisions`]: configuration revisions (the registry and agreement files as validated),
//!   published by the replica that made a change and applied by every other.

pub mod audit_bus;
pub mod limits;
pub mod quota_file;
pub mod revisions;
pub mod sessions;

#[cfg(test)]
mod test_redis;

use std::time::Duration;

/// A Redis connection for `url` (`redis://` or `rediss://`), as every part of cluster mode uses
/// one: connected on first use, not at creation (a replica starts without Redis), multiplexing
/// any number of calls, reconnecting with back-off from 50 ms up to 1 s; one connection attempt
/// or response waits `timeout` at most (callers cut their calls at it too).
pub fn lazy_connection(
    url: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    if url.starts_with("rediss:") {
        // The redis crate builds its TLS configuration on rustls' process-wide provider; with
        // none installed and no single provider chosen by crate features it would panic.
        // Already installed (by anyone): kept.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(2);
    redis::aio::ConnectionManager::new_lazy_with_config(client, config)
}
