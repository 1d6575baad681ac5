//! Distributed tracing: W3C trace context on every forwarded call and, when an exporter is
//! plugged in (OTLP, behind the binary's `otlp` cargo feature), one server span per call.
//!
//! Without an exporter the gateway is invisible in traces: a valid client `traceparent` goes
//! upstream as it is, and a missing one is started. With an exporter the gateway's own span sits
//! between the client and the provider: the upstream receives the gateway's span id as its
//! parent, and the span (ids, timing, registry ids, status, decision; never a path, token or
//! subject id) goes to the exporter.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};

use crate::headers;

/// The ids of one call's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    /// The client's span, when the client sent a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// The gateway's span: the parent the upstream sees.
    pub span_id: [u8; 8],
    /// The W3C `sampled` flag (only sampled spans are exported).
    pub sampled: bool,
}

impl SpanIds {
    /// The `traceparent` sent upstream: the trace, the gateway's span as parent.
    pub fn header(&self) -> HeaderValue {
        let text = format!(
            "00-{}-{}-{}",
            hex32(&self.trace_id),
            hex16(&self.span_id),
            if self.sampled { "01" } else { "00" }
        );
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_hex(&self) -> String {
        hex32(&self.trace_id)
    }
}

fn hex32(b: &[u8; 16]) -> String {
    let mut out = Vec::with_capacity(32);
    let [hi, lo] = [&b[..8], &b[8..]].map(|h| {
        let mut w = [0u8; 8];
        w.copy_from_slice(h);
        u64::from_be_bytes(w)
    });
    crate::ids::push_hex16(&mut out, hi);
    crate::ids::push_hex16(&mut out, lo);
    String::from_utf8(out).unwrap_or_default()
}

fn hex16(b: &[u8; 8]) -> String {
    let mut out = Vec::with_capacity(16);
    crate::ids::push_hex16(&mut out, u64::from_be_bytes(*b));
    String::from_utf8(out).unwrap_or_default()
}

/// One finished call, handed to the exporter.
#[derive(Debug, Clone)]
pub struct CallSpan<'a> {
    pub ids: SpanIds,
    pub start: SystemTime,
    pub end: SystemTime,
    pub request_id: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub decision: &'a str,
    pub reason: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub service: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub agreement: Option<&'a str>,
}

/// Receives the spans of finished calls. `export` is called on the request path: it must only
/// queue the span (the OTLP exporter's batch processor does).
pub trait SpanSink: Send + Sync {
    fn export(&self, span: CallSpan<'_>);
    /// Flushes queued spans; called once at shutdown.
    fn shutdown(&self);
}

/// The span ids of a call: continuing the client's trace when its `traceparent` is valid (and
/// the only one), otherwise a new sampled trace.
pub fn span_ids(request: &HeaderMap) -> SpanIds {
    let mut tps = request.get_all(&headers::TRACEPARENT).iter();
    let client = match (tps.next(), tps.next()) {
        (Some(v), None) if headers::valid_traceparent(v.as_bytes()) => parse(v.as_bytes()),
        _ => None,
    };
    let [a, b, c] = crate::ids::random_words();
    let span_id = (c | 1).to_be_bytes();
    match client {
        Some((trace_id, parent, sampled)) => SpanIds {
            trace_id,
            parent_span_id: Some(parent),
            span_id,
            sampled,
        },
        None => {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&a.to_be_bytes());
            trace_id[8..].copy_from_slice(&b.to_be_bytes());
            SpanIds {
                trace_id,
                parent_span_id: None,
                span_id,
                sampled: true,
            }
        }
    }
}

/// (trace id, parent id, sampled) of a `traceparent` already checked by `valid_traceparent`.
fn parse(v: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let s = std::str::from_utf8(v).ok()?;
    let trace = u128::from_str_radix(s.get(3..35)?, 16).ok()?;
    let parent = u64::from_str_radix(s.get(36..52)?, 16).ok()?;
    let flags = u8::from_str_radix(s.get(53..55)?, 16).ok()?;
    Some((trace.to_be_bytes(), parent.to_be_bytes(), flags & 1 == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_client_trace_with_the_gateways_span_as_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            &headers::TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let ids = span_ids(&h);
        assert_eq!(ids.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ids.parent_span_id,
            Some(0x00f0_67aa_0ba9_02b7u64.to_be_bytes())
        );
        assert!(!ids.sampled, "the client's sampling decision is kept");
        let up = ids.header();
        let up = up.to_str().unwrap();
        assert!(headers::valid_traceparent(up.as_bytes()), "{up}");
        assert!(up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(
            !up.contains("00f067aa0ba902b7"),
            "the upstream's parent is the gateway"
        );
        assert!(up.ends_with("-00"));
    }

    #[test]
    fn starts_a_sampled_trace_when_the_client_sent_none_or_garbage() {
        for bad in [None, Some("00-zz-yy-01")] {
            let mut h = HeaderMap::new();
            if let Some(b) = bad {
                h.insert(&headers::TRACEPARENT, HeaderValue::from_static(b));
            }
            let a = span_ids(&h);
            let b = span_ids(&h);
            assert_eq!(a.parent_span_id, None);
            assert!(a.sampled);
            assert_ne!(a.trace_id, b.trace_id);
            assert_ne!(a.span_id, b.span_id);
            assert!(headers::valid_traceparent(a.header().as_bytes()));
        }
    }
}
