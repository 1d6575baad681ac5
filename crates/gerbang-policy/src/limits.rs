//! Rate limits and quotas of agreements, per consumer application.
//!
//! Rates use governor's GCRA (a keyed limiter per agreement, keyed by application). Quotas
//! count requests per Asia/Jakarta calendar day or month behind the [`QuotaStore`] trait, so
//! that a cluster-wide store (Redis, PostgreSQL) can replace the in-memory one without
//! touching the decision code.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::{PolicySet, QuotaPeriod, RatePeriod, Reason};

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Western Indonesia Time (WIB), UTC+7: quota periods follow the regency's calendar.
const JAKARTA_OFFSET_SECS: i64 = 7 * 3600;

/// Counts quota use. `try_consume` adds one use to (agreement, application, period) unless
/// `limit` uses are already counted; returns the uses left after this one.
pub trait QuotaStore: Send + Sync {
    fn try_consume(
        &self,
        agreement: &str,
        application: &str,
        period: i64,
        limit: u64,
    ) -> Result<u64, QuotaExceeded>;
}

/// The quota of the current period is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded;

/// A [`QuotaStore`] in this process's memory (one gateway; counts start over on restart).
#[derive(Debug, Default)]
pub struct MemoryQuotaStore {
    counts: Mutex<HashMap<(String, String), (i64, u64)>>,
}

impl QuotaStore for MemoryQuotaStore {
    fn try_consume(
        &self,
        agreement: &str,
        application: &str,
        period: i64,
        limit: u64,
    ) -> Result<u64, QuotaExceeded> {
        let mut counts = self.counts.lock().map_err(|_| QuotaExceeded)?;
        let entry = counts
            .entry((agreement.to_owned(), application.to_owned()))
            .or_insert((period, 0));
        if entry.0 != period {
            *entry = (period, 0);
        }
        if entry.1 >= limit {
            return Err(QuotaExceeded);
        }
        entry.1 += 1;
        Ok(limit - entry.1)
    }
}

/// Rate-limit state for `RateLimit-*` response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// Requests allowed in a burst.
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the full burst is available again (at least 1 when not full).
    pub reset_secs: u64,
}

/// The outcome of the limits of the agreement that allowed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitOutcome {
    Pass {
        rate: Option<RateInfo>,
    },
    Limited {
        reason: Reason,
        retry_after_secs: u64,
        rate: Option<RateInfo>,
    },
}

/// Rate limiters and quota counting for one [`PolicySet`].
pub struct Limits {
    rates: Vec<Option<(Arc<KeyedLimiter>, RateInfo)>>,
    quotas: Arc<dyn QuotaStore>,
    /// This process's share: rates, bursts and quotas are divided by it (rounded up, at least
    /// 1). 1 on one node; the expected number of replicas for cluster mode's local fallback.
    share: u32,
}

/// `n` divided by `share`, rounded up, at least 1.
fn divided(n: u32, share: u32) -> u32 {
    n.div_ceil(share.max(1)).max(1)
}

impl Limits {
    pub fn new(set: &PolicySet, quotas: Arc<dyn QuotaStore>) -> Self {
        Self::with_share(set, quotas, 1)
    }

    /// Limits of one of `share` replicas that limit on their own (cluster mode while the
    /// shared store is away): the rate, the burst and the quota of every agreement divided by
    /// `share`, rounded up, at least 1.
    pub fn with_share(set: &PolicySet, quotas: Arc<dyn QuotaStore>, share: u32) -> Self {
        let share = share.max(1);
        let rates = set
            .agreements()
            .iter()
            .map(|a| {
                let spec = a.rate?;
                let per = NonZeroU32::new(divided(spec.limit, share))?;
                let burst = NonZeroU32::new(divided(spec.burst.max(1), share))?;
                let quota = match spec.per {
                    RatePeriod::Second => Quota::per_second(per),
                    RatePeriod::Minute => Quota::per_minute(per),
                }
                .allow_burst(burst);
                let full_secs = match spec.per {
                    RatePeriod::Second => u64::from(burst.get()).div_ceil(u64::from(per.get())),
                    RatePeriod::Minute => {
                        (u64::from(burst.get()) * 60).div_ceil(u64::from(per.get()))
                    }
                };
                let info = RateInfo {
                    limit: burst.get(),
                    remaining: burst.get(),
                    reset_secs: full_secs.max(1),
                };
                Some((
                    Arc::new(
                        RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
                    ),
                    info,
                ))
            })
            .collect();
        Self {
            rates,
            quotas,
            share,
        }
    }

