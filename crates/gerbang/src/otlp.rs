//! OpenTelemetry span export over OTLP/HTTP (protobuf), behind the `otlp` cargo feature.
//!
//! The gateway decides its span ids itself (they go upstream in `traceparent` before the call
//! ends), while the SDK's tracer draws ids from its id generator. The generator here hands the
//! SDK the ids the gateway chose: the span is built on the calling thread right after the ids
//! are placed in a thread-local, so the two cannot mix. Spans then take the SDK's batch
//! processor (a bounded queue and its own thread): `export` never waits for the network.

use std::cell::Cell;
use std::time::Duration;

use gerbang_proxy::trace::{CallSpan, SpanSink};
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{IdGenerator, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::OtlpSettings;

thread_local! {
    static NEXT: Cell<Option<([u8; 16], [u8; 8])>> = const { Cell::new(None) };
}

/// Gives the SDK the ids placed in [`NEXT`] (random ones if none are, which the gateway never
/// leaves to happen).
#[derive(Debug)]
struct GatewayIds;

impl IdGenerator for GatewayIds {
    fn new_trace_id(&self) -> TraceId {
        let (t, _) = NEXT.with(Cell::get).unwrap_or_else(fallback);
        TraceId::from_bytes(t)
    }

    fn new_span_id(&self) -> SpanId {
        let (_, s) = NEXT.with(Cell::get).unwrap_or_else(fallback);
        SpanId::from_bytes(s)
    }
}

fn fallback() -> ([u8; 16], [u8; 8]) {
    let b = uuid_bytes();
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[..8]);
    s[7] |= 1;
    (b, s)
}

fn uuid_bytes() -> [u8; 16] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &now.to_be_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_ref()[..16]);
    out
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct OtlpError(String);

/// The OTLP span sink.
pub struct Otlp {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Otlp {
    pub fn start(settings: &OtlpSettings) -> Result<Self, OtlpError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OtlpError(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(GatewayIds)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("gerbang");
        Ok(Self { provider, tracer })
    }
}

impl SpanSink for Otlp {
    fn export(&self, s: CallSpan<'_>) {
        let mut attributes = vec![
            KeyValue::new("http.request.method", s.method.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(s.status)),
            KeyValue::new("gerbang.request_id", s.request_id.to_owned()),
            KeyValue::new("gerbang.decision", s.decision.to_owned()),
        ];
        let optional = [
            ("gerbang.reason", s.reason),
            ("gerbang.consumer", s.consumer),
            ("gerbang.service", s.service),
            ("gerbang.endpoint", s.endpoint),
            ("gerbang.agreement", s.agreement),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                attributes.push(KeyValue::new(k, v.to_owned()));
            }
        }
        let name = match (s.service, s.endpoint) {
            (Some(svc), Some(ep)) => format!("{svc} {ep}"),
            (Some(svc), None) => svc.to_owned(),
            _ => "gerbang".to_owned(),
        };
        let parent = match s.ids.parent_span_id {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(s.ids.trace_id),
                SpanId::from_bytes(p),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Server)
            .with_start_time(s.start)
            .with_attributes(attributes);
        NEXT.with(|n| n.set(Some((s.ids.trace_id, s.ids.span_id))));
        let span = self.tracer.build_with_context(builder, &parent);
        NEXT.with(|n| n.set(None));
        let cx = Context::new().with_span(span);
        let span = cx.span();
        if s.status >= 500 {
            span.set_status(Status::error(s.reason.unwrap_or("error").to_owned()));
        }
        span.end_with_timestamp(s.end);
    }

    fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter shutdown");
        }
    }
}
