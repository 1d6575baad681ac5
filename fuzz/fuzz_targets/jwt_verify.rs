//! JWT header and claims parsing, before and after the signature check: the built-in issuer's
//! `Issuer::verify` and `verify_assertion`, an external issuer's `ExternalIssuer::verify`, and
//! the unverified peeks (`peek_issuer`, `peek_kid`).
//!
//! Input: a mode byte, then
//! - mode 0: a token as text (exercises everything before the signature check);
//! - mode 1: header JSON, a 0xFF byte, payload bytes; the target signs them with the issuer's
//!   own ES256 key, so that the checks after the signature (algorithm, type, key id, claims)
//!   see fuzzed content;
//! - mode 2: the same, but forged: `alg: none` with no signature, HMAC with the issuer's public
//!   key (as JWK coordinates, its JWKS, and the raw point) as the secret, and ES256 with a key
//!   the issuer never had.
//!
//! Invariants: nothing panics; a forged token is always refused; an accepted token names a
//! pinned algorithm in its raw header (never `none` or `HS*`), the right `typ` and a known
//! `kid`, and its claims hold the right issuer and audience, an `exp` not in the past (beyond
//! the leeway) and an `nbf` not in the future; the external client id is the (non-empty)
//! string of the configured claim.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use gerbang_auth::external::{ExternalIssuer, IssuerKeys};
use gerbang_auth::keys::{generate_pem, KeyRing, SigningKey};
use gerbang_auth::token::{peek_issuer, peek_kid, Issuer, ASSERTION_TYPE, TOKEN_TYPE};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ISS: &str = "https://gerbang.test";
const AUD: &str = "gerbang";
const EXT_ISS: &str = "https://sso.test/realms/opd";
const LEEWAY: u64 = 30;

struct Fixture {
    issuer: Issuer,
    external: ExternalIssuer,
    external_keys: IssuerKeys,
    signing: EncodingKey,
    foreign: EncodingKey,
    /// Public forms of the issuer's key an attacker would try as an HMAC secret.
    public_secrets: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let pem = generate_pem().unwrap();
        let ring = KeyRing::new(vec![SigningKey::from_pem("k1", pem.as_bytes()).unwrap()]).unwrap();
        let jwks = ring.jwks();
        let jwks_json = serde_json::to_vec(&jwks).unwrap();
        let jwk = serde_json::to_value(&jwks.keys[0]).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut point = vec![4u8];
        for c in ["x", "y"] {
            point.extend(b64.decode(jwk[c].as_str().unwrap()).unwrap());
        }
        let external_keys = IssuerKeys::from_jwks(&jwks);
        Fixture {
            issuer: Issuer {
                issuer: ISS.into(),
                audience: AUD.into(),
                ttl: Duration::from_secs(300),
                leeway: Duration::from_secs(LEEWAY),
                keys: ring,
            },
            external: ExternalIssuer::new(
                EXT_ISS.into(),
                vec![AUD.into()],
                vec![Algorithm::ES256, Algorithm::ES384, Algorithm::RS256],
                Duration::from_secs(LEEWAY),
                "azp".into(),
            )
            .unwrap(),
            external_keys,
            signing: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            foreign: EncodingKey::from_ec_pem(generate_pem().unwrap().as_bytes()).unwrap(),
            public_secrets: vec![
                jwks_json,
                serde_json::to_vec(&jwk).unwrap(),
                point,
                jwk["x"].as_str().unwrap().as_bytes().to_vec(),
            ],
        }
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Header and payload of `token` as JSON, decoded independently of the verifier.
fn decode(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || -> Value {
        let text = parts.next().expect("an accepted token has three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .expect("an accepted token is base64url");
        serde_json::from_slice(&bytes).expect("an accepted token is JSON")
    };
    (part(), part())
}

fn number(claims: &Value, name: &str) -> Option<f64> {
    claims.get(name).and_then(Value::as_f64)
}

fn audience_has(claims: &Value, aud: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(s)) => s == aud,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(aud)),
        _ => false,
    }
}

/// What every accepted token must satisfy.
fn check_accepted(token: &str, typ: Option<&str>, pinned: &[&str], iss: &str, aud: &str) -> Value {
    let (header, claims) = decode(token);
    let alg = header.get("alg").and_then(Value::as_str);
    assert!(
        alg.is_some_and(|a| pinned.contains(&a)),
        "accepted alg {alg:?} (pinned {pinned:?})"
    );
    if let Some(typ) = typ {
        assert_eq!(header.get("typ").and_then(Value::as_str), Some(typ));
    }
    assert_eq!(header.get("kid").and_then(Value::as_str), Some("k1"));
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(iss));
    assert!(
        audience_has(&claims, aud),
        "accepted aud {:?}",
        claims.get("aud")
    );
    let t = now() as f64;
    let exp = number(&claims, "exp").expect("accepted without a numeric exp");
    // One second of slack for the clock moving on between verification and this check.
    assert!(
        exp + LEEWAY as f64 + 1.0 >= t,
        "accepted an expired token: exp {exp}"
    );
    if let Some(nbf) = number(&claims, "nbf") {
        assert!(
            nbf <= t + LEEWAY as f64 + 1.0,
            "accepted a future nbf {nbf}"
        );
    }
    claims
}

fn verify_all(f: &Fixture, token: &str, forged: bool) {
    let _ = peek_issuer(token);
    let _ = peek_kid(token);
    let own = f.issuer.verify(token);
    let assertion = f.issuer.verify_assertion(token, "dukcapil/penduduk");
    let external = f.external.verify(token, &f.external_keys);
    if forged {
        assert!(own.is_err(), "forged token accepted as an access token");
        assert!(assertion.is_err(), "forged token accepted as an assertion");
        assert!(external.is_err(), "forged token accepted as external");
        return;
    }
    if let Ok(c) = own {
        let claims = check_accepted(token, Some(TOKEN_TYPE), &["ES256"], ISS, AUD);
        assert_eq!(claims["sub"].as_str(), Some(c.sub.as_str()));
        assert_eq!(claims["agency"].as_str(), Some(c.agency.as_str()));
    }
    if assertion.is_ok() {
        check_accepted(
            token,
            Some(ASSERTION_TYPE),
            &["ES256"],
            ISS,
            "dukcapil/penduduk",
        );
    }
    if let Ok(id) = external {
        let claims = check_accepted(token, None, &["ES256", "ES384", "RS256"], EXT_ISS, AUD);
        assert!(!id.client_id.is_empty());
        assert_eq!(claims["azp"].as_str(), Some(id.client_id.as_str()));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            verify_all(f, &token, false);
        }
        m => {
            let (header, payload) = match rest.iter().position(|&b| b == 0xFF) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            let input = format!("{}.{}", b64(header), b64(payload));
            if m == 1 {
                let sig =
                    jsonwebtoken::crypto::sign(input.as_bytes(), &f.signing, Algorithm::ES256)
                        .unwrap();
                verify_all(f, &format!("{input}.{sig}"), false);
                return;
            }
            verify_all(f, &format!("{input}."), true);
            verify_all(f, &input, true);
            for secret in &f.public_secrets {
                for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                    let key = EncodingKey::from_secret(secret).unwrap();
                    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).unwrap();
                    verify_all(f, &format!("{input}.{sig}"), true);
                }
            }
            let sig =
                jsonwebtoken::crypto::sign(input.as_bytes(), &f.foreign, Algorithm::ES256).unwrap();
            verify_all(f, &format!("{input}.{sig}"), true);
        }
    }
});
