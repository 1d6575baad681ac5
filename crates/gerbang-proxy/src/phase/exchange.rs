//! Phase 7: the call goes to an instance of the service and, after a failure that allows it,
//! to another (tries, retries, back-off, the retry budget), each outcome feeding passive
//! outlier detection. `http://` instances are reached through the inline HTTP/1.1 client
//! (`h1.rs`), `https://` instances through hyper-util with rustls.

use std::sync::Arc;
use std::time::Duration;

use gerbang_registry::health::InFlight;
use gerbang_registry::Service;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};

use crate::body::{BodyWatch, RequestBody, RequestBodyError};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Snapshot};
use crate::h1::{self, H1Error};
use crate::headers::Added;
use crate::ids::random_words;
use crate::response_body::ResponseBody;

/// One call's exchange with its service.
#[derive(Clone, Copy)]
pub(crate) struct Exchange<'a> {
    pub gateway: &'a Gateway,
    pub snapshot: &'a Snapshot,
    pub service: &'a Service,
    /// The request body's watch, when it has one (then the call is never replayed).
    pub watch: &'a Option<Arc<BodyWatch>>,
    /// The value of the service's consistent-hash header.
    pub hash_key: Option<&'a [u8]>,
    /// The header fields the gateway set, sent after the request's own.
    pub added: &'a Added,
    /// Where the call goes below an instance (the query is the client's, in `parts.uri`).
    pub target: h1::Target<'a>,
}

