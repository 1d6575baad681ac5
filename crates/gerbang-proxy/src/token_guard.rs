//! The token endpoint under abuse. Every token request costs an argon2 check (tens of
//! milliseconds of CPU and about 19 MiB), so without limits a flood of wrong secrets both
//! guesses at full speed and starves real clients. Here:
//!
//! - **Failed client authentications are limited** per source address (IPv4 address; IPv6 by
//!   /64, the block one subscriber gets) and per registered client id, with governor's GCRA:
//!   `failures_per_*` failures in a burst, refilled over `failure_window`. Once an allowance is
//!   used up, requests from that source or for that client are refused with 429 `slow_down` and
//!   `Retry-After` **before** any secret is checked, until a failure is allowed again.
//! - **Argon2 work is shared fairly**: at most `concurrency` checks run at once (the global
//!   slots, a FIFO queue), and one source may hold or wait for at most `per_source` of them; its
//!   other requests wait for their source's turn, outside the global queue. A flood from one
//!   address therefore delays another address's request by at most `per_source` checks per
//!   flooding source, however many connections it opens.
//!
//! Memory stays bounded: limiter entries go once their allowance is whole again (swept every
//! [`SWEEP_EVERY`] failures), client ids are keyed only when they are registered (made-up ids
//! share no state), and a source's slot entry lives only while it has requests in flight.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Failures between two sweeps of the limiters' tables.
pub const SWEEP_EVERY: u64 = 256;

/// Settings of the token endpoint's limits (`[auth]` in `gerbang.toml`).
#[derive(Debug, Clone)]
pub struct TokenEndpointSettings {
    /// Secret checks (argon2) running at once.
    pub concurrency: usize,
    /// Secret checks one source address may have running or waiting for a global slot.
    pub per_source: usize,
    /// Failed authentications one source may make in a burst; 0 = no limit.
    pub failures_per_source: u32,
    /// Failed authentications for one registered client id in a burst; 0 = no limit.
    pub failures_per_client: u32,
    /// Time in which a used-up allowance comes back whole (one failure per
    /// `failure_window / failures_per_*`).
    pub failure_window: Duration,
}

impl Default for TokenEndpointSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            per_source: 1,
            failures_per_source: 10,
            failures_per_client: 30,
            failure_window: Duration::from_secs(60),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    Source,
    Client,
}

impl ThrottledBy {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottledBy::Source => "source",
            ThrottledBy::Client => "client",
        }
    }
}

/// A refusal before any secret is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed client authentications by {}", by.as_str())]
pub struct Throttled {
    pub by: ThrottledBy,
    /// Until a failure is allowed again.
    pub retry_after: Duration,
}

impl Throttled {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let s = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 {
            s + 1
        } else {
            s.max(1)
        }
    }
}

/// No slot came free in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no secret-check slot came free in time")]
pub struct Busy;

/// The key of a source address: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// Failures per key: governor's GCRA counts them; keys whose allowance is used up are noted
/// with the time a failure is allowed again, so that the check before the work consumes
/// nothing.
struct FailureLimiter<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    blocked: Mutex<HashMap<K, Instant>>,
    /// Time for one failure to come back.
    interval: Duration,
    failures: AtomicU64,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// `None` when `burst` is 0 (no limit) or the window is too short to divide.
    fn new(burst: u32, window: Duration) -> Option<Self> {
        let burst = NonZeroU32::new(burst)?;
        let quota = Quota::with_period(window / burst.get())?.allow_burst(burst);
        Some(Self {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            blocked: Mutex::new(HashMap::new()),
            interval: quota.replenish_interval(),
            failures: AtomicU64::new(0),
        })
    }

    /// How long `key` must still wait, if its allowance is used up.
    fn blocked_for<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.blocked.lock().ok()?;
        let until = *map.get(key)?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Counts one failure of `key`; `true` when it used up the allowance.
    fn failed(&self, key: K, now: Instant) -> bool {
        let until = match self.limiter.check_key(&key) {
            // The last failure of the allowance: the next one comes back within `interval`.
            Ok(state) if state.remaining_burst_capacity() == 0 => Some(now + self.interval),
            Ok(_) => None,
            Err(not_until) => Some(now + not_until.wait_time_from(self.limiter.clock().now())),
        };
        let blocked = until.is_some();
        if let (Some(until), Ok(mut map)) = (until, self.blocked.lock()) {
            map.insert(key, until);
        }
        if self.failures.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now);
        }
        blocked
    }

    /// Drops entries that hold nothing any more: allowances whole again, blocks over.
    fn sweep(&self, now: Instant) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        if let Ok(mut map) = self.blocked.lock() {
            map.retain(|_, until| *until > now);
            map.shrink_to_fit();
        }
    }

    /// Keys held (limiter entries, blocks).
    fn len(&self) -> (usize, usize) {
        (
            self.limiter.len(),
            self.blocked.lock().map(|m| m.len()).unwrap_or(0),
        )
    }
}

