//! The built-in issuer's HTTP endpoints on the data plane: `POST /oauth/token` (client
//! credentials), `GET /.well-known/jwks.json` and `GET /.well-known/oauth-authorization-server`.
//! Protocol rules live in `gerbang_auth::oauth`; this module moves bytes and bounds the work:
//! argon2 runs on the blocking pool, at most `concurrency` at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gerbang_auth::authn::Authenticator;
use gerbang_auth::oauth::{self, OAuthError, RawTokenRequest};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::body::{self, ResponseBody};
use crate::error::GatewayError;

pub const TOKEN_PATH: &str = "/oauth/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// Time a client has to send a token request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a token request may wait for a free argon2 slot before `temporarily_unavailable`.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings and state of the issuer endpoints.
pub struct IssuerEndpoints {
    /// Base URL for the metadata document's endpoint URLs.
    pub public_base_url: String,
    slots: Arc<Semaphore>,
}

/// Whether `path` is one of the issuer endpoints (checked before routing).
pub fn is_issuer_path(path: &str) -> bool {
    matches!(path, TOKEN_PATH | JWKS_PATH | METADATA_PATH)
}

impl IssuerEndpoints {
    pub fn new(public_base_url: String, concurrency: usize) -> Self {
        Self {
            public_base_url,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Serves `req` on an issuer path.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        auth: &Arc<Authenticator>,
        token_result: &mut Option<&'static str>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let path = req.uri().path();
        if path == TOKEN_PATH {
            if req.method() != Method::POST {
                return Err(GatewayError::MethodNotAllowed { allow: "POST" });
            }
            let res = match self.token(req, auth).await {
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
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| OAuthError::TemporarilyUnavailable)?
            .map_err(|_| OAuthError::TemporarilyUnavailable)?;
        let checker = Arc::clone(auth);
        let (client_id, secret) = (request.client_id.clone(), request.client_secret);
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            checker.check_client_secret(&client_id, &secret)
        })
        .await
        .map_err(|_| OAuthError::ServerError)?;
        let principal = match checked {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(client_id = %request.client_id, reason = ?e, "token request refused");
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

fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut res = Response::new(body::full(Bytes::from(body)));
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
