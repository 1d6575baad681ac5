//! The built-in issuer's HTTP endpoints on the data plane: `POST /oauth/token` (client
//! credentials), `GET /.well-known/jwks.json` and `GET /.well-known/oauth-authorization-server`.
//! Protocol rules live in `gerbang_auth::oauth`; this module moves bytes and bounds the work:
//! argon2 runs on the blocking pool, within the limits of [`crate::token_guard`] (failed
//! authentications per source and per client, consulted before any secret is checked; a fair
//! share of the argon2 slots per source).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gerbang_auth::authn::{Authenticator, ClientAuthError};
use gerbang_auth::oauth::{self, OAuthError, RawTokenRequest};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::GatewayError;
use crate::response_body::{self, ResponseBody};
use crate::token_guard::{Throttled, TokenEndpointSettings, TokenGuard};

pub const TOKEN_PATH: &str = "/oauth/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// Time a client has to send a token request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a token request may wait for its source's turn and a free argon2 slot before
/// `temporarily_unavailable`.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings and state of the issuer endpoints.
pub struct IssuerEndpoints {
    /// Base URL for the metadata document's endpoint URLs.
    pub public_base_url: String,
    guard: Arc<TokenGuard>,
}

/// Whether `path` is one of the issuer endpoints (checked before routing).
pub fn is_issuer_path(path: &str) -> bool {
    matches!(path, TOKEN_PATH | JWKS_PATH | METADATA_PATH)
}

impl IssuerEndpoints {
    pub fn new(public_base_url: String, settings: &TokenEndpointSettings) -> Self {
        Self {
            public_base_url,
            guard: TokenGuard::new(settings),
        }
    }

    /// The token endpoint's limits (their counts are exported at scrape time).
    pub fn guard(&self) -> &Arc<TokenGuard> {
        &self.guard
    }

    /// Serves `req` on an issuer path; `source` is the client's address (the TCP peer).
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        source: IpAddr,
        auth: &Arc<Authenticator>,
        token_result: &mut Option<&'static str>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let path = req.uri().path();
        if path == TOKEN_PATH {
            if req.method() != Method::POST {
                return Err(GatewayError::MethodNotAllowed { allow: "POST" });
            }
            let res = match self.token(req, source, auth).await {
                Ok(body) => {
                    *token_result = Some("issued");
                    json(StatusCode::OK, body)
                }
                Err(e) => {
                    *token_result = Some(e.code());
                    let mut res = json(
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                        e.body(),
                    );
                    if e == OAuthError::InvalidClient {
                        res.headers_mut().insert(
                            header::WWW_AUTHENTICATE,
                            HeaderValue::from_static(r#"Basic realm="gerbang""#),
                        );
                    }
                    if let Some(secs) = e.retry_after() {
                        res.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                    }
                    res
                }
            };
            return Ok(res);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" });
        }
        let issuer = auth.issuer();
        let body = if path == JWKS_PATH {
            serde_json::to_string(&issuer.keys.jwks())
                .map_err(|e| GatewayError::Internal(format!("jwks: {e}")))?
        } else {
            oauth::metadata(&issuer.issuer, &self.public_base_url)
        };
        let mut res = json(StatusCode::OK, body);
        // Keys change only with a new configuration; a minute keeps rotation visible quickly.
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        res.headers_mut().remove(header::PRAGMA);
        Ok(res)
    }

    async fn token(
        &self,
        req: Request<Incoming>,
        source: IpAddr,
        auth: &Arc<Authenticator>,
    ) -> Result<String, OAuthError> {
        let (parts, incoming) = req.into_parts();
        let limited = http_body_util::Limited::new(incoming, oauth::MAX_TOKEN_REQUEST_BYTES);
        let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(_)) => {
                return Err(OAuthError::InvalidRequest(
                    "the request body is too large or broken",
                ))
            }
            Err(_) => {
                return Err(OAuthError::InvalidRequest(
                    "the request body did not arrive in time",
                ))
            }
        };
        let mut authz = parts.headers.get_all(header::AUTHORIZATION).iter();
        let first = authz.next();
        let raw = RawTokenRequest {
            authorization: first.map(HeaderValue::as_bytes),
            authorization_repeated: authz.next().is_some(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            body: &body,
        };
        let request = oauth::parse_token_request(raw)?;
        // Limits on failures, before any secret is checked; client ids count only when
        // registered (made-up ones would only fill the table).
        let client = auth
            .is_application(&request.client_id)
            .then_some(request.client_id.as_str());
        self.guard
            .check(source, client)
            .map_err(|t| slow_down(t, source, &request.client_id))?;
        let admission = self
            .guard
            .admit(source, QUEUE_TIMEOUT)
            .await
            .map_err(|_| OAuthError::TemporarilyUnavailable)?;
        // Again after waiting: the requests this one waited behind may have used up the
        // allowance.
        self.guard
            .check(source, client)
            .map_err(|t| slow_down(t, source, &request.client_id))?;
        let checker = Arc::clone(auth);
        let guard = Arc::clone(&self.guard);
        let counted_client = client.map(str::to_owned);
        let (client_id, secret) = (request.client_id.clone(), request.client_secret);
        let (checked, used_up) = tokio::task::spawn_blocking(move || {
            let checked = checker.check_client_secret(&client_id, &secret);
            // A failure is counted before the slot is given up, so that the source's next
            // request, which waits for this slot, already sees it.
            let used_up = (checked.as_ref().err() == Some(&ClientAuthError::InvalidClient))
                .then(|| guard.failed(source, counted_client.as_deref()));
            drop(admission);
            (checked, used_up)
        })
        .await
        .map_err(|_| OAuthError::ServerError)?;
        let principal = match checked {
            Ok(p) => p,
            Err(e) => {
                // Logged once per used-up allowance, not per refused request of a flood.
                if let Some((by_source, by_client)) = used_up.filter(|(s, c)| *s || *c) {
                    tracing::warn!(client_id = %request.client_id, %source, by_source, by_client, "too many failed client authentications: further token requests are refused (429 slow_down) until the allowance comes back");
                }
                tracing::info!(client_id = %request.client_id, %source, reason = ?e, "token request refused");
                return Err(e.into());
            }
        };
        let scopes = auth.grant_scopes(&principal, request.scope.as_deref())?;
        let token = auth
            .issuer()
            .issue(&principal.application, &principal.agency, &scopes.join(" "))
            .map_err(|e| {
                tracing::error!(error = %e, "signing an access token failed");
                OAuthError::ServerError
            })?;
        tracing::info!(client_id = %principal.application, basic = request.basic, "access token issued");
        Ok(oauth::token_response(
            &token,
            auth.token_ttl().as_secs(),
            &scopes,
        ))
    }
}

/// The refusal of a request over a failure limit (counted by the guard; the warning was
/// logged when the allowance was used up).
fn slow_down(t: Throttled, source: IpAddr, client_id: &str) -> OAuthError {
    tracing::debug!(%client_id, %source, by = t.by.as_str(), retry_after_secs = t.retry_after_secs(), "token request refused: too many failed client authentications");
    OAuthError::SlowDown {
        retry_after_secs: t.retry_after_secs(),
    }
}

fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut res = Response::new(response_body::full(Bytes::from(body)));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}
