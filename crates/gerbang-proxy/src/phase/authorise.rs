//! Phase 5: the data-sharing agreement that covers the call (or 403 with its reason; 400 for a
//! query the endpoint refuses; [`decide`], synchronous), then the agreement's rate limit and
//! quota (429; [`limits`], which awaits Redis only in cluster mode).

use gerbang_auth::Principal;
use gerbang_cluster::limits::{FailureMode, LimitCall, SharedLimits};
use gerbang_policy::limits::{LimitOutcome, RateInfo};
use gerbang_policy::{Agreement, FieldRules, Outcome};
use gerbang_registry::Service;
use http::header::HeaderValue;
use http::request::Parts;

use super::context::Call;
use crate::audit::AuditSink;
use crate::error::GatewayError;
use crate::gateway::Snapshot;
use crate::headers;

/// What the policy granted a call.
pub(crate) struct Grant<'a> {
    /// The agreement's index in the snapshot's policy.
    pub index: usize,
    pub agreement: &'a Agreement,
    /// The agreement's rate-limit state after this call (for `RateLimit-*`; set by
    /// [`limits`]).
    pub rate: Option<RateInfo>,
    /// The purpose the policy checked, exactly as the provider will receive it.
    pub purpose: Option<HeaderValue>,
}

impl Grant<'_> {
    /// The agreement's field rules, when it has any (the response is filtered).
    pub(crate) fn filter(&self) -> Option<&FieldRules> {
        (!self.agreement.fields.is_empty()).then_some(&self.agreement.fields)
    }

    /// The checked purpose as text.
    pub(crate) fn purpose(&self) -> Option<&str> {
        self.purpose.as_ref().and_then(|v| v.to_str().ok())
    }
}

/// Decides the call of `principal` to `service` at `rest` (the normalised path below the
/// service), recording in `call` what the audit record needs.
pub(crate) fn decide<'a>(
    snapshot: &'a Snapshot,
    service: &Service,
    principal: &Principal,
    req: &Parts,
    rest: &str,
    audit: Option<&AuditSink>,
    call: &mut Call,
) -> Result<Grant<'a>, GatewayError> {
    let now = call.unix_secs() as i64;
    let purpose_value = single_purpose(&req.headers)?;
    let purpose = purpose_value.as_ref().and_then(|v| v.to_str().ok());
    let policy_req = gerbang_policy::Request {
        application: &principal.application,
        agency: &principal.agency,
        service: service.full_id(),
        method: req.method.as_str(),
        path: rest,
        query: req.uri.query(),
        purpose,
        now,
    };
    let decision = snapshot.policy.decide(&policy_req);
    call.purpose = purpose.map(str::to_owned);
    call.endpoint = decision.endpoint.map(|e| std::sync::Arc::clone(&e.id));
    if let (Some(subject), Some(sink)) = (decision.subject, audit) {
        call.subject_hmac = Some(sink.subject_hash(subject));
    }
    let index = match decision.outcome {
        Outcome::Allow { agreement } => agreement,
        Outcome::Deny { reason, .. } => return Err(GatewayError::Forbidden(reason)),
    };
    let agreement = snapshot
        .policy
        .agreement(index)
        .ok_or_else(|| GatewayError::Internal("agreement index out of range".into()))?;
    call.agreement = snapshot.policy.agreement_id(index).cloned();
    Ok(Grant {
        index,
        agreement,
        rate: None,
        purpose: purpose_value,
    })
}

/// The granting agreement's rate limit and quota for `application` (429 when one refuses):
/// `RateLimit-*` state for the response. Agreements without either return at once. Without a
/// shared store the snapshot's limiter decides synchronously; with one, Redis decides (one
/// round trip), and while it cannot, the snapshot's limiter (at this replica's share) or a 503,
/// as `[cluster] on_redis_failure` says.
pub(crate) async fn limits(
    shared: Option<&SharedLimits>,
    snapshot: &Snapshot,
    grant: &Grant<'_>,
    application: &str,
    now: i64,
) -> Result<Option<RateInfo>, GatewayError> {
    let a = grant.agreement;
    if a.rate.is_none() && a.quota.is_none() {
        return Ok(None);
    }
    let outcome = match shared {
        None => snapshot
            .limits
            .check(&snapshot.policy, grant.index, application, now),
        Some(store) => {
            let call = LimitCall {
                agreement: &a.id,
                application,
                rate: a.rate,
                quota: a.quota,
                now,
            };
            match store.check(&call).await {
                Ok(outcome) => outcome,
                Err(e) => match store.on_failure() {
                    FailureMode::Local => {
                        store.count_fallback_decision();
                        snapshot
                            .limits
                            .check(&snapshot.policy, grant.index, application, now)
                    }
                    FailureMode::Closed => {
                        return Err(GatewayError::LimitStoreUnavailable(e.to_string()))
                    }
                },
            }
        }
    };
    match outcome {
        LimitOutcome::Pass { rate } => Ok(rate),
        LimitOutcome::Limited {
            reason,
            retry_after_secs,
            rate,
        } => Err(GatewayError::Limited {
            reason,
            retry_after_secs,
            rate,
        }),
    }
}

/// The purpose of processing the client declared: one `X-Gerbang-Purpose` with one value.
/// Repeated, a comma list (the same as repeated, RFC 9110 §5.3), empty or not visible ASCII is
/// ambiguous: policy and provider must read the same single value.
fn single_purpose(h: &http::HeaderMap) -> Result<Option<HeaderValue>, GatewayError> {
    let mut all = headers::values(h, &headers::X_GERBANG_PURPOSE);
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(GatewayError::PurposeAmbiguous);
    }
    let s = v
        .to_str()
        .map_err(|_| GatewayError::PurposeAmbiguous)?
        .trim();
    if s.is_empty()
        || s.len() != v.len()
        || s.contains(',')
        || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(GatewayError::PurposeAmbiguous);
    }
    Ok(Some(v.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purposes(values: &[&str]) -> Result<Option<HeaderValue>, GatewayError> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                &headers::X_GERBANG_PURPOSE,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        single_purpose(&h)
    }

    #[test]
    fn one_purpose_with_one_value() {
        assert_eq!(purposes(&[]).unwrap(), None);
        assert_eq!(purposes(&["uji"]).unwrap().unwrap(), "uji");
        for bad in [&["a", "a"][..], &["a", "b"], &["a, b"], &["a,"], &[""]] {
            assert_eq!(
                purposes(bad).unwrap_err().code(),
                "purpose_ambiguous",
                "{bad:?}"
            );
        }
    }
}
