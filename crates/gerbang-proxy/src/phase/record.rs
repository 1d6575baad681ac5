//! Phase 9: every call leaves an audit record (written, or on disk with `fsync = "always"`,
//! before the answer), an access-log event, its metrics and, with an exporter, its span. Only
//! registry ids, templates and codes: never a raw path, a credential or a subject id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::Response;

use super::context::Call;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::response_body::ResponseBody;

/// How a call was answered, for its record.
#[derive(Clone, Copy)]
pub(crate) struct Answer<'a> {
    /// Filled in, with `bytes_out`, only when an audit record is made (`record`).
    pub request_id: &'a str,
    pub method: &'a http::Method,
    pub status: u16,
    pub decision: &'a str,
    pub reason: Option<&'a str>,
    pub client: SocketAddr,
    /// Body bytes actually received from the client.
    pub bytes_in: u64,
    pub bytes_out: Option<u64>,
    pub duration: Duration,
}

/// Records a call the pipeline answered with `result`; with the audit log fail-closed, a
/// record that could not be written turns the answer into 503 `audit_unavailable`.
pub(crate) async fn record(
    gateway: &Gateway,
    call: &Call,
    request_id: &HeaderValue,
    method: &http::Method,
    client: SocketAddr,
    started: std::time::Instant,
    result: Result<Response<ResponseBody>, GatewayError>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (decision, reason) = decision_of(call, &result);
    // The request id as text, for whichever of the record, the access event and the span is
    // made: checked once, at the first that needs it (the check is not free, and a pipeline
    // may make none of them).
    let mut rid_text: Option<&str> = None;
    let mut rid = || *rid_text.get_or_insert_with(|| request_id.to_str().unwrap_or(""));
    // One reading of the clock serves the record, the access event and the metrics.
    let duration = started.elapsed();
    let mut a = Answer {
        request_id: "",
        method,
        status: response_status(&result),
        decision,
        reason,
        client,
        bytes_in: call.bytes_in(),
        bytes_out: None,
        duration,
    };
    // The audit record: written (or, with fsync on every record, on disk) before the answer.
    let result = match &gateway.audit {
        Some(sink) if call.service.is_some() || call.consumer.is_some() => {
            a.request_id = rid();
            a.bytes_out = bytes_out(&result);
            let fields = call.audit_record(&a, sink.buffer());
            let written = sink.record(fields).await;
            if let Some(m) = &gateway.metrics {
                m.audit_result(written).inc();
            }
            // A wait for the disk is part of the call's time as its client sees it.
            if sink.settings.wait_for_disk {
                a.duration = started.elapsed();
            }
            if !written && sink.settings.fail_closed {
                tracing::error!(
                    request_id = a.request_id,
                    "audit record not written: refusing the call (audit fail-closed)"
                );
                let refused = Err(GatewayError::AuditUnavailable);
                a.status = response_status(&refused);
                a.bytes_out = None;
                refused
            } else {
                result
            }
        }
        _ => result,
    };
    let status = a.status;
    if tracing::enabled!(target: "gerbang::access", tracing::Level::INFO) {
        // One access event per call: registry ids, template and codes only.
        tracing::info!(
            target: "gerbang::access",
            request_id = rid(),
            consumer = call.consumer.as_deref().map_or("-", |p| p.application.as_str()),
            service = call.service.as_deref().or(call.issuer_endpoint).unwrap_or("-"),
            endpoint = call.endpoint.as_deref().unwrap_or("-"),
            method = %method,
            status,
            decision,
            reason = reason.unwrap_or("-"),
            agreement = call.agreement.as_deref().unwrap_or("-"),
            duration_ms = a.duration.as_secs_f64() * 1000.0,
            bytes_in = a.bytes_in,
            "call"
        );
    }
    if let Some(m) = &gateway.metrics {
        m.in_flight.dec();
        observe(m, call, method, status, decision, &result, a.duration);
    }
    if let (Some(sink), Some(ids), Some(start)) = (gateway.spans(), call.span, call.wall_start) {
        if ids.sampled {
            sink.export(crate::trace::CallSpan {
                ids,
                start,
                end: std::time::SystemTime::now(),
                request_id: rid(),
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
    result
}

/// The length of a response's body as its `Content-Length` says, for the record.
fn bytes_out(result: &Result<Response<ResponseBody>, GatewayError>) -> Option<u64> {
    match result {
        Ok(res) => crate::headers::values(res.headers(), &http::header::CONTENT_LENGTH)
            .next()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
        Err(_) => None,
    }
}

/// The call's decision (`allow`, `deny`, `error`, or `none` for the gateway's own endpoints)
/// and its reason code.
fn decision_of(
    call: &Call,
    result: &Result<Response<ResponseBody>, GatewayError>,
) -> (&'static str, Option<&'static str>) {
    match result {
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
    }
}

/// The status a result answers with.
pub(crate) fn response_status(result: &Result<Response<ResponseBody>, GatewayError>) -> u16 {
    match result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.status().as_u16(),
    }
}

fn observe(
    m: &crate::metrics::Metrics,
    call: &Call,
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
    let method_index: u8 = match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    };
    let method = crate::metrics::METHOD_LABELS[usize::from(method_index)];
    let labels = || {
        [
            consumer,
            agency,
            service,
            endpoint,
            method,
            crate::metrics::status_class(status),
            decision,
        ]
    };
    // A forwarded call's series is resolved once per snapshot, by the snapshot's own indices.
    let key = match (&call.service_metrics, &call.consumer) {
        (Some(s), Some(p)) => crate::metrics::DECISION_LABELS
            .iter()
            .position(|d| *d == decision)
            .map(|d| {
                (
                    s,
                    crate::metrics::RequestKey {
                        application: p.index,
                        endpoint: call
                            .endpoint
                            .as_ref()
                            .map_or(0, |e| Arc::as_ptr(e).cast::<u8>() as usize),
                        method: method_index,
                        status_class: crate::metrics::status_class_index(status),
                        decision: d as u8,
                    },
                )
            }),
        _ => None,
    };
    match key {
        Some((s, key)) => s.count_request(m, key, labels),
        None => m.requests.with_label_values(&labels()).inc(),
    }
    match &call.service_metrics {
        Some(s) => s.duration.observe(elapsed.as_secs_f64()),
        None => m
            .duration
            .with_label_values(&[service])
            .observe(elapsed.as_secs_f64()),
    }
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
        _ if call.agreement.is_some() => m.allowed.inc(),
        _ => {}
    }
}

/// A call the pipeline has not answered yet. Dropped unanswered (hyper drops the handler's
/// future when the client resets the stream or closes the connection), it records the call as
/// `499 client_closed` (the code nginx made usual) and releases its in-flight count, so that
/// no call that reached the pipeline goes unaudited.
pub(crate) struct Unanswered<'a> {
    gateway: &'a Gateway,
    pub(crate) call: Call,
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
        let fields = call.audit_record(
            &Answer {
                request_id: self.request_id.to_str().unwrap_or(""),
                method: self.method,
                status: 499,
                decision,
                reason: Some("client_closed"),
                client: self.remote,
                bytes_in: call.bytes_in(),
                bytes_out: None,
                duration: self.started.elapsed(),
            },
            sink.buffer(),
        );
        let queued = sink.record_detached(fields);
        if let Some(m) = &self.gateway.metrics {
            m.audit_result(queued).inc();
        }
    }
}

