//! Agreement rate limits and quotas shared by every replica through Redis.
//!
//! One Lua script ([`SCRIPT`], sent as `EVALSHA`; the redis crate's [`Script`] loads it again
//! after `NOSCRIPT`) decides a call atomically: the agreement's GCRA rate limit on Redis's own
//! clock (`TIME`, so that every replica measures against one clock) and then its quota for the
//! WIB period. A call refused by the rate spends no quota, a call refused by the quota spends no
//! rate. An agreement with neither a rate nor a quota never reaches Redis, and a limited call
//! costs one round trip.
//!
//! Keys (all under `gerbang:`):
//! - `gerbang:rate:{agreement}:{application}:{spec}`: the theoretical arrival time (µs, Redis
//!   clock); `spec` is a short hash of the rate, so that a changed rate starts afresh (as
//!   `Limits::adopt` does locally). The key expires once the full burst is available again.
//! - `gerbang:quota:{agreement}:{application}:{d|m}{period}`: uses in a WIB day or month,
//!   incremented only below the limit, expiring an hour after the period ends. A changed quota
//!   limit keeps the count of the period.
//!
//! Every call runs under `redis_timeout`. After a failure the store is *down*: calls skip Redis
//! for [`DOWN_FOR`], then one call (or [`SharedLimits::watch`]) probes it while the others still
//! skip; a probe that succeeds makes the store shared again, without a restart. No call waits
//! longer than the timeout, reconnects included (they go on in the background, with back-off):
//! the caller decides what a [`StoreError`] means (`local` fallback or `closed`, see
//! [`FailureMode`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gerbang_policy::limits::{period_of, LimitOutcome, RateInfo};
use gerbang_policy::{QuotaPeriod, QuotaSpec, RatePeriod, RateSpec, Reason};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use redis::aio::ConnectionManager;
use redis::Script;

/// How long calls skip Redis after a failure before one of them probes it again.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// How long a quota key outlives its period (clocks of replicas and Redis may differ a little).
const QUOTA_KEY_MARGIN_SECS: i64 = 3600;

/// The `kind` values of `gerbang_limit_store_errors_total`.
pub const ERROR_KINDS: [&str; 4] = ["timeout", "connection", "script", "reply"];

/// The limit script. KEYS: the rate key, the quota key. ARGV: has rate (0/1), emission
/// interval (µs), burst, has quota (0/1), quota limit, quota key's expiry (unix seconds).
/// Reply: {verdict (1 allowed, 0 rate limited, 2 quota exhausted), remaining burst (-1 without
/// a rate), retry after (ms), until the full burst (ms), quota uses left (-1 without a quota)}.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new_tat = nil
local remaining = -1
local full_ms = 0
if ARGV[1] == '1' then
  local interval = tonumber(ARGV[2])
  local window = interval * tonumber(ARGV[3])
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local candidate = tat + interval
  if candidate - now > window then
    return {0, 0, math.ceil((candidate - now - window) / 1000), math.ceil((tat - now) / 1000), -1}
  end
  new_tat = candidate
  remaining = math.floor((window - (new_tat - now)) / interval)
  full_ms = math.ceil((new_tat - now) / 1000)
end
local left = -1
if ARGV[4] == '1' then
  local limit = tonumber(ARGV[5])
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= limit then
    return {2, remaining, 0, full_ms, 0}
  end
  used = redis.call('INCR', KEYS[2])
  redis.call('EXPIREAT', KEYS[2], ARGV[6])
  left = limit - used
end
if new_tat then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', full_ms + 1000)
end
return {1, remaining, 0, full_ms, left}
"#;

/// What to do while Redis cannot be reached (`[cluster] on_redis_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Limit on this replica alone, at the agreed rate, burst and quota divided by the
    /// expected number of replicas.
    Local,
    /// Refuse calls under a limited agreement (`503 limit_store_unavailable`).
    Closed,
}

