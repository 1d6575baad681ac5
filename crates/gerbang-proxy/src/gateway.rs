//! The request pipeline of the data plane. Phases, in order:
//!
//! 1. request id (propagated when plain, generated otherwise);
//! 2. limits: URI length (414), header block (431), framing (`Content-Length` with
//!    `Transfer-Encoding` is refused);
//! 3. the built-in issuer's endpoints (`/oauth/token`, `/.well-known/…`) are served here;
//! 4. path normalisation (400 on anything ambiguous);
//! 5. authenticate: bearer token, API key or client certificate → [`Principal`] (401);
//! 6. route: `/{agency}/{service}` → [`Service`] in the registry snapshot (404);
//! 7. authorise: the data-sharing agreement (403 with a reason), its rate limit and quota (429);
//! 8. body limit of the service (413, early when `Content-Length` says so);
//! 9. pick an instance (round robin);
//! 10. rewrite the request: upstream URI, hop-by-hop and client-controlled header removal
//!     (credentials included), `Host`, forwarding headers, verified identity headers, the
//!     agreement id and the gateway assertion;
//! 11. forward with the service's timeouts, stream the response back;
//! 12. apply the agreement's field rules to the response (failing closed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use gerbang_auth::authn::{Authenticator, Presented};
use gerbang_auth::mtls::ClientCert;
use gerbang_auth::{AuthMethod, Principal};
use gerbang_registry::{LookupError, Registry, Service};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use rustls::ClientConfig;

use crate::body::{self, BodyWatch, RequestBody, RequestBodyError, ResponseBody};
use crate::error::GatewayError;
use crate::framing::AMBIGUOUS_FRAMING_MARKER;
use crate::h1::{self, H1Error, InstancePool};
use crate::headers;
use crate::oauth::{self, IssuerEndpoints};
use crate::path;
use crate::upstream::{build_client, PoolSettings, UpstreamClient};

/// Request limits of the data plane.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request target (path and query) accepted; longer gets 414.
    pub max_uri_bytes: usize,
    /// Largest header block (names, values, separators) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest response buffered to apply an agreement's field rules; larger gets 502.
    pub max_filtered_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_filtered_response_bytes: 1024 * 1024,
        }
    }
}

/// What the pipeline knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// `"http"` or `"https"`: the scheme the client used to reach the gateway.
    pub proto: &'static str,
    /// The client certificate that rustls verified (mTLS): its pin and names.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// How the gateway vouches for callers to providers.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Lifetime of `X-Gerbang-Assertion` JWTs; `None` sends none.
    pub assertion_ttl: Option<Duration>,
    /// Request headers removed on every route, besides `X-Gerbang-*` and credentials.
    pub strip_headers: Vec<HeaderName>,
    /// Base URL of the issuer endpoints, for the metadata document.
    pub public_base_url: String,
    /// The token endpoint's limits: argon2 checks at once (overall and per source), failed
    /// client authentications per source and per client.
    pub token_endpoint: crate::token_guard::TokenEndpointSettings,
}

/// An immutable view of routing state; a reload swaps in a new one.
pub struct Snapshot {
    pub registry: Arc<Registry>,
    /// Credentials of this registry's applications.
    pub auth: Arc<Authenticator>,
    /// Per service, indexed by [`Service::index`]: a hyper-util pooled client when the service
    /// has `https://` instances.
    clients: Vec<Option<UpstreamClient>>,
    /// Per service, per instance: the inline client's pool for `http://` instances.
    pools: Vec<Vec<Option<Arc<InstancePool>>>>,
    /// Identity headers per (application, service), valid for this snapshot's authenticator.
    identities: IdentityCache,
    /// Agreements and declared endpoints.
    pub policy: Arc<gerbang_policy::PolicySet>,
    /// Rate limits and quotas of the agreements.
    limits: gerbang_policy::limits::Limits,
}

/// The data plane's request handler.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    limits: Limits,
    tls_client: Arc<ClientConfig>,
    pool: PoolSettings,
    identity: IdentitySettings,
    issuer_endpoints: IssuerEndpoints,
    /// Quota counts outlive snapshots (a reload must not reset them).
    quotas: Arc<dyn gerbang_policy::limits::QuotaStore>,
    audit: Option<Arc<crate::audit::AuditSink>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    spans: Option<Arc<dyn crate::trace::SpanSink>>,
}

