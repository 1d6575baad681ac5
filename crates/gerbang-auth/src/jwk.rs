//! PEM public keys as JWKs: the keys of an external issuer configured as files
//! (`[[auth.external]] key_files`) join the same JWKS path as fetched ones.

use base64::Engine;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, OctetKeyPairParameters, OctetKeyPairType, RSAKeyParameters,
    RSAKeyType,
};

/// A JWK with `kid` for a PEM public key (`-----BEGIN PUBLIC KEY-----`, a
/// SubjectPublicKeyInfo): EC P-256 or P-384, RSA, or Ed25519. `None` for anything else.
pub fn from_pem_public_key(pem_bytes: &[u8], kid: &str) -> Option<Jwk> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let parsed = pem::parse(pem_bytes).ok()?;
    if parsed.tag() != "PUBLIC KEY" {
        return None;
    }
    let (_, spki) = {
        use x509_parser::prelude::FromDer;
        x509_parser::x509::SubjectPublicKeyInfo::from_der(parsed.contents()).ok()?
    };
    if kid.is_empty() {
        return None;
    }
    let common = CommonParameters {
        key_id: Some(kid.to_owned()),
        ..Default::default()
    };
    let algorithm = match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::EC(point) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => (EllipticCurve::P256, 32),
                97 => (EllipticCurve::P384, 48),
                _ => return None,
            };
            if data.first() != Some(&4) {
                return None;
            }
            AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: crv,
                x: b64(data.get(1..1 + len)?),
                y: b64(data.get(1 + len..)?),
            })
        }
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            AlgorithmParameters::RSA(RSAKeyParameters {
                key_type: RSAKeyType::RSA,
                n: b64(strip_zero(rsa.modulus)),
                e: b64(strip_zero(rsa.exponent)),
            })
        }
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: b64(&spki.subject_public_key.data),
            })
        }
        _ => return None,
    };
    Some(Jwk { common, algorithm })
}

fn strip_zero(b: &[u8]) -> &[u8] {
    let mut b = b;
    while b.len() > 1 && b.first() == Some(&0) {
        b = &b[1..];
    }
    b
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn ec_and_ed25519_public_keys_become_jwks_with_their_kid() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let jwk = from_pem_public_key(key.public_key_pem().as_bytes(), "k1").unwrap();
            assert_eq!(jwk.common.key_id.as_deref(), Some("k1"));
            match (&jwk.algorithm, alg == &rcgen::PKCS_ED25519) {
                (AlgorithmParameters::EllipticCurve(p), false) => {
                    assert_eq!(p.x.len(), p.y.len());
                }
                (AlgorithmParameters::OctetKeyPair(p), true) => {
                    assert_eq!(p.curve, EllipticCurve::Ed25519);
                }
                other => panic!("{other:?}"),
            }
        }
        // Not a public key: a private key, garbage, no kid.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(from_pem_public_key(key.serialize_pem().as_bytes(), "k").is_none());
        assert!(from_pem_public_key(b"not pem", "k").is_none());
        assert!(from_pem_public_key(key.public_key_pem().as_bytes(), "").is_none());
    }

    #[test]
    fn leading_zero_bytes_of_rsa_integers_are_dropped() {
        assert_eq!(strip_zero(&[0, 0, 1, 2]), &[1, 2]);
        assert_eq!(strip_zero(&[0]), &[0]);
    }
}
