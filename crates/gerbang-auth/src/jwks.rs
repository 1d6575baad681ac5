//! Keeping an external issuer's keys current: the JWKS is fetched over HTTPS (reqwest), held
//! behind an atomic pointer, refreshed in the background, and fetched again at once when a token
//! names an unknown `kid` — at most once per `min_refetch` so that tokens with made-up key ids
//! cannot turn the gateway into a load generator against the issuer. A failed fetch keeps the
//! last good keys: an issuer outage does not log everyone out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;

use crate::external::IssuerKeys;

/// Why a fetch failed (the previous keys stay in force).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching the JWKS failed: {0}")]
    Fetch(String),
    #[error("the JWKS answered HTTP {0}")]
    Status(u16),
    #[error("the JWKS document is not valid: {0}")]
    Invalid(String),
    #[error("the JWKS holds no usable key")]
    NoUsableKey,
}

/// The live key set of one external issuer.
pub struct JwksSource {
    url: String,
    client: reqwest::Client,
    min_refetch: Duration,
    keys: ArcSwap<IssuerKeys>,
    /// When a token's unknown kid last caused a fetch.
    last_attempt: Mutex<Option<Instant>>,
    /// Serialises fetches so that a burst of unknown-kid tokens makes one request.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches that swapped in new keys, and fetches that failed (exported as metrics).
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Counts key sets that dropped or replaced a key: tokens verified before may no longer
    /// verify, so cached verifications made under an earlier generation are judged again.
    generation: AtomicU64,
}

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 512 * 1024;