impl Gateway {
    pub fn new(
        registry: Registry,
        auth: Arc<Authenticator>,
        policy: gerbang_policy::PolicySet,
        identity: IdentitySettings,
        limits: Limits,
        tls_client: Arc<ClientConfig>,
        pool: PoolSettings,
    ) -> Self {
        let quotas: Arc<dyn gerbang_policy::limits::QuotaStore> =
            Arc::new(gerbang_policy::limits::MemoryQuotaStore::default());
        let snapshot = build_snapshot(registry, auth, policy, &quotas, &tls_client, &pool);
        let issuer_endpoints =
            IssuerEndpoints::new(identity.public_base_url.clone(), &identity.token_endpoint);
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            limits,
            tls_client,
            pool,
            identity,
            issuer_endpoints,
            quotas,
            audit: None,
            metrics: None,
            spans: None,
        }
    }

    /// Replaces the registry and its credentials atomically; requests in flight finish on the
    /// snapshot they began with.
    ///
    /// Unchanged instances keep their health state and their idle upstream connections; the
    /// caller serialises replacements (the reload path holds a lock).
    pub fn replace_registry(
        &self,
        mut registry: Registry,
        auth: Arc<Authenticator>,
        policy: gerbang_policy::PolicySet,
    ) {
        let old = self.snapshot.load_full();
        registry.adopt_health(&old.registry);
        let mut snapshot = build_snapshot(
            registry,
            auth,
            policy,
            &self.quotas,
            &self.tls_client,
            &self.pool,
        );
        adopt_pools(&mut snapshot, &old);
        // Rate-limit state of unchanged agreements carries over: no fresh burst per reload.
        let policy = Arc::clone(&snapshot.policy);
        snapshot.limits.adopt(&policy, &old.limits, &old.policy);
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The upstream TLS settings (for the health checker's client).
    pub fn upstream_tls(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.tls_client)
    }

    /// Records every call in `sink` from now on.
    pub fn with_audit(mut self, sink: Arc<crate::audit::AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Exports a span of every call to `sink` from now on.
    pub fn with_spans(mut self, sink: Arc<dyn crate::trace::SpanSink>) -> Self {
        self.spans = Some(sink);
        self
    }

    /// The span exporter, when there is one.
    pub fn spans(&self) -> Option<&Arc<dyn crate::trace::SpanSink>> {
        self.spans.as_ref()
    }

    /// Counts every call in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn observe(
        &self,
        m: &crate::metrics::Metrics,
        call: &CallInfo,
        method: &http::Method,
        status: u16,
        decision: &str,
        result: &Result<Response<ResponseBody>, GatewayError>,
        elapsed: Duration,
    ) {
        let (consumer, agency) = match (&call.consumer, m.per_application) {
            (Some(p), true) => (p.application.as_str(), p.agency.as_str()),
            (Some(p), false) => ("*", p.agency.as_str()),
            (None, _) => ("anonymous", "anonymous"),
        };
        let service = call
            .service
            .as_deref()
            .or(call.issuer_endpoint)
            .unwrap_or("unknown");
        let endpoint = call.endpoint.as_deref().unwrap_or("none");
        let method = match *method {
            http::Method::GET
            | http::Method::HEAD
            | http::Method::POST
            | http::Method::PUT
            | http::Method::PATCH
            | http::Method::DELETE
            | http::Method::OPTIONS => method.as_str(),
            _ => "other",
        };
        m.requests
            .with_label_values(&[
                consumer,
                agency,
                service,
                endpoint,
                method,
                crate::metrics::status_class(status),
                decision,
            ])
            .inc();
        m.duration
            .with_label_values(&[service])
            .observe(elapsed.as_secs_f64());
        if let Some(r) = call.token_result {
            m.token_requests.with_label_values(&[r]).inc();
        }
        match result {
            Err(GatewayError::Unauthenticated(f)) => {
                m.auth_failures.with_label_values(&[f.reason()]).inc();
            }
            Err(GatewayError::Forbidden(r)) => {
                m.policy_decisions
                    .with_label_values(&["deny", r.as_str()])
                    .inc();
            }
            Err(GatewayError::Limited { reason: r, .. }) => {
                m.limited
                    .with_label_values(&[r.as_str(), call.agreement.as_deref().unwrap_or("none")])
                    .inc();
                m.policy_decisions
                    .with_label_values(&["deny", r.as_str()])
                    .inc();
            }
            _ if call.agreement.is_some() => {
                m.policy_decisions
                    .with_label_values(&["allow", "none"])
                    .inc();
            }
            _ => {}
        }
    }

    /// The audit pipeline, when there is one.
    pub fn audit(&self) -> Option<&Arc<crate::audit::AuditSink>> {
        self.audit.as_ref()
    }

    /// Authentication refusals so far, by reason (the metrics exporter reads these).
    pub fn auth_failures(&self) -> Vec<(String, u64)> {
        self.metrics
            .as_ref()
            .map(|m| crate::metrics::counts(&m.auth_failures))
            .unwrap_or_default()
    }

    /// The token endpoint's limits (throttled counts for the metrics).
    pub fn token_guard(&self) -> Arc<crate::token_guard::TokenGuard> {
        Arc::clone(self.issuer_endpoints.guard())
    }

    /// The authenticator currently in force.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(&self.snapshot.load().auth)
    }

    /// The agreements currently in force.
    pub fn policy(&self) -> Arc<gerbang_policy::PolicySet> {
        Arc::clone(&self.snapshot.load().policy)
    }

    /// The registry currently in force.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.snapshot.load().registry)
    }

    /// Handles one request; every failure becomes a JSON error response.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ResponseBody> {
        let request_id = match req
            .headers()
            .get(&headers::X_REQUEST_ID)
            .and_then(headers::acceptable_request_id)
        {
            Some(id) => HeaderValue::from_str(id).ok(),
            None => None,
        }
        .unwrap_or_else(new_request_id);
        let method = req.method().clone();
        let remote = conn.remote;
        let framing_error = req.headers().contains_key(AMBIGUOUS_FRAMING_MARKER)
            || (req.headers().contains_key(header::TRANSFER_ENCODING)
                && req.headers().contains_key(header::CONTENT_LENGTH));
        let started = std::time::Instant::now();
        let wall_start = self.spans.is_some().then(std::time::SystemTime::now);
        if let Some(m) = &self.metrics {
            m.in_flight.inc();
        }
        // Until the pipeline has answered, a dropped future (the client reset the stream or
        // closed the connection) still leaves its audit record and its in-flight count.
        let mut pending = Unanswered {
            gateway: self,
            call: CallInfo::default(),
            request_id: &request_id,
            method: &method,
            remote,
            started,
            answered: false,
        };
        if self.spans.is_some() {
            pending.call.span = Some(crate::trace::span_ids(req.headers()));
        }
        let result = self
            .forward(req, conn, &request_id, &mut pending.call)
            .await;
        pending.answered = true;
        let call = std::mem::take(&mut pending.call);
        drop(pending);
        // What the client's body actually delivered so far, not what it declared.
        let bytes_in = call.body.as_ref().map_or(0, |w| w.received());
        let (decision, reason) = match &result {
            // The issuer's own endpoints decide nothing about data sharing.
            Ok(_) if call.issuer_endpoint.is_some() => {
                ("none", call.token_result.filter(|r| *r != "issued"))
            }
            Err(e) if call.issuer_endpoint.is_some() => ("none", Some(e.code())),
            Ok(_) => ("allow", None),
            Err(GatewayError::Unauthenticated(f)) => ("deny", Some(f.reason())),
            Err(GatewayError::Forbidden(r)) => ("deny", Some(r.as_str())),
            Err(GatewayError::Limited { reason, .. }) => ("deny", Some(reason.as_str())),
            Err(e) if call.agreement.is_some() => ("allow", Some(e.code())),
            Err(e) => ("error", Some(e.code())),
        };
        // The audit record: written (or, with fsync on every record, on disk) before the answer.
        let result = match &self.audit {
            Some(sink) if call.service.is_some() || call.consumer.is_some() => {
                let status = response_status(&result);
                let bytes_out = match &result {
                    Ok(res) => res
                        .headers()
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok()),
                    Err(_) => None,
                };
                let fields = call.record(
                    request_id.to_str().unwrap_or(""),
                    &method,
                    status,
                    decision,
                    reason,
                    remote,
                    Some(bytes_in),
                    bytes_out,
                    started.elapsed(),
                );
                let written = sink.record(fields).await;
                if let Some(m) = &self.metrics {
                    let r = if written { "written" } else { "failed" };
                    m.audit_records.with_label_values(&[r]).inc();
                }
                if !written && sink.settings.fail_closed {
                    tracing::error!(
                        request_id = request_id.to_str().unwrap_or(""),
                        "audit record not written: refusing the call (audit fail-closed)"
                    );
                    Err(GatewayError::AuditUnavailable)
                } else {
                    result
                }
            }
            _ => result,
        };
        let status = response_status(&result);
        if tracing::enabled!(target: "gerbang::access", tracing::Level::INFO) {
            // One access event per call: registry ids, template and codes only.
            tracing::info!(
                target: "gerbang::access",
                request_id = request_id.to_str().unwrap_or(""),
                consumer = call.consumer.as_deref().map_or("-", |p| p.application.as_str()),
                service = call.service.as_deref().or(call.issuer_endpoint).unwrap_or("-"),
                endpoint = call.endpoint.as_deref().unwrap_or("-"),
                method = %method,
                status,
                decision,
                reason = reason.unwrap_or("-"),
                agreement = call.agreement.as_deref().unwrap_or("-"),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                bytes_in,
                "call"
            );
        }
        if let Some(m) = &self.metrics {
            m.in_flight.dec();
            self.observe(
                m,
                &call,
                &method,
                status,
                decision,
                &result,
                started.elapsed(),
            );
        }
        if let (Some(sink), Some(ids), Some(start)) = (&self.spans, call.span, wall_start) {
            if ids.sampled {
                sink.export(crate::trace::CallSpan {
                    ids,
                    start,
                    end: std::time::SystemTime::now(),
                    request_id: request_id.to_str().unwrap_or(""),
                    method: method.as_str(),
                    status,
                    decision,
                    reason,
                    consumer: call.consumer.as_deref().map(|p| p.application.as_str()),
                    service: call.service.as_deref().or(call.issuer_endpoint),
                    endpoint: call.endpoint.as_deref(),
                    agreement: call.agreement.as_deref(),
                });
            }
        }
        let sent = self.metrics.as_ref().map(|m| {
            m.sent_bytes.with_label_values(&[call
                .service
                .as_deref()
                .or(call.issuer_endpoint)
                .unwrap_or("unknown")])
        });
        let res = match result {
            Ok(mut res) => {
                res.headers_mut()
                    .insert(headers::X_REQUEST_ID.clone(), request_id);
                match sent {
                    Some(counter) => res.map(|b| b.counted(counter)),
                    None => res,
                }
            }
            Err(err) => {
                let rid = request_id.to_str().unwrap_or("");
                if let GatewayError::Unauthenticated(f) = &err {
                    // The reason only; never the credential.
                    tracing::info!(request_id = rid, %method, reason = f.reason(), peer = %remote, "authentication refused");
                }
                match err.source_kind() {
                    crate::error::ErrorSource::Client => {
                        tracing::debug!(request_id = rid, %method, code = err.code(), error = %err, "request refused");
                    }
                    _ => {
                        tracing::warn!(request_id = rid, %method, code = err.code(), error = %err, "request failed");
                    }
                }
                let res = err.to_response(rid);
                let (mut parts, bytes) = res.into_parts();
                parts
                    .headers
                    .insert(headers::X_REQUEST_ID.clone(), request_id);
                if framing_error {
                    // The body's length is unknown: the connection cannot be reused safely.
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                if let Some(counter) = sent {
                    counter.inc_by(bytes.len() as u64);
                }
                Response::from_parts(parts, body::full(bytes))
            }
        };
        if method == http::Method::HEAD {
            without_body(res)
        } else {
            res
        }
    }

    /// Sends the call to an instance and, after a failure that allows it, to another: after a
    /// connect failure any request (its body was not read), after 502/503/504, a reset or a
    /// per-try timeout only an idempotent request without a body. Each outcome feeds passive
    /// outlier detection.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        snapshot: &Snapshot,
        service: &Service,
        parts: &mut http::request::Parts,
        path_and_query: &PathAndQuery,
        body: RequestBody,
        watch: &Option<Arc<BodyWatch>>,
        hash_key: Option<&[u8]>,
    ) -> Result<
        (
            Response<ResponseBody>,
            Option<gerbang_registry::health::InFlight>,
        ),
        GatewayError,
    > {
        let policy = &service.retry;
        let has_body = watch.is_some();
        let replayable = !has_body && parts.method.is_idempotent();
        let timeout = service.limits.request_timeout;
        let per_try = policy.per_try_timeout.unwrap_or(timeout).min(timeout);
        let deadline = std::time::Instant::now() + timeout;
        let mut tried = [0usize; 10];
        let mut n_tried = 0;
        let mut body = Some(body);
        let mut _retry_slot = None;
        let Some((mut index, mut instance)) = service.select(hash_key, &[]) else {
            return Err(GatewayError::NoHealthyUpstream(
                service.full_id().to_owned(),
            ));
        };
        loop {
            if let Some(slot) = tried.get_mut(n_tried) {
                *slot = index;
                n_tried += 1;
            }
            let health = service.health(index);
            let in_flight = health.map(|h| h.track());
            let try_body = match body.take() {
                Some(b) => b,
                None => RequestBody::empty(),
            };
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let try_timeout = per_try.min(remaining);
            let started = std::time::Instant::now();
            let outcome = self
                .try_once(
                    snapshot,
                    service,
                    index,
                    instance,
                    parts,
                    path_and_query,
                    try_body,
                    try_timeout,
                )
                .await;
            // What happened, for health, metrics and the retry decision.
            let (failed, retry_reason) = match &outcome {
                Ok(res) => {
                    let st = res.status().as_u16();
                    let reason = matches!(st, 502..=504).then_some("status_5xx");
                    (st >= 500, reason.filter(|_| replayable))
                }
                Err(TryError::Overloaded) => (false, None),
                Err(TryError::Connect { .. }) => (true, Some("connect_failure")),
                Err(TryError::TimedOut) => {
                    let client_slow = watch.as_ref().is_some_and(|w| !w.finished());
                    // A try squeezed by the overall deadline says nothing about the instance.
                    let full_try = try_timeout >= per_try;
                    (
                        !client_slow && full_try,
                        Some("timeout").filter(|_| replayable),
                    )
                }
                Err(TryError::Failed(GatewayError::UpstreamFailed { .. })) => {
                    (true, Some("reset").filter(|_| replayable))
                }
                Err(TryError::Failed(_)) => (false, None),
            };
            if let Some(m) = &self.metrics {
                match &outcome {
                    Ok(_) => m
                        .upstream_duration
                        .with_label_values(&[service.full_id()])
                        .observe(started.elapsed().as_secs_f64()),
                    Err(TryError::Connect { .. }) => m
                        .upstream_connect_failures
                        .with_label_values(&[service.full_id(), instance.name.as_str()])
                        .inc(),
                    Err(_) => {}
                }
            }
            if let Some(h) = health {
                if failed {
                    if let Some(ejected_for) =
                        h.report_failure(gerbang_registry::health::now_ms(), &service.outlier)
                    {
                        tracing::warn!(
                            service = service.full_id(),
                            instance = %instance.name,
                            ejected_for_ms = ejected_for.as_millis() as u64,
                            "upstream instance ejected after consecutive failures"
                        );
                        if let Some(m) = &self.metrics {
                            m.upstream_ejections
                                .with_label_values(&[service.full_id(), instance.name.as_str()])
                                .inc();
                        }
                    }
                } else if outcome.is_ok() {
                    h.report_success();
                }
            }
            // May this call go to another instance?
            let unsent = match &outcome {
                Err(TryError::Connect { unsent, .. }) => unsent.is_some() || !has_body,
                _ => !has_body,
            };
            let next = match retry_reason {
                Some(_) if unsent && (n_tried as u32) < policy.attempts.min(10) => {
                    service.select(hash_key, &tried[..n_tried])
                }
                _ => None,
            };
            // The back-off must fit in the time left; otherwise the current result stands.
            let backoff = policy.backoff(n_tried as u32, random_words()[0]);
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let next = next.filter(|_| backoff < remaining);
            // This call's previous retry slot is released before it asks for the next one.
            if next.is_some() {
                drop(_retry_slot.take());
            }
            let next = next.and_then(|n| {
                let slot = service.load.retry(policy);
                if slot.is_none() {
                    tracing::debug!(service = service.full_id(), "retry budget spent");
                }
                slot.map(|s| (n, s))
            });
            let Some(((next_index, next_instance), slot)) = next else {
                return match outcome {
                    // The instance counts the call until its response body has been sent.
                    Ok(res) => Ok((res, in_flight)),
                    Err(TryError::Overloaded) => Err(GatewayError::UpstreamOverloaded(
                        service.full_id().to_owned(),
                    )),
                    Err(TryError::Connect { error, .. }) | Err(TryError::Failed(error)) => {
                        Err(error)
                    }
                    Err(TryError::TimedOut) => Err(timeout_error(watch, instance, try_timeout)),
                };
            };
            // The failed try's body (a connect failure hands it back) goes to the next one.
            if let Err(TryError::Connect { unsent, .. }) = outcome {
                body = unsent;
            }
            _retry_slot = Some(slot);
            if let (Some(m), Some(reason)) = (&self.metrics, retry_reason) {
                m.upstream_retries
                    .with_label_values(&[service.full_id(), reason])
                    .inc();
            }
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            index = next_index;
            instance = next_instance;
        }
    }

    /// One try against one instance.
    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        snapshot: &Snapshot,
        service: &Service,
        index: usize,
        instance: &gerbang_registry::Instance,
        parts: &mut http::request::Parts,
        path_and_query: &PathAndQuery,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, TryError> {
        let host = HeaderValue::from_str(instance.authority.as_str()).map_err(|e| {
            TryError::Failed(GatewayError::Internal(format!("upstream authority: {e}")))
        })?;
        parts.headers.insert(header::HOST, host);
        let inline_pool = snapshot
            .pools
            .get(service.index)
            .and_then(|p| p.get(index))
            .and_then(Option::as_ref);
        if let Some(pool) = inline_pool {
            // Plain http:// instance: the inline HTTP/1.1 client, origin-form target.
            let pending = h1::PendingLimit {
                load: &service.load,
                settings: &service.breaker,
            };
            let sent = h1::send(
                pool,
                service.limits.connect_timeout,
                parts,
                body,
                Some(pending),
            );
            match tokio::time::timeout(timeout, sent).await {
                Err(_elapsed) => Err(TryError::TimedOut),
                Ok(Err(h1::SendError {
                    error: H1Error::Overloaded,
                    ..
                })) => Err(TryError::Overloaded),
                Ok(Err(h1::SendError { error, unsent })) => {
                    let error = classify_h1_error(error, instance.to_string());
                    Err(match error {
                        GatewayError::UpstreamUnavailable { .. }
                        | GatewayError::UpstreamConnectTimeout { .. } => {
                            TryError::Connect { error, unsent }
                        }
                        other => TryError::Failed(other),
                    })
                }
                Ok(Ok(res)) => Ok(res.map(ResponseBody::Inline)),
            }
        } else {
            // https:// instance: hyper-util with rustls, absolute-form URI.
            let client = snapshot
                .clients
                .get(service.index)
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    TryError::Failed(GatewayError::Internal("no client for service".into()))
                })?;
            let uri = absolute_uri(instance, path_and_query.clone()).map_err(TryError::Failed)?;
            let mut upstream_req = Request::new(body);
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() = uri;
            *upstream_req.version_mut() = parts.version;
            *upstream_req.headers_mut() = parts.headers.clone();
            match tokio::time::timeout(timeout, client.request(upstream_req)).await {
                Err(_elapsed) => Err(TryError::TimedOut),
                Ok(Err(e)) if caused_by::<crate::upstream::TooManyPending>(&e) => {
                    Err(TryError::Overloaded)
                }
                Ok(Err(e)) => {
                    let error = classify_client_error(&e, instance.to_string());
                    Err(match error {
                        // hyper-util keeps the body: only a request without one is sent again.
                        GatewayError::UpstreamUnavailable { .. }
                        | GatewayError::UpstreamConnectTimeout { .. } => TryError::Connect {
                            error,
                            unsent: None,
                        },
                        other => TryError::Failed(other),
                    })
                }
                Ok(Ok(res)) => Ok(res.map(ResponseBody::Upstream)),
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        request_id: &HeaderValue,
        call: &mut CallInfo,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        // Limits on what the client sent.
        let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > self.limits.max_uri_bytes {
            return Err(GatewayError::UriTooLong {
                len: target_len,
                limit: self.limits.max_uri_bytes,
            });
        }
        let header_len = headers::header_block_len(req.headers());
        if header_len > self.limits.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge {
                len: header_len,
                limit: self.limits.max_header_bytes,
            });
        }
        // hyper drops Content-Length when Transfer-Encoding is present; the framing guard below
        // hyper renamed it to the marker so that the request can be refused here.
        let content_length = content_length(&req)?;
        if req.headers().contains_key(AMBIGUOUS_FRAMING_MARKER)
            || (content_length.is_some() && req.headers().contains_key(header::TRANSFER_ENCODING))
        {
            return Err(GatewayError::AmbiguousFraming);
        }
        check_host(&req)?;
        check_expect(&req)?;

        let snapshot = self.snapshot.load_full();
        if oauth::is_issuer_path(req.uri().path()) {
            call.issuer_endpoint = Some(match req.uri().path() {
                oauth::TOKEN_PATH => "gateway/oauth-token",
                oauth::JWKS_PATH => "gateway/jwks",
                _ => "gateway/oauth-metadata",
            });
            return self
                .issuer_endpoints
                .serve(
                    req,
                    conn.remote.ip(),
                    &snapshot.auth,
                    &mut call.token_result,
                )
                .await;
        }

        if crate::catalog::is_catalog_path(req.uri().path()) {
            call.issuer_endpoint = Some("gateway/catalog");
            let principal = authenticate(&snapshot.auth, &req, &conn).await?;
            call.consumer = Some(Arc::clone(&principal));
            if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
                return Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" });
            }
            let body = match req.uri().path() {
                crate::catalog::SERVICES_PATH => {
                    crate::catalog::services(&snapshot.registry, &snapshot.policy)
                }
                crate::catalog::ALLOWED_PATH => {
                    crate::catalog::allowed(&principal, &snapshot.policy, unix_now())
                }
                _ => return Err(GatewayError::RouteNotFound),
            };
            let mut res = Response::new(body::full(bytes::Bytes::from(body.to_string())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(res);
        }

        // Normalise once; route and forward on the result.
        let normalized = path::normalize(req.uri().path()).map_err(GatewayError::Path)?;
        let (agency, service_id, rest) = normalized
            .route_parts()
            .ok_or(GatewayError::RouteNotFound)?;
        // One lookup; its error waits until the caller is authenticated (an unauthenticated
        // caller learns nothing of the registry). Only a registered service names itself in
        // records and metrics: a client-made path could carry anything, a NIK included.
        let looked_up = snapshot.registry.lookup(agency, service_id);
        if let Ok(s) = looked_up {
            call.service = Some(s.full_id().to_owned());
        }
        let principal = authenticate(&snapshot.auth, &req, &conn).await?;
        call.consumer = Some(Arc::clone(&principal));
        let service = looked_up.map_err(|e| match e {
            LookupError::UnknownAgency => GatewayError::UnknownAgency(agency.to_owned()),
            LookupError::UnknownService => {
                GatewayError::UnknownService(format!("{agency}/{service_id}"))
            }
        })?;

        // Authorise: the data-sharing agreement that covers this call, and its limits.
        let now = unix_now();
        let purpose_value = single_purpose(req.headers())?;
        let purpose = purpose_value.as_ref().and_then(|v| v.to_str().ok());
        let policy_req = gerbang_policy::Request {
            application: &principal.application,
            agency: &principal.agency,
            service: service.full_id(),
            method: req.method().as_str(),
            path: if rest.is_empty() { "/" } else { rest },
            query: req.uri().query(),
            purpose,
            now,
        };
        let decision = snapshot.policy.decide(&policy_req);
        call.purpose = purpose.map(str::to_owned);
        call.endpoint = decision.endpoint.map(|e| e.id.clone());
        if let (Some(subject), Some(sink)) = (decision.subject, &self.audit) {
            call.subject_hmac = Some(sink.subject_hash(subject));
        }
        let agreement_index = match decision.outcome {
            gerbang_policy::Outcome::Allow { agreement } => agreement,
            gerbang_policy::Outcome::Deny { reason, .. } => {
                return Err(GatewayError::Forbidden(reason));
            }
        };
        let agreement = snapshot
            .policy
            .agreement(agreement_index)
            .ok_or_else(|| GatewayError::Internal("agreement index out of range".into()))?;
        call.agreement = Some(agreement.id.clone());
        let rate = match snapshot.limits.check(
            &snapshot.policy,
            agreement_index,
            &principal.application,
            now,
        ) {
            gerbang_policy::limits::LimitOutcome::Pass { rate } => rate,
            gerbang_policy::limits::LimitOutcome::Limited {
                reason,
                retry_after_secs,
                rate,
            } => {
                return Err(GatewayError::Limited {
                    reason,
                    retry_after_secs,
                    rate,
                })
            }
        };
        let filter = (!agreement.fields.is_empty()).then_some(&agreement.fields);

        let body_limit = service.limits.max_body_bytes;
        if let (Some(limit), Some(len)) = (body_limit, content_length) {
            if len > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
        }

        // The circuit breaker: a slot while this call is in flight to the service (until its
        // response body has been sent).
        let request_slot = service
            .load
            .request(&service.breaker)
            .ok_or_else(|| GatewayError::UpstreamOverloaded(service.full_id().to_owned()))?;
        if service.instances.is_empty() {
            return Err(GatewayError::NoInstance(service.full_id().to_owned()));
        }
        let path_and_query = upstream_path(service, rest, req.uri().query())?;
        let hash_key = match &service.balancing {
            gerbang_registry::Balancing::ConsistentHash { header } => {
                req.headers().get(header).map(|v| v.as_bytes().to_vec())
            }
            _ => None,
        };

        let (mut parts, incoming) = req.into_parts();
        // The host the client addressed: `:authority` (HTTP/2) or the absolute-form target
        // wins over `Host` (RFC 9113 §8.3.1; check_host refused a disagreement).
        let original_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(header::HOST).cloned());
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::remove_client_controlled(
            &mut parts.headers,
            &self.identity.strip_headers,
            &service.allow_underscore_headers,
        );
        // The gateway met `Expect: 100-continue` itself (hyper answers it when the body is
        // first read) and sends the body at once: the provider is not asked to wait.
        parts.headers.remove(header::EXPECT);
        if parts.version == Version::HTTP_2 {
            headers::join_cookies(&mut parts.headers);
        }
        headers::set_forwarding(
            &mut parts.headers,
            conn.remote.ip(),
            conn.proto,
            original_host,
        );
        // The provider receives exactly the purpose the policy judged.
        match purpose_value.clone() {
            Some(v) => {
                parts.headers.insert(headers::X_GERBANG_PURPOSE.clone(), v);
            }
            None => {
                parts.headers.remove(&headers::X_GERBANG_PURPOSE);
            }
        }
        self.set_identity(
            &mut parts.headers,
            &principal,
            service,
            &snapshot,
            (agreement_index, &agreement.id),
            purpose,
        );
        if let Ok(v) = HeaderValue::from_str(&agreement.id) {
            parts
                .headers
                .insert(headers::X_GERBANG_AGREEMENT.clone(), v);
        }
        // W3C trace context. With a span exporter the gateway's span is the upstream's parent;
        // without one a valid client traceparent goes on as it is, and otherwise (absent,
        // malformed, repeated) the gateway starts a trace.
        let tp = match &call.span {
            Some(ids) => ids.header(),
            None => {
                let mut tps = parts.headers.get_all(&headers::TRACEPARENT).iter();
                let client_tp = match (tps.next(), tps.next()) {
                    (Some(v), None) if headers::valid_traceparent(v.as_bytes()) => Some(v.clone()),
                    _ => None,
                };
                client_tp.unwrap_or_else(new_traceparent)
            }
        };
        call.trace = tp
            .to_str()
            .ok()
            .and_then(|t| t.get(3..35))
            .map(str::to_owned);
        parts.headers.insert(headers::TRACEPARENT.clone(), tp);
        if filter.is_some() {
            // The gateway must read the response to filter it: no compression. It answers
            // with a representation of its own, so every feature that describes the
            // provider's (parts of it, validators of it) is closed: no ranges, no conditions,
            // and HEAD is answered from a filtered GET.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            headers::remove_range_and_conditions(&mut parts.headers);
            if parts.method == http::Method::HEAD {
                parts.method = http::Method::GET;
            }
        }
        parts
            .headers
            .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
        parts.version = Version::HTTP_11;
        parts.uri = Uri::from(path_and_query.clone());

        // A request with a body is watched: was it too large, or still arriving at a timeout?
        let watch =
            (!http_body::Body::is_end_stream(&incoming)).then(|| Arc::new(BodyWatch::default()));
        call.body = watch.clone();
        let mut body = RequestBody::new(incoming, body_limit, watch.clone());
        if let Some(m) = &self.metrics {
            body = body.counted(m.received_bytes.with_label_values(&[service.full_id()]));
        }
        body.settle_declared_empty()
            .await
            .map_err(|e| GatewayError::ClientBody(e.to_string()))?;
        let res = self
            .exchange(
                &snapshot,
                service,
                &mut parts,
                &path_and_query,
                body,
                &watch,
                hash_key.as_deref(),
            )
            .await;
        let (mut res, in_flight) = match res {
            Ok(pair) => pair,
            // A body over the limit explains any failure of the exchange.
            Err(_) if watch.as_ref().is_some_and(|w| w.exceeded()) => {
                return Err(GatewayError::BodyTooLarge {
                    limit: body_limit.unwrap_or(0),
                })
            }
            Err(e) => return Err(e),
        };
        headers::remove_hop_by_hop(res.headers_mut());
        let mut res = match filter {
            Some(rules) => {
                filter_response(res, rules, self.limits.max_filtered_response_bytes).await?
            }
            None => res,
        };
        if let Some(r) = &rate {
            crate::error::set_rate_headers(res.headers_mut(), r);
        }
        Ok(res.map(|b| ResponseBody::Guarded(Box::new(b), request_slot, in_flight)))
    }
}

