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
    /// The shared session store (cluster mode) did not take it.
    #[error("the session store: {0}")]
    Store(String),
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

/// A session as a store shared by replicas keeps it (its role is looked up again from the
/// token in force on every request).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SharedSession {
    pub name: String,
    pub digest: String,
    pub csrf: String,
    /// Unix seconds of the sign-in (the absolute limit counts from it on every replica).
    pub created_unix: i64,
    /// The role given at sign-in through an external issuer (a token's role is looked up
    /// again instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A future of a shared session store.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// Where sessions live when several replicas serve the console (cluster mode: Redis), so that
/// a person signed in on one replica is signed in on all and a sign-out ends the session
/// everywhere. The store expires a session `idle` after its last use.
pub trait SharedSessions: Send + Sync {
    /// Stores session `id`, expiring `idle` from now.
    fn save<'a>(
        &'a self,
        id: &'a str,
        session: &'a SharedSession,
        idle: Duration,
    ) -> StoreFuture<'a, ()>;
    /// Session `id` if it is alive, its expiry moved to `idle` from now.
    fn load<'a>(&'a self, id: &'a str, idle: Duration) -> StoreFuture<'a, Option<SharedSession>>;
    /// Ends session `id`.
    fn delete<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;
    /// Counts a failed sign-in from `client` (in this minute's window).
    fn count_failure<'a>(&'a self, client: &'a str) -> StoreFuture<'a, ()>;
    /// Failed sign-ins from `client` in the last minute, on every replica.
    fn failures<'a>(&'a self, client: &'a str) -> StoreFuture<'a, u64>;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The sessions and the failed sign-ins.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    idle: Duration,
    absolute: Duration,
    clock: Clock,
    /// Cluster mode: the store every replica reads (then the map above is not used).
    shared: Option<Arc<dyn SharedSessions>>,
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
            shared: None,
        }
    }

    /// Keeps sessions in `store` (shared by the replicas) instead of this process.
    pub fn with_shared(mut self, store: Option<Arc<dyn SharedSessions>>) -> Self {
        self.shared = store;
        self
    }

    /// [`Sessions::create`], in the shared store when there is one.
    pub async fn create_async(
        &self,
        name: &str,
        role: AdminRole,
        digest: &str,
    ) -> Result<String, SessionError> {
        let Some(store) = &self.shared else {
            return self.create(name, role, digest);
        };
        let id = random_hex()?;
        let record = SharedSession {
            name: name.to_owned(),
            digest: digest.to_owned(),
            csrf: random_hex()?,
            created_unix: unix_now(),
            role: Some(role.as_str().to_owned()),
        };
        store
            .save(&id, &record, self.idle)
            .await
            .map_err(SessionError::Store)?;
        Ok(id)
    }

    /// [`Sessions::get`], from the shared store when there is one. A store that cannot be
    /// reached is no session (sign in again later): never a session that was ended elsewhere.
    pub async fn get_async(
        &self,
        id: &str,
        still_valid: impl FnOnce(&Session) -> Option<AdminRole>,
    ) -> Option<Session> {
        let Some(store) = &self.shared else {
            return self.get(id, still_valid);
        };
        let record = match store.load(id, self.idle).await {
            Ok(r) => r?,
            Err(e) => {
                tracing::warn!(error = %e, "console session store not reachable");
                return None;
            }
        };
        let age = u64::try_from(unix_now() - record.created_unix).unwrap_or(0);
        if Duration::from_secs(age) >= self.absolute {
            let _ = store.delete(id).await;
            return None;
        }
        let now = (self.clock)();
        // The stored role (least power when unreadable); `still_valid` decides what holds.
        let stored = record
            .role
            .as_deref()
            .and_then(AdminRole::parse)
            .unwrap_or(AdminRole::Viewer);
        let mut session = Session {
            name: record.name,
            role: stored,
            digest: record.digest,
            csrf: record.csrf,
            created: now.checked_sub(Duration::from_secs(age)).unwrap_or(now),
            last_seen: now,
        };
        match still_valid(&session) {
            Some(role) => {
                session.role = role;
                Some(session)
            }
            None => {
                let _ = store.delete(id).await;
                None
            }
        }
    }

    /// [`Sessions::remove`], in the shared store too.
    pub async fn remove_async(&self, id: &str) {
        self.remove(id);
        if let Some(store) = &self.shared {
            if let Err(e) = store.delete(id).await {
                tracing::warn!(error = %e, "console session could not be ended in the shared store");
            }
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

    /// Whether `client` has used up its failed sign-ins of the last minute: on this replica,
    /// or (cluster mode) on all of them together. A store that cannot be reached leaves this
    /// replica's own count in force.
    pub async fn locked_out(&self, client: IpAddr) -> bool {
        if self.locked_out_here(client) {
            return true;
        }
        let Some(store) = &self.shared else {
            return false;
        };
        match store.failures(&client.to_string()).await {
            Ok(n) => n >= SIGN_IN_FAILURES_PER_MINUTE as u64,
            Err(e) => {
                tracing::warn!(error = %e, "console: shared sign-in failures unavailable; counting on this replica");
                false
            }
        }
    }

    /// Counts a failed sign-in of `client`, here and (cluster mode) in the shared store.
    pub async fn failed(&self, client: IpAddr) {
        self.failed_here(client);
        if let Some(store) = &self.shared {
            if let Err(e) = store.count_failure(&client.to_string()).await {
                tracing::warn!(error = %e, "console: a failed sign-in could not be counted in the shared store");
            }
        }
    }

    fn locked_out_here(&self, client: IpAddr) -> bool {
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

    fn failed_here(&self, client: IpAddr) {
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
            assert!(!s.locked_out_here(a));
            s.failed_here(a);
        }
        assert!(s.locked_out_here(a));
        assert!(!s.locked_out_here(b));
        t.store(60, Ordering::SeqCst);
        assert!(!s.locked_out_here(a));
    }
}
