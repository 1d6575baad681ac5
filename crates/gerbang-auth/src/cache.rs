//! A bounded cache of verified tokens, so that an application calling again with the same token
//! does not pay for a signature check on every request.
//!
//! Entries are found by a keyed 64-bit hash of the token's last bytes (its signature, which
//! differs between any two tokens the issuers signed; only verified tokens are ever inserted)
//! and confirmed by comparing the whole token, so a hash collision can never hand one caller
//! another's identity. An entry lives until
//! its token's `exp`; a full cache first drops expired entries, then the oldest half of a shard.
//! Tokens are kept only in memory and never printed.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use crate::Principal;

const SHARDS: usize = 16;

/// Bytes of the token's end that are hashed: within an ES256 or RS256 signature.
const HASHED_TAIL: usize = 32;

struct Entry {
    token: Box<str>,
    principal: Arc<Principal>,
    /// The token's `exp` (seconds since the epoch).
    exp: u64,
    inserted: u64,
    /// The key generation of the issuer the token was verified against (0 when it has none).
    generation: u64,
}

/// See the module documentation.
pub struct TokenCache {
    hasher: foldhash::fast::RandomState,
    /// Keyed by the keyed hash of a verified token; the maps hash that word once more, with
    /// foldhash (a client cannot choose it).
    shards: Vec<Mutex<HashMap<u64, Entry, foldhash::fast::RandomState>>>,
    per_shard: usize,
    clock: AtomicU64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    /// A cache holding at most about `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard,
            clock: AtomicU64::new(0),
        }
    }

    /// The keyed hash of a token: its length and last [`HASHED_TAIL`] bytes.
    fn key(&self, token: &[u8]) -> u64 {
        let b = token;
        let tail = b.get(b.len().saturating_sub(HASHED_TAIL)..).unwrap_or(b);
        self.hasher.hash_one((b.len(), tail))
    }

    fn shard(&self, key: u64) -> Option<&Mutex<HashMap<u64, Entry, foldhash::fast::RandomState>>> {
        self.shards.get((key as usize) % SHARDS)
    }

    /// The caller `token` proved, if it was verified before and has not expired at `now_secs`.
    pub fn get_at(&self, token: impl AsRef<[u8]>, now_secs: u64) -> Option<Arc<Principal>> {
        self.get_entry_at(token, now_secs).map(|(p, _)| p)
    }

    /// As [`TokenCache::get_at`], with the key generation the token was verified under.
    pub fn get_entry_at(
        &self,
        token: impl AsRef<[u8]>,
        now_secs: u64,
    ) -> Option<(Arc<Principal>, u64)> {
        let token = token.as_ref();
        let key = self.key(token);
        let mut shard = self.shard(key)?.lock().ok()?;
        let entry = shard.get(&key)?;
        if entry.token.as_bytes() != token {
            return None;
        }
        if entry.exp <= now_secs {
            shard.remove(&key);
            return None;
        }
        Some((Arc::clone(&entry.principal), entry.generation))
    }

    /// The caller `token` proved, if it was verified before and has not expired.
    pub fn get(&self, token: impl AsRef<[u8]>) -> Option<Arc<Principal>> {
        self.get_at(token, now())
    }

    /// Remembers a verified token and its caller until `exp`.
    pub fn insert(&self, token: &str, principal: Arc<Principal>, exp: u64) {
        self.insert_at_generation(token, principal, exp, 0);
    }

    /// As [`TokenCache::insert`], noting the key generation of the issuer that verified it.
    pub fn insert_at_generation(
        &self,
        token: &str,
        principal: Arc<Principal>,
        exp: u64,
        generation: u64,
    ) {
        let key = self.key(token.as_bytes());
        let seq = self.clock.fetch_add(1, Ordering::Relaxed);
        let Some(Ok(mut shard)) = self.shard(key).map(|s| s.lock()) else {
            return;
        };
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let t = now();
            shard.retain(|_, e| e.exp > t);
            if shard.len() >= self.per_shard {
                // Drop the older half.
                let mut ages: Vec<u64> = shard.values().map(|e| e.inserted).collect();
                ages.sort_unstable();
                let cut = ages.get(ages.len() / 2).copied().unwrap_or(u64::MAX);
                shard.retain(|_, e| e.inserted >= cut);
            }
        }
        shard.insert(
            key,
            Entry {
                token: token.into(),
                principal,
                exp,
                inserted: seq,
                generation,
            },
        );
    }

    /// Tokens held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Arc<Principal> {
        Arc::new(Principal {
            application: "dinkes/simpus".into(),
            agency: "dinkes".into(),
            method: crate::AuthMethod::IssuedToken,
            scopes: Vec::new(),
            index: 0,
        })
    }

    #[test]
    fn hits_until_exp_and_only_for_the_same_token() {
        let c = TokenCache::new(100);
        c.insert("token-a", principal(), 1_000);
        assert_eq!(
            c.get_at("token-a", 999).unwrap().application,
            "dinkes/simpus"
        );
        assert!(c.get_at("token-b", 999).is_none());
        assert!(c.get_at("token-a", 1_000).is_none(), "expired at exp");
        assert!(
            c.get_at("token-a", 500).is_none(),
            "expired entries are dropped"
        );
    }

    #[test]
    fn stays_bounded() {
        let c = TokenCache::new(64);
        let far = now() + 3600;
        for i in 0..10_000 {
            c.insert(&format!("token-{i}"), principal(), far);
        }
        assert!(c.len() <= 64 + SHARDS, "{}", c.len());
        // The newest entries survive.
        assert!(c.get("token-9999").is_some());
    }

    #[test]
    fn expired_entries_make_room_first() {
        let c = TokenCache::new(16);
        for i in 0..16 {
            c.insert(&format!("old-{i}"), principal(), 1);
        }
        c.insert("fresh", principal(), now() + 60);
        assert!(c.get("fresh").is_some());
        assert!(c.len() <= 16);
    }
}