/// The answer to a HEAD: the headers a GET would get, no body. hyper leaves out the body of a
/// HEAD response over HTTP/1.1, but over HTTP/2 a body sent with it is a protocol error that
/// resets the stream; a gateway-made body (an error, a filtered or catalogue answer) states
/// its length first.
fn without_body(res: Response<ResponseBody>) -> Response<ResponseBody> {
    let (mut parts, body) = res.into_parts();
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Response::from_parts(parts, body::full(Bytes::new()))
}

/// RFC 9112 §3.2 and RFC 9113 §8.3.1: an HTTP/1.1 request names its host in exactly one
/// `Host`; an absolute-form target or `:authority` and `Host` must agree; user information
/// in either is refused (it is not part of a host, and providers must not see it).
fn check_host<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::InvalidHost("several Host headers"));
    }
    let authority = req.uri().authority();
    if authority.is_some_and(|a| a.as_str().contains('@'))
        || host.is_some_and(|h| h.as_bytes().contains(&b'@'))
    {
        return Err(GatewayError::InvalidHost(
            "user information in the authority",
        ));
    }
    match (host, authority) {
        (None, None) if req.version() == Version::HTTP_11 => Err(GatewayError::InvalidHost(
            "an HTTP/1.1 request without Host",
        )),
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => Err(
            GatewayError::InvalidHost("Host disagrees with the request target's authority"),
        ),
        (Some(h), _) if h.is_empty() => Err(GatewayError::InvalidHost("an empty Host")),
        _ => Ok(()),
    }
}

