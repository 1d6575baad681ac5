//! The built-in issuer's signing keys: ES256 (P-256) keys with a `kid` each. One key is active
//! and signs; older keys stay in the ring (and in the published JWKS) so that tokens they signed
//! verify until those tokens have expired.
//!
//! Each key has an activation time: a new key is published (and verifies) at once, but signs
//! only from its activation on, so that every replica of a cluster publishes it before any
//! replica signs with it. Which key signs is decided at signing time
//! ([`KeyRing::active`]): the newest key whose activation has passed.

use std::time::SystemTime;

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("not a PEM-encoded P-256 private key (PKCS#8)")]
    InvalidPem,
    #[error("a key id must be 1-64 characters of [A-Za-z0-9._-]")]
    InvalidKid,
    #[error("the key ring is empty")]
    Empty,
    #[error("key `{0}` is in the ring twice")]
    DuplicateKid(String),
}

/// One signing key.
pub struct SigningKey {
    pub kid: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new P-256 private key in PKCS#8 PEM, for a key file.
pub fn generate_pem() -> Result<String, KeyError> {
    let doc = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .map_err(|_| KeyError::Generate)?;
    Ok(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        doc.as_ref().to_vec(),
    )))
}

impl SigningKey {
    /// Reads a key from its PKCS#8 PEM text.
    pub fn from_pem(kid: &str, pem_text: &[u8]) -> Result<Self, KeyError> {
        if !valid_kid(kid) {
            return Err(KeyError::InvalidKid);
        }
        let encoding = EncodingKey::from_ec_pem(pem_text).map_err(|_| KeyError::InvalidPem)?;
        let mut public = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|_| KeyError::InvalidPem)?;
        public.common.key_id = Some(kid.to_owned());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let decoding = DecodingKey::from_jwk(&public).map_err(|_| KeyError::InvalidPem)?;
        Ok(Self {
            kid: kid.to_owned(),
            encoding,
            decoding,
            public,
        })
    }
}

/// The issuer's keys, newest first: the newest whose activation has passed signs, all verify.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
    /// When each key (same index) may start signing; `None`: at once.
    activation: Vec<Option<SystemTime>>,
}

impl KeyRing {
    /// A ring whose first key is the active one (every key may sign at once).
    pub fn new(keys: Vec<SigningKey>) -> Result<Self, KeyError> {
        let n = keys.len();
        Self::with_activation(keys.into_iter().zip(std::iter::repeat_n(None, n)).collect())
    }

    /// A ring of keys, newest first, each with the time from which it may sign (`None`: at
    /// once). The times should not decrease towards the front.
    pub fn with_activation(keys: Vec<(SigningKey, Option<SystemTime>)>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        for (i, (k, _)) in keys.iter().enumerate() {
            if keys[..i].iter().any(|(o, _)| o.kid == k.kid) {
                return Err(KeyError::DuplicateKid(k.kid.clone()));
            }
        }
        let (keys, activation) = keys.into_iter().unzip();
        Ok(Self { keys, activation })
    }

    /// The key that signs new tokens now.
    pub fn active(&self) -> Option<&SigningKey> {
        self.active_at(SystemTime::now())
    }

    /// The key that signs at `now`: the newest whose activation has passed; when none has
    /// (a clock behind the one that made the keys), the oldest, so that something signs.
    pub fn active_at(&self, now: SystemTime) -> Option<&SigningKey> {
        self.keys
            .iter()
            .zip(&self.activation)
            .find(|(_, at)| at.is_none_or(|t| t <= now))
            .map(|(k, _)| k)
            .or_else(|| self.keys.last())
    }

    /// When `kid` starts (or started) signing; `None` for an unknown kid or a key active at
    /// once.
    pub fn activation(&self, kid: &str) -> Option<SystemTime> {
        self.keys
            .iter()
            .position(|k| k.kid == kid)
            .and_then(|i| self.activation[i])
    }

    /// The key ids, newest first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    pub fn find(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The public keys, as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.public.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_publish_only_public_parts() {
        let pem_text = generate_pem().unwrap();
        assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----"));
        let k = SigningKey::from_pem("2026-11-a", pem_text.as_bytes()).unwrap();
        let ring = KeyRing::new(vec![k]).unwrap();
        let jwks = serde_json::to_value(ring.jwks()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["kid"], "2026-11-a");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["use"], "sig");
        assert!(key["x"].is_string() && key["y"].is_string());
        assert!(key.get("d").is_none(), "no private part: {key}");
        assert!(!format!("{ring:?}").contains("PRIVATE"));
    }

    #[test]
    fn the_newest_key_whose_activation_passed_signs() {
        use std::time::Duration;
        let pem_text = generate_pem().unwrap();
        let key = |kid: &str| SigningKey::from_pem(kid, pem_text.as_bytes()).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        // c activates at t0+100, b at t0, a (the first key) at once.
        let ring = KeyRing::with_activation(vec![
            (key("c"), Some(t0 + s(100))),
            (key("b"), Some(t0)),
            (key("a"), None),
        ])
        .unwrap();
        assert_eq!(ring.active_at(t0 - s(1)).unwrap().kid, "a");
        assert_eq!(ring.active_at(t0).unwrap().kid, "b");
        assert_eq!(ring.active_at(t0 + s(99)).unwrap().kid, "b");
        assert_eq!(ring.active_at(t0 + s(100)).unwrap().kid, "c");
        // All three are published and verify from the start.
        assert_eq!(ring.jwks().keys.len(), 3);
        assert!(ring.find("c").is_some());
        assert_eq!(ring.activation("c"), Some(t0 + s(100)));
        assert_eq!(ring.activation("a"), None);
        // Nothing active yet (a clock behind the keys): the oldest signs.
        let ring =
            KeyRing::with_activation(vec![(key("y"), Some(t0 + s(5))), (key("x"), Some(t0))])
                .unwrap();
        assert_eq!(ring.active_at(t0 - s(10)).unwrap().kid, "x");
        assert_eq!(ring.kids().collect::<Vec<_>>(), ["y", "x"]);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let pem_text = generate_pem().unwrap();
        assert!(matches!(
            SigningKey::from_pem("bad kid", pem_text.as_bytes()),
            Err(KeyError::InvalidKid)
        ));
        assert!(matches!(
            SigningKey::from_pem(
                "k",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(KeyError::InvalidPem)
        ));
        assert!(matches!(KeyRing::new(vec![]), Err(KeyError::Empty)));
        let a = SigningKey::from_pem("k", pem_text.as_bytes()).unwrap();
        let b = SigningKey::from_pem("k", pem_text.as_bytes()).unwrap();
        assert!(matches!(
            KeyRing::new(vec![a, b]),
            Err(KeyError::DuplicateKid(_))
        ));
    }
}
