//! Tokens of an external issuer (typically the regency's Keycloak): the issuer's settings, its
//! keys taken from a JWKS document, and verification. Fetching and refreshing the JWKS is I/O
//! and lives with the caller; this module only turns a fetched document into usable keys and
//! checks tokens against them.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::token::{alg_name, verify_jwt, Refusal};

/// Why an external issuer's settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalConfigError {
    #[error("at least one algorithm must be allowed")]
    NoAlgorithm,
    #[error("HMAC algorithms ({0}) are not allowed for external issuers: the gateway would have to share the issuer's secret")]
    Symmetric(&'static str),
    #[error("the claim that names the application must not be empty")]
    NoClientClaim,
    #[error("at least one audience is required: the `aud` value that marks a token as meant for this gateway (an issuer's tokens for other services must not be accepted here)")]
    NoAudience,
}

/// Settings of one external issuer.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values (any one suffices); never empty, so `aud` is always checked.
    pub audiences: Vec<String>,
    /// Pinned algorithms: tokens naming any other are refused.
    algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    /// The claim holding the client id that maps to a registered application, e.g. `azp`.
    pub client_claim: String,
}

/// A verified external token.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalIdentity {
    /// The value of the configured client claim.
    pub client_id: String,
    pub claims: serde_json::Value,
}

/// Keys usable for verification, prepared from a JWKS document.
#[derive(Default)]
pub struct IssuerKeys {
    by_kid: HashMap<String, PreparedKey>,
}

struct PreparedKey {
    /// The key's own `alg`, when the JWKS names one.
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
    /// The JWK as published, to tell a key replaced under the same `kid`.
    material: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Ec,
    Rsa,
    Okp,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::EdDSA => Some(Family::Okp),
        _ => None,
    }
}

impl IssuerKeys {
    /// Keeps the asymmetric keys that have a `kid`; symmetric (`oct`) and unknown key types are
    /// dropped, so no public value can ever serve as an HMAC secret.
    pub fn from_jwks(set: &JwkSet) -> Self {
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let family = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
                // `oct` (shared secrets), `Other` and future key types are never used.
                _ => continue,
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|k| k.to_string().parse::<Algorithm>().ok());
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let material = serde_json::to_string(jwk).unwrap_or_default();
            by_kid.insert(
                kid,
                PreparedKey {
                    alg,
                    family,
                    key,
                    material,
                },
            );
        }
        Self { by_kid }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Whether every key of `old` is still here, unchanged (keys may have been added): then
    /// nothing verified with `old` would be judged differently now.
    /// The key `kid` for a token signed with `alg`: it must suit the algorithm (right family,
    /// and the same `alg` when the JWKS names one).
    fn key_for(&self, kid: &str, alg: Algorithm) -> Result<&DecodingKey, Refusal> {
        let k = self.by_kid.get(kid).ok_or(Refusal::UnknownKid)?;
        if family_of(alg) != Some(k.family) || k.alg.is_some_and(|ka| ka != alg) {
            return Err(Refusal::AlgorithmNotAllowed);
        }
        Ok(&k.key)
    }

    pub fn retains(&self, old: &IssuerKeys) -> bool {
        old.by_kid.iter().all(|(kid, k)| {
            self.by_kid
                .get(kid)
                .is_some_and(|n| n.material == k.material)
        })
    }
}

