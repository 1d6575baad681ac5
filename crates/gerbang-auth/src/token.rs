//! Access tokens of the built-in issuer: JWTs signed with ES256 (`typ: at+jwt`, RFC 9068) and
//! their verification. The algorithm is pinned: a token whose header names any other algorithm
//! (`none`, `HS256` with the public key as a secret, `RS256`, …) is refused before any key is
//! looked at. Every refusal has a stable [`Refusal`] reason for logs and metrics; the token
//! itself is never part of an error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::KeyRing;

/// The `typ` header of the gateway's access tokens.
pub const TOKEN_TYPE: &str = "at+jwt";

/// The `typ` header of gateway assertions (`X-Gerbang-Assertion`): a different type from access
/// tokens, so that an assertion a provider received can never be replayed at the gateway as an
/// access token.
pub const ASSERTION_TYPE: &str = "gerbang-assertion+jwt";

/// What a gateway assertion vouches for: the calling application and its agency, the provider
/// service (`aud`), the agreement that allowed the call and the purpose the policy checked.
#[derive(Debug, Clone, Copy)]
pub struct AssertedCall<'a> {
    pub application: &'a str,
    pub agency: &'a str,
    pub audience: &'a str,
    pub agreement: &'a str,
    pub purpose: Option<&'a str>,
}

/// Longest token accepted for verification; longer ones are refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The application, `agency/app`.
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The application's agency.
    pub agency: String,
    /// Space-separated scopes (RFC 8693 §4.2).
    #[serde(default)]
    pub scope: String,
}

/// Why a token was refused. `as_str` gives the stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("wrong token type")]
    WrongType,
    #[error("no key id")]
    MissingKid,
    #[error("unknown key id")]
    UnknownKid,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("required claim missing or invalid")]
    MissingClaim,
}

impl Refusal {
    /// Every refusal (for metrics exported at 0 before the first one; keep in step with
    /// `as_str`).
    pub const ALL: [Refusal; 12] = [
        Refusal::TooLarge,
        Refusal::Malformed,
        Refusal::AlgorithmNotAllowed,
        Refusal::WrongType,
        Refusal::MissingKid,
        Refusal::UnknownKid,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::WrongIssuer,
        Refusal::WrongAudience,
        Refusal::MissingClaim,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooLarge => "token_too_large",
            Refusal::Malformed => "malformed",
            Refusal::AlgorithmNotAllowed => "algorithm_not_allowed",
            Refusal::WrongType => "wrong_type",
            Refusal::MissingKid => "missing_kid",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::MissingClaim => "missing_claim",
        }
    }
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the key ring has no active key")]
    NoKey,
    #[error("signing failed")]
    Signing,
}