impl<'a> Unanswered<'a> {
    /// A call that has just reached the pipeline (counted in flight from now on).
    pub(crate) fn new(
        gateway: &'a Gateway,
        request_id: &'a HeaderValue,
        method: &'a http::Method,
        remote: SocketAddr,
    ) -> Self {
        if let Some(m) = &gateway.metrics {
            m.in_flight.inc();
        }
        Self {
            gateway,
            call: Call::default(),
            request_id,
            method,
            remote,
            started: std::time::Instant::now(),
            answered: false,
        }
    }

    /// The pipeline answered: the context goes on to the record.
    pub(crate) fn answered(mut self) -> (Call, std::time::Instant) {
        self.answered = true;
        (std::mem::take(&mut self.call), self.started)
    }
}

impl Call {
    /// The call's audit record, serialised into `out` (a buffer the audit writer gave back,
    /// or a new one).
    pub(crate) fn audit_record(&self, a: &Answer<'_>, mut out: Vec<u8>) -> Vec<u8> {
        let Answer {
            request_id,
            method,
            status,
            decision,
            reason,
            client,
            bytes_in,
            bytes_out,
            duration,
        } = *a;
        out.clear();
        write_call_record(
            &mut out,
            &CallRecord {
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
                trace_id: self.trace_id(),
            },
        );
        out
    }
}

