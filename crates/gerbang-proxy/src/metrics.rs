//! Prometheus metrics of the data plane, served by the admin listener at `GET /metrics`.
//!
//! Labels come only from registry ids, endpoint templates, methods, status classes and stable
//! reason codes — never a raw path, a token or a data-subject id. Unknown values collapse to
//! fixed words (`anonymous`, `unknown`, `none`), so the series count is bounded by the registry:
//! about consumers × services × endpoints × methods × 5 status classes × 3 decisions.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Buckets from 250 µs to 30 s.
const BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub policy_decisions: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub limited: IntCounterVec,
    pub in_flight: IntGauge,
    pub audit_records: IntCounterVec,
    build: IntGaugeVec,
    /// Whether per-application labels are on (off for very large registries).
    pub per_application: bool,
}

/// Why metrics could not be set up (a programming error: names are fixed).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new(per_application: bool) -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("gerbang_requests_total", "Calls through the data plane"),
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
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gerbang_request_duration_seconds",
                "Time from request to response head, whole gateway",
            )
            .buckets(BUCKETS.to_vec()),
            &["service"],
        )?;
        let policy_decisions = IntCounterVec::new(
            Opts::new(
                "gerbang_policy_decisions_total",
                "Policy decisions by result and reason",
            ),
            &["decision", "reason"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "gerbang_auth_failures_total",
                "Authentication refusals by reason",
            ),
            &["reason"],
        )?;
        let limited = IntCounterVec::new(
            Opts::new(
                "gerbang_limit_refusals_total",
                "Calls refused by an agreement's rate limit or quota",
            ),
            &["reason", "agreement"],
        )?;
        let in_flight = IntGauge::new("gerbang_in_flight_requests", "Requests being handled")?;
        let audit_records = IntCounterVec::new(
            Opts::new(
                "gerbang_audit_records_total",
                "Audit records by result (written, failed)",
            ),
            &["result"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("gerbang_build_info", "Build of the running gateway"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(policy_decisions.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(limited.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(audit_records.clone()))?;
        registry.register(Box::new(build.clone()))?;
        Ok(Arc::new(Self {
            registry,
            requests,
            duration,
            policy_decisions,
            auth_failures,
            limited,
            in_flight,
            audit_records,
            build,
            per_application,
        }))
    }

    /// The names of every metric family, including those with no series yet.
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 8] = [
            &self.requests,
            &self.duration,
            &self.policy_decisions,
            &self.auth_failures,
            &self.limited,
            &self.in_flight,
            &self.audit_records,
            &self.build,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }

    /// The exposition text.
    pub fn render(&self) -> Vec<u8> {
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

/// `2xx`, `4xx`, … of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