/// The built-in issuer.
#[derive(Debug)]
pub struct Issuer {
    /// `iss` of issued tokens, e.g. `https://gerbang.example.go.id`.
    pub issuer: String,
    /// `aud` of issued tokens (the gateway itself).
    pub audience: String,
    /// Lifetime of issued tokens.
    pub ttl: Duration,
    /// Clock skew allowed when checking `exp` and `nbf`.
    pub leeway: Duration,
    pub keys: KeyRing,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issuer {
    /// Issues an access token for `application` (`agency/app`).
    pub fn issue(
        &self,
        application: &str,
        agency: &str,
        scope: &str,
    ) -> Result<String, IssueError> {
        self.issue_at(application, agency, scope, now())
    }

    fn issue_at(
        &self,
        application: &str,
        agency: &str,
        scope: &str,
        iat: u64,
    ) -> Result<String, IssueError> {
        let key = self.keys.active().ok_or(IssueError::NoKey)?;
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(key.kid.clone());
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: application.to_owned(),
            aud: self.audience.clone(),
            iat,
            nbf: iat,
            exp: iat + self.ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            agency: agency.to_owned(),
            scope: scope.to_owned(),
        };
        jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|_| IssueError::Signing)
    }

    /// Signs a gateway assertion: "the gateway authenticated `application` of `agency`, and
    /// this call is for `audience`" (the provider service, `agency/service`), valid for `ttl`.
    /// Returns the JWT and its `exp`.
    pub fn assertion(
        &self,
        call: &AssertedCall<'_>,
        ttl: Duration,
    ) -> Result<(String, u64), IssueError> {
        let key = self.keys.active().ok_or(IssueError::NoKey)?;
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(ASSERTION_TYPE.to_owned());
        header.kid = Some(key.kid.clone());
        let iat = now();
        let exp = iat + ttl.as_secs().max(1);
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "sub": call.application,
            "aud": call.audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
            "agency": call.agency,
            "agreement": call.agreement,
        });
        if let (Some(p), Some(map)) = (call.purpose, claims.as_object_mut()) {
            map.insert("purpose".to_owned(), serde_json::Value::from(p));
        }
        jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map(|t| (t, exp))
            .map_err(|_| IssueError::Signing)
    }

    /// Verifies a gateway assertion for `audience`, as a provider would (tests and tooling).
    pub fn verify_assertion(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<serde_json::Value, Refusal> {
        self.verify_own(
            token,
            ASSERTION_TYPE,
            audience,
            &["exp", "nbf", "iss", "aud", "sub"],
        )
    }

    /// Verifies a token of this issuer and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let claims = self.verify_own(
            token,
            TOKEN_TYPE,
            &self.audience,
            &["exp", "nbf", "iat", "iss", "aud", "sub"],
        )?;
        serde_json::from_value(claims).map_err(|_| Refusal::MissingClaim)
    }
}

impl Issuer {
    /// Verifies a JWT this issuer signed, of type `typ`, for `audience`.
    fn verify_own(
        &self,
        token: &str,
        typ: &str,
        audience: &str,
        required: &[&str],
    ) -> Result<serde_json::Value, Refusal> {
        verify_jwt(
            token,
            &[Algorithm::ES256],
            Some(typ),
            |kid, _alg| {
                self.keys
                    .find(kid)
                    .map(|k| &k.decoding)
                    .ok_or(Refusal::UnknownKid)
            },
            |v| {
                v.leeway = self.leeway.as_secs();
                v.set_issuer(&[&self.issuer]);
                v.set_audience(&[audience]);
                v.set_required_spec_claims(required);
            },
        )
    }
}

/// Verifies a JWT whose algorithm must be one of `allowed` (pinned from the raw header before
/// the JWT library parses it), whose `typ` must be `required_typ` when given, and whose key
/// `key_for(kid, alg)` finds. `configure` sets issuer, audience, leeway and required claims.
/// Returns the claims as JSON, so that a payload that is not JSON (malformed) is told apart
/// from one that lacks a claim.
pub(crate) fn verify_jwt<'k>(
    token: &str,
    allowed: &[Algorithm],
    required_typ: Option<&str>,
    key_for: impl FnOnce(&str, Algorithm) -> Result<&'k jsonwebtoken::DecodingKey, Refusal>,
    configure: impl FnOnce(&mut Validation),
) -> Result<serde_json::Value, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::TooLarge);
    }
    let raw_alg = raw_header_alg(token).ok_or(Refusal::Malformed)?;
    if !allowed
        .iter()
        .any(|a| alg_name(*a) == Some(raw_alg.as_str()))
    {
        return Err(Refusal::AlgorithmNotAllowed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            Refusal::AlgorithmNotAllowed
        }
        _ => Refusal::Malformed,
    })?;
    if !allowed.contains(&header.alg) {
        return Err(Refusal::AlgorithmNotAllowed);
    }
    if let Some(typ) = required_typ {
        if header.typ.as_deref() != Some(typ) {
            return Err(Refusal::WrongType);
        }
    }
    let kid = header.kid.as_deref().ok_or(Refusal::MissingKid)?;
    let key = key_for(kid, header.alg)?;
    let mut v = Validation::new(header.alg);
    v.validate_nbf = true;
    configure(&mut v);
    let data =
        jsonwebtoken::decode::<serde_json::Value>(token, key, &v).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Refusal::BadSignature,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::ImmatureSignature => Refusal::NotYetValid,
            ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
            ErrorKind::InvalidAudience => Refusal::WrongAudience,
            ErrorKind::InvalidAlgorithm => Refusal::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                Refusal::MissingClaim
            }
            _ => Refusal::Malformed,
        })?;
    if !data.claims.is_object() {
        return Err(Refusal::Malformed);
    }
    Ok(data.claims)
}