/// The only expectation met is `100-continue` (hyper sends the interim answer when the body is
/// first read; a refused call never reads it): anything else is 417 (RFC 9110 §10.1.1).
fn check_expect<B>(req: &Request<B>) -> Result<(), GatewayError> {
    for v in req.headers().get_all(header::EXPECT) {
        if !v
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
        {
            return Err(GatewayError::ExpectationFailed);
        }
    }
    Ok(())
}

/// The purpose of processing the client declared: one `X-Gerbang-Purpose` with one value.
/// Repeated, a comma list (the same as repeated, RFC 9110 §5.3), empty or not visible ASCII is
/// ambiguous: policy and provider must read the same single value.
fn single_purpose(h: &http::HeaderMap) -> Result<Option<HeaderValue>, GatewayError> {
    let mut all = h.get_all(&headers::X_GERBANG_PURPOSE).iter();
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

/// The status a result answers with.
fn response_status(result: &Result<Response<ResponseBody>, GatewayError>) -> u16 {
    match result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.status().as_u16(),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Applies an agreement's field rules to a JSON response, failing closed: a response that is
/// not JSON, is compressed, or is larger than `cap` is never passed on unfiltered.
async fn filter_response(
    res: Response<ResponseBody>,
    rules: &gerbang_policy::FieldRules,
    cap: usize,
) -> Result<Response<ResponseBody>, GatewayError> {
    use http_body_util::BodyExt;
    let fail = |why: &str| GatewayError::ResponseFilterFailed(why.to_owned());
    let status = res.status();
    // A part of the provider's representation, or an answer about its validators, describes
    // the unfiltered body (a slice of it can be valid JSON that the filter would pass): the
    // conditions were removed before forwarding, so a provider sending these is not followed.
    if matches!(status.as_u16(), 206 | 304 | 412 | 416) {
        return Err(fail("a partial or conditional answer cannot be filtered"));
    }
    let (mut parts, body) = res.into_parts();
    headers::remove_validators(&mut parts.headers);
    if status == http::StatusCode::NO_CONTENT {
        return Ok(Response::from_parts(parts, body));
    }
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes().to_ascii_lowercase());
    if encoding.as_deref().is_some_and(|e| e != b"identity") {
        return Err(fail("the response is compressed"));
    }
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !(media == "application/json" || media.ends_with("+json")) {
        return Err(fail("the response is not JSON"));
    }
    let bytes = http_body_util::Limited::new(body, cap)
        .collect()
        .await
        .map_err(|e| GatewayError::ResponseFilterFailed(format!("reading the response: {e}")))?
        .to_bytes();
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| GatewayError::ResponseFilterFailed(format!("not valid JSON: {e}")))?;
    rules.apply(&mut doc);
    let out = serde_json::to_vec(&doc)
        .map_err(|e| GatewayError::ResponseFilterFailed(format!("serialising: {e}")))?;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Response::from_parts(parts, body::full(Bytes::from(out))))
}

