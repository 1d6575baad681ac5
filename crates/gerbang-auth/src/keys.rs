//! The built-in issuer's signing keys: ES256 (P-256) keys with a `kid` each. One key is active
//! and signs; older keys stay in the ring (and in the published JWKS) so that tokens they signed
//! verify until those tokens have expired.

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

/// The issuer's keys: the first signs, all verify.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl KeyRing {
    /// A ring whose first key is the active one.
    pub fn new(keys: Vec<SigningKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.kid == k.kid) {
                return Err(KeyError::DuplicateKid(k.kid.clone()));
            }
        }
        Ok(Self { keys })
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.first()
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
