//! API keys for legacy systems that cannot do OAuth2, sent as `X-API-Key` (never in the query
//! string). Keys are made by the gateway with 256 bits of randomness, so a fast SHA-256 digest is
//! a safe stored form (unlike a human-chosen secret, nothing is gained by a slow hash, and a slow
//! hash on every request would be a denial-of-service lever). Only the digest is stored.

use std::collections::HashMap;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Prefix of every key the gateway makes, so that leaked keys are easy to find in code scans.
pub const KEY_PREFIX: &str = "gk_";
const DIGEST_PREFIX: &str = "sha256:";

/// Why an API key was refused. `as_str` gives the stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyRefusal {
    #[error("malformed API key")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("expired API key")]
    Expired,
}

impl ApiKeyRefusal {
    /// Every refusal (keep in step with `as_str`).
    pub const ALL: [ApiKeyRefusal; 3] = [
        ApiKeyRefusal::Malformed,
        ApiKeyRefusal::Unknown,
        ApiKeyRefusal::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyRefusal::Malformed => "api_key_malformed",
            ApiKeyRefusal::Unknown => "api_key_unknown",
            ApiKeyRefusal::Expired => "api_key_expired",
        }
    }
}

/// A new key and its stored form: `(key, "sha256:<hex>")`.
pub fn generate() -> Option<(String, String)> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let stored = digest_of(&key);
    Some((key, stored))
}

/// The stored form of `key`.
pub fn digest_of(key: &str) -> String {
    format!(
        "{DIGEST_PREFIX}{}",
        hex::encode(digest(&SHA256, key.as_bytes()))
    )
}

/// Whether `stored` is a digest this module produces, for config validation.
pub fn is_valid_digest(stored: &str) -> bool {
    stored.strip_prefix(DIGEST_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// One registered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// The application, `agency/app`.
    pub application: String,
    /// Unix seconds after which the key is refused; `None` for no expiry.
    pub expires_at: Option<u64>,
}

/// All registered keys, by digest.
#[derive(Debug, Default)]
pub struct ApiKeyStore {
    by_digest: HashMap<String, ApiKeyEntry>,
}

impl ApiKeyStore {
    /// Registers a stored digest; `false` when it is malformed or already registered.
    pub fn insert(&mut self, stored: &str, entry: ApiKeyEntry) -> bool {
        if !is_valid_digest(stored) || self.by_digest.contains_key(stored) {
            return false;
        }
        self.by_digest.insert(stored.to_owned(), entry);
        true
    }

    /// The application a presented key belongs to, at `now` (Unix seconds).
    pub fn verify(&self, presented: &str, now: u64) -> Result<&ApiKeyEntry, ApiKeyRefusal> {
        let well_formed = presented.len() == KEY_PREFIX.len() + 64
            && presented.starts_with(KEY_PREFIX)
            && presented[KEY_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Err(ApiKeyRefusal::Malformed);
        }
        // Looking up a digest reveals nothing about the key through timing.
        let entry = self
            .by_digest
            .get(&digest_of(presented))
            .ok_or(ApiKeyRefusal::Unknown)?;
        match entry.expires_at {
            Some(t) if now >= t => Err(ApiKeyRefusal::Expired),
            _ => Ok(entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_until_expiry() {
        let (key, stored) = generate().unwrap();
        assert!(key.starts_with("gk_") && key.len() == 67);
        assert!(is_valid_digest(&stored));
        assert!(
            !stored.contains(&key[3..]),
            "the digest does not contain the key"
        );
        let (other, _) = generate().unwrap();
        assert_ne!(key, other);

        let mut store = ApiKeyStore::default();
        assert!(store.insert(
            &stored,
            ApiKeyEntry {
                application: "bapenda/esppt".into(),
                expires_at: Some(2_000)
            }
        ));
        assert!(!store.insert(
            &stored,
            ApiKeyEntry {
                application: "x/y".into(),
                expires_at: None
            }
        ));
        assert_eq!(
            store.verify(&key, 1_999).unwrap().application,
            "bapenda/esppt"
        );
        assert_eq!(store.verify(&key, 2_000), Err(ApiKeyRefusal::Expired));
        assert_eq!(store.verify(&other, 1), Err(ApiKeyRefusal::Unknown));
    }

    #[test]
    fn malformed_keys_and_digests_are_refused() {
        let store = ApiKeyStore::default();
        for bad in [
            "",
            "gk_",
            "gk_xyz",
            "sk_0000000000000000000000000000000000000000000000000000000000000000",
            &format!("gk_{}", "g".repeat(64)),
        ] {
            assert_eq!(store.verify(bad, 0), Err(ApiKeyRefusal::Malformed), "{bad}");
        }
        assert!(!is_valid_digest("sha256:abc"));
        assert!(!is_valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_valid_digest(&format!("md5:{}", "a".repeat(64))));
        assert_eq!(ApiKeyRefusal::Expired.as_str(), "api_key_expired");
    }
}
