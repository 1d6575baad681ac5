//! The health of upstream instances, kept apart from discovery (which instances exist) and
//! selection (which one takes a call), as in pingora-load-balancing.
//!
//! Two verdicts decide whether an instance takes traffic:
//! - **active checks** (optional per service): an HTTP probe every interval; `unhealthy_threshold`
//!   failures in a row take the instance out, `healthy_threshold` successes bring it back;
//! - **passive outlier detection** (always on): `consecutive_failures` failed calls in a row
//!   (connect failures, timeouts, resets, 5xx) eject the instance for
//!   `base_ejection × n` (n = how often it was ejected recently), at most `max_ejection`; it
//!   returns by itself when the time is up, as in Envoy.
//!
//! State is atomics only: reading it on the request path takes no lock. A reload carries the
//! state of unchanged instances over ([`crate::Registry::adopt_health`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds on a monotonic clock (since the first call in this process).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Passive outlier detection of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Failed calls in a row that eject an instance; 0 turns passive ejection off.
    pub consecutive_failures: u32,
    /// First ejection time; each further ejection adds as much again.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// Active HTTP health checks of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// Path (and query) probed with `GET` on each instance; 2xx is healthy.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring an unhealthy instance back.
    pub healthy_threshold: u32,
    /// Failures in a row that take a healthy instance out.
    pub unhealthy_threshold: u32,
}

/// What an instance's state is, for readiness, metrics and the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Healthy,
    /// Ejected by passive outlier detection, back after `remaining_ms`.
    Ejected {
        remaining_ms: u64,
    },
    /// Failing its active health check.
    Unhealthy,
}

impl InstanceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Healthy => "healthy",
            InstanceState::Ejected { .. } => "ejected",
            InstanceState::Unhealthy => "unhealthy",
        }
    }
}

/// The live state of one upstream instance.
#[derive(Debug)]
pub struct InstanceHealth {
    /// The active checks' verdict; true until a check says otherwise.
    check_ok: AtomicBool,
    /// Consecutive check results agreeing with each other: successes (`check_ok` false) or
    /// failures (`check_ok` true) counting towards a change of verdict.
    check_streak: AtomicU32,
    /// Consecutive failed calls (passive).
    failures: AtomicU32,
    /// Monotonic ms until which the instance is ejected; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Ejections without a long healthy spell in between (the back-off multiplier).
    ejections: AtomicU32,
    /// Requests being forwarded to the instance now (least-request balancing).
    in_flight: AtomicU32,
}

impl Default for InstanceHealth {
    fn default() -> Self {
        Self {
            check_ok: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
        }
    }
}

impl InstanceHealth {
    /// Whether the instance takes calls at monotonic time `now` (see [`now_ms`]).
    pub fn available(&self, now: u64) -> bool {
        self.check_ok.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// Whether the instance has ever been ejected: until then its availability does not
    /// depend on the time ([`InstanceHealth::available`] at any `now` is `check_ok`).
    pub fn ever_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    pub fn state(&self, now: u64) -> InstanceState {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until > now {
            InstanceState::Ejected {
                remaining_ms: until - now,
            }
        } else if !self.check_ok.load(Ordering::Relaxed) {
            InstanceState::Unhealthy
        } else {
            InstanceState::Healthy
        }
    }

    /// Requests in flight to the instance.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn track(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(std::sync::Arc::clone(self))
    }