/// Per-source slots: a semaphore per source with requests in flight, and how many requests
/// hold it (the entry goes with the last one).
type SourceSlots = Mutex<HashMap<IpAddr, (Arc<Semaphore>, usize)>>;

/// See the module documentation.
pub struct TokenGuard {
    global: Arc<Semaphore>,
    per_source: usize,
    sources: SourceSlots,
    by_source: Option<FailureLimiter<IpAddr>>,
    by_client: Option<FailureLimiter<String>>,
    throttled_source: AtomicU64,
    throttled_client: AtomicU64,
}

/// What a request holds while its secret is checked: a global slot and its source's slot.
/// Dropping it (also from the blocking thread, after the check) frees both.
pub struct Admission {
    _global: OwnedSemaphorePermit,
    _source: OwnedSemaphorePermit,
    _entry: SourceEntry,
}

/// A request's hold on its source's slot entry.
struct SourceEntry {
    guard: Arc<TokenGuard>,
    source: IpAddr,
}

impl Drop for SourceEntry {
    fn drop(&mut self) {
        if let Ok(mut map) = self.guard.sources.lock() {
            if let Some(entry) = map.get_mut(&self.source) {
                entry.1 = entry.1.saturating_sub(1);
                if entry.1 == 0 {
                    map.remove(&self.source);
                }
            }
        }
    }
}

