//! Phase 6: the request the provider receives. Upstream URI (base path, normalised rest, the
//! query byte for byte); headers a client may not pass on removed; `Host`, forwarding headers,
//! the purpose the policy checked, the verified identity, the agreement and the gateway's
//! assertion set; W3C trace context; and, on a route with field rules, no ranges or conditions
//! and HEAD sent as GET (the client gets the gateway's representation, never the provider's).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gerbang_auth::authn::Authenticator;
use gerbang_auth::{AuthMethod, Principal};
use gerbang_registry::Service;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::Version;

use super::authorise::Grant;
use super::context::Call;
use crate::error::GatewayError;
use crate::gateway::{ConnInfo, Snapshot};
use crate::headers::{self, Added, Field};

/// What the rewrite of one call needs besides the request.
pub(crate) struct Rewrite<'a> {
    pub snapshot: &'a Snapshot,
    pub service: &'a Service,
    pub principal: &'a Principal,
    pub grant: &'a Grant<'a>,
    pub conn: &'a ConnInfo,
    pub request_id: &'a HeaderValue,
    /// The client sent `Expect` ([`super::checks::Survey::expect`]).
    pub expect_sent: bool,
}

impl Rewrite<'_> {
    /// Turns the client's request head into the one the provider receives: the client's
    /// fields that may go on stay in `parts`, the fields the gateway sets come back beside
    /// them (see [`Added`]). The target is left as the client sent it; the exchange writes the
    /// upstream's (`h1::Target`).
    pub(crate) fn apply(&self, parts: &mut Parts, call: &mut Call) -> Added {
        let settings = &self.snapshot.settings;
        let kept = headers::strip_request(
            &mut parts.headers,
            &settings.strip_headers,
            &self.service.allow_underscore_headers,
        );
        let mut added = Added::for_stripped(&kept);
        // The host the client addressed: `:authority` (HTTP/2) or the absolute-form target
        // wins over `Host` (RFC 9113 §8.3.1; the checks refused a disagreement).
        let original_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or(kept.host);
        // The gateway met `Expect: 100-continue` itself (hyper answers it when the body is
        // first read) and sends the body at once: the provider is not asked to wait.
        if self.expect_sent {
            parts.headers.remove(header::EXPECT);
        }
        if parts.version == Version::HTTP_2 {
            headers::join_cookies(&mut parts.headers);
        }
        headers::set_forwarding(
            &mut parts.headers,
            &mut added,
            &self.conn.remote_ip,
            self.conn.proto,
            original_host,
        );
        // The provider receives exactly the purpose the policy judged.
        match self.grant.purpose.clone() {
            Some(v) => added.set(&mut parts.headers, Field::XGerbangPurpose, v),
            None => added.remove(&mut parts.headers, Field::XGerbangPurpose),
        }
        // Every other `X-Gerbang-*` name is gone from the map (`strip_request`).
        let identified = set_identity(
            &mut added,
            self.principal,
            self.service,
            self.snapshot,
            self.grant,
            (settings.assertion_ttl, call.unix_secs()),
        );
        if identified.is_none() {
            if let Ok(v) = HeaderValue::from_str(&self.grant.agreement.id) {
                added.set_absent(Field::XGerbangAgreement, v);
            }
        }
        // W3C trace context. With a span exporter the gateway's span is the upstream's parent;
        // without one a valid client traceparent goes on as it is, and otherwise (absent,
        // malformed, repeated) the gateway starts a trace.
        let tp = match &call.span {
            Some(ids) => ids.header(),
            None if added.client_sent(Field::Traceparent) => {
                let mut tps = parts.headers.get_all(&headers::TRACEPARENT).iter();
                let client_tp = match (tps.next(), tps.next()) {
                    (Some(v), None) if headers::valid_traceparent(v.as_bytes()) => Some(v.clone()),
                    _ => None,
                };
                client_tp.unwrap_or_else(crate::ids::new_traceparent)
            }
            None => crate::ids::new_traceparent(),
        };
        call.trace = Some(tp.clone());
        added.set(&mut parts.headers, Field::Traceparent, tp);
        if self.grant.filter().is_some() {
            // The gateway must read the response to filter it: no compression. It answers
            // with a representation of its own, so every feature that describes the
            // provider's (parts of it, validators of it) is closed: no ranges, no conditions,
            // and HEAD is answered from a filtered GET.
            added.set(
                &mut parts.headers,
                Field::AcceptEncoding,
                HeaderValue::from_static("identity"),
            );
            headers::remove_range_and_conditions(&mut parts.headers);
            if parts.method == http::Method::HEAD {
                parts.method = http::Method::GET;
            }
        }
        added.set(
            &mut parts.headers,
            Field::XRequestId,
            self.request_id.clone(),
        );
        parts.version = Version::HTTP_11;
        // `parts.uri` stays the client's: the exchange takes its query, byte for byte, and
        // writes the upstream's path itself (`h1::Target`).
        added
    }
}