impl Gateway {
    /// Sets the verified identity headers, and the gateway assertion when configured.
    fn set_identity(
        &self,
        headers: &mut http::HeaderMap,
        principal: &Principal,
        service: &Service,
        snapshot: &Snapshot,
        agreement: (usize, &str),
        purpose: Option<&str>,
    ) {
        let Some(id) = snapshot.identities.get(
            principal,
            service,
            agreement,
            purpose,
            self.identity.assertion_ttl,
            &snapshot.auth,
        ) else {
            return;
        };
        headers.insert(headers::X_GERBANG_CONSUMER.clone(), id.consumer);
        headers.insert(headers::X_GERBANG_CONSUMER_AGENCY.clone(), id.agency);
        headers.insert(
            headers::X_GERBANG_AUTH_METHOD.clone(),
            HeaderValue::from_static(method_name(&principal.method)),
        );
        if let Some(a) = id.assertion {
            headers.insert(headers::X_GERBANG_ASSERTION.clone(), a);
        }
    }
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

/// The credentials a request presents, judged by the snapshot's authenticator.
async fn authenticate(
    auth: &Authenticator,
    req: &Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Arc<Principal>, GatewayError> {
    let h = req.headers();
    let mut authz = h.get_all(header::AUTHORIZATION).iter();
    let mut presented = Presented {
        authorization: authz.next().map(HeaderValue::as_bytes),
        authorization_repeated: authz.next().is_some(),
        client_cert: conn.client_cert.as_deref(),
        ..Presented::default()
    };
    // `Authorization` decides alone when present: the API key is looked up only without it.
    if presented.authorization.is_none() {
        let mut keys = h.get_all(&headers::X_API_KEY).iter();
        presented.api_key = keys.next().map(HeaderValue::as_bytes);
        presented.api_key_repeated = keys.next().is_some();
    }
    auth.authenticate(presented)
        .await
        .map_err(GatewayError::Unauthenticated)
}

/// A call the pipeline has not answered yet. Dropped unanswered (hyper drops the handler's
/// future when the client resets the stream or closes the connection), it records the call as
/// `499 client_closed` (the code nginx made usual) and releases its in-flight count, so that
/// no call that reached the pipeline goes unaudited.
struct Unanswered<'a> {
    gateway: &'a Gateway,
    call: CallInfo,
    request_id: &'a HeaderValue,
    method: &'a http::Method,
    remote: SocketAddr,
    started: std::time::Instant,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        if let Some(m) = &self.gateway.metrics {
            m.in_flight.dec();
        }
        let call = &self.call;
        let Some(sink) = &self.gateway.audit else {
            return;
        };
        if call.service.is_none() && call.consumer.is_none() {
            return;
        }
        let decision = if call.agreement.is_some() {
            "allow"
        } else {
            "error"
        };
        let fields = call.record(
            self.request_id.to_str().unwrap_or(""),
            self.method,
            499,
            decision,
            Some("client_closed"),
            self.remote,
            Some(call.body.as_ref().map_or(0, |w| w.received())),
            None,
            self.started.elapsed(),
        );
        let queued = sink.record_detached(fields);
        if let Some(m) = &self.gateway.metrics {
            let r = if queued { "written" } else { "failed" };
            m.audit_records.with_label_values(&[r]).inc();
        }
    }
}

