//! Every error the gateway itself answers with, and the one place where each maps to an HTTP
//! status, a stable code and a client-facing message. Details stay in the log.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use gerbang_auth::authn::AuthFailure;
use gerbang_auth::token::Refusal;

use crate::path::PathError;

/// Who caused an error: metrics and retries need to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The calling application sent something the gateway refuses.
    Client,
    /// The provider's upstream failed or did not answer.
    Upstream,
    /// The gateway itself failed.
    Gateway,
}

/// A request the gateway answers itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid path: {0}")]
    Path(PathError),
    #[error("request target is {len} bytes, limit {limit}")]
    UriTooLong { len: usize, limit: usize },
    #[error("request header block is {len} bytes, limit {limit}")]
    HeadersTooLarge { len: usize, limit: usize },
    #[error("request body exceeds the service's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    #[error("request has an invalid Content-Length")]
    InvalidContentLength,
    #[error("invalid Host: {0}")]
    InvalidHost(&'static str),
    #[error("unsupported expectation in Expect")]
    ExpectationFailed,
    #[error("X-Gerbang-Purpose is repeated, a list, or not plain text")]
    PurposeAmbiguous,
    #[error("the path names no agency and service")]
    RouteNotFound,
    #[error("unknown agency `{0}`")]
    UnknownAgency(String),
    #[error("unknown service `{0}`")]
    UnknownService(String),
    #[error("service `{0}` has no upstream instance")]
    NoInstance(String),
    #[error("service `{0}` has no healthy upstream instance")]
    NoHealthyUpstream(String),
    #[error("service `{0}` is at its circuit-breaker limit")]
    UpstreamOverloaded(String),
    #[error("connecting to upstream {instance} failed: {detail}")]
    UpstreamUnavailable { instance: String, detail: String },
    #[error("connecting to upstream {instance} timed out")]
    UpstreamConnectTimeout { instance: String },
    #[error("upstream {instance} sent no response head within {timeout_ms} ms")]
    UpstreamTimeout { instance: String, timeout_ms: u128 },
    #[error("upstream {instance} failed: {detail}")]
    UpstreamFailed { instance: String, detail: String },
    #[error("the client's request body was still arriving after {timeout_ms} ms")]
    RequestBodyTimeout { timeout_ms: u128 },
    #[error("the client's request body failed: {0}")]
    ClientBody(String),
    #[error("not authenticated: {0}")]
    Unauthenticated(gerbang_auth::authn::AuthFailure),
    #[error("method not allowed here")]
    MethodNotAllowed { allow: &'static str },
    /// Denied by the agreements (403), or a query the endpoint refuses (400, the `query_*`
    /// reasons).
    #[error("denied by policy: {0}")]
    Forbidden(gerbang_policy::Reason),
    #[error("limited by the agreement: {reason}")]
    Limited {
        reason: gerbang_policy::Reason,
        retry_after_secs: u64,
        rate: Option<gerbang_policy::limits::RateInfo>,
    },
    /// Cluster mode with `on_redis_failure = "closed"`: the shared store of rate limits and
    /// quotas cannot be reached, so a call under a limited agreement is not served.
    #[error("the shared limit store is unavailable: {0}")]
    LimitStoreUnavailable(String),
    #[error("the response could not be filtered: {0}")]
    ResponseFilterFailed(String),
    #[error("the audit record could not be written")]
    AuditUnavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// Status, stable code, client-facing message, origin, and whether the request may be
    /// retried on another instance (nothing reached the upstream's application).
    fn describe(&self) -> (StatusCode, &'static str, &'static str, ErrorSource, bool) {
        use ErrorSource::*;
        match self {
            GatewayError::Path(e) => (
                StatusCode::BAD_REQUEST,
                e.code(),
                e.message(),
                Client,
                false,
            ),
            GatewayError::UriTooLong { .. } => (
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "the request target is longer than the gateway accepts",
                Client,
                false,
            ),
            GatewayError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "the request headers are larger than the gateway accepts",
                Client,
                false,
            ),
            GatewayError::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this service accepts",
                Client,
                false,
            ),
            GatewayError::AmbiguousFraming => (
                StatusCode::BAD_REQUEST,
                "ambiguous_framing",
                "the request has both Content-Length and Transfer-Encoding",
                Client,
                false,
            ),
            GatewayError::InvalidContentLength => (
                StatusCode::BAD_REQUEST,
                "invalid_content_length",
                "the request's Content-Length is not a single valid number",
                Client,
                false,
            ),
            GatewayError::InvalidHost(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_host",
                "the request must name its host once: one Host header (HTTP/1.1), agreeing with an absolute target or :authority, without user information",
                Client,
                false,
            ),
            GatewayError::ExpectationFailed => (
                StatusCode::EXPECTATION_FAILED,
                "expectation_failed",
                "the only expectation the gateway meets is Expect: 100-continue",
                Client,
                false,
            ),
            GatewayError::PurposeAmbiguous => (
                StatusCode::BAD_REQUEST,
                "purpose_ambiguous",
                "send X-Gerbang-Purpose once, with one purpose",
                Client,
                false,
            ),
            GatewayError::RouteNotFound => (
                StatusCode::NOT_FOUND,
                "route_not_found",
                "the path must start with /{agency}/{service}/",
                Client,
                false,
            ),
            GatewayError::UnknownAgency(_) => (
                StatusCode::NOT_FOUND,
                "unknown_agency",
                "no agency with this name is registered at the gateway",
                Client,
                false,
            ),
            GatewayError::UnknownService(_) => (
                StatusCode::NOT_FOUND,
                "unknown_service",
                "the agency offers no service with this name through the gateway",
                Client,
                false,
            ),
            GatewayError::NoInstance(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_upstream_instance",
                "the service has no upstream instance to forward to",
                Gateway,
                false,
            ),
            GatewayError::NoHealthyUpstream(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_upstream",
                "no instance of the provider's service is healthy; try again later",
                Upstream,
                false,
            ),
            GatewayError::UpstreamOverloaded(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_overloaded",
                "the provider's service has as many calls in flight as it may take; try again shortly",
                Gateway,
                false,
            ),
            GatewayError::UpstreamUnavailable { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the provider's service could not be reached",
                Upstream,
                true,
            ),
            GatewayError::UpstreamConnectTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_connect_timeout",
                "connecting to the provider's service timed out",
                Upstream,
                true,
            ),
            GatewayError::UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the provider's service did not answer in time",
                Upstream,
                false,
            ),
            GatewayError::UpstreamFailed { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the provider's service closed or broke the connection",
                Upstream,
                false,
            ),
            GatewayError::RequestBodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "request_body_timeout",
                "the request body did not arrive within the service's request timeout",
                Client,
                false,
            ),
            GatewayError::ClientBody(_) => (
                StatusCode::BAD_REQUEST,
                "request_body_failed",
                "the request body could not be read",
                Client,
                false,
            ),
            GatewayError::Unauthenticated(f) => {
                let (code, message) = unauthenticated(f);
                (StatusCode::UNAUTHORIZED, code, message, Client, false)
            }
            // A query the endpoint refuses is the request's fault (400), not a denial.
            GatewayError::Forbidden(reason) => (
                if reason.is_bad_request() {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::FORBIDDEN
                },
                reason.as_str(),
                reason.message(),
                Client,
                false,
            ),
            GatewayError::Limited { reason, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                reason.as_str(),
                reason.message(),
                Client,
                false,
            ),
            GatewayError::LimitStoreUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "limit_store_unavailable",
                "the gateway cannot reach the store that counts this agreement's rate limit and quota, so it does not serve the call; try again shortly",
                Gateway,
                false,
            ),
            GatewayError::AuditUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the gateway cannot record this call in its audit log, so it does not serve it",
                Gateway,
                false,
            ),
            GatewayError::ResponseFilterFailed(_) => (
                StatusCode::BAD_GATEWAY,
                "response_filter_failed",
                "the provider's response could not be filtered as the agreement requires, so none of it is sent",
                Upstream,
                false,
            ),
            GatewayError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not serve this method; see the Allow header",
                Client,
                false,
            ),
            GatewayError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the gateway failed to handle the request",
                Gateway,
                false,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.describe().0
    }

    /// The stable, documented error code.
    pub fn code(&self) -> &'static str {
        self.describe().1
    }

    pub fn source_kind(&self) -> ErrorSource {
        self.describe().3
    }

    /// Whether another instance may be tried: the request did not reach the upstream.
    pub fn retryable(&self) -> bool {
        self.describe().4
    }

    /// The JSON error response. The message is generic; `self`'s details go to the log only.
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let (status, code, message, _, _) = self.describe();
        let mut res = error_response(status, code, message, request_id);
        match self {
            GatewayError::Unauthenticated(f) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, www_authenticate(f));
            }
            GatewayError::MethodNotAllowed { allow } => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::Limited {
                retry_after_secs,
                rate,
                ..
            } => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
                if let Some(r) = rate {
                    set_rate_headers(res.headers_mut(), r);
                }
            }
            GatewayError::NoHealthyUpstream(_)
            | GatewayError::UpstreamOverloaded(_)
            | GatewayError::LimitStoreUnavailable(_) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (draft-ietf-httpapi-ratelimit-headers).
