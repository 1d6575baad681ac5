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

/// What the gateway knows of a client certificate that rustls verified: its pin and the names
/// it carries (DNS and URI subject alternative names, then the subject's common names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub fingerprint: String,
    pub names: Vec<String>,
}

impl ClientCert {
    /// Reads the names of a DER certificate; a certificate that does not parse keeps only its
    /// fingerprint (rustls already verified it, so this does not happen in practice).
    pub fn from_der(der: &[u8]) -> Self {
        let mut names = Vec::new();
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for n in &san.value.general_names {
                    match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            names.push(d.to_ascii_lowercase())
                        }
                        x509_parser::extensions::GeneralName::URI(u) => names.push((*u).to_owned()),
                        _ => {}
                    }
                }
            }
            for cn in cert.subject().iter_common_name() {
                if let Ok(s) = cn.as_str() {
                    names.push(s.to_owned());
                }
            }
        }
        Self {
            fingerprint: fingerprint(der),
            names,
        }
    }
}

/// Why an identity could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtlsConfigError {
    #[error("`{0}` is not a SHA-256 pin (sha256: and 64 hex digits)")]
    BadPin(String),
    #[error("certificate `{0}` already identifies application `{1}`")]
    Taken(String, String),
    #[error("a certificate name must not be empty")]
    EmptyName,
}

/// Pinned certificates and certificate names, and the applications they identify.
#[derive(Debug, Default)]
pub struct MtlsIdentities {
    by_pin: HashMap<String, String>,
    by_name: HashMap<String, String>,
}

impl MtlsIdentities {
    /// Pins the certificate with fingerprint `pin` to `application`. A certificate identifies
    /// one application only.
    pub fn insert(&mut self, pin: &str, application: &str) -> Result<(), MtlsConfigError> {
        let norm = normalize_pin(pin).ok_or_else(|| MtlsConfigError::BadPin(pin.to_owned()))?;
        if let Some(other) = self.by_pin.get(&norm) {
            return Err(MtlsConfigError::Taken(pin.to_owned(), other.clone()));
        }
        self.by_pin.insert(norm, application.to_owned());
        Ok(())
    }

    /// Maps certificates carrying `name` (a DNS or URI SAN, or the subject CN) to
    /// `application`. Only sound when the configured client CAs issue names to agencies under
    /// the regency's control.
    pub fn insert_name(&mut self, name: &str, application: &str) -> Result<(), MtlsConfigError> {
        if name.is_empty() {
            return Err(MtlsConfigError::EmptyName);
        }
        let key = name.to_ascii_lowercase();
        if let Some(other) = self.by_name.get(&key) {
            return Err(MtlsConfigError::Taken(name.to_owned(), other.clone()));
        }
        self.by_name.insert(key, application.to_owned());
        Ok(())
    }

    /// The application a certificate identifies: its pin first; otherwise its names, which must
    /// all point to the same application (a certificate naming two applications names none).
    pub fn application_for(&self, cert: &ClientCert) -> Option<&str> {
        if let Some(app) = self.by_pin.get(&cert.fingerprint) {
            return Some(app);
        }
        let mut found: Option<&str> = None;
        for n in &cert.names {
            if let Some(app) = self.by_name.get(&n.to_ascii_lowercase()) {
                match found {
                    Some(f) if f != app => return None,
                    _ => found = Some(app),
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_a_real_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["SIAK.dukcapil.kab.test".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "siak-client");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = ClientCert::from_der(cert.der());
        assert_eq!(c.fingerprint, fingerprint(cert.der()));
        assert_eq!(c.names, vec!["siak.dukcapil.kab.test", "siak-client"]);
        assert!(ClientCert::from_der(b"not a certificate").names.is_empty());
    }

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
        ids.insert(&openssl_style, "dukcapil/siak").unwrap();
        assert!(
            ids.insert(&fp, "dinkes/simpus").is_err(),
            "one certificate, one application"
        );
        let cert = |der: &[u8], names: &[&str]| ClientCert {
            fingerprint: fingerprint(der),
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        assert_eq!(
            ids.application_for(&cert(cert_a, &[])),
            Some("dukcapil/siak")
        );
        assert_eq!(ids.application_for(&cert(cert_b, &[])), None);
        assert!(ids.insert("sha1:abcd", "x/y").is_err());
        assert!(ids.insert("sha256:zz", "x/y").is_err());

        ids.insert_name("esppt.bapenda.kab.test", "bapenda/esppt")
            .unwrap();
        ids.insert_name("simpus.dinkes.kab.test", "dinkes/simpus")
            .unwrap();
        assert!(ids.insert_name("ESPPT.bapenda.kab.test", "x/y").is_err());
        assert_eq!(
            ids.application_for(&cert(cert_b, &["Esppt.Bapenda.kab.test"])),
            Some("bapenda/esppt")
        );
        assert_eq!(
            ids.application_for(&cert(
                cert_b,
                &["esppt.bapenda.kab.test", "simpus.dinkes.kab.test"]
            )),
            None,
            "a certificate naming two applications names none"
        );
        // The pin wins over names.
        assert_eq!(
            ids.application_for(&cert(cert_a, &["esppt.bapenda.kab.test"])),
            Some("dukcapil/siak")
        );
    }
}
