//! The admin listener: liveness and readiness now; metrics and the admin API plug in here.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::error::error_response;
use crate::gateway::ConnInfo;
use crate::response_body::{self, ResponseBody};
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
    gateway: Option<std::sync::Arc<crate::gateway::Gateway>>,
}

impl Admin {
    pub fn new(health: std::sync::Arc<Health>) -> Self {
        Self {
            health,
            metrics: None,
            gateway: None,
        }
    }

    /// Reports the state of every upstream instance of `gateway` in `/health/ready`.
    pub fn with_gateway(mut self, gateway: std::sync::Arc<crate::gateway::Gateway>) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// `{"status":"ready","services":[{"service":…,"available":…,"instances":[…]}]}`.
    fn readiness_body(&self) -> String {
        let mut services = Vec::new();
        if let Some(g) = &self.gateway {
            for svc in g.registry().services() {
                let instances: Vec<serde_json::Value> = svc
                    .instance_states()
                    .map(|(inst, state)| {
                        let mut v = serde_json::json!({
                            "name": inst.name,
                            "url": inst.to_string(),
                            "state": state.as_str(),
                        });
                        if let gerbang_registry::InstanceState::Ejected { remaining_ms } = state {
                            v["returns_in_ms"] = remaining_ms.into();
                        }
                        v
                    })
                    .collect();
                services.push(serde_json::json!({
                    "service": svc.full_id(),
                    "available": svc.any_available(),
                    "instances": instances,
                }));
            }
        }
        serde_json::json!({ "status": "ready", "services": services }).to_string()
    }

    /// Serves `GET /metrics` (Prometheus text format) from `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Answers the built-in resources (`/health/*`, `/metrics`); 404 for anything else.
    pub fn respond(&self, req: &Request<Incoming>) -> Response<ResponseBody> {
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
                let mut res = Response::new(response_body::full(Bytes::from(m.render())));
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
            let mut res = json(StatusCode::OK, "");
            *res.body_mut() = response_body::full(Bytes::from(self.readiness_body()));
            res
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
    let mut res = Response::new(response_body::full(Bytes::from_static(text.as_bytes())));
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
    Response::from_parts(parts, response_body::full(bytes))
}

impl Handler for Admin {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let res = self.respond(&req);
        async move { res }
    }
}