/// What one call was about, filled in by the pipeline as it learns it, for the audit record.
/// Only registry ids, templates and codes: never a raw path, a credential or a subject id.
#[derive(Default)]
struct CallInfo {
    /// A fixed label for the issuer's own endpoints (metrics only; they are not audited).
    issuer_endpoint: Option<&'static str>,
    service: Option<String>,
    consumer: Option<Arc<Principal>>,
    endpoint: Option<String>,
    agreement: Option<String>,
    purpose: Option<String>,
    subject_hmac: Option<String>,
    /// The W3C trace id of the call, for correlating the record with traces.
    trace: Option<String>,
    /// What the token endpoint answered: `issued` or an OAuth error code.
    token_result: Option<&'static str>,
    /// The call's span, when spans are exported.
    span: Option<crate::trace::SpanIds>,
    /// The request body as it was read (bytes actually received), when there was one.
    body: Option<Arc<BodyWatch>>,
}

impl CallInfo {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        request_id: &str,
        method: &http::Method,
        status: u16,
        decision: &str,
        reason: Option<&str>,
        client: SocketAddr,
        bytes_in: Option<u64>,
        bytes_out: Option<u64>,
        duration: Duration,
    ) -> Vec<u8> {
        /// The record's fields, serialised straight from borrowed values: one buffer, no map
        /// of owned strings (which cost more than the rest of the record together).
        #[derive(serde::Serialize)]
        struct CallRecord<'a> {
            request_id: &'a str,
            consumer: Option<&'a str>,
            consumer_agency: Option<&'a str>,
            service: Option<&'a str>,
            endpoint: Option<&'a str>,
            method: &'a str,
            status: u16,
            decision: &'a str,
            reason: Option<&'a str>,
            agreement: Option<&'a str>,
            purpose: Option<&'a str>,
            client: std::net::IpAddr,
            bytes_in: Option<u64>,
            bytes_out: Option<u64>,
            duration_ms: f64,
            subject_hmac: Option<&'a str>,
            trace_id: Option<&'a str>,
        }
        let record = CallRecord {
            request_id,
            consumer: self.consumer.as_deref().map(|p| p.application.as_str()),
            consumer_agency: self.consumer.as_deref().map(|p| p.agency.as_str()),
            service: self.service.as_deref(),
            endpoint: self.endpoint.as_deref(),
            method: method.as_str(),
            status,
            decision,
            reason,
            agreement: self.agreement.as_deref(),
            purpose: self.purpose.as_deref(),
            client: client.ip(),
            bytes_in,
            bytes_out,
            duration_ms: (duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            subject_hmac: self.subject_hmac.as_deref(),
            trace_id: self.trace.as_deref(),
        };
        let mut out = Vec::with_capacity(512);
        // Serialising borrowed strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &record);
        out
    }
}

