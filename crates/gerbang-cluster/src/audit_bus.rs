//! Audit searches across replicas. Each replica keeps its own audit chain in its own data
//! directory (a volume no other replica mounts), so a question such as "who received this
//! citizen's data" must be put to every replica. The asking replica publishes the question on
//! the channel `gerbang:audit:search`; every replica (the asker too) is subscribed, answers
//! from its own log, and pushes its answer to the list `gerbang:audit:reply:{id}` (expiring
//! after a minute). PUBLISH returns how many replicas received the question, so the asker
//! knows how many answers to wait for, and says so when fewer came in time.
//!
//! The questions and answers are opaque text here (the console's JSON); what a replica
//! answers is decided by the handler it serves with.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;

/// The channel questions are published on.
pub const CHANNEL: &str = "gerbang:audit:search";

/// How a replica answers a question (called off the async workers: it reads files).
pub type Handler = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// What came back for one question.
#[derive(Debug)]
pub struct Answers {
    /// How many replicas received the question.
    pub asked: usize,
    /// The answers that arrived in time.
    pub answers: Vec<String>,
}

/// The audit search over Redis.
pub struct AuditBus {
    client: redis::Client,
    conn: ConnectionManager,
    timeout: Duration,
}

fn reply_key(id: &str) -> String {
    format!("gerbang:audit:reply:{id}")
}

impl AuditBus {
    /// The bus on the Redis at `url` (connected on first use).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let conn = crate::lazy_connection(url, timeout).map_err(|e| e.to_string())?;
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            conn,
            timeout,
        })
    }

    /// Puts `question` (id `id`: unique, e.g. random) to every replica and waits up to `wait`
    /// for their answers.
    pub async fn ask(&self, id: &str, question: &str, wait: Duration) -> Result<Answers, String> {
        let mut c = self.conn.clone();
        let message = format!("{id}\n{question}");
        let asked: usize = tokio::time::timeout(
            self.timeout,
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(message)
                .query_async(&mut c),
        )
        .await
        .map_err(|_| "redis did not answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
        let key = reply_key(id);
        let deadline = tokio::time::Instant::now() + wait;
        let mut answers: Vec<String> = Vec::new();
        loop {
            if asked == 0 {
                break;
            }
            answers = tokio::time::timeout(
                self.timeout,
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c),
            )
            .await
            .map_err(|_| "redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
            if answers.len() >= asked || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut c).await;
        Ok(Answers { asked, answers })
    }

    /// Answers every question with `handler` until `stop` completes, re-subscribing after a
    /// lost connection (one attempt a second).
    pub async fn serve(self: Arc<Self>, handler: Handler, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                r = self.serve_once(&handler) => {
                    tracing::warn!(error = %r.err().unwrap_or_default(), "audit search subscription lost; subscribing again in 1 s");
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn serve_once(&self, handler: &Handler) -> Result<(), String> {
        let mut pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| "redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        pubsub.subscribe(CHANNEL).await.map_err(|e| e.to_string())?;
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            let Some((id, question)) = text.split_once('\n') else {
                continue;
            };
            let (id, question) = (id.to_owned(), question.to_owned());
            let handler = Arc::clone(handler);
            let mut c = self.conn.clone();
            let timeout = self.timeout;
            // Answer beside the subscription: a slow search does not hold up the next one.
            tokio::spawn(async move {
                let answer = match tokio::task::spawn_blocking(move || handler(&question)).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "audit search handler failed");
                        return;
                    }
                };
                let key = reply_key(&id);
                let mut p = redis::pipe();
                p.cmd("RPUSH")
                    .arg(&key)
                    .arg(answer)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(60)
                    .ignore();
                match tokio::time::timeout(timeout, p.query_async::<()>(&mut c)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "audit search answer not delivered"),
                    Err(_) => tracing::warn!(
                        "audit search answer not delivered: redis did not answer in time"
                    ),
                }
            });
        }
        Err("the subscription ended".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_redis::TestRedis;

    #[tokio::test]
    #[ignore = "needs redis-server"]
    async fn every_subscribed_replica_answers_and_the_asker_knows_how_many_were_asked() {
        let redis = TestRedis::start();
        let url = redis.url.clone();
        let (tx, rx) = tokio::sync::watch::channel(false);
        for name in ["r0", "r1", "r2"] {
            let bus = Arc::new(AuditBus::new(&url, Duration::from_secs(2)).unwrap());
            let handler: Handler = Arc::new(move |q: &str| format!("{name}:{q}"));
            let mut rx = rx.clone();
            tokio::spawn(bus.serve(handler, async move {
                let _ = rx.wait_for(|v| *v).await;
            }));
        }
        let asker = AuditBus::new(&url, Duration::from_secs(2)).unwrap();
        // Subscriptions are made in the background: wait until all three are in.
        let mut got = None;
        for _ in 0..100 {
            let a = asker
                .ask("q1", "who", Duration::from_secs(2))
                .await
                .unwrap();
            if a.asked == 3 {
                got = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let a = got.expect("three subscribers");
        let mut answers = a.answers.clone();
        answers.sort();
        assert_eq!(answers, ["r0:who", "r1:who", "r2:who"]);
        // Nobody subscribed: asked 0, no waiting.
        let _ = tx.send(true);
        let mut zero = None;
        for _ in 0..100 {
            let a = asker
                .ask("q2", "x", Duration::from_millis(200))
                .await
                .unwrap();
            if a.asked == 0 {
                zero = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(zero.expect("no subscriber left").answers.is_empty());
    }
}