/// `{base_path}{rest}?{query}` as a checked `PathAndQuery`, for hyper's client (https://
/// instances); the inline client writes the same bytes into its request line
/// (`h1::Target`). The query is passed on byte for byte.
pub(crate) fn upstream_path(
    base_path: &str,
    rest: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, GatewayError> {
    // The exact length: a Bytes made from a String with spare capacity needs a second
    // allocation for its shared header.
    let path_len = (base_path.len() + rest.len()).max(1);
    let mut pq = String::with_capacity(path_len + query.map_or(0, |q| q.len() + 1));
    pq.push_str(base_path);
    pq.push_str(rest);
    if pq.is_empty() {
        pq.push('/');
    }
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::from_maybe_shared(Bytes::from(pq))
        .map_err(|e| GatewayError::Internal(format!("upstream path: {e}")))
}

/// Sets the verified identity headers, the gateway assertion when configured, and the
/// agreement; `None` when there is no identity to send (the caller then sets the agreement).
fn set_identity(
    added: &mut Added,
    principal: &Principal,
    service: &Service,
    snapshot: &Snapshot,
    grant: &Grant<'_>,
    (assertion_ttl, now): (Option<Duration>, u64),
) -> Option<()> {
    let id = snapshot.identities.get(
        principal,
        service,
        (grant.index, &grant.agreement.id),
        grant.purpose(),
        &snapshot.auth,
        (assertion_ttl, now),
    )?;
    // How this call authenticated: the same application may use several methods.
    added.set_absent(
        Field::XGerbangAuthMethod,
        HeaderValue::from_static(method_name(&principal.method)),
    );
    added.set_shared_absent(id);
    Some(())
}

/// The configuration name of an authentication method, as providers see it.
fn method_name(m: &AuthMethod) -> &'static str {
    match m {
        AuthMethod::IssuedToken => "client_secret",
        AuthMethod::ExternalJwt { .. } => "external_jwt",
        AuthMethod::ApiKey => "api_key",
        AuthMethod::Mtls => "mtls",
    }
}

/// The identity headers of one (application, service) pair, shared by the requests that carry
/// them: `X-Gerbang-Consumer`, `X-Gerbang-Consumer-Agency`, the signed assertion (reused for
/// half its lifetime: signing costs tens of microseconds, a lookup well under one) and
/// `X-Gerbang-Agreement` (the agreement's id), each made once per entry instead of per call.
struct Identity {
    headers: Arc<[(Field, HeaderValue)]>,
    renew_at: u64,
    /// What the entry was made for, confirmed on every hit (the key is a hash of it).
    pair: u64,
    agreement: usize,
    purpose: Option<Box<str>>,
}

/// [`Identity`] per (application index, service index) of one snapshot. Keys are two dense
/// indices, so the table hashes one integer.
#[derive(Default)]
pub(crate) struct IdentityCache {
    map: Mutex<crate::word_hash::WordMap<u64, Identity>>,
}

/// The table key of an identity: the (application, service) pair, the agreement and the
/// purpose mixed into one word (FNV-1a over the purpose; hits are confirmed field by field).
fn identity_key(pair: u64, agreement: usize, purpose: Option<&str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ pair;
    h = (h ^ agreement as u64).wrapping_mul(0x0100_0000_01b3);
    if let Some(p) = purpose {
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        for b in p.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Most pairs remembered before the table starts over.
const IDENTITY_CACHE_MAX: usize = 100_000;

impl IdentityCache {
    /// The identity of `principal` calling `service` under `agreement` (index, id) for
    /// `purpose`: the assertion names both, so an entry serves only that combination.
    fn get(
        &self,
        principal: &Principal,
        service: &Service,
        agreement: (usize, &str),
        purpose: Option<&str>,
        auth: &Authenticator,
        // The assertion's lifetime (none: no assertion) and the call's time.
        (assertion_ttl, now): (Option<Duration>, u64),
    ) -> Option<Arc<[(Field, HeaderValue)]>> {
        let pair = (u64::from(principal.index) << 32) | service.index as u64;
        let key = identity_key(pair, agreement.0, purpose);
        if let Ok(map) = self.map.lock() {
            if let Some(id) = map.get(&key) {
                if now < id.renew_at
                    && id.pair == pair
                    && id.agreement == agreement.0
                    && id.purpose.as_deref() == purpose
                {
                    return Some(Arc::clone(&id.headers));
                }
            }
        }
        let consumer = HeaderValue::from_str(&principal.application).ok()?;
        let agency = HeaderValue::from_str(&principal.agency).ok()?;
        let agreement_header = HeaderValue::from_str(agreement.1).ok();
        let (assertion, renew_at) = match assertion_ttl {
            None => (None, u64::MAX),
            Some(ttl) => {
                let audience = format!("{}/{}", service.agency, service.id);
                let call = gerbang_auth::token::AssertedCall {
                    application: &principal.application,
                    agency: &principal.agency,
                    audience: &audience,
                    agreement: agreement.1,
                    purpose,
                };
                match auth.issuer().assertion(&call, ttl) {
                    Ok((jwt, exp)) => (
                        HeaderValue::from_str(&jwt).ok(),
                        exp.saturating_sub(ttl.as_secs() / 2),
                    ),
                    Err(e) => {
                        // Without an assertion the request still goes out; the next one retries.
                        tracing::error!(error = %e, "signing a gateway assertion failed");
                        (None, 0)
                    }
                }
            }
        };
        let mut headers = vec![
            (Field::XGerbangConsumer, consumer),
            (Field::XGerbangConsumerAgency, agency),
        ];
        if let Some(a) = assertion {
            headers.push((Field::XGerbangAssertion, a));
        }
        if let Some(v) = agreement_header {
            headers.push((Field::XGerbangAgreement, v));
        }
        let headers: Arc<[(Field, HeaderValue)]> = headers.into();
        let id = Identity {
            headers: Arc::clone(&headers),
            renew_at,
            pair,
            agreement: agreement.0,
            purpose: purpose.map(Box::from),
        };
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= IDENTITY_CACHE_MAX {
                map.clear();
            }
            map.insert(key, id);
        }
        Some(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_keys_separate_agreements_and_purposes() {
        let k = |a, p| identity_key(7, a, p);
        assert_ne!(k(1, None), k(2, None));
        assert_ne!(k(1, Some("a")), k(1, Some("b")));
        assert_ne!(k(1, None), k(1, Some("")));
        assert_eq!(k(1, Some("a")), k(1, Some("a")));
    }
}
