//! The admin listener: liveness and readiness now; metrics and the admin API plug in here.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, ResponseBody};
use crate::error::error_response;
use crate::gateway::ConnInfo;
use crate::server::Handler;

/// Process health as the probes report it.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the gateway ready (config loaded, listeners up) or not (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Handler of the admin listener.
pub struct Admin {
    health: std::sync::Arc<Health>,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Admin {
    pub fn new(health: std::sync::Arc<Health>) -> Self {
        Self {
            health,
            metrics: None,
        }
    }

    /// Serves `GET /metrics` (Prometheus text format) from `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<ResponseBody> {
        if req.uri().path() == "/metrics" {
            if let Some(m) = &self.metrics {
                if req.method() != Method::GET && req.method() != Method::HEAD {
                    let mut res = json_error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "this resource serves GET and HEAD",
                    );
                    res.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                    return res;
                }
                let mut res = Response::new(body::full(Bytes::from(m.render())));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return res;
            }
        }
        let route = match req.uri().path() {
            "/health/live" => Some(true),
            "/health/ready" => Some(false),
            _ => None,
        };
        let Some(live) = route else {
            return json_error(StatusCode::NOT_FOUND, "not_found", "no such admin resource");
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource serves GET and HEAD",
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        if live {
            return json(StatusCode::OK, r#"{"status":"live"}"#);
        }
        if self.health.is_ready() {
            json(StatusCode::OK, r#"{"status":"ready"}"#)
        } else {
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the gateway is starting or shutting down",
            )
        }
    }
}

fn json(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut res = Response::new(body::full(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let (parts, bytes) = error_response(status, code, message, "").into_parts();
    Response::from_parts(parts, body::full(bytes))
}

impl Handler for Admin {
    fn call(
        &self,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send {
        let res = self.respond(&req);
        async move { res }
    }
}
