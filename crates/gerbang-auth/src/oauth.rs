//! The token endpoint's protocol (OAuth 2.0 client credentials, RFC 6749 §4.4): parsing a token
//! request, the error codes of §5.2, and the JSON documents the endpoint and the metadata
//! endpoint (RFC 8414) answer with. The HTTP server calls in here; nothing here does I/O.

use base64::Engine;

use crate::authn::ClientAuthError;

/// Largest token request body read.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

/// A well-formed client credentials request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `agency/app`.
    pub client_id: String,
    pub client_secret: String,
    /// The `scope` parameter, if sent.
    pub scope: Option<String>,
    /// Whether the client authenticated with HTTP Basic (`client_secret_basic`).
    pub basic: bool,
}

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("client authentication failed")]
    InvalidClient,
    #[error("the client may not use this grant")]
    UnauthorizedClient,
    #[error("only grant_type=client_credentials is supported")]
    UnsupportedGrantType,
    #[error("the requested scope is not allowed for this client")]
    InvalidScope,
    #[error("the token endpoint is busy; try again shortly")]
    TemporarilyUnavailable,
    /// Too many failed client authentications from this source address or for this client id:
    /// refused before any secret is checked, until `retry_after_secs` have passed.
    #[error("too many failed client authentications; try again after the time in Retry-After")]
    SlowDown { retry_after_secs: u64 },
    #[error("the server failed to issue a token")]
    ServerError,
}

impl OAuthError {
    /// Every `error` value `code` can give (keep in step with it).
    pub const CODES: [&'static str; 8] = [
        "invalid_request",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "temporarily_unavailable",
        "slow_down",
        "server_error",
    ];

    /// The `error` value.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            // Registered for the token endpoint by RFC 8628 §3.5 (OAuth Extensions Error
            // Registry): "slow down"; answered with 429 and Retry-After.
            OAuthError::SlowDown { .. } => "slow_down",
            OAuthError::ServerError => "server_error",
        }
    }

    /// The HTTP status: 401 for `invalid_client` (with `WWW-Authenticate`), 429 for
    /// `slow_down` (with `Retry-After`), 503 when busy, 500 on a server failure, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            OAuthError::InvalidClient => 401,
            OAuthError::SlowDown { .. } => 429,
            OAuthError::TemporarilyUnavailable => 503,
            OAuthError::ServerError => 500,
            _ => 400,
        }
    }

    /// Seconds for `Retry-After`, when the client should wait before trying again.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            OAuthError::SlowDown { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The JSON body: `{"error": …, "error_description": …}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.code(), "error_description": self.to_string() })
            .to_string()
    }
}

impl From<ClientAuthError> for OAuthError {
    fn from(e: ClientAuthError) -> Self {
        match e {
            ClientAuthError::InvalidClient => OAuthError::InvalidClient,
            ClientAuthError::UnauthorizedClient => OAuthError::UnauthorizedClient,
            ClientAuthError::InvalidScope => OAuthError::InvalidScope,
        }
    }
}

/// What the request carried, as received.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawTokenRequest<'a> {
    /// The `Authorization` header, if exactly one was sent.
    pub authorization: Option<&'a [u8]>,
    /// Whether several `Authorization` headers were sent.
    pub authorization_repeated: bool,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// Parses a token request (`client_secret_basic` or `client_secret_post`, never both; every
