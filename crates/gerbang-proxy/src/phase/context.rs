//! The per-call context: what the phases learn about a call, for the phases after them and
//! for the record.

use std::sync::Arc;

use gerbang_auth::Principal;

use crate::body::BodyWatch;

/// What one call was about, filled in by the pipeline as it learns it, for the audit record.
/// Only registry ids, templates and codes: never a raw path, a credential or a subject id.
#[derive(Default)]
pub(crate) struct Call {
    /// A fixed label for the issuer's own endpoints (metrics only; they are not audited).
    pub(crate) issuer_endpoint: Option<&'static str>,
    pub(crate) service: Option<Arc<str>>,
    /// The service's metric series (metrics on, a registered service).
    pub(crate) service_metrics: Option<Arc<crate::metrics::ServiceMetrics>>,
    pub(crate) consumer: Option<Arc<Principal>>,
    pub(crate) endpoint: Option<Arc<str>>,
    pub(crate) agreement: Option<std::sync::Arc<str>>,
    pub(crate) purpose: Option<String>,
    pub(crate) subject_hmac: Option<String>,
    /// The `traceparent` the provider got (its trace id correlates the record with traces).
    pub(crate) trace: Option<http::HeaderValue>,
    /// What the token endpoint answered: `issued` or an OAuth error code.
    pub(crate) token_result: Option<&'static str>,
    /// The call's span, when spans are exported.
    pub(crate) span: Option<crate::trace::SpanIds>,
    /// When the call began, for its span (only with a span exporter).
    pub(crate) wall_start: Option<std::time::SystemTime>,
    /// When the call began, in milliseconds since the Unix epoch: the one reading of the wall
    /// clock that the request id, token expiry, agreement periods, rate windows, the catalogue
    /// and the identity cache judge the call by.
    pub(crate) unix_ms: u64,
    /// The request body as it was read (bytes actually received), when there was one.
    pub(crate) body: Option<Arc<BodyWatch>>,
}

impl Call {
    /// [`Call::unix_ms`] in whole seconds.
    pub(crate) fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }
}