/// How to reach the shared store (from `[cluster]`).
#[derive(Clone)]
pub struct SharedLimitSettings {
    /// `redis://…` or `rediss://…` (may carry a password: never logged).
    pub url: String,
    pub on_failure: FailureMode,
    /// How many replicas share the limits (the local fallback divides by it).
    pub expected_replicas: u32,
    /// Longest wait for one round trip.
    pub timeout: Duration,
    /// Multiplexed connections, used in turn.
    pub connections: usize,
}

/// The store's metrics (registered by the data plane's metrics registry).
#[derive(Clone)]
pub struct StoreMetrics {
    /// `gerbang_limit_store_duration_seconds`: Redis round trips.
    pub duration: Histogram,
    /// `gerbang_limit_store_errors_total{kind}`.
    pub errors: IntCounterVec,
    /// `gerbang_limit_store_fallback`: 1 while the store is down.
    pub fallback: IntGauge,
    /// `gerbang_limit_store_fallback_decisions_total`: calls limited locally instead.
    pub fallback_decisions: IntCounter,
}

/// Why the shared store did not decide a call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the Redis URL is not usable: {0}")]
    Url(#[source] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis connection failed: {0}")]
    Connection(#[source] redis::RedisError),
    #[error("the limit script failed: {0}")]
    Script(#[source] redis::RedisError),
    #[error("the limit script's reply is not understood")]
    Reply,
    #[error("Redis is marked down after a failure; not asked")]
    Down,
}

impl StoreError {
    /// The `kind` label of a failed round trip (`None`: nothing was sent).
    fn kind(&self) -> Option<&'static str> {
        match self {
            StoreError::Timeout(_) => Some("timeout"),
            StoreError::Connection(_) | StoreError::Url(_) => Some("connection"),
            StoreError::Script(_) => Some("script"),
            StoreError::Reply => Some("reply"),
            StoreError::Down => None,
        }
    }
}

/// One call to decide.
#[derive(Debug, Clone, Copy)]
pub struct LimitCall<'a> {
    pub agreement: &'a str,
    pub application: &'a str,
    pub rate: Option<RateSpec>,
    pub quota: Option<QuotaSpec>,
    /// Seconds since the epoch (this replica's clock: it picks the quota period).
    pub now: i64,
}

/// Rate limits and quotas in Redis, shared by every replica.
pub struct SharedLimits {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    script: Script,
    timeout: Duration,
    on_failure: FailureMode,
    expected_replicas: u32,
    /// Set while Redis is considered down.
    down: AtomicBool,
    /// Until when (ms since `epoch`) calls skip Redis.
    down_until_ms: AtomicU64,
    /// One call at a time probes a down store.
    probing: AtomicBool,
    epoch: Instant,
    metrics: Option<StoreMetrics>,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("connections", &self.connections.len())
            .field("on_failure", &self.on_failure)
            .field("down", &self.down.load(Ordering::Relaxed))
            .finish()
    }
}

