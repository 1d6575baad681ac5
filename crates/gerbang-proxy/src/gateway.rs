//! The data plane's request handler: [`Gateway::handle`] runs the phases of
//! [`crate::phase`] over one call and records it; the registry, credentials, agreements and
//! reloadable settings are one [`Snapshot`] that a reload swaps whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gerbang_auth::authn::Authenticator;
use gerbang_auth::mtls::ClientCert;
use gerbang_registry::Registry;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use rustls::ClientConfig;

use crate::body::{BodyWatch, RequestBody};
use crate::error::GatewayError;
use crate::h1::InstancePool;
use crate::headers;
use crate::oauth::IssuerEndpoints;
use crate::phase::context::Call;
use crate::phase::exchange::Exchange;
use crate::phase::record::Unanswered;
use crate::phase::upstream_request::{IdentityCache, Rewrite};
use crate::phase::{authenticate, authorise, checks, filter, internal, record, route};
use crate::response_body::{self, ResponseBody};
use crate::upstream::{build_client, PoolSettings, UpstreamClient};

/// Request limits of the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `remote`'s address as text, for `X-Forwarded-For`: written once per connection, not
    /// once per request.
    pub remote_ip: HeaderValue,
}

impl ConnInfo {
    /// A connection from `remote` reached over `proto`, without a client certificate.
    pub fn new(remote: SocketAddr, proto: &'static str) -> Self {
        let mut ip = Vec::with_capacity(15);
        crate::headers::push_ip(&mut ip, remote.ip());
        Self {
            remote,
            proto,
            client_cert: None,
            // An address's text is always a valid header value.
            remote_ip: HeaderValue::from_bytes(&ip).unwrap_or(HeaderValue::from_static("unknown")),
        }
    }
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

/// Everything besides the registry, credentials and agreements that a reload applies: it lives
/// in the [`Snapshot`] and is swapped with it. Every other setting of the gateway is fixed for
/// the life of the process (the reloader reports a change to one as needing a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct Reloadable {
    /// Request limits (`[limits]`).
    pub limits: Limits,
    /// Request headers removed on every route, besides `X-Gerbang-*` and credentials
    /// (`auth.strip_headers`).
    pub strip_headers: Vec<HeaderName>,
    /// Lifetime of `X-Gerbang-Assertion` JWTs; `None` sends none (`auth.assertion`).
    pub assertion_ttl: Option<Duration>,
}

/// An immutable view of routing state; a reload swaps in a new one.
pub struct Snapshot {
    pub registry: Arc<Registry>,
    /// Credentials of this registry's applications.
    pub auth: Arc<Authenticator>,
    /// Per service, indexed by [`Service::index`]: a hyper-util pooled client when the service
    /// has `https://` instances.
    pub(crate) clients: Vec<Option<UpstreamClient>>,
    /// Per service, per instance: the inline client's pool for `http://` instances.
    pub(crate) pools: Vec<Vec<Option<Arc<InstancePool>>>>,
    /// Identity headers per (application, service), valid for this snapshot's authenticator.
    pub(crate) identities: IdentityCache,
    /// Per service, indexed by [`Service::index`]: its metric series, resolved at its first
    /// call (resolving them all up front would expose series for services never called).
    pub(crate) service_metrics: Vec<std::sync::OnceLock<Arc<crate::metrics::ServiceMetrics>>>,
    /// Agreements and declared endpoints.
    pub policy: Arc<gerbang_policy::PolicySet>,
    /// Rate limits and quotas of the agreements.
    pub(crate) limits: gerbang_policy::limits::Limits,
    /// Limits, header stripping and assertions in force.
    pub settings: Reloadable,
}

impl Snapshot {
    /// The metric series of `service`, resolved at its first call in this snapshot.
    pub(crate) fn service_metrics(
        &self,
        metrics: &crate::metrics::Metrics,
        service: &gerbang_registry::Service,
    ) -> Option<&Arc<crate::metrics::ServiceMetrics>> {
        self.service_metrics
            .get(service.index)
            .map(|slot| slot.get_or_init(|| Arc::new(metrics.for_service(service.full_id()))))
    }
}

