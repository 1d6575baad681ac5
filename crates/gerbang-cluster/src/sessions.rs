//! Console sessions shared by the replicas (cluster mode): one Redis key per session,
//! `gerbang:console:session:{id}`, holding its record as JSON and expiring after the idle
//! timeout; each use moves the expiry (GET and PEXPIRE in one round trip). A sign-out deletes
//! the key, so it ends the session on every replica.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// Sessions in Redis (connected lazily; reconnecting with back-off).
pub struct SessionStore {
    url: String,
    timeout: Duration,
    conn: tokio::sync::RwLock<Option<ConnectionManager>>,
}

impl SessionStore {
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self {
            url: url.to_owned(),
            timeout,
            conn: tokio::sync::RwLock::new(None),
        }
    }

    fn key(id: &str) -> String {
        format!("gerbang:console:session:{id}")
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.conn.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            self.timeout * 4,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| "redis did not answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Result<T, String> {
        let mut c = self.conn().await?;
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
