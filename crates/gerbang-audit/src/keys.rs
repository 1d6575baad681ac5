//! The audit log's keys: the Ed25519 key that seals the chain and the HMAC key that hashes data
//! subjects. Both are files in the gateway's key directory, created by the demo or by
//! `gerbang rotate-key`-style tooling; nothing here prints them.

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 PKCS#8 key")]
    BadSealKey,
    #[error("the subject key must be 64 hex digits (32 bytes)")]
    BadSubjectKey,
    #[error("the system's random number generator failed")]
    Random,
}

/// The Ed25519 key that signs seals.
pub struct SealKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// What a seal signs: a fixed context and the sealed hash, so a seal signature can never be
/// mistaken for any other Ed25519 signature of the same key.
pub(crate) fn seal_message(hash: &str) -> Vec<u8> {
    format!("gerbang-audit-seal-v1\n{hash}").into_bytes()
}

impl SealKey {
    /// A new key as PKCS#8 DER bytes (to store with mode 0600).
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Random)
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(|pair| Self { pair })
            .map_err(|_| KeyError::BadSealKey)
    }

    /// The public key (32 bytes) for verifiers.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub(crate) fn sign(&self, hash: &str) -> Vec<u8> {
        self.pair.sign(&seal_message(hash)).as_ref().to_vec()
    }
}

/// Checks a seal signature with a public key.
pub(crate) fn verify_seal(public_key: &[u8], hash: &str, sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&seal_message(hash), sig)
        .is_ok()
}

/// The key of subject hashes.
pub struct SubjectKey {
    key: hmac::Key,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

impl SubjectKey {
    /// A new key as 64 hex digits.
    pub fn generate_hex() -> Result<String, KeyError> {
        let mut b = [0u8; 32];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| KeyError::Random)?;
        Ok(hex::encode(b))
    }

    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::BadSubjectKey)?;
        if bytes.len() != 32 {
            return Err(KeyError::BadSubjectKey);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// `hmac-sha256:` and the hex HMAC of `subject`.
    pub fn hash(&self, subject: &str) -> String {
        let mac = hmac::sign(&self.key, subject.as_bytes());
        let mut out = String::with_capacity(12 + 64);
        out.push_str("hmac-sha256:");
        out.push_str(&crate::hex_lower(mac.as_ref()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_never_show_themselves() {
        let der = SealKey::generate_pkcs8().unwrap();
        let k = SealKey::from_pkcs8(&der).unwrap();
        let sig = k.sign("abc");
        assert!(verify_seal(&k.public_key(), "abc", &sig));
        assert!(!verify_seal(&k.public_key(), "abd", &sig));
        assert_eq!(format!("{k:?}"), "SealKey(..)");
        let hex_key = SubjectKey::generate_hex().unwrap();
        let s = SubjectKey::from_hex(&hex_key).unwrap();
        let h = s.hash("3603015505900001");
        assert!(h.starts_with("hmac-sha256:") && h.len() == 12 + 64);
        assert!(!h.contains("3603015505900001"));
        assert_eq!(h, s.hash("3603015505900001"));
        let other = SubjectKey::from_hex(&SubjectKey::generate_hex().unwrap()).unwrap();
        assert_ne!(
            h,
            other.hash("3603015505900001"),
            "keyed: another key, another hash"
        );
        assert!(SubjectKey::from_hex("abcd").is_err());
        assert!(SealKey::from_pkcs8(b"nope").is_err());
    }
}