impl TokenGuard {
    pub fn new(s: &TokenEndpointSettings) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(s.concurrency.max(1))),
            per_source: s.per_source.max(1),
            sources: Mutex::new(HashMap::new()),
            by_source: FailureLimiter::new(s.failures_per_source, s.failure_window),
            by_client: FailureLimiter::new(s.failures_per_client, s.failure_window),
            throttled_source: AtomicU64::new(0),
            throttled_client: AtomicU64::new(0),
        })
    }

    /// Refuses (and counts) a request whose source or client id has used up its allowance of
    /// failures. `client` is the client id when it is registered. Costs no secret check.
    pub fn check(&self, source: IpAddr, client: Option<&str>) -> Result<(), Throttled> {
        let now = Instant::now();
        let source = source_key(source);
        if let Some(wait) = self
            .by_source
            .as_ref()
            .and_then(|l| l.blocked_for(&source, now))
        {
            self.throttled_source.fetch_add(1, Ordering::Relaxed);
            return Err(Throttled {
                by: ThrottledBy::Source,
                retry_after: wait,
            });
        }
        let client_wait =
            client.and_then(|c| self.by_client.as_ref().and_then(|l| l.blocked_for(c, now)));
        if let Some(wait) = client_wait {
            self.throttled_client.fetch_add(1, Ordering::Relaxed);
            return Err(Throttled {
                by: ThrottledBy::Client,
                retry_after: wait,
            });
        }
        Ok(())
    }

    /// Waits for the source's turn, then for a global slot, together at most `timeout`.
    pub async fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        timeout: Duration,
    ) -> Result<Admission, Busy> {
        let source = source_key(source);
        let (slots, entry) = {
            let mut map = self.sources.lock().map_err(|_| Busy)?;
            let e = map
                .entry(source)
                .or_insert_with(|| (Arc::new(Semaphore::new(self.per_source)), 0));
            e.1 += 1;
            let entry = SourceEntry {
                guard: Arc::clone(self),
                source,
            };
            (Arc::clone(&e.0), entry)
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let own = tokio::time::timeout_at(deadline, slots.acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let global = tokio::time::timeout_at(deadline, Arc::clone(&self.global).acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        Ok(Admission {
            _global: global,
            _source: own,
            _entry: entry,
        })
    }

    /// Counts a failed client authentication of `source` (and of `client`, when registered).
    /// Returns which allowances this failure used up (source, client), for the log.
    pub fn failed(&self, source: IpAddr, client: Option<&str>) -> (bool, bool) {
        let now = Instant::now();
        let by_source = self
            .by_source
            .as_ref()
            .is_some_and(|l| l.failed(source_key(source), now));
        let by_client = match (&self.by_client, client) {
            (Some(l), Some(c)) => l.failed(c.to_owned(), now),
            _ => false,
        };
        (by_source, by_client)
    }

    /// Requests refused so far: (by source, by client).
    pub fn throttled_counts(&self) -> (u64, u64) {
        (
            self.throttled_source.load(Ordering::Relaxed),
            self.throttled_client.load(Ordering::Relaxed),
        )
    }

    /// Entries held: source slots, source limiter and blocks, client limiter and blocks.
    pub fn table_sizes(&self) -> [usize; 5] {
        let slots = self.sources.lock().map(|m| m.len()).unwrap_or(0);
        let s = self.by_source.as_ref().map_or((0, 0), FailureLimiter::len);
        let c = self.by_client.as_ref().map_or((0, 0), FailureLimiter::len);
        [slots, s.0, s.1, c.0, c.1]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn settings(per_source: u32, per_client: u32, window_secs: u64) -> TokenEndpointSettings {
        TokenEndpointSettings {
            concurrency: 4,
            per_source: 2,
            failures_per_source: per_source,
            failures_per_client: per_client,
            failure_window: Duration::from_secs(window_secs),
        }
    }

    #[test]
    fn sources_are_keyed_by_address_and_ipv6_by_its_64() {
        assert_eq!(source_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:ffff::9")),
            source_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            source_key(ip("2001:db8:1:3::1")),
            source_key(ip("2001:db8:1:2::1"))
        );
    }

    #[test]
    fn failures_per_source_then_slow_down_with_retry_after() {
        let g = TokenGuard::new(&settings(3, 100, 60));
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        for _ in 0..3 {
            assert_eq!(g.check(a, None), Ok(()));
            g.failed(a, None);
        }
        let t = g.check(a, None).unwrap_err();
        assert_eq!(t.by, ThrottledBy::Source);
        // One failure per 20 s comes back.
        assert!(t.retry_after <= Duration::from_secs(20) && t.retry_after_secs() >= 19);
        // Another source is not affected; successes were never counted.
        assert_eq!(g.check(b, None), Ok(()));
        assert_eq!(g.throttled_counts(), (1, 0));
    }

    #[test]
    fn failures_per_client_from_many_sources() {
        let g = TokenGuard::new(&settings(100, 4, 60));
        for i in 0..4 {
            let src = ip(&format!("10.0.0.{i}"));
            assert_eq!(g.check(src, Some("dinkes/simpus")), Ok(()));
            g.failed(src, Some("dinkes/simpus"));
        }
        let t = g.check(ip("10.9.9.9"), Some("dinkes/simpus")).unwrap_err();
        assert_eq!(t.by, ThrottledBy::Client);
        // Other clients, and unregistered ids (never keyed), are not affected.
        assert_eq!(g.check(ip("10.9.9.9"), Some("bapenda/esppt")), Ok(()));
        assert_eq!(g.check(ip("10.9.9.9"), None), Ok(()));
        assert_eq!(g.throttled_counts(), (0, 1));
    }

    #[test]
    fn zero_means_no_limit() {
        let g = TokenGuard::new(&settings(0, 0, 60));
        for _ in 0..100 {
            g.failed(ip("127.0.0.1"), Some("a/b"));
        }
        assert_eq!(g.check(ip("127.0.0.1"), Some("a/b")), Ok(()));
    }

    #[test]
    fn an_allowance_comes_back_with_time() {
        // Two failures per 200 ms: one back every 100 ms.
        let g = TokenGuard::new(&TokenEndpointSettings {
            failure_window: Duration::from_millis(200),
            ..settings(2, 0, 1)
        });
        let a = ip("127.0.0.1");
        g.failed(a, None);
        g.failed(a, None);
        assert!(g.check(a, None).is_err());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(g.check(a, None), Ok(()));
        g.failed(a, None);
        assert!(g.check(a, None).is_err(), "one failure came back, not two");
    }

    #[test]
    fn tables_stay_bounded_under_many_sources() {
        let g = TokenGuard::new(&TokenEndpointSettings {
            failure_window: Duration::from_millis(50),
            ..settings(5, 0, 1)
        });
        for i in 0..(SWEEP_EVERY as u32 * 4) {
            g.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), None);
        }
        std::thread::sleep(Duration::from_millis(80));
        for i in 0..SWEEP_EVERY as u32 {
            g.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), None);
        }
        // The sweep dropped every entry whose allowance was whole again.
        let [_, limiter, blocks, _, _] = g.table_sizes();
        assert!(limiter <= SWEEP_EVERY as usize, "{limiter}");
        assert!(blocks <= SWEEP_EVERY as usize, "{blocks}");
    }

    #[tokio::test]
    async fn one_source_holds_at_most_its_share_of_the_slots() {
        let g = TokenGuard::new(&settings(0, 0, 60));
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        let t = Duration::from_millis(100);
        let first = g.admit(a, t).await.unwrap();
        let _second = g.admit(a, t).await.unwrap();
        // A third request of the same source waits for its source's turn ...
        assert_eq!(g.admit(a, t).await.err(), Some(Busy));
        // ... while another source still gets a slot at once.
        let other = g.admit(b, t).await.unwrap();
        drop(first);
        let _third = g.admit(a, t).await.unwrap();
        drop(other);
        assert_eq!(
            g.table_sizes()[0],
            1,
            "b's entry went with its last request"
        );
    }

    #[tokio::test]
    async fn the_global_queue_is_first_come_first_served() {
        let g = TokenGuard::new(&TokenEndpointSettings {
            concurrency: 1,
            ..settings(0, 0, 60)
        });
        let held = g
            .admit(ip("127.0.0.1"), Duration::from_secs(1))
            .await
            .unwrap();
        let g2 = Arc::clone(&g);
        let waiting =
            tokio::spawn(async move { g2.admit(ip("127.0.0.2"), Duration::from_secs(2)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
    }
}
