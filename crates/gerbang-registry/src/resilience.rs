//! Retries and circuit breaking of a service: the policy (settings) and the live counts they
//! are checked against.
//!
//! - A **retry** goes to another instance. After a connect failure any method is retried
//!   (nothing reached the application); after 502/503/504, a reset or a per-try timeout only an
//!   idempotent request without a body is. Retries wait a jittered, growing back-off and are
//!   bounded by a **budget**: retries in flight at most `budget_percent` of the service's
//!   requests in flight (but always `min_retry_concurrency`), so that retries cannot multiply
//!   the load on a provider that is already failing (Envoy's retry budget).
//! - The **circuit breaker** bounds the requests in flight to a service and the connection
//!   attempts in flight to it; beyond them the gateway answers 503 `upstream_overloaded` at once
//!   instead of queueing onto a provider that cannot keep up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Retry settings of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retries).
    pub attempts: u32,
    /// Time one try may take until the response head; `None`: the service's request timeout.
    /// The request timeout bounds all tries together.
    pub per_try_timeout: Option<Duration>,
    /// Retries in flight at most this share (percent) of the requests in flight.
    pub budget_percent: u32,
    /// Retries always allowed in flight, whatever the budget says.
    pub min_retry_concurrency: u32,
    /// Back-off before the n-th retry: a random time up to `base × 2^(n-1)`, at most `max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            per_try_timeout: None,
            budget_percent: 20,
            min_retry_concurrency: 3,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }
}

impl RetryPolicy {
    /// The back-off before retry number `n` (1-based), with `random` in `0..=u64::MAX`.
    pub fn backoff(&self, n: u32, random: u64) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.backoff_max);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        if cap_us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(random % (cap_us + 1))
    }
}

/// Circuit-breaker thresholds of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Requests in flight to the service at most.
    pub max_requests: u32,
    /// New connections being opened to the service's instances at most.
    pub max_pending: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            max_requests: 1024,
            max_pending: 256,
        }
    }
}

/// What is in flight to a service now.
#[derive(Debug, Default)]
pub struct ServiceLoad {
    requests: AtomicU32,
    retries: AtomicU32,
    pending: AtomicU32,
}

/// A slot held while something is in flight; released on drop.
#[derive(Debug)]
pub struct Slot {
    load: Arc<ServiceLoad>,
    which: Which,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Request,
    Retry,
    Pending,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.load
            .counter(self.which)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServiceLoad {
    fn counter(&self, which: Which) -> &AtomicU32 {
        match which {
            Which::Request => &self.requests,
            Which::Retry => &self.retries,
            Which::Pending => &self.pending,
        }
    }

    fn take(self: &Arc<Self>, which: Which, max: u32) -> Option<Slot> {
        let c = self.counter(which);
        let before = c.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            c.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot {
            load: Arc::clone(self),
            which,
        })
    }

    /// A request slot, or `None` when `max_requests` are in flight (the breaker is open).
    pub fn request(self: &Arc<Self>, b: &BreakerSettings) -> Option<Slot> {
        self.take(Which::Request, b.max_requests)
    }

    /// A slot for opening a connection, or `None` when `max_pending` are being opened.
    pub fn pending(self: &Arc<Self>, b: &BreakerSettings) -> Option<Slot> {
        self.take(Which::Pending, b.max_pending)
    }

    /// A retry slot, or `None` when the retry budget is spent.
    pub fn retry(self: &Arc<Self>, p: &RetryPolicy) -> Option<Slot> {
        let requests = u64::from(self.requests.load(Ordering::Relaxed));
        let budget =
            (requests * u64::from(p.budget_percent) / 100).max(u64::from(p.min_retry_concurrency));
        self.take(Which::Retry, u32::try_from(budget).unwrap_or(u32::MAX))
    }

    /// Requests in flight now.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_refuses_beyond_its_limits_and_recovers_when_slots_free() {
        let load = Arc::new(ServiceLoad::default());
        let b = BreakerSettings {
            max_requests: 2,
            max_pending: 1,
        };
        let a = load.request(&b).unwrap();
        let c = load.request(&b).unwrap();
        assert!(load.request(&b).is_none());
        drop(a);
        let d = load.request(&b);
        assert!(d.is_some());
        drop((c, d));
        assert_eq!(load.requests(), 0);
        let p = load.pending(&b).unwrap();
        assert!(load.pending(&b).is_none());
        drop(p);
        assert!(load.pending(&b).is_some());
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_with_a_floor() {
        let load = Arc::new(ServiceLoad::default());
        let p = RetryPolicy::default(); // 20%, at least 3
        let b = BreakerSettings {
            max_requests: 1000,
            max_pending: 1,
        };
        let _reqs: Vec<Slot> = (0..100).map(|_| load.request(&b).unwrap()).collect();
        let retries: Vec<Slot> = (0..20).map(|_| load.retry(&p).unwrap()).collect();
        assert!(load.retry(&p).is_none(), "20% of 100");
        drop(retries);
        drop(_reqs);
        let few: Vec<Slot> = (0..3).map(|_| load.retry(&p).unwrap()).collect();
        assert!(load.retry(&p).is_none(), "the floor of 3");
        drop(few);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.backoff(1, u64::MAX),
            Duration::from_micros(u64::MAX % 25_001)
        );
        for n in 1..10 {
            for r in [0, 1, 12_345, u64::MAX / 3, u64::MAX] {
                assert!(p.backoff(n, r) <= Duration::from_millis(250));
            }
        }
        assert!(p.backoff(2, 49_999) > Duration::from_millis(25), "doubles");
        assert_eq!(p.backoff(3, 0), Duration::ZERO);
    }
}
