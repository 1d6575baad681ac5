//! Prometheus metrics of the data plane, served by the admin listener at `GET /metrics`.
//!
//! Labels come only from registry ids, endpoint templates, methods, status classes and stable
//! reason codes — never a raw path, a token or a data-subject id. Unknown values collapse to
//! fixed words (`anonymous`, `unknown`, `none`), so the series count is bounded by the registry:
//! about consumers × services × endpoints × methods × 5 status classes × 4 decisions (`allow`,
//! `deny`, `error` before any agreement applied, `none` for the issuer's own endpoints).
//!
//! Most series move on the request path. State that lives elsewhere (the audit queue, JWKS
//! fetches of the auth crate, instance health) is read when `/metrics` is scraped, by the
//! refresh hooks that the wiring registers with [`Metrics::on_scrape`].

use std::sync::{Arc, Mutex, OnceLock};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 250 µs to 30 s.
const BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Buckets of Redis round trips: 100 µs to 1 s.
const LIMIT_STORE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

type Hook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The `result` values of `gerbang_config_reloads_total`.
const RELOAD_RESULTS: [&str; 2] = ["success", "failure"];
/// The `by` values of `gerbang_token_auth_throttled_total`.
const TOKEN_THROTTLED_BY: [&str; 2] = ["source", "client"];

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_connect_failures: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    pub received_bytes: IntCounterVec,
    pub sent_bytes: IntCounterVec,
    pub policy_decisions: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub limited: IntCounterVec,
    /// Cluster mode: round trips to the shared limit store (Redis).
    pub limit_store_duration: Histogram,
    /// Cluster mode: failed round trips to the shared limit store, by kind.
    pub limit_store_errors: IntCounterVec,
    /// Cluster mode: 1 while the shared limit store is skipped after a failure.
    pub limit_store_fallback: IntGauge,
    /// Cluster mode: calls decided by the local fallback limiter.
    pub limit_store_fallback_decisions: IntCounter,
    pub in_flight: IntGauge,
    pub open_connections: IntGaugeVec,
    pub audit_records: IntCounterVec,
    pub audit_queue: IntGauge,
    pub token_requests: IntCounterVec,
    pub token_auth_throttled: IntCounterVec,
    pub jwks_refreshes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_time: Gauge,
    pub config_info: IntGaugeVec,
    /// Cluster mode: the configuration revision in force (0: none yet).
    pub config_revision: IntGauge,
    /// Cluster mode: failed attempts to reach the configuration revisions in Redis.
    pub config_revision_errors: prometheus::IntCounter,
    pub credential_expiry: GaugeVec,
    pub upstream_instance_healthy: IntGaugeVec,
    build: IntGaugeVec,
    /// `gerbang_policy_decisions_total{decision="allow",reason="none"}`, resolved once: the
    /// series of every allowed call.
    pub allowed: IntCounter,
    /// `gerbang_audit_records_total{result="written"}` and `{result="failed"}`, resolved once.
    pub audit_written: IntCounter,
    pub audit_failed: IntCounter,
    hooks: Mutex<Vec<Hook>>,
    /// Whether per-application labels are on (off for very large registries).
    pub per_application: bool,
}

/// The series of one service, resolved once per configuration snapshot and kept in its
/// per-service table: a label lookup hashes the values and takes a lock, and every forwarded
/// call moved four of these series.
pub struct ServiceMetrics {
    /// `gerbang_request_duration_seconds{service}`.
    pub duration: Histogram,
    /// `gerbang_upstream_duration_seconds{service}`, from the service's first upstream
    /// response on (a service whose connects all fail has no response time).
    upstream_duration: OnceLock<Histogram>,
    /// `gerbang_received_bytes_total{service}`.
    pub received_bytes: IntCounter,
    /// `gerbang_sent_bytes_total{service}`.
    pub sent_bytes: IntCounter,
    /// `gerbang_requests_total` series of this service's calls, each resolved once (a lookup
    /// in the family hashes seven label values and takes its lock).
    requests: Mutex<crate::word_hash::WordMap<RequestKey, IntCounter>>,
}

