//! Console sessions shared by the replicas (cluster mode): one Redis key per session,
//! `gerbang:console:session:{id}`, holding its record as JSON and expiring after the idle
//! timeout; each use moves the expiry (GET and PEXPIRE in one round trip). A sign-out deletes
//! the key, so it ends the session on every replica.
//!
//! Failed sign-ins are counted per client address in one key per minute,
//! `gerbang:console:failures:{address}:{minute}` (INCR, expiring after two minutes); the count
//! of the last minute is this minute's plus the previous minute's weighted by the part of it
//! still inside the last 60 seconds (a sliding window from two fixed ones).

use std::time::Duration;

use redis::aio::ConnectionManager;

/// Sessions in Redis.
pub struct SessionStore {
    conn: ConnectionManager,
    timeout: Duration,
}

impl SessionStore {
    /// The store at `url` (connected on first use, reconnecting on its own).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            conn: crate::lazy_connection(url, timeout).map_err(|e| e.to_string())?,
            timeout,
        })
    }

    fn key(id: &str) -> String {
        format!("gerbang:console:session:{id}")
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Result<T, String> {
        let mut c = self.conn.clone();
        tokio::time::timeout(self.timeout, cmd.query_async(&mut c))
            .await
            .map_err(|_| "redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// Stores `record` for session `id`, expiring `idle` from now.
    pub async fn save(&self, id: &str, record: &str, idle: Duration) -> Result<(), String> {
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(Self::key(id))
            .arg(record)
            .arg("PX")
            .arg(idle.as_millis().max(1) as u64)
            .ignore();
        self.run::<()>(&p).await
    }

    /// The record of session `id` when it is alive, its expiry moved to `idle` from now.
    pub async fn load(&self, id: &str, idle: Duration) -> Result<Option<String>, String> {
        let key = Self::key(id);
        let mut p = redis::pipe();
        p.cmd("GET")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(idle.as_millis().max(1) as u64)
            .ignore();
        let (record,): (Option<String>,) = self.run(&p).await?;
        Ok(record)
    }

    /// Ends session `id`.
    pub async fn delete(&self, id: &str) -> Result<(), String> {
        let mut p = redis::pipe();
        p.cmd("DEL").arg(Self::key(id)).ignore();
        self.run::<()>(&p).await
    }

    fn failure_key(client: &str, minute: u64) -> String {
        format!("gerbang:console:failures:{client}:{minute}")
    }

    fn now_secs() -> (u64, u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (now / 60, now % 60)
    }

    /// Counts a failed sign-in from `client`.
    pub async fn count_failure(&self, client: &str) -> Result<(), String> {
        let (minute, _) = Self::now_secs();
        let key = Self::failure_key(client, minute);
        let mut p = redis::pipe();
        p.cmd("INCR")
            .arg(&key)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(120)
            .ignore();
        self.run::<()>(&p).await
    }

    /// Failed sign-ins from `client` within about the last minute, on every replica.
    pub async fn failures(&self, client: &str) -> Result<u64, String> {
        let (minute, second) = Self::now_secs();
        let mut p = redis::pipe();
        p.cmd("MGET")
            .arg(Self::failure_key(client, minute))
            .arg(Self::failure_key(client, minute.saturating_sub(1)));
        let ((this, last),): ((Option<u64>, Option<u64>),) = self.run(&p).await?;
        Ok(sliding_count(this.unwrap_or(0), last.unwrap_or(0), second))
    }
}

/// This minute's count plus the previous minute's for the part of it (`60 - second` of 60
/// seconds) that is still within the last minute, rounded up: never fewer than really
/// happened in this minute.
fn sliding_count(this: u64, last: u64, second: u64) -> u64 {
    let remaining = 60u64.saturating_sub(second.min(60));
    this + (last * remaining).div_ceil(60)
}

#[cfg(test)]
mod tests {
    use super::sliding_count;

    #[test]
    fn the_sliding_count_weighs_the_previous_minute_by_its_overlap() {
        assert_eq!(sliding_count(0, 5, 0), 5);
        assert_eq!(sliding_count(0, 5, 30), 3);
        assert_eq!(sliding_count(2, 5, 59), 3);
        assert_eq!(sliding_count(4, 0, 10), 4);
    }
}