    /// The divisor of this process's share (1 on one node).
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Takes over the rate-limit state of `old` (built for `old_set`) for every agreement of
    /// `set` with the same id and the same rate: a reload must not hand every caller a fresh
    /// burst. An agreement whose rate changed starts afresh.
    pub fn adopt(&mut self, set: &PolicySet, old: &Limits, old_set: &PolicySet) {
        for (i, a) in set.agreements().iter().enumerate() {
            let Some(j) = old_set
                .agreements()
                .iter()
                .position(|o| o.id == a.id && o.rate == a.rate)
            else {
                continue;
            };
            if let (Some(Some(slot)), Some(Some(prev))) = (self.rates.get_mut(i), old.rates.get(j))
            {
                slot.0 = Arc::clone(&prev.0);
            }
        }
    }

    /// Applies the rate limit, then the quota, of agreement `agreement` (an index into `set`)
    /// to one request of `application` at `now` (seconds since the epoch).
    pub fn check(
        &self,
        set: &PolicySet,
        agreement: usize,
        application: &str,
        now: i64,
    ) -> LimitOutcome {
        let mut rate = None;
        if let Some(Some((limiter, info))) = self.rates.get(agreement) {
            match limiter.check_key(&application.to_owned()) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    rate = Some(RateInfo {
                        remaining,
                        reset_secs: if remaining == info.limit {
                            0
                        } else {
                            info.reset_secs
                        },
                        ..*info
                    });
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let retry = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    return LimitOutcome::Limited {
                        reason: Reason::RateLimited,
                        retry_after_secs: retry.max(1),
                        rate: Some(RateInfo {
                            remaining: 0,
                            reset_secs: info.reset_secs,
                            ..*info
                        }),
                    };
                }
            }
        }
        let Some(a) = set.agreement(agreement) else {
            return LimitOutcome::Pass { rate };
        };
        if let Some(q) = a.quota {
            let (period, next) = period_of(q.per, now);
            let limit = q.limit.div_ceil(u64::from(self.share)).max(1);
            if self
                .quotas
                .try_consume(&a.id, application, period, limit)
                .is_err()
            {
                // The quota is what refuses, so the `RateLimit-*` headers describe it: its
                // limit, nothing left, and the seconds until the next period starts.
                let until_next = u64::try_from(next - now).unwrap_or(1).max(1);
                return LimitOutcome::Limited {
                    reason: Reason::QuotaExhausted,
                    retry_after_secs: until_next,
                    rate: Some(RateInfo {
                        limit: u32::try_from(limit).unwrap_or(u32::MAX),
                        remaining: 0,
                        reset_secs: until_next,
                    }),
                };
            }
        }
        LimitOutcome::Pass { rate }
    }
}

/// The quota period containing `now` and when the next one starts (both in WIB).
pub fn period_of(per: QuotaPeriod, now: i64) -> (i64, i64) {
    let local = now + JAKARTA_OFFSET_SECS;
    let day = local.div_euclid(86_400);
    match per {
        QuotaPeriod::Day => (day, (day + 1) * 86_400 - JAKARTA_OFFSET_SECS),
        QuotaPeriod::Month => {
            let (y, m, _) = civil_from_days(day);
            let index = y * 12 + (m - 1);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                index,
                days_from_civil(ny, nm, 1) * 86_400 - JAKARTA_OFFSET_SECS,
            )
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}
