//! Client certificates (mTLS) pinned by fingerprint, as X-Road does: the SHA-256 of the
//! certificate's DER maps to an application. Verifying the chain against the configured CAs is
//! rustls's work on the listener; this module only names the caller once the handshake passed.

use std::collections::HashMap;

use aws_lc_rs::digest::{digest, SHA256};

const PREFIX: &str = "sha256:";

/// The pin of a certificate: `sha256:` and the lower-case hex digest of its DER.
pub fn fingerprint(der: &[u8]) -> String {
    format!("{PREFIX}{}", hex::encode(digest(&SHA256, der)))
}

/// Normalises a configured pin (`sha256:AB:CD:…`, upper or lower case, with or without colons)
/// to the form [`fingerprint`] produces; `None` when it is not a SHA-256 pin.
pub fn normalize_pin(pin: &str) -> Option<String> {
    let hex = pin.strip_prefix(PREFIX)?;
    let digits: String = hex
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{PREFIX}{digits}"))
}

/// Pinned certificates and the applications they identify.
#[derive(Debug, Default)]
pub struct MtlsIdentities {
    by_pin: HashMap<String, String>,
}

impl MtlsIdentities {
    /// Pins `pin` to `application`; `false` when the pin is malformed or already used.
    pub fn insert(&mut self, pin: &str, application: &str) -> bool {
        let Some(pin) = normalize_pin(pin) else {
            return false;
        };
        if self.by_pin.contains_key(&pin) {
            return false;
        }
        self.by_pin.insert(pin, application.to_owned());
        true
    }

    /// The application of a verified client certificate (its DER), if pinned.
    pub fn application_for(&self, cert_der: &[u8]) -> Option<&str> {
        self.by_pin.get(&fingerprint(cert_der)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_match_only_their_certificate_in_any_spelling() {
        let cert_a = b"certificate A (DER bytes)";
        let cert_b = b"certificate B (DER bytes)";
        let fp = fingerprint(cert_a);
        assert!(fp.starts_with("sha256:") && fp.len() == 71);
        // The same pin written with colons and upper case, as openssl prints it.
        let hex = &fp[7..];
        let openssl_style = format!(
            "sha256:{}",
            hex.as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(":")
        );
        let mut ids = MtlsIdentities::default();
        assert!(ids.insert(&openssl_style, "dukcapil/siak"));
        assert!(
            !ids.insert(&fp, "dinkes/simpus"),
            "one certificate, one application"
        );
        assert_eq!(ids.application_for(cert_a), Some("dukcapil/siak"));
        assert_eq!(ids.application_for(cert_b), None);
        assert!(!ids.insert("sha1:abcd", "x/y"));
        assert!(!ids.insert("sha256:zz", "x/y"));
    }
}
