//! Console sessions: a random 256-bit id in the `gerbang_console` cookie names a session kept
//! here only (token name, role, CSRF token, times). A session ends after `idle` without a
//! request, `absolute` after sign-in, at sign-out, or when its admin token leaves the
//! configuration. Failed sign-ins are counted per client address.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use gerbang_config::AdminRole;

/// Where the console's time comes from (tests move it forward).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Failed sign-ins allowed per client address per minute.
pub const SIGN_IN_FAILURES_PER_MINUTE: usize = 5;

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The operating system gave no random bytes.
    #[error("no randomness for a session id")]
    Random,
}

/// One signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    /// The admin token's name (recorded with every change).
    pub name: String,
    pub role: AdminRole,
    /// The digest of the token signed in with (the session ends when it leaves the
    /// configuration).
    pub digest: String,
    /// The token every state-changing form carries.
    pub csrf: String,
    pub created: Instant,
    pub last_seen: Instant,
}

/// The sessions and the failed sign-ins.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    idle: Duration,
    absolute: Duration,
    clock: Clock,
}

/// 256 random bits as hex.
pub fn random_hex() -> Result<String, SessionError> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SessionError::Random)?;
    Ok(hex::encode(b))
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration, clock: Clock) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            idle,
            absolute,
            clock,
        }
    }

    /// Starts a session; returns its id.
    pub fn create(
        &self,
        name: &str,
        role: AdminRole,
        digest: &str,
    ) -> Result<String, SessionError> {
        let id = random_hex()?;
        let now = (self.clock)();
        let session = Session {
            name: name.to_owned(),
            role,
            digest: digest.to_owned(),
            csrf: random_hex()?,
            created: now,
            last_seen: now,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Drop the expired ones while here.
        map.retain(|_, s| !self.expired(s, now));
        map.insert(id.clone(), session);
        Ok(id)
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_seen) >= self.idle
            || now.saturating_duration_since(s.created) >= self.absolute
    }

    /// The live session `id`, touched; `still_valid` says whether its token (by name and
    /// role) is still in force: when it is not, the session ends.
    pub fn get(
        &self,
        id: &str,
        still_valid: impl FnOnce(&Session) -> Option<AdminRole>,
    ) -> Option<Session> {
        let now = (self.clock)();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        if self.expired(s, now) {
            map.remove(id);
            return None;
        }
        match still_valid(s) {
            Some(role) => {
                s.role = role;
                s.last_seen = now;
                Some(s.clone())
            }
            None => {
                map.remove(id);
                None
            }
        }
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Whether `client` has used up its failed sign-ins of the last minute.
    pub fn locked_out(&self, client: IpAddr) -> bool {
        let now = (self.clock)();
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = f.get_mut(&client) else {
            return false;
        };
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            q.pop_front();
        }
        q.len() >= SIGN_IN_FAILURES_PER_MINUTE
    }

    /// Counts a failed sign-in of `client`.
    pub fn failed(&self, client: IpAddr) {
        let now = (self.clock)();
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 10_000 {
            // Bounded memory: forget addresses whose failures are all older than a minute.
            f.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_secs(60))
            });
        }
        f.entry(client).or_default().push_back(now);
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn clock() -> (Clock, Arc<AtomicU64>) {
        let start = Instant::now();
        let offset = Arc::new(AtomicU64::new(0));
        let o = Arc::clone(&offset);
        (
            Arc::new(move || start + Duration::from_secs(o.load(Ordering::SeqCst))),
            offset,
        )
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let (c, t) = clock();
        let s = Sessions::new(Duration::from_secs(1800), Duration::from_secs(8 * 3600), c);
        let id = s.create("ops", AdminRole::Admin, "sha256:x").unwrap();
        assert_eq!(id.len(), 64);
        t.store(1799, Ordering::SeqCst);
        assert!(s.get(&id, |x| Some(x.role)).is_some());
        // Idle: 30 minutes after the last request.
        t.store(1799 + 1800, Ordering::SeqCst);
        assert!(s.get(&id, |x| Some(x.role)).is_none());
        // Absolute: 8 hours however busy.
        let id = s.create("ops", AdminRole::Admin, "sha256:x").unwrap();
        let start = 3599;
        for k in 1..=16 {
            t.store(start + k * 1799, Ordering::SeqCst);
            assert!(s.get(&id, |x| Some(x.role)).is_some(), "{k}");
        }
        t.store(start + 8 * 3600, Ordering::SeqCst);
        assert!(s.get(&id, |x| Some(x.role)).is_none());
    }

    #[test]
    fn a_removed_token_ends_its_session() {
        let (c, _) = clock();
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), c);
        let id = s.create("ops", AdminRole::Admin, "sha256:x").unwrap();
        assert!(s.get(&id, |_| None).is_none());
        assert!(s.get(&id, |x| Some(x.role)).is_none());
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address() {
        let (c, t) = clock();
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), c);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..SIGN_IN_FAILURES_PER_MINUTE {
            assert!(!s.locked_out(a));
            s.failed(a);
        }
        assert!(s.locked_out(a));
        assert!(!s.locked_out(b));
        t.store(60, Ordering::SeqCst);
        assert!(!s.locked_out(a));
    }
}