/// The identity headers of one (application, service) pair, ready to clone into requests.
#[derive(Clone)]
struct Identity {
    consumer: HeaderValue,
    agency: HeaderValue,
    /// The signed assertion; reused for half its lifetime (signing costs tens of microseconds,
    /// a lookup well under one).
    assertion: Option<HeaderValue>,
    renew_at: u64,
    /// What the entry was made for, confirmed on every hit (the key is a hash of it).
    pair: u64,
    agreement: usize,
    purpose: Option<Box<str>>,
}

/// [`Identity`] per (application index, service index) of one snapshot. Keys are two dense
/// indices, so the table hashes one integer.
#[derive(Default)]
struct IdentityCache {
    map: Mutex<HashMap<u64, Identity, std::hash::BuildHasherDefault<IndexHasher>>>,
}

/// A hasher for keys that are already well spread small integers (a multiply suffices).
#[derive(Default)]
struct IndexHasher(u64);

impl std::hash::Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
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
        assertion_ttl: Option<Duration>,
        auth: &Authenticator,
    ) -> Option<Identity> {
        let pair = (u64::from(principal.index) << 32) | service.index as u64;
        let key = identity_key(pair, agreement.0, purpose);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(map) = self.map.lock() {
            if let Some(id) = map.get(&key) {
                if now < id.renew_at
                    && id.pair == pair
                    && id.agreement == agreement.0
                    && id.purpose.as_deref() == purpose
                {
                    return Some(id.clone());
                }
            }
        }
        let consumer = HeaderValue::from_str(&principal.application).ok()?;
        let agency = HeaderValue::from_str(&principal.agency).ok()?;
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
        let id = Identity {
            consumer,
            agency,
            assertion,
            renew_at,
            pair,
            agreement: agreement.0,
            purpose: purpose.map(Box::from),
        };
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= IDENTITY_CACHE_MAX {
                map.clear();
            }
            map.insert(key, id.clone());
        }
        Some(id)
    }
}

fn build_snapshot(
    registry: Registry,
    auth: Arc<Authenticator>,
    policy: gerbang_policy::PolicySet,
    quotas: &Arc<dyn gerbang_policy::limits::QuotaStore>,
    tls: &Arc<ClientConfig>,
    pool: &PoolSettings,
) -> Snapshot {
    let clients = registry
        .services()
        .iter()
        .map(|s| {
            s.instances
                .iter()
                .any(|i| i.scheme == gerbang_registry::Scheme::Https)
                .then(|| {
                    let limit = crate::upstream::ConnectLimit {
                        load: Arc::clone(&s.load),
                        settings: s.breaker,
                    };
                    build_client(Arc::clone(tls), s.limits.connect_timeout, pool, Some(limit))
                })
        })
        .collect();
    let pools = registry
        .services()
        .iter()
        .map(|s| {
            s.instances
                .iter()
                .map(|i| {
                    (i.scheme == gerbang_registry::Scheme::Http).then(|| {
                        Arc::new(InstancePool::new(
                            i.authority.as_str(),
                            pool.max_idle_per_host,
                            pool.idle_timeout,
                        ))
                    })
                })
                .collect()
        })
        .collect();
    Snapshot {
        registry: Arc::new(registry),
        auth,
        clients,
        pools,
        identities: IdentityCache::default(),
        limits: gerbang_policy::limits::Limits::new(&policy, Arc::clone(quotas)),
        policy: Arc::new(policy),
    }
}