/// Which `gerbang_requests_total` series of a service a call counts in, named by the
/// snapshot's own indices and ids: within one snapshot (which holds these series and the
/// policy the endpoint ids belong to) a key always means the same label values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RequestKey {
    /// The application's index in the snapshot's authenticator (`Principal::index`).
    pub application: u32,
    /// The address of the endpoint's id in the snapshot's policy; 0 for none.
    pub endpoint: usize,
    /// The method label's position in [`METHOD_LABELS`].
    pub method: u8,
    /// The status class label's position ([`status_class_index`]).
    pub status_class: u8,
    /// The decision label's position in [`DECISION_LABELS`].
    pub decision: u8,
}

/// The method labels of `gerbang_requests_total`: the common methods, then `other`.
pub const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

/// The decision labels of `gerbang_requests_total`.
pub const DECISION_LABELS: [&str; 4] = ["allow", "deny", "error", "none"];

/// Series of one service kept at most; past it the table starts over.
const REQUEST_SERIES_MAX: usize = 4096;

impl ServiceMetrics {
    /// Counts a call in `gerbang_requests_total`: the series `key` names, resolved in the
    /// family with `labels` (consumer, agency, service, endpoint, method, status class,
    /// decision) the first time.
    pub fn count_request<'a>(
        &self,
        metrics: &Metrics,
        key: RequestKey,
        labels: impl FnOnce() -> [&'a str; 7],
    ) {
        let Ok(mut table) = self.requests.lock() else {
            metrics.requests.with_label_values(&labels()).inc();
            return;
        };
        if let Some(counter) = table.get(&key) {
            counter.inc();
            return;
        }
        if table.len() >= REQUEST_SERIES_MAX {
            table.clear();
        }
        let counter = metrics.requests.with_label_values(&labels());
        counter.inc();
        table.insert(key, counter);
    }

    /// Records the time to an upstream response head of the service `full_id` (the one these
    /// series are of).
    pub fn observe_upstream(&self, metrics: &Metrics, full_id: &str, elapsed: std::time::Duration) {
        self.upstream_duration
            .get_or_init(|| metrics.upstream_duration.with_label_values(&[full_id]))
            .observe(elapsed.as_secs_f64());
    }
}