/// The fields of a call's audit record, borrowed.
#[cfg_attr(test, derive(serde::Serialize))]
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
    bytes_in: u64,
    bytes_out: Option<u64>,
    duration_ms: f64,
    subject_hmac: Option<&'a str>,
    trace_id: Option<&'a str>,
}

/// Writes `r` as one JSON object, byte for byte what serde_json writes for it (the test
/// `the_record_writer_equals_serde_json` holds it to that), without serde's per-byte string
/// escaping and formatting machinery: one record per call made this a measurable share of the
/// pipeline.
fn write_call_record(out: &mut Vec<u8>, r: &CallRecord<'_>) {
    let mut ints = itoa::Buffer::new();
    out.push(b'{');
    str_member(out, b"\"request_id\":", Some(r.request_id));
    str_member(out, b",\"consumer\":", r.consumer);
    str_member(out, b",\"consumer_agency\":", r.consumer_agency);
    str_member(out, b",\"service\":", r.service);
    str_member(out, b",\"endpoint\":", r.endpoint);
    str_member(out, b",\"method\":", Some(r.method));
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(ints.format(r.status).as_bytes());
    str_member(out, b",\"decision\":", Some(r.decision));
    str_member(out, b",\"reason\":", r.reason);
    str_member(out, b",\"agreement\":", r.agreement);
    str_member(out, b",\"purpose\":", r.purpose);
    out.extend_from_slice(b",\"client\":\"");
    // The text of an address has nothing to escape.
    crate::headers::push_ip(out, r.client);
    out.extend_from_slice(b"\",\"bytes_in\":");
    out.extend_from_slice(ints.format(r.bytes_in).as_bytes());
    out.extend_from_slice(b",\"bytes_out\":");
    match r.bytes_out {
        Some(n) => out.extend_from_slice(ints.format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"duration_ms\":");
    if let Some(micros) = whole_micros(r.duration_ms) {
        // What ryu writes for these values (the shortest decimal that reads back as the same
        // number is the thousandths themselves), without its general algorithm.
        out.extend_from_slice(ints.format(micros / 1000).as_bytes());
        out.push(b'.');
        let frac = micros % 1000;
        if frac == 0 {
            out.push(b'0');
        } else {
            let digits = [
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            let keep = if frac % 100 == 0 {
                1
            } else if frac % 10 == 0 {
                2
            } else {
                3
            };
            out.extend_from_slice(&digits[..keep]);
        }
    } else if r.duration_ms.is_finite() {
        let mut floats = ryu::Buffer::new();
        let text = floats.format_finite(r.duration_ms);
        // serde_json writes a positive exponent with its sign (`1e+300`); ryu does not.
        match text.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => {
                out.extend_from_slice(mantissa.as_bytes());
                out.extend_from_slice(b"e+");
                out.extend_from_slice(exp.as_bytes());
            }
            _ => out.extend_from_slice(text.as_bytes()),
        }
    } else {
        out.extend_from_slice(b"null");
    }
    str_member(out, b",\"subject_hmac\":", r.subject_hmac);
    str_member(out, b",\"trace_id\":", r.trace_id);
    out.push(b'}');
}

/// `ms` as a whole number of microseconds, when it is exactly what dividing that number by 1000
/// gives and below 10^12 µs (11 days; far below where the thousandths stop being distinct
/// doubles). A call's duration always is: it is rounded to the microsecond.
fn whole_micros(ms: f64) -> Option<u64> {
    if !(0.0..1e9).contains(&ms) || ms.is_sign_negative() {
        return None;
    }
    let micros = (ms * 1000.0).round() as u64;
    (micros as f64 / 1000.0 == ms).then_some(micros)
}

/// A member whose value is a string or null, after its written-out separator and key. Inlined
/// where each member is written, its key is a constant: a few stores, not a copy by length
/// (twelve of them per record, in a loop over a slice of members before).
#[inline(always)]
fn str_member(out: &mut Vec<u8>, key: &'static [u8], value: Option<&str>) {
    out.extend_from_slice(key);
    match value {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string as serde_json writes it: `"` and `\\` escaped, control characters as their
/// short escape or `\\u00XX`, everything else as it is.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly always nothing to escape (ids, codes, hex): one check, then one copy.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether `bytes` hold a byte JSON must escape: a control character, `"` or `\\`. Eight
/// bytes at a time (the last word overlapping the one before), each word tested for a byte
/// below 0x20 and for a byte equal to either character by the carry of a subtraction: the
/// answer is exact, a carry into a byte that matches nothing comes only from one that does.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    fn any_in(w: u64) -> bool {
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let quote = quote.wrapping_sub(ONES) & !quote;
        let backslash = backslash.wrapping_sub(ONES) & !backslash;
        (control | quote | backslash) & HIGH != 0
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    let mut at = 0;
    while at + 8 <= bytes.len() {
        if any_in(word(at)) {
            return true;
        }
        at += 8;
    }
    at < bytes.len() && any_in(word(bytes.len() - 8))
}

impl Call {
    /// The trace id: the 32 hex digits of the `traceparent` the provider got.
    fn trace_id(&self) -> Option<&str> {
        self.trace
            .as_ref()
            .and_then(|tp| tp.to_str().ok())
            .and_then(|t| t.get(3..35))
    }

    /// Body bytes actually received from the client so far.
    pub(crate) fn bytes_in(&self) -> u64 {
        self.body.as_ref().map_or(0, |w| w.received())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use proptest::prelude::*;

    use super::{write_call_record, CallRecord};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        /// The word-at-a-time check answers what the byte-by-byte definition does, for any
        /// bytes (a few special ones made likely) at any length and position.
        #[test]
        fn the_escape_check_is_the_bytewise_one(
            bytes in prop::collection::vec(
                prop_oneof![
                    8 => 0x20u8..=0xff,
                    1 => Just(b'"'),
                    1 => Just(b'\\'),
                    1 => 0u8..0x20,
                    1 => Just(0x1fu8),
                    1 => prop_oneof![Just(0x21u8), Just(0x5bu8), Just(0x5du8), Just(0x80u8), Just(0xa2u8), Just(0xdcu8)],
                ],
                0..40,
            ),
        ) {
            let bytewise = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(super::needs_escape(&bytes), bytewise);
        }
    }

    /// The record's `bytes_out` is what the response's first `Content-Length` says; none
    /// without one, with one that is not a number, or without a response.
    #[test]
    fn bytes_out_is_the_responses_content_length() {
        let with = |values: &[&str]| {
            let mut res = http::Response::new(crate::response_body::full(bytes::Bytes::new()));
            for v in values {
                res.headers_mut().append(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            super::bytes_out(&Ok(res))
        };
        assert_eq!(with(&["1024"]), Some(1024));
        assert_eq!(with(&["7", "9"]), Some(7));
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["x"]), None);
        let err = Err(crate::error::GatewayError::Internal("x".into()));
        assert_eq!(super::bytes_out(&err), None);
    }

    /// The calls of two applications to one service and its two endpoints, answered with
    /// several statuses, methods and decisions: each counts in the series its labels name,
    /// whether it is resolved through the service's table or through the family.
    #[test]
    fn a_forwarded_calls_request_series_is_the_one_its_labels_name() {
        use std::sync::Arc;

        use crate::metrics::Metrics;
        use crate::phase::context::Call;

        let m = Metrics::new(true).unwrap();
        let service = Arc::new(m.for_service("dukcapil/penduduk"));
        let principal = |application: &str, index| {
            Arc::new(gerbang_auth::Principal {
                application: application.into(),
                agency: "dinkes".into(),
                method: gerbang_auth::AuthMethod::ApiKey,
                scopes: vec![],
                index,
            })
        };
        let (rs, pkm) = (
            principal("dinkes/sim-rs", 0),
            principal("dinkes/sim-pkm", 1),
        );
        let by_nik: Arc<str> = Arc::from("GET /penduduk/{nik}");
        let by_kk: Arc<str> = Arc::from("GET /kk/{no}");
        let call = |p: &Arc<gerbang_auth::Principal>, endpoint: &Arc<str>, metrics| Call {
            service: Some(Arc::from("dukcapil/penduduk")),
            service_metrics: metrics,
            consumer: Some(Arc::clone(p)),
            endpoint: Some(Arc::clone(endpoint)),
            ..Call::default()
        };
        let ok = || {
            Ok(http::Response::new(crate::response_body::full(
                bytes::Bytes::new(),
            )))
        };
        let d = std::time::Duration::from_millis(1);
        for metrics in [Some(Arc::clone(&service)), None] {
            let c = call(&rs, &by_nik, metrics.clone());
            super::observe(&m, &c, &http::Method::GET, 200, "allow", &ok(), d);
            super::observe(&m, &c, &http::Method::GET, 200, "allow", &ok(), d);
            super::observe(&m, &c, &http::Method::GET, 404, "allow", &ok(), d);
            super::observe(&m, &c, &http::Method::HEAD, 200, "allow", &ok(), d);
            super::observe(&m, &c, &http::Method::GET, 502, "error", &ok(), d);
            let c = call(&pkm, &by_nik, metrics.clone());
            super::observe(&m, &c, &http::Method::GET, 200, "allow", &ok(), d);
            let c = call(&rs, &by_kk, metrics.clone());
            super::observe(&m, &c, &http::Method::GET, 200, "allow", &ok(), d);
        }
        let value = |app: &str, endpoint: &str, method: &str, class: &str, decision: &str| {
            m.requests
                .with_label_values(&[
                    app,
                    "dinkes",
                    "dukcapil/penduduk",
                    endpoint,
                    method,
                    class,
                    decision,
                ])
                .get()
        };
        let nik = "GET /penduduk/{nik}";
        // Each call twice: once through the service's table, once through the family.
        assert_eq!(value("dinkes/sim-rs", nik, "GET", "2xx", "allow"), 4);
        assert_eq!(value("dinkes/sim-rs", nik, "GET", "4xx", "allow"), 2);
        assert_eq!(value("dinkes/sim-rs", nik, "HEAD", "2xx", "allow"), 2);
        assert_eq!(value("dinkes/sim-rs", nik, "GET", "5xx", "error"), 2);
        assert_eq!(value("dinkes/sim-pkm", nik, "GET", "2xx", "allow"), 2);
        assert_eq!(
            value("dinkes/sim-rs", "GET /kk/{no}", "GET", "2xx", "allow"),
            2
        );
    }

    fn text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, every control character, DEL, non-ASCII and U+2028.
        "[a-z0-9/_\\-\"\\\\\u{0}-\u{1f}\u{7f}é\u{2028}😀 ]{0,24}"
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(text())
    }

    fn ip() -> impl Strategy<Value = std::net::IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
            any::<[u16; 8]>().prop_map(std::net::IpAddr::from),
            Just(std::net::IpAddr::from([
                0u16, 0, 0, 0, 0, 0xffff, 0x7f00, 1
            ])),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// The hand-written record is byte for byte what serde_json writes for the same fields.
        #[test]
        fn the_record_writer_equals_serde_json(
            strs in (text(), opt_text(), opt_text(), opt_text(), opt_text(), text(), text()),
            more in (opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
            nums in (any::<u16>(), any::<u64>(), any::<Option<u64>>(), prop_oneof![any::<f64>(), (0u64..10_000_000).prop_map(|n| n as f64 / 1000.0), (0u64..2_000_000_000_000).prop_map(|n| n as f64 / 1000.0), (0u64..1000).prop_map(|n| n as f64 / 100.0)]),
            client in ip(),
        ) {
            let (request_id, consumer, consumer_agency, service, endpoint, method, decision) = strs;
            let (reason, agreement, purpose, subject_hmac, trace_id) = more;
            let (status, bytes_in, bytes_out, duration_ms) = nums;
            let r = CallRecord {
                request_id: &request_id,
                consumer: consumer.as_deref(),
                consumer_agency: consumer_agency.as_deref(),
                service: service.as_deref(),
                endpoint: endpoint.as_deref(),
                method: &method,
                status,
                decision: &decision,
                reason: reason.as_deref(),
                agreement: agreement.as_deref(),
                purpose: purpose.as_deref(),
                client,
                bytes_in,
                bytes_out,
                duration_ms,
                subject_hmac: subject_hmac.as_deref(),
                trace_id: trace_id.as_deref(),
            };
            let mut ours = Vec::new();
            write_call_record(&mut ours, &r);
            let reference = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(reference).unwrap());
        }
    }
}
