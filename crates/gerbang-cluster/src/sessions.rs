//! Console sessions shared by the replicas (cluster mode): one Redis key per session,
//! `gerbang:console:session:{id}`, holding its record as JSON and expiring after the idle
//! timeout; each use moves the expiry (GET and PEXPIRE in one round trip). A sign-out deletes
//! the key, so it ends the session on every replica.

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
}