/// The data plane's request handler.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    tls_client: Arc<ClientConfig>,
    pool: PoolSettings,
    pub(crate) issuer_endpoints: IssuerEndpoints,
    /// Quota counts outlive snapshots (a reload must not reset them). In cluster mode these
    /// are the local fallback's counts.
    quotas: Arc<dyn gerbang_policy::limits::QuotaStore>,
    /// Cluster mode: the rate limits and quotas every replica shares (Redis); it outlives
    /// snapshots. The snapshot's limiter is then its fallback at this replica's share.
    shared_limits: Option<Arc<gerbang_cluster::limits::SharedLimits>>,
    pub(crate) audit: Option<Arc<crate::audit::AuditSink>>,
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
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
        let settings = Reloadable {
            limits,
            strip_headers: identity.strip_headers,
            assertion_ttl: identity.assertion_ttl,
        };
        let snapshot = build_snapshot(
            (registry, auth, policy, settings),
            (&quotas, 1),
            &tls_client,
            &pool,
        );
        let issuer_endpoints =
            IssuerEndpoints::new(identity.public_base_url, &identity.token_endpoint);
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            tls_client,
            pool,
            issuer_endpoints,
            quotas,
            shared_limits: None,
            audit: None,
            metrics: None,
            spans: None,
        }
    }

    /// Replaces the registry, its credentials, the agreements and the reloadable settings
    /// atomically; requests in flight finish on the snapshot they began with.
    ///
    /// Unchanged instances keep their health state and their idle upstream connections; the
    /// caller serialises replacements (the reload path holds a lock).
    pub fn replace_registry(
        &self,
        mut registry: Registry,
        auth: Arc<Authenticator>,
        policy: gerbang_policy::PolicySet,
        settings: Reloadable,
    ) {
        let old = self.snapshot.load_full();
        registry.adopt_health(&old.registry);
        let mut snapshot = build_snapshot(
            (registry, auth, policy, settings),
            (&self.quotas, self.limit_share()),
            &self.tls_client,
            &self.pool,
        );
        adopt_pools(&mut snapshot, &old);
        // Rate-limit state of unchanged agreements carries over: no fresh burst per reload.
        let policy = Arc::clone(&snapshot.policy);
        snapshot.limits.adopt(&policy, &old.limits, &old.policy);
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Counts quotas in `store` from now on instead of in memory (one node: a store that
    /// survives restarts). Before the gateway serves.
    pub fn with_quota_store(mut self, store: Arc<dyn gerbang_policy::limits::QuotaStore>) -> Self {
        self.quotas = store;
        self.rebuild_limits();
        self
    }

    /// Cluster mode: agreement limits are decided by `store`, shared by every replica; the
    /// snapshot's limiter becomes the fallback, at the rate, burst and quota divided by the
    /// expected number of replicas, with its own quota counts. Before the gateway serves.
    pub fn with_shared_limits(mut self, store: Arc<gerbang_cluster::limits::SharedLimits>) -> Self {
        self.quotas = Arc::new(gerbang_policy::limits::MemoryQuotaStore::default());
        self.shared_limits = Some(store);
        self.rebuild_limits();
        self
    }

    /// The shared limit store, in cluster mode.
    pub fn shared_limits(&self) -> Option<&Arc<gerbang_cluster::limits::SharedLimits>> {
        self.shared_limits.as_ref()
    }

    /// The local limiter's share: the expected replicas in cluster mode, else 1.
    fn limit_share(&self) -> u32 {
        self.shared_limits
            .as_ref()
            .map_or(1, |s| s.expected_replicas())
    }

    /// Builds the snapshot's limiter again after the quota store or share changed (while the
    /// gateway is being set up): the same snapshot otherwise.
    fn rebuild_limits(&mut self) {
        let current = self.snapshot.load_full();
        let limits = gerbang_policy::limits::Limits::with_share(
            &current.policy,
            Arc::clone(&self.quotas),
            self.limit_share(),
        );
        self.snapshot.store(Arc::new(Snapshot {
            registry: Arc::clone(&current.registry),
            auth: Arc::clone(&current.auth),
            clients: current.clients.clone(),
            pools: current.pools.clone(),
            identities: IdentityCache::default(),
            service_metrics: current.service_metrics.clone(),
            policy: Arc::clone(&current.policy),
            limits,
            settings: current.settings.clone(),
        }));
    }

    /// The reloadable settings in force.
    pub fn settings(&self) -> Reloadable {
        self.snapshot.load().settings.clone()
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

    /// Handles one request: the phases of [`crate::phase`], then the record of the call; every
    /// failure becomes a JSON error response. The future owns the gateway's `Arc`, so the
    /// server boxes it as it is (see [`crate::server::Handler`]).
    // Not an `async fn`: that keeps each by-value argument twice in the future (see
    // `Gateway::forward`).
    #[allow(clippy::manual_async_fn)]
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = Response<ResponseBody>> + Send + 'static {
        // Split before the future is made: its captures live as long as it does, so the
        // request's head and body are kept once, where the phases borrow them, not as a
        // captured `Request` and again as the parts it was split into (see `Gateway::forward`).
        let (mut parts, body) = req.into_parts();
        async move {
            let this = &*self;
            // The one reading of the wall clock that the call is judged by (see `Call::unix_ms`).
            let wall = std::time::SystemTime::now();
            let unix_ms = wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let request_id = crate::ids::request_id(&parts.headers, unix_ms);
            let method = parts.method.clone();
            let remote = conn.remote;
            let survey = checks::survey(&parts);
            let framing_error = survey.framing_error;
            // Until the pipeline has answered, a dropped future (the client reset the stream or
            // closed the connection) still leaves its audit record and its in-flight count.
            let mut pending = Unanswered::new(this, &request_id, &method, remote);
            pending.call.unix_ms = unix_ms;
            if this.spans.is_some() {
                pending.call.span = Some(crate::trace::span_ids(&parts.headers));
                pending.call.wall_start = Some(wall);
            }
            let result = this
                .forward(
                    &mut parts,
                    body,
                    &conn,
                    &request_id,
                    &survey,
                    &mut pending.call,
                )
                .await;
            let (call, started) = pending.answered();
            let result =
                record::record(this, &call, &request_id, &method, remote, started, result).await;
            let res = this.respond(&call, request_id, &method, remote, framing_error, result);
            if method == http::Method::HEAD {
                filter::without_body(res)
            } else {
                res
            }
        }
    }

    /// The phases, in order (see [`crate::phase`]), over the request's head in `parts` (the
    /// handler's; the rewrite edits its fields in place) and its `body`.
    ///
    /// Written as a function returning an `async move` block, not an `async fn`: an async fn
    /// keeps each argument twice in its future (as the argument and as the body's local). A
    /// captured value also keeps its room for the future's whole life, moved out or not; so
    /// the head and the connection are borrowed, and only the body (40 bytes) is captured.
    #[allow(clippy::manual_async_fn)]
    fn forward<'a>(
        &'a self,
        parts: &'a mut http::request::Parts,
        body: Incoming,
        conn: &'a ConnInfo,
        request_id: &'a HeaderValue,
        survey: &'a checks::Survey,
        call: &'a mut Call,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, GatewayError>> + Send + 'a
    {
        async move {
            let snapshot = self.snapshot.load_full();
            // 1. request checks
            let content_length = checks::request(parts, survey, &snapshot.settings.limits)?;
            // 2. the gateway's own endpoints
            if let Some(endpoint) = internal::which(parts.uri.path()) {
                // Boxed: the gateway's own endpoints (the token issuer among them) need a larger
                // future than the forwarding path, and every call's future would be that large.
                // The head is handed over whole; nothing reads it after this call.
                let head = std::mem::replace(parts, Request::new(()).into_parts().0);
                return Box::pin(internal::serve(
                    self, &snapshot, endpoint, head, body, conn, call,
                ))
                .await;
            }
            // 3. route (its 404 waits for authentication)
            let normalized = route::normalise(parts.uri.path())?;
            let route = route::resolve(&snapshot.registry, &normalized, call)?;
            // 4. authenticate
            let principal =
                authenticate::principal(&snapshot.auth, parts, conn, Some(call.unix_secs()))
                    .await?;
            call.consumer = Some(Arc::clone(&principal));
            let service = route.service()?;
            // 5. authorise
            let mut grant = authorise::decide(
                &snapshot,
                service,
                &principal,
                parts,
                route.rest,
                self.audit.as_deref(),
                call,
            )?;
            grant.rate = authorise::limits(
                self.shared_limits.as_deref(),
                &snapshot,
                &grant,
                &principal.application,
                call.unix_secs() as i64,
            )
            .await?;
            let body_limit = service.limits.max_body_bytes;
            checks::body_limit(body_limit, content_length)?;
            // The circuit breaker: a slot while this call is in flight to the service (until its
            // response body has been sent).
            let request_slot = service
                .load
                .request(&service.breaker)
                .ok_or_else(|| GatewayError::UpstreamOverloaded(service.full_id().to_owned()))?;
            if service.instances.is_empty() {
                return Err(GatewayError::NoInstance(service.full_id().to_owned()));
            }
            // 6. the upstream request
            let rest = if route.rest == "/" { "" } else { route.rest };
            let target = crate::h1::Target {
                base: &service.base_path,
                rest,
            };
            let hash_key = match &service.balancing {
                gerbang_registry::Balancing::ConsistentHash { header } => {
                    parts.headers.get(header).map(|v| v.as_bytes().to_vec())
                }
                _ => None,
            };
            let added = Rewrite {
                snapshot: &snapshot,
                service,
                principal: &principal,
                grant: &grant,
                conn,
                request_id,
                expect_sent: survey.expect,
            }
            .apply(parts, call);
            // A request with a body is watched: was it too large, or still arriving at a timeout?
            let watch =
                (!http_body::Body::is_end_stream(&body)).then(|| Arc::new(BodyWatch::default()));
            call.body = watch.clone();
            // The service's series, resolved once per snapshot; they exist from its first
            // forwarded call on, as before.
            if let Some(m) = &self.metrics {
                call.service_metrics = snapshot.service_metrics(m, service).cloned();
            }
            // Made in a block of its own: the body is borrowed while it settles, and a
            // borrowed local keeps its room in the future to the end of its scope, beside the
            // exchange's own copy.
            let body = {
                let mut body = RequestBody::new(body, body_limit, watch.clone());
                if let Some(m) = &call.service_metrics {
                    body = body.counted(m.received_bytes.clone());
                }
                body.settle_declared_empty()
                    .await
                    .map_err(|e| GatewayError::ClientBody(e.to_string()))?;
                body
            };
            // 7. exchange
            let exchange = Exchange {
                gateway: self,
                snapshot: &snapshot,
                service,
                watch: &watch,
                hash_key: hash_key.as_deref(),
                added: &added,
                target,
            };
            let (res, in_flight) = match exchange.run(parts, Some(body)).await {
                Ok(pair) => pair,
                // A body over the limit explains any failure of the exchange.
                Err(_) if watch.as_ref().is_some_and(|w| w.exceeded()) => {
                    return Err(GatewayError::BodyTooLarge {
                        limit: body_limit.unwrap_or(0),
                    })
                }
                Err(e) => return Err(e),
            };
            // The request's fields have gone upstream; their map serves a later response head.
            crate::h1::recycle_map(std::mem::take(&mut parts.headers));
            // 8. the response filter (the clients have taken the hop-by-hop fields out)
            let mut res = match grant.filter() {
                Some(rules) => {
                    let cap = snapshot.settings.limits.max_filtered_response_bytes;
                    filter::filter_response(res, rules, cap).await?
                }
                None => res,
            };
            if let Some(r) = &grant.rate {
                crate::error::set_rate_headers(res.headers_mut(), r);
            }
            Ok(res.map(|b| ResponseBody::Guarded(Box::new(b), request_slot, in_flight)))
        }
    }

    /// The response the client gets: the request id on it, bytes sent counted; errors in the
    /// one JSON shape (logged by their origin), the connection closed after ambiguous framing.
    fn respond(
        &self,
        call: &Call,
        request_id: HeaderValue,
        method: &http::Method,
        remote: SocketAddr,
        framing_error: bool,
        result: Result<Response<ResponseBody>, GatewayError>,
    ) -> Response<ResponseBody> {
        let sent = self.metrics.as_ref().map(|m| match &call.service_metrics {
            Some(s) => s.sent_bytes.clone(),
            None => m.sent_bytes.with_label_values(&[call
                .service
                .as_deref()
                .or(call.issuer_endpoint)
                .unwrap_or("unknown")]),
        });
        match result {
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
                Response::from_parts(parts, response_body::full(bytes))
            }
        }
    }
}

/// What a snapshot is built from: the registry, its credentials, the agreements and the
/// reloadable settings.
type SnapshotParts = (
    Registry,
    Arc<Authenticator>,
    gerbang_policy::PolicySet,
    Reloadable,
);

fn build_snapshot(
    (registry, auth, policy, settings): SnapshotParts,
    (quotas, share): (&Arc<dyn gerbang_policy::limits::QuotaStore>, u32),
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
    let service_metrics = registry
        .services()
        .iter()
        .map(|_| std::sync::OnceLock::new())
        .collect();
    Snapshot {
        registry: Arc::new(registry),
        auth,
        clients,
        pools,
        identities: IdentityCache::default(),
        service_metrics,
        settings,
        limits: gerbang_policy::limits::Limits::with_share(&policy, Arc::clone(quotas), share),
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