/// Takes over the old snapshot's connection pools of plain-HTTP instances with the same
/// authority, so that a reload does not close idle upstream connections.
fn adopt_pools(new: &mut Snapshot, old: &Snapshot) {
    let mut by_authority: std::collections::HashMap<&str, &Arc<InstancePool>> =
        std::collections::HashMap::new();
    for (svc, pools) in old.registry.services().iter().zip(&old.pools) {
        for (inst, pool) in svc.instances.iter().zip(pools) {
            if let Some(p) = pool {
                by_authority.insert(inst.authority.as_str(), p);
            }
        }
    }
    for (svc, pools) in new.registry.services().iter().zip(new.pools.iter_mut()) {
        for (inst, pool) in svc.instances.iter().zip(pools.iter_mut()) {
            if let (Some(slot), Some(old)) =
                (pool.as_mut(), by_authority.get(inst.authority.as_str()))
            {
                *slot = Arc::clone(old);
            }
        }
    }
}

/// A UUIDv7 request id: millisecond timestamp, then 74 bits that are unique within the process
/// (a bijective mix of a counter) and random across processes (a seed drawn once). No system
/// call per request, unlike drawing fresh randomness for each id.
pub fn new_request_id() -> HeaderValue {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let b = uuid::Uuid::new_v4().into_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[8]])
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = splitmix64(seed.wrapping_add(n));
    let mut tail = [0u8; 10];
    tail[..8].copy_from_slice(&mixed.to_le_bytes());
    tail[8..].copy_from_slice(&((seed >> 48) as u16 ^ (n >> 32) as u16).to_le_bytes());
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let s = id.hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

/// A new `traceparent` (sampled) with ids unique within the process and random across
/// processes, made without a system call (as request ids are).
fn new_traceparent() -> HeaderValue {
    let [a, b, c] = random_words();
    let c = c | 1;
    let text = format!("00-{a:016x}{b:016x}-{c:016x}-01");
    HeaderValue::from_str(&text).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

/// Three 64-bit words unique within the process (a counter through a bijection) and random
/// across processes (a random seed): trace and span ids.
pub(crate) fn random_words() -> [u64; 3] {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seed = *SEED.get_or_init(|| {
        let b = uuid::Uuid::new_v4().into_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    });
    let n = COUNTER.fetch_add(3, Ordering::Relaxed);
    [
        splitmix64(seed ^ n),
        splitmix64(seed ^ (n + 1)),
        splitmix64(seed ^ (n + 2)),
    ]
}

/// A bijection on u64 with good mixing (Steele, Lea and Flood's SplitMix64 finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The request's declared body length; several differing values are refused.
fn content_length(req: &Request<Incoming>) -> Result<Option<u64>, GatewayError> {
    let mut found: Option<u64> = None;
    for v in req.headers().get_all(header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(GatewayError::InvalidContentLength)?;
        match found {
            Some(prev) if prev != n => return Err(GatewayError::InvalidContentLength),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// `{base_path}{rest}?{query}`; the query is passed on byte for byte.
fn upstream_path(
    service: &Service,
    rest: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, GatewayError> {
    let mut pq = String::with_capacity(
        service.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
    );
    pq.push_str(&service.base_path);
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

/// `scheme://authority{path_and_query}`, the form hyper-util's client routes on.
fn absolute_uri(
    instance: &gerbang_registry::Instance,
    path_and_query: PathAndQuery,
) -> Result<Uri, GatewayError> {
    let scheme = match instance.scheme {
        gerbang_registry::Scheme::Http => Scheme::HTTP,
        gerbang_registry::Scheme::Https => Scheme::HTTPS,
    };
    Uri::builder()
        .scheme(scheme)
        .authority(instance.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| GatewayError::Internal(format!("upstream uri: {e}")))
}

/// How an exchange with an upstream failed, before the body limit is taken into account.
/// How one try failed.
enum TryError {
    /// No response head within the try's timeout.
    TimedOut,
    /// The connection could not be made; `unsent` is the body when none of it was read.
    Connect {
        error: GatewayError,
        unsent: Option<RequestBody>,
    },
    /// The circuit breaker's limit on connections being opened.
    Overloaded,
    Failed(GatewayError),
}

/// The error for a request whose response head did not arrive within `timeout`.
fn timeout_error(
    watch: &Option<Arc<BodyWatch>>,
    instance: &gerbang_registry::Instance,
    timeout: std::time::Duration,
) -> GatewayError {
    match watch {
        Some(w) if !w.finished() => GatewayError::RequestBodyTimeout {
            timeout_ms: timeout.as_millis(),
        },
        _ => GatewayError::UpstreamTimeout {
            instance: instance.to_string(),
            timeout_ms: timeout.as_millis(),
        },
    }
}

/// Maps an inline-client error to the cause a caller can act on.
fn classify_h1_error(err: H1Error, instance: String) -> GatewayError {
    match err {
        H1Error::Connect(e) => GatewayError::UpstreamUnavailable {
            instance,
            detail: e.to_string(),
        },
        H1Error::ConnectTimeout => GatewayError::UpstreamConnectTimeout { instance },
        H1Error::ClientBody(RequestBodyError::TooLarge(limit)) => {
            GatewayError::BodyTooLarge { limit }
        }
        H1Error::ClientBody(e) => GatewayError::ClientBody(e.to_string()),
        H1Error::Overloaded => GatewayError::Internal("connection limit".into()),
        e @ (H1Error::Write(_) | H1Error::Read(_) | H1Error::Closed | H1Error::Invalid(_)) => {
            GatewayError::UpstreamFailed {
                instance,
                detail: e.to_string(),
            }
        }
    }
}

/// Maps a client error to the cause a caller can act on.
fn classify_client_error(
    err: &hyper_util::client::legacy::Error,
    instance: String,
) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    let mut timed_out = false;
    let mut client_body = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        if let Some(b) = e.downcast_ref::<RequestBodyError>() {
            client_body = Some(b.to_string());
        }
        source = e.source();
    }
    let detail = error_chain(err);
    if let Some(detail) = client_body {
        return GatewayError::ClientBody(detail);
    }
    if err.is_connect() {
        if timed_out {
            GatewayError::UpstreamConnectTimeout { instance }
        } else {
            GatewayError::UpstreamUnavailable { instance, detail }
        }
    } else {
        GatewayError::UpstreamFailed { instance, detail }
    }
}

/// Whether an `E` is somewhere in `err`'s chain of sources.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<E>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_uuid_v7() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_request_id();
            let u = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(u.get_version_num(), 7);
            assert!(seen.insert(u));
        }
    }
}