/// The JOSE name of an algorithm; `None` for one this code does not know.
pub(crate) fn alg_name(a: Algorithm) -> Option<&'static str> {
    Some(match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => return None,
    })
}

/// The `iss` claim of a token, read without verifying anything: only to choose which issuer's
/// rules verify it. `None` for anything that is not a JWT with a string `iss`.
pub fn peek_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// The `kid` of a token's header, unverified (to decide whether to refetch a JWKS).
pub fn peek_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// The `alg` of a token's header, read without trusting anything else in it.
fn raw_header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let first = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_pem, KeyRing, SigningKey};

    fn key(kid: &str) -> SigningKey {
        SigningKey::from_pem(kid, generate_pem().unwrap().as_bytes()).unwrap()
    }

    fn issuer_with(keys: Vec<SigningKey>) -> Issuer {
        Issuer {
            issuer: "https://gerbang.test".into(),
            audience: "gerbang".into(),
            ttl: Duration::from_secs(300),
            leeway: Duration::from_secs(30),
            keys: KeyRing::new(keys).unwrap(),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        // Base64url without padding, written out here so that the test does not lean on the
        // library it checks.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    fn b64_decode(s: &str) -> Vec<u8> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let vals: Vec<u32> = s
            .bytes()
            .map(|c| A.iter().position(|&a| a == c).unwrap() as u32)
            .collect();
        let mut out = Vec::new();
        for chunk in vals.chunks(4) {
            let mut n = 0u32;
            for (i, v) in chunk.iter().enumerate() {
                n |= v << (18 - 6 * i);
            }
            for i in 0..chunk.len() - 1 {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let iss = issuer_with(vec![key("k1")]);
        let t = iss.issue("dinkes/simpus", "dinkes", "read").unwrap();
        let c = iss.verify(&t).unwrap();
        assert_eq!(c.sub, "dinkes/simpus");
        assert_eq!(c.agency, "dinkes");
        assert_eq!(c.iss, "https://gerbang.test");
        assert_eq!(c.aud, "gerbang");
        assert_eq!(c.exp - c.iat, 300);
        assert_eq!(c.scope, "read");
        let header: serde_json::Value =
            serde_json::from_slice(&b64_decode(t.split('.').next().unwrap())).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"], "k1");
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_while_their_key_is_in_the_ring() {
        let old_pem = generate_pem().unwrap();
        let before = issuer_with(vec![
            SigningKey::from_pem("old", old_pem.as_bytes()).unwrap()
        ]);
        let old_token = before.issue("a/b", "a", "").unwrap();
        // New active key first, old key kept.
        let after = issuer_with(vec![
            key("new"),
            SigningKey::from_pem("old", old_pem.as_bytes()).unwrap(),
        ]);
        assert!(after.verify(&old_token).is_ok());
        let new_token = after.issue("a/b", "a", "").unwrap();
        assert!(new_token.split('.').next().is_some());
        let h: serde_json::Value =
            serde_json::from_slice(&b64_decode(new_token.split('.').next().unwrap())).unwrap();
        assert_eq!(h["kid"], "new");
        // Old key dropped: its tokens are refused.
        let dropped = issuer_with(vec![key("new")]);
        assert_eq!(dropped.verify(&old_token), Err(Refusal::UnknownKid));
    }

    /// Re-signs `header` and `claims` with the issuer's active key using aws-lc-rs directly
    /// (an implementation independent of the verifying library's JWT code).
    fn forge(pem_text: &str, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        forge_raw(pem_text, header, claims.to_string().as_bytes())
    }

    fn forge_raw(pem_text: &str, header: &serde_json::Value, payload: &[u8]) -> String {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let der = pem::parse(pem_text).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.contents()).unwrap();
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
        let sig = kp
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn claims(now: u64) -> serde_json::Value {
        serde_json::json!({
            "iss": "https://gerbang.test", "sub": "dinkes/simpus", "aud": "gerbang",
            "iat": now, "nbf": now, "exp": now + 300, "jti": "x", "agency": "dinkes", "scope": ""
        })
    }

    #[test]
    fn independently_signed_tokens_verify_and_every_defect_is_refused() {
        let pem_text = generate_pem().unwrap();
        let iss = issuer_with(vec![
            SigningKey::from_pem("k1", pem_text.as_bytes()).unwrap()
        ]);
        let t0 = now();
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"});
        let good = forge(&pem_text, &header, &claims(t0));
        assert!(
            iss.verify(&good).is_ok(),
            "a token signed outside jsonwebtoken verifies"
        );

        let with = |k: &str, v: serde_json::Value| {
            let mut c = claims(t0);
            c[k] = v;
            forge(&pem_text, &header, &c)
        };
        let with_header = |h: serde_json::Value| forge(&pem_text, &h, &claims(t0));
        let parts: Vec<&str> = good.split('.').collect();
        let public_jwk = serde_json::to_value(iss.keys.jwks()).unwrap();
        let cases: Vec<(&str, String, Refusal)> = vec![
            ("expired", with("exp", (t0 - 3600).into()), Refusal::Expired),
            (
                "not yet valid",
                with("nbf", (t0 + 3600).into()),
                Refusal::NotYetValid,
            ),
            (
                "wrong issuer",
                with("iss", "https://evil.test".into()),
                Refusal::WrongIssuer,
            ),
            (
                "wrong audience",
                with("aud", "other".into()),
                Refusal::WrongAudience,
            ),
            (
                "no exp",
                {
                    let mut c = claims(t0);
                    c.as_object_mut().unwrap().remove("exp");
                    forge(&pem_text, &header, &c)
                },
                Refusal::MissingClaim,
            ),
            (
                "no sub",
                {
                    let mut c = claims(t0);
                    c.as_object_mut().unwrap().remove("sub");
                    forge(&pem_text, &header, &c)
                },
                Refusal::MissingClaim,
            ),
            (
                "exp as string",
                with("exp", "tomorrow".into()),
                Refusal::MissingClaim,
            ),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
                    parts[1]
                ),
                Refusal::AlgorithmNotAllowed,
            ),
            (
                "alg HS256 (key confusion)",
                with_header(serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"})),
                Refusal::AlgorithmNotAllowed,
            ),
            (
                "alg RS256",
                with_header(serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": "k1"})),
                Refusal::AlgorithmNotAllowed,
            ),
            (
                "alg ES384",
                with_header(serde_json::json!({"alg": "ES384", "typ": "at+jwt", "kid": "k1"})),
                Refusal::AlgorithmNotAllowed,
            ),
            (
                "alg EdDSA",
                with_header(serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"})),
                Refusal::AlgorithmNotAllowed,
            ),
            (
                "unknown alg",
                format!(
                    "{}.{}.{}",
                    b64(br#"{"alg":"XX999","typ":"at+jwt","kid":"k1"}"#),
                    parts[1],
                    parts[2]
                ),
                Refusal::AlgorithmNotAllowed,
            ),
            (
                "wrong typ",
                with_header(serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})),
                Refusal::WrongType,
            ),
            (
                "no typ",
                with_header(serde_json::json!({"alg": "ES256", "kid": "k1"})),
                Refusal::WrongType,
            ),
            (
                "no kid",
                with_header(serde_json::json!({"alg": "ES256", "typ": "at+jwt"})),
                Refusal::MissingKid,
            ),
            (
                "unknown kid",
                with_header(serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k2"})),
                Refusal::UnknownKid,
            ),
            (
                "tampered payload",
                format!(
                    "{}.{}.{}",
                    parts[0],
                    b64(claims(t0)
                        .to_string()
                        .replace("dinkes/simpus", "dukcapil/siak")
                        .as_bytes()),
                    parts[2]
                ),
                Refusal::BadSignature,
            ),
            (
                "tampered signature",
                {
                    let mut sig: Vec<u8> = parts[2].bytes().collect();
                    sig[10] = if sig[10] == b'Q' { b'R' } else { b'Q' };
                    format!(
                        "{}.{}.{}",
                        parts[0],
                        parts[1],
                        String::from_utf8(sig).unwrap()
                    )
                },
                Refusal::BadSignature,
            ),
            (
                "signature of another key",
                {
                    let other = generate_pem().unwrap();
                    forge(&other, &header, &claims(t0))
                },
                Refusal::BadSignature,
            ),
            (
                "signature cut short",
                format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]),
                Refusal::BadSignature,
            ),
            (
                "no signature",
                format!("{}.{}.", parts[0], parts[1]),
                Refusal::BadSignature,
            ),
            (
                "two parts",
                format!("{}.{}", parts[0], parts[1]),
                Refusal::Malformed,
            ),
            (
                "truncated header",
                good[..10].to_owned(),
                Refusal::Malformed,
            ),
            ("empty", String::new(), Refusal::Malformed),
            ("not base64", "!!!.@@@.###".to_owned(), Refusal::Malformed),
            (
                "header not JSON",
                format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
                Refusal::Malformed,
            ),
            (
                "payload swapped for non-JSON",
                format!("{}.{}.{}", parts[0], b64(b"[1,2"), parts[2]),
                Refusal::BadSignature,
            ),
            (
                "signed payload not JSON",
                forge_raw(&pem_text, &header, b"[1,2"),
                Refusal::Malformed,
            ),
            (
                "signed payload a JSON array",
                forge_raw(&pem_text, &header, b"[1,2]"),
                Refusal::Malformed,
            ),
            (
                "huge",
                format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_BYTES), parts[2]),
                Refusal::TooLarge,
            ),
            (
                "public JWK used as HMAC secret",
                {
                    // The classic confusion: HS256 signed with the public key's JSON as the secret.
                    let h = serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"});
                    let k =
                        jsonwebtoken::EncodingKey::from_secret(public_jwk.to_string().as_bytes())
                            .unwrap();
                    let hh: jsonwebtoken::Header = serde_json::from_value(h).unwrap();
                    jsonwebtoken::encode(&hh, &claims(t0), &k).unwrap()
                },
                Refusal::AlgorithmNotAllowed,
            ),
        ];
        assert!(cases.len() >= 25);
        for (name, token, want) in cases {
            assert_eq!(iss.verify(&token).err(), Some(want), "case: {name}");
        }
    }

    #[test]
    fn refusal_codes_are_stable_and_never_carry_the_token() {
        assert_eq!(Refusal::UnknownKid.as_str(), "unknown_kid");
        assert_eq!(
            Refusal::AlgorithmNotAllowed.as_str(),
            "algorithm_not_allowed"
        );
        let iss = issuer_with(vec![key("k1")]);
        let secretish = "eyJhbGciOiJFUzI1NiJ9.eyJzZWNyZXQiOjF9.c2ln";
        let e = iss.verify(secretish).unwrap_err();
        assert!(!e.to_string().contains("eyJ"));
        assert!(!format!("{e:?}").contains("eyJ"));
    }
}