impl ExternalIssuer {
    pub fn new(
        issuer: String,
        audiences: Vec<String>,
        algorithms: Vec<Algorithm>,
        leeway: Duration,
        client_claim: String,
    ) -> Result<Self, ExternalConfigError> {
        if algorithms.is_empty() {
            return Err(ExternalConfigError::NoAlgorithm);
        }
        for a in &algorithms {
            if family_of(*a).is_none() {
                return Err(ExternalConfigError::Symmetric(alg_name(*a).unwrap_or("?")));
            }
        }
        if client_claim.is_empty() {
            return Err(ExternalConfigError::NoClientClaim);
        }
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(ExternalConfigError::NoAudience);
        }
        Ok(Self {
            issuer,
            audiences,
            algorithms,
            leeway,
            client_claim,
        })
    }

    /// Verifies `token` against `keys` (this issuer's current JWKS).
    pub fn verify(&self, token: &str, keys: &IssuerKeys) -> Result<ExternalIdentity, Refusal> {
        let claims = verify_jwt(
            token,
            &self.algorithms,
            None,
            |kid, alg| keys.key_for(kid, alg),
            |v| {
                v.leeway = self.leeway.as_secs();
                v.set_issuer(&[&self.issuer]);
                // `new` refuses an issuer without audiences: `aud` is always required.
                v.set_audience(&self.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
            },
        )?;
        let client_id = claims
            .get(&self.client_claim)
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty())
            .ok_or(Refusal::MissingClaim)?
            .to_owned();
        Ok(ExternalIdentity { client_id, claims })
    }

    /// Verifies an OpenID Connect ID token that this issuer gave `client_id` (the console's
    /// sign-in): signature with `keys`, `iss`, `aud` containing `client_id` (and, with several
    /// audiences, `azp` equal to it), `exp`, `sub`, and `nonce` equal to the one the sign-in
    /// sent. Its claims.
    pub fn verify_id_token(
        &self,
        token: &str,
        keys: &IssuerKeys,
        client_id: &str,
        nonce: &str,
    ) -> Result<serde_json::Value, Refusal> {
        let claims = verify_jwt(
            token,
            &self.algorithms,
            None,
            |kid, alg| keys.key_for(kid, alg),
            |v| {
                v.leeway = self.leeway.as_secs();
                v.set_issuer(&[&self.issuer]);
                v.set_audience(&[client_id]);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            },
        )?;
        let several_audiences = claims
            .get("aud")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.len() > 1);
        if several_audiences && claims.get("azp").and_then(|a| a.as_str()) != Some(client_id) {
            return Err(Refusal::WrongAudience);
        }
        let given = claims.get("nonce").and_then(|n| n.as_str()).unwrap_or("");
        let same = given.len() == nonce.len()
            && given
                .bytes()
                .zip(nonce.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if nonce.is_empty() || !same {
            return Err(Refusal::MissingClaim);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_pem, KeyRing, SigningKey};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A stand-in external issuer: its own key pair and JWKS.
    struct Idp {
        pem: String,
        kid: String,
    }

    impl Idp {
        fn new(kid: &str) -> Self {
            Self {
                pem: generate_pem().unwrap(),
                kid: kid.into(),
            }
        }
        fn jwks(&self) -> JwkSet {
            KeyRing::new(vec![
                SigningKey::from_pem(&self.kid, self.pem.as_bytes()).unwrap()
            ])
            .unwrap()
            .jwks()
        }
        fn token(&self, claims: serde_json::Value) -> String {
            let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
            h.kid = Some(self.kid.clone());
            let k = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
            jsonwebtoken::encode(&h, &claims, &k).unwrap()
        }
    }

    #[test]
    fn an_id_token_needs_the_client_as_audience_and_the_sign_ins_nonce() {
        let idp = Idp::new("k1");
        let keys = IssuerKeys::from_jwks(&idp.jwks());
        let iss = keycloak();
        let claims = |aud: serde_json::Value, nonce: &str| {
            serde_json::json!({
                "iss": "https://sso.kabupaten.test/realms/opd", "aud": aud, "sub": "u1",
                "exp": now() + 60, "nonce": nonce, "azp": "gerbang-console",
            })
        };
        let good = idp.token(claims("gerbang-console".into(), "n-1"));
        assert!(iss
            .verify_id_token(&good, &keys, "gerbang-console", "n-1")
            .is_ok());
        // Another nonce (a replayed or injected token), another client, no nonce at all.
        assert_eq!(
            iss.verify_id_token(&good, &keys, "gerbang-console", "n-2"),
            Err(Refusal::MissingClaim)
        );
        assert_eq!(
            iss.verify_id_token(&good, &keys, "other-client", "n-1"),
            Err(Refusal::WrongAudience)
        );
        assert!(iss
            .verify_id_token(&good, &keys, "gerbang-console", "")
            .is_err());
        // Several audiences: azp must be this client.
        let mut c = claims(serde_json::json!(["gerbang-console", "x"]), "n-1");
        c["azp"] = "x".into();
        assert_eq!(
            iss.verify_id_token(&idp.token(c), &keys, "gerbang-console", "n-1"),
            Err(Refusal::WrongAudience)
        );
        // Signed by a key the issuer does not publish.
        let stranger = Idp::new("k1").token(claims("gerbang-console".into(), "n-1"));
        assert_eq!(
            iss.verify_id_token(&stranger, &keys, "gerbang-console", "n-1"),
            Err(Refusal::BadSignature)
        );
    }

    fn keycloak() -> ExternalIssuer {
        ExternalIssuer::new(
            "https://sso.kabupaten.test/realms/opd".into(),
            vec!["gerbang".into()],
            vec![Algorithm::ES256, Algorithm::RS256],
            Duration::from_secs(30),
            "azp".into(),
        )
        .unwrap()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "iss": "https://sso.kabupaten.test/realms/opd", "aud": ["account", "gerbang"],
            "azp": "dinkes-simpus", "exp": now() + 300, "iat": now()
        })
    }

    #[test]
    fn verifies_and_maps_the_client_claim() {
        let idp = Idp::new("kc-1");
        let keys = IssuerKeys::from_jwks(&idp.jwks());
        let id = keycloak().verify(&idp.token(claims()), &keys).unwrap();
        assert_eq!(id.client_id, "dinkes-simpus");
    }

    #[test]
    fn rotation_and_refusals() {
        let old = Idp::new("kc-1");
        let new = Idp::new("kc-2");
        let iss = keycloak();
        let only_old = IssuerKeys::from_jwks(&old.jwks());
        let t_new = new.token(claims());
        assert_eq!(iss.verify(&t_new, &only_old), Err(Refusal::UnknownKid));
        let mut both = old.jwks();
        both.keys.extend(new.jwks().keys);
        let both = IssuerKeys::from_jwks(&both);
        assert!(iss.verify(&t_new, &both).is_ok());
        assert!(iss.verify(&old.token(claims()), &both).is_ok());

        let mut c = claims();
        c["aud"] = "account".into();
        assert_eq!(
            iss.verify(&old.token(c), &both),
            Err(Refusal::WrongAudience)
        );
        // No `aud` at all: refused, not waved through.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("aud");
        assert!(iss.verify(&old.token(c), &both).is_err());
        let mut c = claims();
        c["iss"] = "https://evil.test".into();
        assert_eq!(iss.verify(&old.token(c), &both), Err(Refusal::WrongIssuer));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("azp");
        assert_eq!(iss.verify(&old.token(c), &both), Err(Refusal::MissingClaim));
    }

    #[test]
    fn symmetric_keys_and_algorithms_are_never_usable() {
        assert_eq!(
            ExternalIssuer::new(
                "i".into(),
                vec!["gerbang".into()],
                vec![Algorithm::HS256],
                Duration::ZERO,
                "azp".into()
            )
            .unwrap_err(),
            ExternalConfigError::Symmetric("HS256")
        );
        assert_eq!(
            ExternalIssuer::new(
                "i".into(),
                vec!["gerbang".into()],
                vec![],
                Duration::ZERO,
                "azp".into()
            )
            .unwrap_err(),
            ExternalConfigError::NoAlgorithm
        );
        // An `oct` key in the JWKS is dropped, so an HS256 token naming it finds nothing.
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "alg": "HS256"}
        ]}))
        .unwrap();
        let keys = IssuerKeys::from_jwks(&jwks);
        assert!(keys.is_empty());
    }

    #[test]
    fn an_issuer_without_audiences_is_refused() {
        for audiences in [vec![], vec![String::new()]] {
            assert_eq!(
                ExternalIssuer::new(
                    "i".into(),
                    audiences,
                    vec![Algorithm::ES256],
                    Duration::ZERO,
                    "azp".into()
                )
                .unwrap_err(),
                ExternalConfigError::NoAudience
            );
        }
    }

    #[test]
    fn a_key_of_the_wrong_family_is_refused() {
        // An ES256 key published with kid "k", a token claiming RS256 with that kid.
        let idp = Idp::new("k");
        let keys = IssuerKeys::from_jwks(&idp.jwks());
        let forged = format!(
            "{}.{}.{}",
            "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ", // {"alg":"RS256","kid":"k"}
            "e30",
            "AAAA"
        );
        assert_eq!(
            keycloak().verify(&forged, &keys),
            Err(Refusal::AlgorithmNotAllowed)
        );
    }
}
