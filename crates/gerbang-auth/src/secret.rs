//! Client secrets and API keys: stored as argon2id hashes in PHC string form
//! (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), compared by the hash function, never as text.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Why a secret could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a secret must be at least {0} characters")]
    TooShort(usize),
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// Shortest secret accepted for hashing.
pub const MIN_SECRET_LEN: usize = 12;

/// Hashes `secret` with argon2id and a fresh random salt.
pub fn hash_secret(secret: &str) -> Result<String, SecretError> {
    if secret.chars().count() < MIN_SECRET_LEN {
        return Err(SecretError::TooShort(MIN_SECRET_LEN));
    }
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| SecretError::Hash(e.to_string()))
}

/// Whether `secret` matches `hash` (a PHC string). A malformed hash never matches.
pub fn verify_secret(hash: &str, secret: &str) -> bool {
    Argon2::default()
        .verify_password(secret.as_bytes(), hash)
        .is_ok()
}

/// Whether `hash` is an argon2 PHC string this module can verify against, for config
/// validation.
pub fn is_valid_hash(hash: &str) -> bool {
    hash.starts_with("$argon2") && argon2::password_hash::phc::PasswordHash::new(hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_secret("demo-secret-simpus").unwrap();
        let b = hash_secret("demo-secret-simpus").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "fresh salt each time");
        assert!(verify_secret(&a, "demo-secret-simpus"));
        assert!(verify_secret(&b, "demo-secret-simpus"));
        assert!(!verify_secret(&a, "demo-secret-simpuS"));
        assert!(!verify_secret(&a, ""));
        assert!(is_valid_hash(&a));
    }

    #[test]
    fn short_secrets_and_malformed_hashes_are_refused() {
        assert!(matches!(
            hash_secret("short"),
            Err(SecretError::TooShort(_))
        ));
        assert!(!verify_secret("not-a-hash", "anything-long-enough"));
        assert!(!verify_secret(
            "$argon2id$v=19$broken",
            "anything-long-enough"
        ));
        assert!(!is_valid_hash("plaintext-secret"));
        assert!(!is_valid_hash("$argon2id$v=19$broken"));
    }
}