impl<'x> Exchange<'x> {
    /// Sends the call to an instance and, after a failure that allows it, to another: after a
    /// connect failure any request (its body was not read), after 502/503/504, a reset or a
    /// per-try timeout only an idempotent request without a body. Each outcome feeds passive
    /// outlier detection.
    // Not an `async fn`: that keeps each by-value argument twice in the future (see
    // `Gateway::forward`).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run<'s>(
        &'s self,
        parts: &'s mut http::request::Parts,
        // Each try borrows the body inside this `Option`; a try that read any of it leaves
        // `None`. The future keeps the argument itself, not a second copy of it.
        mut body: Option<RequestBody>,
    ) -> impl std::future::Future<
        Output = Result<(Response<ResponseBody>, Option<InFlight>), GatewayError>,
    > + Send
           + use<'s, 'x> {
        async move {
            let Exchange {
                gateway,
                service,
                watch,
                hash_key,
                ..
            } = *self;
            let policy = &service.retry;
            let has_body = watch.is_some();
            let replayable = !has_body && parts.method.is_idempotent();
            let timeout = service.limits.request_timeout;
            let per_try = policy.per_try_timeout.unwrap_or(timeout).min(timeout);
            // tokio's clock (the one the per-try timer runs on): its readings serve the timer,
            // the pool's idle check and the upstream's response time.
            let start = tokio::time::Instant::now();
            let deadline = start + timeout;
            // The first try starts now: its clock reading is the deadline's.
            let mut first = Some(start);
            let mut tried = [0usize; 10];
            let mut n_tried = 0;
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
                // The try borrows the body where it is; a later try gets it back only if this
                // one read none of it (a connect failure).
                let try_body = body.get_or_insert_with(RequestBody::empty);
                let started = first.take().unwrap_or_else(tokio::time::Instant::now);
                let remaining = deadline.saturating_duration_since(started);
                let try_timeout = per_try.min(remaining);
                // In a block of its own: the outcome (224 bytes) is borrowed, and a borrowed local
                // keeps its room to the end of its scope, beside the back-off's timer.
                let (next_index, next_instance, backoff) = {
                    let outcome = self
                        .try_once(index, instance, parts, try_body, started, try_timeout)
                        .await;
                    // What happened, for health, metrics and the retry decision.
                    let Assessment {
                        failed,
                        retry_reason,
                    } = assess(&outcome, replayable, watch, try_timeout, per_try);
                    if let Some(m) = &gateway.metrics {
                        match &outcome {
                            Ok(_) => {
                                if let Some(s) = self.snapshot.service_metrics(m, service) {
                                    s.observe_upstream(m, service.full_id(), started.elapsed());
                                }
                            }
                            Err(TryError::Connect { .. }) => m
                                .upstream_connect_failures
                                .with_label_values(&[service.full_id(), instance.name.as_str()])
                                .inc(),
                            Err(_) => {}
                        }
                    }
                    if let Some(h) = health {
                        if failed {
                            if let Some(ejected_for) = h.report_failure(
                                gerbang_registry::health::now_ms(),
                                &service.outlier,
                            ) {
                                tracing::warn!(
                                    service = service.full_id(),
                                    instance = %instance.name,
                                    ejected_for_ms = ejected_for.as_millis() as u64,
                                    "upstream instance ejected after consecutive failures"
                                );
                                if let Some(m) = &gateway.metrics {
                                    m.upstream_ejections
                                        .with_label_values(&[
                                            service.full_id(),
                                            instance.name.as_str(),
                                        ])
                                        .inc();
                                }
                            }
                        } else if outcome.is_ok() {
                            h.report_success();
                        }
                    }
                    // May this call go to another instance?
                    let unsent = match &outcome {
                        Err(TryError::Connect { unsent, .. }) => *unsent || !has_body,
                        _ => !has_body,
                    };
                    let next = match retry_reason {
                        Some(_) if unsent && (n_tried as u32) < policy.attempts.min(10) => {
                            service.select(hash_key, &tried[..n_tried])
                        }
                        _ => None,
                    };
                    // The back-off must fit in the time left; otherwise the current result stands. Only
                    // a call that may go on draws its back-off and reads the clock.
                    let mut backoff = Duration::ZERO;
                    let next = next.filter(|_| {
                        backoff = policy.backoff(n_tried as u32, random_words()[0]);
                        backoff < deadline.saturating_duration_since(tokio::time::Instant::now())
                    });
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
                            Err(TryError::TimedOut) => {
                                Err(timeout_error(watch, instance, try_timeout))
                            }
                        };
                    };
                    // The failed try's body goes on to the next try only when none of it was read
                    // (a connect failure); otherwise the next try sends none.
                    if !matches!(outcome, Err(TryError::Connect { unsent: true, .. })) {
                        body = None;
                    }
                    _retry_slot = Some(slot);
                    if let (Some(m), Some(reason)) = (&gateway.metrics, retry_reason) {
                        m.upstream_retries
                            .with_label_values(&[service.full_id(), reason])
                            .inc();
                    }
                    (next_index, next_instance, backoff)
                };
                if !backoff.is_zero() {
                    tokio::time::sleep(backoff).await;
                }
                index = next_index;
                instance = next_instance;
            }
        }
    }

    /// One try against one instance.
    // Not an `async fn`: that keeps each by-value argument twice in the future (see
    // `Gateway::forward`).
    #[allow(clippy::manual_async_fn)]
    fn try_once<'s>(
        &'s self,
        index: usize,
        instance: &'s gerbang_registry::Instance,
        parts: &'s mut http::request::Parts,
        body: &'s mut RequestBody,
        started: tokio::time::Instant,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody>, TryError>> + Send + use<'s, 'x>
    {
        async move {
            let try_deadline = started + timeout;
            let Exchange {
                snapshot,
                service,
                added,
                ..
            } = *self;
            let inline_pool = snapshot
                .pools
                .get(service.index)
                .and_then(|p| p.get(index))
                .and_then(Option::as_ref);
            let host = match inline_pool.and_then(|p| p.host()) {
                Some(host) => host.clone(),
                None => HeaderValue::from_str(instance.authority.as_str()).map_err(|e| {
                    TryError::Failed(GatewayError::Internal(format!("upstream authority: {e}")))
                })?,
            };
            parts.headers.insert(header::HOST, host);
            if let Some(pool) = inline_pool {
                // Plain http:// instance: the inline HTTP/1.1 client, origin-form target.
                let pending = h1::PendingLimit {
                    load: &service.load,
                    settings: &service.breaker,
                };
                // The inline client keeps the try's deadline itself, on a timer that each
                // pooled connection keeps (`h1::send`).
                let times = h1::Times {
                    connect_timeout: service.limits.connect_timeout,
                    now: started.into_std(),
                    deadline: try_deadline.into_std(),
                };
                let sent = h1::send(
                    pool,
                    times,
                    self.target,
                    parts,
                    added.fields(),
                    body,
                    Some(pending),
                );
                match sent.await {
                    Err(h1::SendError {
                        error: H1Error::TimedOut,
                        ..
                    }) => Err(TryError::TimedOut),
                    Err(h1::SendError {
                        error: H1Error::Overloaded,
                        ..
                    }) => Err(TryError::Overloaded),
                    Err(h1::SendError { error, unsent }) => {
                        let error = classify_h1_error(error, instance.to_string());
                        Err(match error {
                            GatewayError::UpstreamUnavailable { .. }
                            | GatewayError::UpstreamConnectTimeout { .. } => {
                                TryError::Connect { error, unsent }
                            }
                            other => TryError::Failed(other),
                        })
                    }
                    Ok(res) => Ok(res.map(ResponseBody::Inline)),
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
                // The upstream target: base path, rest, the client's query.
                let h1::Target { base, rest } = self.target;
                let path_and_query =
                    super::upstream_request::upstream_path(base, rest, parts.uri.query())
                        .map_err(TryError::Failed)?;
                let uri = absolute_uri(instance, path_and_query).map_err(TryError::Failed)?;
                let mut upstream_req = Request::new(std::mem::replace(body, RequestBody::empty()));
                *upstream_req.method_mut() = parts.method.clone();
                *upstream_req.uri_mut() = uri;
                *upstream_req.version_mut() = parts.version;
                *upstream_req.headers_mut() = added.merged(&parts.headers);
                match tokio::time::timeout_at(try_deadline, client.request(upstream_req)).await {
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
                                unsent: false,
                            },
                            other => TryError::Failed(other),
                        })
                    }
                    Ok(Ok(mut res)) => {
                        // The inline client never puts them in its map (`h1::parse_head`).
                        crate::headers::remove_hop_by_hop(res.headers_mut());
                        Ok(res.map(ResponseBody::Upstream))
                    }
                }
            }
        }
    }
}

/// What one try says: whether it counts against its instance (passive outlier detection) and
/// why the call may go on to another instance, if it may. The one place the retry decision is
/// made; [`Exchange::run`] adds what it cannot see (attempts, budget, time left, an unsent
/// body).
struct Assessment {
    failed: bool,
    retry_reason: Option<&'static str>,
}

fn assess(
    outcome: &Result<Response<ResponseBody>, TryError>,
    replayable: bool,
    watch: &Option<Arc<BodyWatch>>,
    try_timeout: Duration,
    per_try: Duration,
) -> Assessment {
    let (failed, retry_reason) = match outcome {
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
    Assessment {
        failed,
        retry_reason,
    }
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
    /// The connection could not be made; `unsent` when none of the body was read.
    Connect {
        error: GatewayError,
        unsent: bool,
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
        // `TimedOut` is the try's (`TryError::TimedOut`), which maps it before it comes here.
        e @ (H1Error::Write(_)
        | H1Error::Read(_)
        | H1Error::Closed
        | H1Error::Invalid(_)
        | H1Error::TimedOut) => GatewayError::UpstreamFailed {
            instance,
            detail: e.to_string(),
        },
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