impl JwksSource {
    /// A source with no keys yet; call [`JwksSource::refresh`] before serving.
    pub fn new(url: String, client: reqwest::Client, min_refetch: Duration) -> Self {
        Self {
            url,
            client,
            min_refetch,
            keys: ArcSwap::from_pointee(IssuerKeys::default()),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The key generation: it moves when a fetch drops or replaces a key (not when one is
    /// added). Read it before verifying; a verification is current while it stays.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Fetches so far: (succeeded, failed).
    pub fn fetch_counts(&self) -> (u64, u64) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<IssuerKeys> {
        self.keys.load_full()
    }

    /// Fetches the JWKS and, if it is valid and holds a usable key, swaps it in. Returns the
    /// number of usable keys.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let _one_at_a_time = self.fetching.lock().await;
        self.fetch_and_swap().await
    }

    async fn fetch_and_swap(&self) -> Result<usize, JwksError> {
        let result = self.fetch_and_swap_inner().await;
        let counter = if result.is_ok() {
            &self.succeeded
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn fetch_and_swap_inner(&self) -> Result<usize, JwksError> {
        let res = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if !res.status().is_success() {
            return Err(JwksError::Status(res.status().as_u16()));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::Invalid("document too large".into()));
        }
        let body = res
            .bytes()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(JwksError::Invalid("document too large".into()));
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| JwksError::Invalid(e.to_string()))?;
        let keys = IssuerKeys::from_jwks(&set);
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        let n = keys.len();
        let dropped_one = !keys.retains(&self.keys.load());
        // Keys first, then the generation: whoever reads the new generation then loads the new
        // keys, so no verification with a dropped key is ever recorded under it.
        self.keys.store(Arc::new(keys));
        if dropped_one {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        Ok(n)
    }

    /// Called when a token names `kid` that the current keys lack: fetches again unless a
    /// refetch for an unknown kid happened within `min_refetch`. Returns whether `kid` is known
    /// afterwards.
    pub async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        let _one_at_a_time = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if self.keys.load().contains(kid) {
            return true;
        }
        let recent = self
            .last_attempt
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() < self.min_refetch);
        if recent {
            return false;
        }
        // Only refetches for unknown kids count against the limit: a scheduled refresh a moment
        // ago must not delay a key the issuer has just rotated in.
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        if let Err(e) = self.fetch_and_swap().await {
            tracing::warn!(url = %self.url, error = %e, "JWKS refetch for an unknown key id failed");
        }
        self.keys.load().contains(kid)
    }

    /// Refreshes every `interval` until `shutdown` completes; failures are logged and the last
    /// good keys stay.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.refresh().await {
                Ok(n) => tracing::debug!(url = %self.url, keys = n, "JWKS refreshed"),
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the last good keys")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_pem, KeyRing, SigningKey};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A mock issuer serving whatever JWKS (or status) is set, counting requests.
    struct MockIdp {
        url: String,
        body: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
    }

    async fn mock() -> MockIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new((200u16, String::from("{\"keys\":[]}"))));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (Arc::clone(&body), Arc::clone(&hits));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (b, h) = (Arc::clone(&b), Arc::clone(&h));
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, text) = b.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        MockIdp { url, body, hits }
    }

    fn jwks_for(kids: &[&str]) -> String {
        let keys = kids
            .iter()
            .map(|k| SigningKey::from_pem(k, generate_pem().unwrap().as_bytes()).unwrap())
            .collect();
        serde_json::to_string(&KeyRing::new(keys).unwrap().jwks()).unwrap()
    }

    #[tokio::test]
    async fn fetches_refetches_on_unknown_kid_with_a_rate_limit_and_survives_outages() {
        let idp = mock().await;
        *idp.body.lock().unwrap() = (200, jwks_for(&["a"]));
        let src = JwksSource::new(
            idp.url.clone(),
            reqwest::Client::new(),
            Duration::from_millis(300),
        );
        assert_eq!(src.refresh().await.unwrap(), 1);
        assert!(src.keys().contains("a"));

        // Rotation at the issuer: an unknown kid triggers one refetch.
        *idp.body.lock().unwrap() = (200, jwks_for(&["b"]));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(src.refresh_for_unknown_kid("b").await);
        let hits = idp.hits.load(Ordering::SeqCst);
        // Made-up kids right after: no new request.
        for _ in 0..20 {
            assert!(!src.refresh_for_unknown_kid("made-up").await);
        }
        assert_eq!(idp.hits.load(Ordering::SeqCst), hits, "rate limited");

        // Outage and garbage: the last good keys stay.
        *idp.body.lock().unwrap() = (503, "down".into());
        assert!(matches!(src.refresh().await, Err(JwksError::Status(503))));
        assert!(src.keys().contains("b"));
        *idp.body.lock().unwrap() = (200, "{not json".into());
        assert!(matches!(src.refresh().await, Err(JwksError::Invalid(_))));
        *idp.body.lock().unwrap() = (
            200,
            "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"s\",\"k\":\"c2VjcmV0\"}]}".into(),
        );
        assert!(matches!(src.refresh().await, Err(JwksError::NoUsableKey)));
        assert!(src.keys().contains("b"));
        // Two good fetches (start, the rotated kid) and three failed ones, as the metrics see.
        assert_eq!(src.fetch_counts(), (2, 3));
        // "a" was dropped by the rotation; failed fetches change nothing.
        assert_eq!(src.generation(), 1);

        // Unreachable issuer.
        let gone = JwksSource::new(
            "http://127.0.0.1:9/jwks".into(),
            reqwest::Client::new(),
            Duration::ZERO,
        );
        assert!(matches!(gone.refresh().await, Err(JwksError::Fetch(_))));
        assert!(gone.keys().is_empty());
    }

    #[tokio::test]
    async fn the_generation_moves_when_a_key_is_dropped_or_replaced_only() {
        let idp = mock().await;
        // (kid, PEM) pairs.
        let key = |kid: &str| (kid.to_owned(), generate_pem().unwrap());
        let (a, b) = (key("a"), key("b"));
        let doc = |keys: Vec<&(String, String)>| {
            let ring = KeyRing::new(
                keys.into_iter()
                    .map(|(kid, pem)| SigningKey::from_pem(kid, pem.as_bytes()).unwrap())
                    .collect(),
            )
            .unwrap();
            serde_json::to_string(&ring.jwks()).unwrap()
        };
        let src = JwksSource::new(idp.url.clone(), reqwest::Client::new(), Duration::ZERO);
        let b2 = key("b");
        let steps = [
            (doc(vec![&a]), 0, "first keys"),
            (doc(vec![&a]), 0, "the same again"),
            (doc(vec![&a, &b]), 0, "one added"),
            (doc(vec![&b]), 1, "a dropped"),
            (doc(vec![&b2]), 2, "b replaced under the same kid"),
        ];
        for (body, want, what) in steps {
            *idp.body.lock().unwrap() = (200, body);
            src.refresh().await.unwrap();
            assert_eq!(src.generation(), want, "{what}");
        }
    }
}