/// Why metrics could not be set up (a programming error: names are fixed).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, MetricsError> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new(per_application: bool) -> Result<Arc<Self>, MetricsError> {
        let r = Registry::new();
        let requests = counter(
            &r,
            "gerbang_requests_total",
            "Calls through the data plane",
            &[
                "consumer",
                "consumer_agency",
                "service",
                "endpoint",
                "method",
                "status_class",
                "decision",
            ],
        )?;
        let duration = histogram(
            &r,
            "gerbang_request_duration_seconds",
            "Time from request to response head, whole gateway",
            &["service"],
        )?;
        let upstream_duration = histogram(
            &r,
            "gerbang_upstream_duration_seconds",
            "Time from forwarding a request to the upstream's response head (connect included)",
            &["service"],
        )?;
        let upstream_connect_failures = counter(
            &r,
            "gerbang_upstream_connect_failures_total",
            "Connections to an upstream instance that failed or timed out",
            &["service", "upstream_instance"],
        )?;
        let upstream_retries = counter(
            &r,
            "gerbang_upstream_retries_total",
            "Calls sent to another instance after a failed try, by the failure",
            &["service", "reason"],
        )?;
        let upstream_ejections = counter(
            &r,
            "gerbang_upstream_ejections_total",
            "Instances taken out of rotation by passive outlier detection",
            &["service", "upstream_instance"],
        )?;
        let received_bytes = counter(
            &r,
            "gerbang_received_bytes_total",
            "Request body bytes received from clients and forwarded",
            &["service"],
        )?;
        let sent_bytes = counter(
            &r,
            "gerbang_sent_bytes_total",
            "Response body bytes sent to clients",
            &["service"],
        )?;
        let policy_decisions = counter(
            &r,
            "gerbang_policy_decisions_total",
            "Policy decisions by result and reason",
            &["decision", "reason"],
        )?;
        let auth_failures = counter(
            &r,
            "gerbang_auth_failures_total",
            "Authentication refusals by reason",
            &["reason"],
        )?;
        let limited = counter(
            &r,
            "gerbang_limit_refusals_total",
            "Calls refused by an agreement's rate limit or quota",
            &["reason", "agreement"],
        )?;
        let limit_store_duration = Histogram::with_opts(
            HistogramOpts::new(
                "gerbang_limit_store_duration_seconds",
                "Cluster mode: round trips to the shared rate-limit and quota store (Redis)",
            )
            .buckets(LIMIT_STORE_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(limit_store_duration.clone()))?;
        let limit_store_errors = counter(
            &r,
            "gerbang_limit_store_errors_total",
            "Cluster mode: failed round trips to the shared limit store, by kind (timeout, connection, script, reply)",
            &["kind"],
        )?;
        for kind in gerbang_cluster::limits::ERROR_KINDS {
            limit_store_errors.with_label_values(&[kind]);
        }
        let limit_store_fallback = IntGauge::new(
            "gerbang_limit_store_fallback",
            "Cluster mode: 1 while the shared limit store is unavailable and limits are applied per replica (on_redis_failure = local) or refused (closed)",
        )?;
        r.register(Box::new(limit_store_fallback.clone()))?;
        let limit_store_fallback_decisions = IntCounter::new(
            "gerbang_limit_store_fallback_decisions_total",
            "Cluster mode: calls whose rate limit and quota this replica decided alone because the shared limit store was unavailable",
        )?;
        r.register(Box::new(limit_store_fallback_decisions.clone()))?;
        let in_flight = IntGauge::new("gerbang_in_flight_requests", "Requests being handled")?;
        r.register(Box::new(in_flight.clone()))?;
        let open_connections = gauge_vec(
            &r,
            "gerbang_open_connections",
            "Client connections open, by listener",
            &["listener"],
        )?;
        let audit_records = counter(
            &r,
            "gerbang_audit_records_total",
            "Audit records by result (written, failed)",
            &["result"],
        )?;
        let audit_queue = IntGauge::new(
            "gerbang_audit_queue_depth",
            "Audit records waiting for the writer",
        )?;
        r.register(Box::new(audit_queue.clone()))?;
        let token_requests = counter(
            &r,
            "gerbang_token_requests_total",
            "Requests to the token endpoint by result (issued or the OAuth error code)",
            &["result"],
        )?;
        let token_auth_throttled = counter(
            &r,
            "gerbang_token_auth_throttled_total",
            "Token requests refused (429 slow_down) before any secret check, because their source address or client id used up its allowance of failed client authentications",
            &["by"],
        )?;
        let jwks_refreshes = counter(
            &r,
            "gerbang_jwks_refreshes_total",
            "Fetches of an external issuer's JWKS by result",
            &["issuer", "result"],
        )?;
        let config_reloads = counter(
            &r,
            "gerbang_config_reloads_total",
            "Configuration reloads by result",
            &["result"],
        )?;
        let config_last_reload_successful = IntGauge::new(
            "gerbang_config_last_reload_successful",
            "Whether the last configuration load or reload succeeded",
        )?;
        r.register(Box::new(config_last_reload_successful.clone()))?;
        let config_last_reload_success_time = Gauge::new(
            "gerbang_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load",
        )?;
        r.register(Box::new(config_last_reload_success_time.clone()))?;
        let config_info = gauge_vec(
            &r,
            "gerbang_config_info",
            "The configuration in force (SHA-256 prefix of its files)",
            &["hash"],
        )?;
        let config_revision = IntGauge::new(
            "gerbang_config_revision",
            "Cluster mode: the configuration revision in force (0 = none, or one node)",
        )?;
        r.register(Box::new(config_revision.clone()))?;
        let config_revision_errors = prometheus::IntCounter::new(
            "gerbang_config_revision_errors_total",
            "Cluster mode: failed attempts to read or publish configuration revisions in Redis",
        )?;
        r.register(Box::new(config_revision_errors.clone()))?;
        let credential_expiry = GaugeVec::new(
            Opts::new(
                "gerbang_credential_expiry_timestamp_seconds",
                "Unix time at which a credential of the gateway expires (signing key by rotation \
                 policy, TLS certificate, API key)",
            ),
            &["kind", "name"],
        )?;
        r.register(Box::new(credential_expiry.clone()))?;
        let upstream_instance_healthy = gauge_vec(
            &r,
            "gerbang_upstream_instance_healthy",
            "Whether an upstream instance takes traffic (1) or is ejected or failing checks (0)",
            &["service", "upstream_instance"],
        )?;
        let build = gauge_vec(
            &r,
            "gerbang_build_info",
            "Build of the running gateway",
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Counters whose label values are a fixed set exist at 0 from the start, so that
        // `increase()` and `rate()` see their first event (a series born at 1 shows no increase).
        for result in RELOAD_RESULTS {
            config_reloads.with_label_values(&[result]);
        }
        for result in std::iter::once("issued").chain(gerbang_auth::oauth::OAuthError::CODES) {
            token_requests.with_label_values(&[result]);
        }
        for by in TOKEN_THROTTLED_BY {
            token_auth_throttled.with_label_values(&[by]);
        }
        for reason in gerbang_auth::authn::AuthFailure::reasons() {
            auth_failures.with_label_values(&[reason]);
        }
        // Resolved once for the request path (and so at 0 from the start, as above).
        let allowed = policy_decisions.with_label_values(&["allow", "none"]);
        let audit_written = audit_records.with_label_values(&["written"]);
        let audit_failed = audit_records.with_label_values(&["failed"]);
        for reason in gerbang_policy::Reason::ALL {
            policy_decisions.with_label_values(&["deny", reason.as_str()]);
        }
        Ok(Arc::new(Self {
            registry: r,
            requests,
            duration,
            upstream_duration,
            upstream_connect_failures,
            upstream_retries,
            upstream_ejections,
            received_bytes,
            sent_bytes,
            policy_decisions,
            auth_failures,
            limited,
            limit_store_duration,
            limit_store_errors,
            limit_store_fallback,
            limit_store_fallback_decisions,
            in_flight,
            open_connections,
            audit_records,
            audit_queue,
            token_requests,
            token_auth_throttled,
            jwks_refreshes,
            config_reloads,
            config_last_reload_successful,
            config_last_reload_success_time,
            config_info,
            config_revision,
            config_revision_errors,
            credential_expiry,
            upstream_instance_healthy,
            build,
            allowed,
            audit_written,
            audit_failed,
            hooks: Mutex::new(Vec::new()),
            per_application,
        }))
    }

    /// The series of the service `full_id` (each created at 0 if new).
    pub fn for_service(&self, full_id: &str) -> ServiceMetrics {
        ServiceMetrics {
            duration: self.duration.with_label_values(&[full_id]),
            upstream_duration: OnceLock::new(),
            received_bytes: self.received_bytes.with_label_values(&[full_id]),
            sent_bytes: self.sent_bytes.with_label_values(&[full_id]),
            requests: Mutex::default(),
        }
    }

    /// The audit-records counter of one result.
    pub fn audit_result(&self, written: bool) -> &IntCounter {
        if written {
            &self.audit_written
        } else {
            &self.audit_failed
        }
    }

    /// Runs `hook` before every scrape, to copy state kept elsewhere into gauges and counters.
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// Records a configuration load: its hash, and success with the time, or failure.
    pub fn config_loaded(&self, result: Result<&str, ()>, reload: bool) {
        match result {
            Ok(hash) => {
                self.config_info.reset();
                self.config_info.with_label_values(&[hash]).set(1);
                self.config_last_reload_successful.set(1);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.config_last_reload_success_time.set(now);
                if reload {
                    self.config_reloads.with_label_values(&["success"]).inc();
                }
            }
            Err(()) => {
                self.config_last_reload_successful.set(0);
                if reload {
                    self.config_reloads.with_label_values(&["failure"]).inc();
                }
            }
        }
    }

    /// Sets the expiry series to exactly `expiries` (kind, name, unix seconds).
    pub fn set_expiries(&self, expiries: &[(&str, &str, i64)]) {
        self.credential_expiry.reset();
        for (kind, name, at) in expiries {
            self.credential_expiry
                .with_label_values(&[kind, name])
                .set(*at as f64);
        }
    }

    /// The names of every metric family, including those with no series yet.
    pub fn family_names(&self) -> Vec<String> {
        let collectors: [&dyn Collector; 25] = [
            &self.requests,
            &self.duration,
            &self.upstream_duration,
            &self.upstream_connect_failures,
            &self.upstream_retries,
            &self.upstream_ejections,
            &self.received_bytes,
            &self.sent_bytes,
            &self.policy_decisions,
            &self.auth_failures,
            &self.limited,
            &self.in_flight,
            &self.open_connections,
            &self.audit_records,
            &self.audit_queue,
            &self.token_requests,
            &self.token_auth_throttled,
            &self.jwks_refreshes,
            &self.config_reloads,
            &self.config_last_reload_successful,
            &self.config_last_reload_success_time,
            &self.config_info,
            &self.credential_expiry,
            &self.upstream_instance_healthy,
            &self.build,
        ];
        let mut names: Vec<String> = collectors
            .iter()
            .chain(self.limit_store_collectors().iter())
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn limit_store_collectors(&self) -> [&dyn Collector; 4] {
        [
            &self.limit_store_duration,
            &self.limit_store_errors,
            &self.limit_store_fallback,
            &self.limit_store_fallback_decisions,
        ]
    }

    /// The shared limit store's series, for `gerbang_cluster::limits::SharedLimits`.
    pub fn limit_store(&self) -> gerbang_cluster::limits::StoreMetrics {
        gerbang_cluster::limits::StoreMetrics {
            duration: self.limit_store_duration.clone(),
            errors: self.limit_store_errors.clone(),
            fallback: self.limit_store_fallback.clone(),
            fallback_decisions: self.limit_store_fallback_decisions.clone(),
        }
    }

    /// The exposition text (after running the scrape hooks).
    pub fn render(&self) -> Vec<u8> {
        if let Ok(hooks) = self.hooks.lock() {
            for hook in hooks.iter() {
                hook(self);
            }
        }
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

/// The series of a one-label counter family that have counted something: (label value, count),
/// sorted (series exported at 0 before their first event are left out).
pub fn counts(family: &IntCounterVec) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = family
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_counter().get_value() > 0.0)
        .map(|m| {
            let label = m
                .get_label()
                .first()
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            (label, m.get_counter().get_value() as u64)
        })
        .collect();
    out.sort();
    out
}

/// Sets `counter` to `value` (a counter kept elsewhere, copied at scrape time; the scrape lock
/// serialises the reset and the increment).
pub fn copy_counter(counter: &prometheus::IntCounter, value: u64) {
    let now = counter.get();
    if value >= now {
        counter.inc_by(value - now);
    } else {
        counter.reset();
        counter.inc_by(value);
    }
}

/// `2xx`, `4xx`, … of a status code.
pub fn status_class(status: u16) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(status_class_index(status))]
}