    /// A call succeeded (the instance answered with a non-5xx status).
    pub fn report_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed (connect failure, timeout, reset or 5xx). Returns the ejection time when
    /// this failure ejected the instance.
    pub fn report_failure(&self, now: u64, settings: &OutlierSettings) -> Option<Duration> {
        if settings.consecutive_failures == 0 {
            return None;
        }
        // Calls that were in flight when the instance was ejected do not count toward the
        // next ejection.
        if self.ejected_until.load(Ordering::Relaxed) > now {
            return None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < settings.consecutive_failures {
            return None;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until > now {
            return None; // already ejected (calls that were in flight when it happened)
        }
        let max_ms = duration_ms(settings.max_ejection);
        // A spell back in service longer than the longest ejection forgives earlier ejections.
        if until != 0 && now.saturating_sub(until) > max_ms {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = duration_ms(settings.base_ejection)
            .saturating_mul(u64::from(n))
            .min(max_ms)
            .max(1);
        // Only one of several concurrent failures ejects.
        if self
            .ejected_until
            .compare_exchange(until, now + ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.ejections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        Some(Duration::from_millis(ms))
    }

    /// Forgets the active checks' verdict (the service no longer has checks, or new ones).
    pub fn reset_check(&self) {
        self.check_ok.store(true, Ordering::Relaxed);
        self.check_streak.store(0, Ordering::Relaxed);
    }

    /// Records an active check's result. Returns the new verdict when it changed.
    pub fn record_check(&self, ok: bool, settings: &HealthCheckSettings) -> Option<bool> {
        let current = self.check_ok.load(Ordering::Relaxed);
        if ok == current {
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok {
            settings.healthy_threshold
        } else {
            settings.unhealthy_threshold
        };
        if streak >= needed.max(1) {
            self.check_ok.store(ok, Ordering::Relaxed);
            self.check_streak.store(0, Ordering::Relaxed);
            if ok {
                // Back in service by its check: passive failures start from zero.
                self.failures.store(0, Ordering::Relaxed);
            }
            Some(ok)
        } else {
            None
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request in flight to an instance (see [`InstanceHealth::track`]).
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<InstanceHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
        }
    }

    #[test]
    fn consecutive_failures_eject_with_growing_back_off_and_the_instance_returns_by_itself() {
        let h = InstanceHealth::default();
        let s = outlier();
        assert_eq!(h.report_failure(0, &s), None);
        assert_eq!(h.report_failure(0, &s), None);
        assert_eq!(h.report_failure(0, &s), Some(Duration::from_secs(10)));
        assert!(!h.available(5_000));
        assert_eq!(
            h.state(5_000),
            InstanceState::Ejected {
                remaining_ms: 5_000
            }
        );
        assert!(h.available(10_000), "back by itself");
        // Ejected again soon after: twice as long; a third time: capped at max_ejection.
        for _ in 0..2 {
            assert_eq!(h.report_failure(11_000, &s), None);
        }
        assert_eq!(h.report_failure(11_000, &s), Some(Duration::from_secs(20)));
        for _ in 0..2 {
            assert_eq!(h.report_failure(32_000, &s), None);
        }
        assert_eq!(h.report_failure(32_000, &s), Some(Duration::from_secs(25)));
        // A long healthy spell forgives: back to the base time.
        for _ in 0..2 {
            assert_eq!(h.report_failure(200_000, &s), None);
        }
        assert_eq!(h.report_failure(200_000, &s), Some(Duration::from_secs(10)));
    }

    #[test]
    fn failures_while_ejected_do_not_count_toward_the_next_ejection() {
        let h = InstanceHealth::default();
        let s = outlier();
        for _ in 0..3 {
            h.report_failure(0, &s);
        }
        assert!(!h.available(1));
        // Calls that were in flight when it was ejected fail too.
        for _ in 0..5 {
            assert_eq!(h.report_failure(5_000, &s), None);
        }
        // Back at 10 s: one more failure is one, not the sixth.
        assert_eq!(h.report_failure(11_000, &s), None);
        assert!(h.available(11_000));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let h = InstanceHealth::default();
        let s = outlier();
        for _ in 0..10 {
            assert_eq!(h.report_failure(0, &s), None);
            assert_eq!(h.report_failure(0, &s), None);
            h.report_success();
        }
        assert!(h.available(0));
        let off = OutlierSettings {
            consecutive_failures: 0,
            ..s
        };
        for _ in 0..10 {
            assert_eq!(h.report_failure(0, &off), None);
        }
        assert!(h.available(0));
    }

    #[test]
    fn checks_change_the_verdict_only_after_their_thresholds() {
        let h = InstanceHealth::default();
        let s = HealthCheckSettings {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        assert_eq!(h.record_check(false, &s), None);
        assert_eq!(h.record_check(false, &s), None);
        assert_eq!(
            h.record_check(true, &s),
            None,
            "a success breaks the streak"
        );
        assert_eq!(h.record_check(false, &s), None);
        assert_eq!(h.record_check(false, &s), None);
        assert_eq!(h.record_check(false, &s), Some(false));
        assert_eq!(h.state(0), InstanceState::Unhealthy);
        assert!(!h.available(0));
        assert_eq!(h.record_check(true, &s), None);
        assert_eq!(h.record_check(true, &s), Some(true));
        assert!(h.available(0));
    }

    #[test]
    fn in_flight_is_counted_while_the_guard_lives() {
        let h = std::sync::Arc::new(InstanceHealth::default());
        let a = h.track();
        let b = h.track();
        assert_eq!(h.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(h.in_flight(), 0);
    }
}