pub fn set_rate_headers(h: &mut http::HeaderMap, r: &gerbang_policy::limits::RateInfo) {
    h.insert("ratelimit-limit", HeaderValue::from(r.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(r.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(r.reset_secs));
}

/// The client-facing code and message of an authentication refusal. The precise reason
/// (`bad_signature`, `unknown_kid`, …) goes to the log and metrics only; an expired or not yet
/// valid token is told apart because the caller can act on it.
fn unauthenticated(f: &AuthFailure) -> (&'static str, &'static str) {
    match f {
        AuthFailure::Missing => (
            "missing_credentials",
            "authenticate with a bearer token (POST /oauth/token), an X-API-Key header or a client certificate",
        ),
        AuthFailure::Token(Refusal::Expired) => (
            "invalid_token",
            "the access token has expired; get a new one",
        ),
        AuthFailure::Token(Refusal::NotYetValid) => (
            "invalid_token",
            "the access token is not valid yet; check the clocks",
        ),
        AuthFailure::Token(_)
        | AuthFailure::NotBearer
        | AuthFailure::UnknownIssuer
        | AuthFailure::UnknownApplication => ("invalid_token", "the access token is not valid"),
        AuthFailure::ApiKey(_) | AuthFailure::RepeatedApiKey => {
            ("invalid_api_key", "the API key is not valid")
        }
        AuthFailure::UnknownCertificate => (
            "unknown_client_certificate",
            "the client certificate identifies no registered application",
        ),
        AuthFailure::MethodNotAllowed => (
            "auth_method_not_allowed",
            "this application may not authenticate this way",
        ),
        AuthFailure::IdentityMismatch => (
            "identity_mismatch",
            "the client certificate and the token or key name different applications",
        ),
    }
}

/// `WWW-Authenticate` for a refusal (RFC 6750 §3): no error code when nothing was presented.
fn www_authenticate(f: &AuthFailure) -> HeaderValue {
    match f {
        AuthFailure::Missing => HeaderValue::from_static(r#"Bearer realm="gerbang""#),
        AuthFailure::NotBearer => {
            HeaderValue::from_static(r#"Bearer realm="gerbang", error="invalid_request""#)
        }
        _ => HeaderValue::from_static(r#"Bearer realm="gerbang", error="invalid_token""#),
    }
}

/// Builds the one JSON error shape: `{"error": {"code", "message", "request_id"}}`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<Bytes> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": request_id }
    });
    let bytes = Bytes::from(body.to_string());
    let mut res = Response::new(bytes);
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_one_shape() {
        let res = GatewayError::UnknownAgency("x".into()).to_response("rid-1");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["error"]["code"], "unknown_agency");
        assert_eq!(v["error"]["request_id"], "rid-1");
        assert!(v["error"]["message"].as_str().unwrap().len() > 10);
        assert_eq!(v.as_object().unwrap().len(), 1);
    }

    #[test]
    fn a_refused_query_is_400_and_a_denial_403() {
        use gerbang_policy::Reason;
        for (reason, status) in [
            (Reason::QueryRepeated, StatusCode::BAD_REQUEST),
            (Reason::QueryNotAllowed, StatusCode::BAD_REQUEST),
            (Reason::QueryMalformed, StatusCode::BAD_REQUEST),
            (Reason::QueryMissing, StatusCode::BAD_REQUEST),
            (Reason::NoAgreement, StatusCode::FORBIDDEN),
            (Reason::ClassificationExceeded, StatusCode::FORBIDDEN),
        ] {
            let res = GatewayError::Forbidden(reason).to_response("r");
            assert_eq!(res.status(), status, "{reason}");
            let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
            assert_eq!(v["error"]["code"], reason.as_str());
        }
    }

    #[test]
    fn an_unreachable_limit_store_is_503_with_retry_after() {
        let e = GatewayError::LimitStoreUnavailable("Redis did not answer within 250ms".into());
        let res = e.to_response("r");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["error"]["code"], "limit_store_unavailable");
        assert!(!v["error"]["message"].as_str().unwrap().contains("250ms"));
        assert_eq!(e.source_kind(), ErrorSource::Gateway);
    }

    #[test]
    fn details_never_reach_the_client() {
        let e = GatewayError::UpstreamUnavailable {
            instance: "http://10.1.2.3:8080".into(),
            detail: "secret detail".into(),
        };
        let res = e.to_response("r");
        let text = String::from_utf8(res.body().to_vec()).unwrap();
        assert!(!text.contains("10.1.2.3") && !text.contains("secret"));
        assert!(e.retryable());
        assert_eq!(e.source_kind(), ErrorSource::Upstream);
    }
}