/// The position of `status`'s class label in `1xx` … `5xx` (anything else counts as `5xx`).
pub fn status_class_index(status: u16) -> u8 {
    match status / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let m = Metrics::new(true).unwrap();
        String::from_utf8(m.render()).unwrap()
    }

    #[test]
    fn a_services_request_series_are_the_familys_series_each_resolved_once() {
        let m = Metrics::new(true).unwrap();
        let s = m.for_service("dukcapil/penduduk");
        let labels = |consumer, status_class| {
            move || {
                [
                    consumer,
                    "dinkes",
                    "dukcapil/penduduk",
                    "GET /penduduk/{nik}",
                    "GET",
                    status_class,
                    "allow",
                ]
            }
        };
        let key = |application, status_class| RequestKey {
            application,
            endpoint: 0x1000,
            method: 0,
            status_class,
            decision: 0,
        };
        let value = |consumer, status_class| {
            m.requests
                .with_label_values(&labels(consumer, status_class)())
                .get()
        };
        for _ in 0..3 {
            s.count_request(&m, key(1, 1), labels("sim-rs", "2xx"));
        }
        s.count_request(&m, key(2, 1), labels("sim-pkm", "2xx"));
        s.count_request(&m, key(1, 3), labels("sim-rs", "4xx"));
        assert_eq!(value("sim-rs", "2xx"), 3);
        assert_eq!(value("sim-pkm", "2xx"), 1);
        assert_eq!(value("sim-rs", "4xx"), 1);
        assert_eq!(s.requests.lock().unwrap().len(), 3);
        // A known key is not looked up in the family again: its labels are not asked for.
        s.count_request(&m, key(1, 1), || -> [&str; 7] {
            panic!("labels asked for a known series")
        });
        assert_eq!(value("sim-rs", "2xx"), 4);
        // Past the bound the table starts over; the series keep their counts.
        s.requests.lock().unwrap().clear();
        s.count_request(&m, key(1, 1), labels("sim-rs", "2xx"));
        assert_eq!(value("sim-rs", "2xx"), 5);
    }

    #[test]
    fn status_classes_are_the_hundreds_and_anything_else_is_5xx() {
        for (status, class) in [
            (100, "1xx"),
            (199, "1xx"),
            (200, "2xx"),
            (301, "3xx"),
            (404, "4xx"),
            (499, "4xx"),
            (500, "5xx"),
            (599, "5xx"),
            (600, "5xx"),
            (999, "5xx"),
        ] {
            assert_eq!(status_class(status), class, "{status}");
        }
    }

    #[test]
    fn counters_with_a_fixed_set_of_labels_start_at_zero() {
        let text = rendered();
        for series in [
            "gerbang_config_reloads_total{result=\"success\"} 0",
            "gerbang_config_reloads_total{result=\"failure\"} 0",
            "gerbang_audit_records_total{result=\"written\"} 0",
            "gerbang_audit_records_total{result=\"failed\"} 0",
            "gerbang_token_requests_total{result=\"issued\"} 0",
            "gerbang_token_requests_total{result=\"invalid_client\"} 0",
            "gerbang_token_requests_total{result=\"slow_down\"} 0",
            "gerbang_token_auth_throttled_total{by=\"source\"} 0",
            "gerbang_token_auth_throttled_total{by=\"client\"} 0",
            "gerbang_auth_failures_total{reason=\"missing_credentials\"} 0",
            "gerbang_auth_failures_total{reason=\"bad_signature\"} 0",
            "gerbang_auth_failures_total{reason=\"api_key_unknown\"} 0",
            "gerbang_policy_decisions_total{decision=\"allow\",reason=\"none\"} 0",
            "gerbang_policy_decisions_total{decision=\"deny\",reason=\"no_agreement\"} 0",
            "gerbang_policy_decisions_total{decision=\"deny\",reason=\"quota_exhausted\"} 0",
            "gerbang_limit_store_errors_total{kind=\"timeout\"} 0",
            "gerbang_limit_store_errors_total{kind=\"connection\"} 0",
            "gerbang_limit_store_fallback 0",
            "gerbang_limit_store_fallback_decisions_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing:\n{text}"
            );
        }
        // 2 + 2 + 9 + 2 + 23 + 17 + 4 series, each label value once.
        let zeros = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.ends_with(" 0") && l.contains("_total{"))
            .count();
        assert_eq!(zeros, 59, "{text}");
    }

    #[test]
    fn counts_leave_out_series_that_counted_nothing() {
        let m = Metrics::new(true).unwrap();
        assert!(counts(&m.auth_failures).is_empty());
        m.auth_failures.with_label_values(&["expired"]).inc();
        assert_eq!(counts(&m.auth_failures), vec![("expired".to_owned(), 1)]);
    }

    #[test]
    fn a_reload_moves_its_result_from_zero() {
        let m = Metrics::new(true).unwrap();
        m.config_loaded(Err(()), true);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("gerbang_config_reloads_total{result=\"failure\"} 1"));
        assert!(text.contains("gerbang_config_reloads_total{result=\"success\"} 0"));
    }

    #[test]
    fn upstream_series_name_their_instance_upstream_instance() {
        let m = Metrics::new(true).unwrap();
        m.upstream_connect_failures
            .with_label_values(&["a/s", "i0"])
            .inc();
        m.upstream_ejections.with_label_values(&["a/s", "i0"]).inc();
        m.upstream_instance_healthy
            .with_label_values(&["a/s", "i0"])
            .set(1);
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "gerbang_upstream_connect_failures_total",
            "gerbang_upstream_ejections_total",
            "gerbang_upstream_instance_healthy",
        ] {
            assert!(
                text.contains(&format!(
                    "{name}{{service=\"a/s\",upstream_instance=\"i0\"}} 1"
                )),
                "{text}"
            );
        }
        // `instance` is Prometheus' label for the scrape target; no series may carry it.
        assert!(
            !text.contains("{instance=") && !text.contains(",instance="),
            "{text}"
        );
    }
}
