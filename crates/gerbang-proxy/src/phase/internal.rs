//! Phase 2: the gateway's own endpoints on the data plane: the token issuer's
//! (`/oauth/token`, `/.well-known/jwks.json`, `/.well-known/oauth-authorization-server`) and
//! the service catalogue (`/catalog/services`, `/catalog/allowed`).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;

use super::context::Call;
use crate::error::GatewayError;
use crate::gateway::{ConnInfo, Gateway, Snapshot};
use crate::response_body::{self, ResponseBody};
use crate::{catalog, oauth};

/// Which of the gateway's own endpoints a path names, if any.
pub(crate) enum Internal {
    Issuer(&'static str),
    Catalog,
}

pub(crate) fn which(path: &str) -> Option<Internal> {
    if oauth::is_issuer_path(path) {
        return Some(Internal::Issuer(match path {
            oauth::TOKEN_PATH => "gateway/oauth-token",
            oauth::JWKS_PATH => "gateway/jwks",
            _ => "gateway/oauth-metadata",
        }));
    }
    catalog::is_catalog_path(path).then_some(Internal::Catalog)
}

/// Answers a call to one of the gateway's own endpoints.
pub(crate) async fn serve(
    gateway: &Gateway,
    snapshot: &Snapshot,
    endpoint: Internal,
    req: Parts,
    incoming: Incoming,
    conn: &ConnInfo,
    call: &mut Call,
) -> Result<Response<ResponseBody>, GatewayError> {
    match endpoint {
        Internal::Issuer(label) => {
            call.issuer_endpoint = Some(label);
            gateway
                .issuer_endpoints
                .serve(
                    Request::from_parts(req, incoming),
                    conn.remote.ip(),
                    &snapshot.auth,
                    &mut call.token_result,
                )
                .await
        }
        Internal::Catalog => {
            call.issuer_endpoint = Some("gateway/catalog");
            let principal =
                super::authenticate::principal(&snapshot.auth, &req, conn, Some(call.unix_secs()))
                    .await?;
            call.consumer = Some(Arc::clone(&principal));
            if req.method != http::Method::GET && req.method != http::Method::HEAD {
                return Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" });
            }
            let body = match req.uri.path() {
                catalog::SERVICES_PATH => catalog::services(&snapshot.registry, &snapshot.policy),
                catalog::ALLOWED_PATH => {
                    catalog::allowed(&principal, &snapshot.policy, call.unix_secs() as i64)
                }
                _ => return Err(GatewayError::RouteNotFound),
            };
            let mut res = Response::new(response_body::full(bytes::Bytes::from(body.to_string())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(res)
        }
    }
}
