//! Active health checks: every instance of a service with `[service.health_check]` is probed
//! with `GET path` every interval; a 2xx within the timeout is a success. The verdict changes
//! after the thresholds ([`gerbang_registry::InstanceHealth::record_check`]).
//!
//! One task schedules every probe. It reads the registry in force on each tick, so a reload
//! needs no restart: new instances are probed at once, removed ones are forgotten, and the
//! state of unchanged ones carries over with the registry.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use rustls::ClientConfig;

use crate::body::RequestBody;
use crate::gateway::Gateway;
use crate::upstream::{build_client, PoolSettings, UpstreamClient};

/// How often the scheduler looks for probes that are due.
const TICK: Duration = Duration::from_millis(100);
/// Largest probe response body read (then the connection is dropped).
const MAX_BODY: usize = 64 * 1024;

/// Runs the checks until `shutdown` completes.
pub async fn run(
    gateway: Arc<Gateway>,
    tls: Arc<ClientConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let client = build_client(
        tls,
        Duration::from_secs(5),
        &PoolSettings {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 2,
        },
        None,
    );
    // (service, instance name, URL) → when its next probe is due.
    let mut due: HashMap<(String, String, String), Instant> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(TICK) => {}
        }
        let registry = gateway.registry();
        let now = Instant::now();
        let mut seen = HashSet::new();
        for service in registry.services() {
            let Some(check) = &service.health_check else {
                continue;
            };
            for (i, instance) in service.instances.iter().enumerate() {
                let key = (
                    service.full_id().to_owned(),
                    instance.name.clone(),
                    instance.to_string(),
                );
                if due.get(&key).is_none_or(|t| *t <= now) {
                    due.insert(key.clone(), now + check.interval);
                    if let Some(health) = service.health(i) {
                        tokio::spawn(probe_and_record(
                            client.clone(),
                            Arc::clone(health),
                            check.clone(),
                            key.0.clone(),
                            instance.clone(),
                        ));
                    }
                }
                seen.insert(key);
            }
        }
        due.retain(|k, _| seen.contains(k));
    }
}

async fn probe_and_record(
    client: UpstreamClient,
    health: Arc<gerbang_registry::InstanceHealth>,
    check: gerbang_registry::HealthCheckSettings,
    service: String,
    instance: gerbang_registry::Instance,
) {
    let ok = probe(&client, &instance, &check.path, check.timeout).await;
    match health.record_check(ok, &check) {
        Some(false) => tracing::warn!(
            service,
            instance = %instance.name,
            path = %check.path,
            "upstream instance failed its health check: no calls go to it"
        ),
        Some(true) => tracing::info!(
            service,
            instance = %instance.name,
            "upstream instance passed its health check again"
        ),
        None => {}
    }
}

/// One probe: `GET path` on the instance, a 2xx within `timeout` (body included) is healthy.
pub async fn probe(
    client: &UpstreamClient,
    instance: &gerbang_registry::Instance,
    path: &str,
    timeout: Duration,
) -> bool {
    let Ok(uri) = format!("{instance}{path}").parse::<Uri>() else {
        return false;
    };
    let mut req = Request::new(RequestBody::empty());
    *req.uri_mut() = uri;
    if let Ok(host) = HeaderValue::from_str(instance.authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("gerbang-health-check"),
    );
    let exchange = async {
        let res = client.request(req).await.ok()?;
        let ok = res.status().is_success();
        // Read the (small) body so that the connection can be reused.
        let _ = http_body_util::Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(timeout, exchange).await,
        Ok(Some(true))
    )
}