impl SharedLimits {
    /// Prepares the connections without connecting (the first call connects): the gateway
    /// starts, and limits locally or refuses, while Redis is away. Needs a tokio runtime.
    pub fn new(
        settings: &SharedLimitSettings,
        metrics: Option<StoreMetrics>,
    ) -> Result<Self, StoreError> {
        // Each connection reconnects on its own; calls never wait for that: they are cut at
        // `timeout`.
        let connections = (0..settings.connections.max(1))
            .map(|_| crate::lazy_connection(&settings.url, settings.timeout))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Url)?;
        if let Some(m) = &metrics {
            for kind in ERROR_KINDS {
                m.errors.with_label_values(&[kind]);
            }
            m.fallback.set(0);
        }
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
            script: Script::new(SCRIPT),
            timeout: settings.timeout,
            on_failure: settings.on_failure,
            expected_replicas: settings.expected_replicas.max(1),
            down: AtomicBool::new(false),
            down_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
            metrics,
        })
    }

    /// What callers do while the store is down.
    pub fn on_failure(&self) -> FailureMode {
        self.on_failure
    }

    /// The divisor of the local fallback's rates, bursts and quotas.
    pub fn expected_replicas(&self) -> u32 {
        self.expected_replicas
    }

    /// Whether calls currently skip Redis after a failure.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Counts a call that the local fallback decided because the store was down.
    pub fn count_fallback_decision(&self) {
        if let Some(m) = &self.metrics {
            m.fallback_decisions.inc();
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Decides one call of `call.application` under `call.agreement`: [`LimitOutcome`] as the
    /// local limiter reports it, or why Redis could not decide (the caller falls back or
    /// refuses). At most one round trip, never longer than the timeout.
    pub async fn check(&self, call: &LimitCall<'_>) -> Result<LimitOutcome, StoreError> {
        if call.rate.is_none() && call.quota.is_none() {
            return Ok(LimitOutcome::Pass { rate: None });
        }
        // While down, one call at a time probes Redis; the guard ends the probe however the
        // call ends (a caller that goes away mid-call must not block every later probe).
        let _probe = if self.down.load(Ordering::Acquire) {
            if self.elapsed_ms() < self.down_until_ms.load(Ordering::Acquire)
                || self
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return Err(StoreError::Down);
            }
            Some(ProbeGuard(&self.probing))
        } else {
            None
        };
        let result = self.round_trip(call).await;
        match &result {
            Ok(_) => self.mark_up(),
            Err(e) => self.mark_down(e),
        }
        result
    }

    async fn round_trip(&self, call: &LimitCall<'_>) -> Result<LimitOutcome, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut conn = match self.connections.get(i) {
            Some(c) => c.clone(),
            None => return Err(StoreError::Reply),
        };
        let mut inv = self.script.prepare_invoke();
        let (rate_key, interval_us, burst) = match call.rate {
            Some(r) => {
                let (key, interval, burst) = rate_params(call.agreement, call.application, &r);
                (key, interval, burst)
            }
            None => (String::from("gerbang:rate:none"), 0, 0),
        };
        let quota = call.quota.map(|q| {
            let (period, next) = period_of(q.per, call.now);
            (q, period, next)
        });
        let quota_key = match &quota {
            Some((q, period, _)) => quota_key(call.agreement, call.application, q.per, *period),
            None => String::from("gerbang:quota:none"),
        };
        inv.key(rate_key)
            .key(quota_key)
            .arg(u8::from(call.rate.is_some()))
            .arg(interval_us)
            .arg(burst)
            .arg(u8::from(quota.is_some()))
            .arg(quota.map_or(0, |(q, _, _)| q.limit))
            .arg(quota.map_or(0, |(_, _, next)| next + QUOTA_KEY_MARGIN_SECS));
        let started = Instant::now();
        let reply =
            tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await;
        if let Some(m) = &self.metrics {
            m.duration.observe(started.elapsed().as_secs_f64());
        }
        let reply = match reply {
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
            Ok(Err(e)) => {
                return Err(
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_timeout()
                    {
                        StoreError::Connection(e)
                    } else {
                        StoreError::Script(e)
                    },
                )
            }
            Ok(Ok(v)) => v,
        };
        outcome(&reply, call, quota.map(|(q, _, next)| (q, next)))
    }

    /// Probes a down store every `every` (PING) until `stop` completes, so that it counts as
    /// back (and `gerbang_limit_store_fallback` drops to 0) even when no limited call comes
    /// to probe it. Calls probe as well; one probe at a time either way.
    pub async fn watch(
        self: std::sync::Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.is_down()
                || self.elapsed_ms() < self.down_until_ms.load(Ordering::Acquire)
                || self
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            let _probe = ProbeGuard(&self.probing);
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
            let Some(mut conn) = self.connections.get(i).cloned() else {
                continue;
            };
            let ping = redis::cmd("PING");
            let result =
                match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut conn))
                    .await
                {
                    Err(_) => Err(StoreError::Timeout(self.timeout)),
                    Ok(Err(e)) => Err(StoreError::Connection(e)),
                    Ok(Ok(_)) => Ok(()),
                };
            match result {
                Ok(()) => self.mark_up(),
                Err(e) => self.mark_down(&e),
            }
        }
    }

    fn mark_down(&self, e: &StoreError) {
        let Some(kind) = e.kind() else { return };
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&[kind]).inc();
            m.fallback.set(1);
        }
        self.down_until_ms.store(
            self.elapsed_ms() + u64::try_from(DOWN_FOR.as_millis()).unwrap_or(1000),
            Ordering::Release,
        );
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, kind, on_failure = ?self.on_failure,
            "shared limit store failed; limits are {} until Redis answers again",
            match self.on_failure {
                FailureMode::Local => "applied per replica (divided by cluster.expected_replicas)",
                FailureMode::Closed => "refused (503 limit_store_unavailable)",
            });
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            if let Some(m) = &self.metrics {
                m.fallback.set(0);
            }
            tracing::info!("shared limit store answers again; limits are shared again");
        }
    }
}