/// parameter at most once, RFC 6749 §3.2).
pub fn parse_token_request(raw: RawTokenRequest<'_>) -> Result<TokenRequest, OAuthError> {
    if raw.authorization_repeated {
        return Err(OAuthError::InvalidRequest(
            "the Authorization header is repeated",
        ));
    }
    let media = raw
        .content_type
        .and_then(|c| std::str::from_utf8(c).ok())
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut grant_type = None;
    let mut scope = None;
    let mut post_id = None;
    let mut post_secret = None;
    for (k, v) in form_urlencoded::parse(raw.body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut grant_type,
            "scope" => &mut scope,
            "client_id" => &mut post_id,
            "client_secret" => &mut post_secret,
            _ => continue,
        };
        if slot.is_some() {
            return Err(OAuthError::InvalidRequest("a parameter is repeated"));
        }
        *slot = Some(v.into_owned());
    }
    match grant_type.as_deref() {
        None => return Err(OAuthError::InvalidRequest("grant_type is missing")),
        Some("client_credentials") => {}
        Some(_) => return Err(OAuthError::UnsupportedGrantType),
    }
    let (client_id, client_secret, basic) = match raw.authorization {
        Some(value) => {
            if post_secret.is_some() {
                return Err(OAuthError::InvalidRequest(
                    "use one client authentication method, not Basic and client_secret both",
                ));
            }
            let (id, secret) = parse_basic(value).ok_or(OAuthError::InvalidClient)?;
            // A client_id in the body must agree with Basic (RFC 6749 §3.2.1 allows it).
            if post_id.as_ref().is_some_and(|p| *p != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the Basic credentials",
                ));
            }
            (id, secret, true)
        }
        None => match (post_id, post_secret) {
            (Some(id), Some(secret)) => (id, secret, false),
            (Some(_), None) | (None, Some(_)) => {
                return Err(OAuthError::InvalidClient);
            }
            (None, None) => return Err(OAuthError::InvalidClient),
        },
    };
    if client_id.is_empty() || client_secret.is_empty() {
        return Err(OAuthError::InvalidClient);
    }
    Ok(TokenRequest {
        client_id,
        client_secret,
        scope,
        basic,
    })
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` → (id, secret), as RFC 6749 §2.3.1 says.
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(value).ok()?;
    let (scheme, b64) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// One `application/x-www-form-urlencoded` component: `+` is a space, then percent-decoding;
/// `None` when the result is not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// The successful token response (RFC 6749 §5.1).
pub fn token_response(access_token: &str, expires_in: u64, scopes: &[String]) -> String {
    serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scopes.join(" "),
    })
    .to_string()
}

/// Authorization server metadata (RFC 8414) for an issuer whose endpoints live under
/// `base_url` (no trailing slash).
pub fn metadata(issuer: &str, base_url: &str) -> String {
    serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{base_url}/oauth/token"),
        "jwks_uri": format!("{base_url}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["token"],
        "scopes_supported": [],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(id: &str, secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    }

    fn req<'a>(auth: Option<&'a str>, body: &'a str) -> RawTokenRequest<'a> {
        RawTokenRequest {
            authorization: auth.map(str::as_bytes),
            authorization_repeated: false,
            content_type: Some(b"application/x-www-form-urlencoded; charset=UTF-8"),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn basic_with_form_encoded_id_and_post_both_parse() {
        let auth = basic("dinkes%2Fsimpus", "demo-secret-simpus");
        let r = parse_token_request(req(Some(&auth), "grant_type=client_credentials")).unwrap();
        assert_eq!(r.client_id, "dinkes/simpus");
        assert_eq!(r.client_secret, "demo-secret-simpus");
        assert!(r.basic);
        // A raw slash works too, and '+' in a form-encoded secret is a space.
        let auth = basic("dinkes/simpus", "a+b%3Ac");
        let r = parse_token_request(req(Some(&auth), "grant_type=client_credentials&scope=read"))
            .unwrap();
        assert_eq!(
            (r.client_secret.as_str(), r.scope.as_deref()),
            ("a b:c", Some("read"))
        );

        let r = parse_token_request(req(
            None,
            "grant_type=client_credentials&client_id=dinkes%2Fsimpus&client_secret=demo-secret-simpus",
        ))
        .unwrap();
        assert_eq!(r.client_id, "dinkes/simpus");
        assert!(!r.basic);
    }

    #[test]
    fn every_malformed_request_gets_its_code() {
        let auth = basic("dinkes%2Fsimpus", "demo-secret-simpus");
        let cases: Vec<(RawTokenRequest<'_>, &str)> = vec![
            (req(Some(&auth), ""), "invalid_request"),
            (
                req(Some(&auth), "grant_type=password"),
                "unsupported_grant_type",
            ),
            (
                req(
                    Some(&auth),
                    "grant_type=client_credentials&grant_type=client_credentials",
                ),
                "invalid_request",
            ),
            (
                req(Some(&auth), "grant_type=client_credentials&client_secret=x"),
                "invalid_request",
            ),
            (
                req(
                    Some(&auth),
                    "grant_type=client_credentials&client_id=other%2Fapp",
                ),
                "invalid_request",
            ),
            (
                req(Some("Basic !!!"), "grant_type=client_credentials"),
                "invalid_client",
            ),
            (
                req(Some("Bearer abc"), "grant_type=client_credentials"),
                "invalid_client",
            ),
            (req(None, "grant_type=client_credentials"), "invalid_client"),
            (
                req(None, "grant_type=client_credentials&client_id=a%2Fb"),
                "invalid_client",
            ),
            (
                req(
                    None,
                    "grant_type=client_credentials&client_id=a%2Fb&client_secret=",
                ),
                "invalid_client",
            ),
            (
                RawTokenRequest {
                    content_type: Some(b"application/json"),
                    ..req(Some(&auth), "grant_type=client_credentials")
                },
                "invalid_request",
            ),
            (
                RawTokenRequest {
                    authorization_repeated: true,
                    ..req(Some(&auth), "grant_type=client_credentials")
                },
                "invalid_request",
            ),
        ];
        for (i, (r, want)) in cases.into_iter().enumerate() {
            let err = parse_token_request(r).unwrap_err();
            assert_eq!(err.code(), want, "case {i}");
            let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
            assert_eq!(body["error"], want);
        }
        assert_eq!(OAuthError::InvalidClient.status(), 401);
        assert_eq!(OAuthError::UnsupportedGrantType.status(), 400);
        let slow = OAuthError::SlowDown {
            retry_after_secs: 7,
        };
        assert_eq!((slow.status(), slow.code()), (429, "slow_down"));
        assert_eq!(slow.retry_after(), Some(7));
        assert_eq!(OAuthError::InvalidClient.retry_after(), None);
    }
}
