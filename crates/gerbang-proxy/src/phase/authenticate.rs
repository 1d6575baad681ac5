//! Phase 4: the credentials a request presents → the calling application (`Principal`), or
//! 401. It runs before the registry lookup's error is told, so an unauthenticated caller learns
//! nothing of the registry.

use std::sync::Arc;

use gerbang_auth::authn::{Authenticator, Presented};
use gerbang_auth::Principal;
use http::header::{self, HeaderValue};
use http::request::Parts;

use crate::error::GatewayError;
use crate::gateway::ConnInfo;
use crate::headers;

/// The credentials a request presents, judged by the snapshot's authenticator.
pub(crate) async fn principal(
    auth: &Authenticator,
    req: &Parts,
    conn: &ConnInfo,
    now: Option<u64>,
) -> Result<Arc<Principal>, GatewayError> {
    let h = &req.headers;
    let mut authz = headers::values(h, &header::AUTHORIZATION);
    let mut presented = Presented {
        authorization: authz.next().map(HeaderValue::as_bytes),
        authorization_repeated: authz.next().is_some(),
        client_cert: conn.client_cert.as_deref(),
        now,
        ..Presented::default()
    };
    // `Authorization` decides alone when present: the API key is looked up only without it.
    if presented.authorization.is_none() {
        let mut keys = headers::values(h, &headers::X_API_KEY);
        presented.api_key = keys.next().map(HeaderValue::as_bytes);
        presented.api_key_repeated = keys.next().is_some();
    }
    auth.authenticate(presented)
        .await
        .map_err(GatewayError::Unauthenticated)
}