/// Ends a probe when dropped.
struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The rate key, emission interval (µs) and burst of `spec`.
fn rate_params(agreement: &str, application: &str, spec: &RateSpec) -> (String, u64, u64) {
    let per_us: u64 = match spec.per {
        RatePeriod::Second => 1_000_000,
        RatePeriod::Minute => 60_000_000,
    };
    let interval = (per_us / u64::from(spec.limit.max(1))).max(1);
    let burst = u64::from(spec.burst.max(1));
    (
        format!("gerbang:rate:{agreement}:{application}:{}", spec_hash(spec)),
        interval,
        burst,
    )
}

/// The quota key of one period.
fn quota_key(agreement: &str, application: &str, per: QuotaPeriod, period: i64) -> String {
    let p = match per {
        QuotaPeriod::Day => 'd',
        QuotaPeriod::Month => 'm',
    };
    format!("gerbang:quota:{agreement}:{application}:{p}{period}")
}

/// Eight hex digits of FNV-1a over the rate spec: keys of a changed rate differ.
pub fn spec_hash(spec: &RateSpec) -> String {
    let per = match spec.per {
        RatePeriod::Second => "s",
        RatePeriod::Minute => "m",
    };
    let text = format!("{}/{per}/{}", spec.limit, spec.burst);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

/// The script's reply as the local limiter would report it.
fn outcome(
    reply: &[i64],
    call: &LimitCall<'_>,
    quota: Option<(QuotaSpec, i64)>,
) -> Result<LimitOutcome, StoreError> {
    let [verdict, remaining, retry_ms, full_ms, _left] = *reply else {
        return Err(StoreError::Reply);
    };
    let secs = |ms: i64| u64::try_from(ms).unwrap_or(0).div_ceil(1000);
    let rate = call.rate.map(|r| RateInfo {
        limit: r.burst.max(1),
        remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
        reset_secs: secs(full_ms),
    });
    match verdict {
        1 => Ok(LimitOutcome::Pass { rate }),
        0 => Ok(LimitOutcome::Limited {
            reason: Reason::RateLimited,
            retry_after_secs: secs(retry_ms).max(1),
            rate: rate.map(|r| RateInfo {
                remaining: 0,
                reset_secs: r.reset_secs.max(1),
                ..r
            }),
        }),
        2 => {
            let (q, next) = quota.ok_or(StoreError::Reply)?;
            let until_next = u64::try_from(next - call.now).unwrap_or(1).max(1);
            Ok(LimitOutcome::Limited {
                reason: Reason::QuotaExhausted,
                retry_after_secs: until_next,
                rate: Some(RateInfo {
                    limit: u32::try_from(q.limit).unwrap_or(u32::MAX),
                    remaining: 0,
                    reset_secs: until_next,
                }),
            })
        }
        _ => Err(StoreError::Reply),
    }
}

#[cfg(test)]
mod tests;
