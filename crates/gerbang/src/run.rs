//! Wiring: builds the gateway from a validated [`Config`], binds its listeners and runs them
//! until shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use gerbang_auth::authn::{Authenticator, External, ExternalKeys};
use gerbang_auth::jwks::JwksSource;
use gerbang_proxy::{serve, Admin, Gateway, Health, IdentitySettings, ShutdownOutcome};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ExternalKeySpec, ExternalSpec};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("agreement limits: {0}")]
    Limits(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("authentication setup: {0}")]
    Auth(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("tracing: {0}")]
    Tracing(String),
    #[error("cluster configuration: {0}")]
    Cluster(String),
}

/// A gateway running in this process.
pub struct Running {
    /// Where the data plane listens (the real port when the config said 0).
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub health: Arc<Health>,
    pub gateway: Arc<Gateway>,
    /// Reloads the configuration (SIGHUP, file changes and the admin API use it).
    pub reloader: Arc<crate::reload::Reloader>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<ShutdownOutcome>,
    /// One node: the quota use kept in the data directory (written once more at shutdown).
    quota_file: Option<Arc<gerbang_cluster::quota_file::FileQuotaStore>>,
}

impl Running {
    /// Begins a graceful shutdown and waits for it: listeners close at once, requests in flight
    /// get the configured grace period.
    pub async fn shutdown(self) -> ShutdownOutcome {
        self.health.set_ready(false);
        let _ = self.shutdown.send(true);
        let outcome = self.task.await.unwrap_or(ShutdownOutcome::DeadlineExceeded);
        // Every call has been counted: keep the quota use for the next start.
        if let Some(store) = self.quota_file {
            let now = gerbang_cluster::quota_file::unix_now();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush(now)).await {
                tracing::warn!(error = %e, "quota use could not be saved");
            }
        }
        // Every request has finished: seal and close the audit log.
        if let Some(sink) = self.gateway.audit() {
            let sink = std::sync::Arc::clone(sink);
            let _ = tokio::task::spawn_blocking(move || sink.close()).await;
        }
        // Flush the spans of the last calls.
        if let Some(spans) = self.gateway.spans() {
            let spans = std::sync::Arc::clone(spans);
            let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        }
        outcome
    }

    /// A future that starts shutdown when `signal` completes, then waits for it.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> ShutdownOutcome {
        signal.await;
        tracing::info!("shutting down: no new connections; draining requests in flight");
        self.shutdown().await
    }
}

/// The listen backlog: connections the kernel completes and queues before the gateway accepts
/// them. tokio's `TcpListener::bind` asks for 128; a burst of thousands of clients (a fleet of
/// backends reconnecting after a deploy) then overflows the queue, and the kernel drops their
/// handshakes, which come back only after the SYN retransmission delay (1 s, then 3 s, ...).
/// The kernel caps this at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    // As std and tokio do for listeners: a restart may bind while old connections linger.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Binds the listeners of `config` and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // Cluster mode: the registry and agreements in force are the replica's working copy of the
    // newest configuration revision (see cluster.rs).
    let (config, cluster) = crate::cluster::prepare(config).await.map_err(|problems| {
        StartError::Cluster(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let reload_seed = crate::reload::Seed::of(&config);
    let watch_files = config.watch_files;
    let console_sessions = config.console_sessions;
    let console_shared_sessions: Option<Arc<dyn gerbang_admin::console::session::SharedSessions>> =
        match config.cluster.redis.as_ref() {
            Some(r) => Some(Arc::new(
                crate::cluster::ConsoleSessions::new(r).map_err(StartError::Cluster)?,
            )),
            None => None,
        };
    // The console reads this replica's audit log and verifies it with its seal public key.
    let console_audit = config.audit.as_ref().map(|a| {
        (
            a.dir.clone(),
            a.seal_dir.join(crate::config::SEAL_PUBLIC_FILE),
        )
    });
    let (keys_dir, keys_poll_interval) = (config.keys_dir.clone(), config.auth.keys_poll_interval);
    let data = bind("data plane", config.listen).await?;
    let admin = bind("admin", config.admin_listen).await?;
    let data_addr = data.local_addr().unwrap_or(config.listen);
    let admin_addr = admin.local_addr().unwrap_or(config.admin_listen);

    let (tx, rx) = watch::channel(false);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // The console's audit search: in cluster mode put to every replica over Redis (this one
    // answers too), otherwise this replica's log only.
    let replica_id = config.cluster.replica_id.clone();
    let console_expected_replicas = config
        .cluster
        .redis
        .as_ref()
        .map_or(1, |r| r.expected_replicas as usize);
    let console_audit_fanout: Option<Arc<dyn gerbang_admin::console::audit_search::AuditFanout>> =
        match config.cluster.redis.as_ref() {
            Some(r) => {
                let log = console_audit.as_ref().map(|(dir, key)| {
                    gerbang_admin::console::audit_search::LocalLog {
                        dir: dir.clone(),
                        seal_public_key: Some(key.clone()),
                        replica: replica_id.clone(),
                    }
                });
                Some(Arc::new(
                    crate::cluster::AuditFanout::start(r, log, stop(rx.clone()))
                        .map_err(StartError::Cluster)?,
                ))
            }
            None => None,
        };
    // Console sign-in through external issuers: their settings, by issuer.
    let console_sign_ins: Vec<(String, gerbang_config::ConsoleSignIn)> = config
        .auth
        .externals
        .iter()
        .filter_map(|e| Some((e.issuer.issuer.clone(), e.console.clone()?)))
        .collect();
    let externals =
        start_external_issuers(config.auth.externals, &config.upstream_tls, &rx, stop).await?;
    let mut console_sso = Vec::new();
    for (iss, sign_in) in console_sign_ins {
        let Some(external) = externals.iter().find(|e| e.issuer.issuer == iss) else {
            continue;
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*config.upstream_tls).clone())
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StartError::Auth(format!("console sign-in client: {e}")))?;
        console_sso.push(gerbang_admin::console::SsoProvider {
            external: Arc::clone(external),
            sign_in,
            client,
        });
    }
    let externals_for_metrics: Vec<(String, Arc<JwksSource>)> = externals
        .iter()
        .filter_map(|e| match &e.keys {
            ExternalKeys::Jwks(source) => Some((e.issuer.issuer.clone(), Arc::clone(source))),
            ExternalKeys::Static(_) => None,
        })
        .collect();
    let mut public_base_url = config.auth.public_base_url.clone();
    let listener_issuer = config
        .auth
        .issuer_from_listener
        .map(|scheme| format!("{scheme}://{data_addr}"));
    let mut issuer = config.auth.issuer;
    if let Some(url) = &listener_issuer {
        issuer.issuer.clone_from(url);
        public_base_url.clone_from(url);
    }
    let authenticator = Authenticator::new(
        Arc::new(issuer),
        &config.credentials,
        externals.clone(),
        config.auth.token_cache_size,
    )
    .map_err(|e| StartError::Auth(e.to_string()))?;
    let identity = IdentitySettings {
        assertion_ttl: config.auth.assertion_ttl,
        strip_headers: config.auth.strip_headers,
        public_base_url,
        token_endpoint: config.auth.token_endpoint,
    };
    let mut gateway = Gateway::new(
        config.registry,
        Arc::new(authenticator),
        config.policy,
        identity,
        config.limits,
        config.upstream_tls,
        config.pool,
    );
    #[cfg(feature = "otlp")]
    if let Some(o) = &config.otlp {
        let sink = crate::otlp::Otlp::start(o).map_err(|e| StartError::Tracing(e.to_string()))?;
        gateway = gateway.with_spans(Arc::new(sink));
    }
    if let Some(a) = config.audit {
        let dir = a.dir.clone();
        let seal_key =
            crate::keys_watch::replica_seal_key(a.seal_key, &a.seal_dir, &a.legacy_seal_key)
                .map_err(StartError::Audit)?;
        let writer = gerbang_audit::Writer::open(
            gerbang_audit::WriterSettings {
                dir: a.dir,
                max_file_bytes: a.max_file_bytes,
                fsync: a.fsync,
                seal_every: a.seal_every,
                replica: Some(config.cluster.replica_id.clone()),
            },
            seal_key,
        )
        .map_err(|e| StartError::Audit(format!("{}: {e}", dir.display())))?;
        let sink = gerbang_proxy::audit::AuditSink::start(
            writer,
            a.subject_key,
            gerbang_proxy::audit::AuditSettings {
                wait_for_disk: a.fsync == gerbang_audit::chain::Fsync::Always,
                fail_closed: a.fail_closed,
                ack_timeout: a.ack_timeout,
                queue: a.queue,
                idle_sync: a.idle_sync,
            },
        )
        .map_err(|e| StartError::Audit(e.to_string()))?;
        gateway = gateway.with_audit(sink);
    }
    let metrics = gerbang_proxy::metrics::Metrics::new(config.metrics_per_application)
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    metrics.config_loaded(Ok(&config.fingerprint), false);
    let expiries: Vec<(&str, &str, i64)> = config
        .expiries
        .iter()
        .map(|(k, n, at)| (*k, n.as_str(), *at))
        .collect();
    metrics.set_expiries(&expiries);
    // State kept outside the metrics, copied in at each scrape.
    for ext in &externals_for_metrics {
        let (issuer, source) = (ext.0.clone(), Arc::clone(&ext.1));
        metrics.on_scrape(move |m| {
            let (ok, failed) = source.fetch_counts();
            gerbang_proxy::metrics::copy_counter(
                &m.jwks_refreshes.with_label_values(&[&issuer, "success"]),
                ok,
            );
            gerbang_proxy::metrics::copy_counter(
                &m.jwks_refreshes.with_label_values(&[&issuer, "failure"]),
                failed,
            );
        });
    }
    if let Some(sink) = gateway.audit() {
        let stats = Arc::clone(&sink.stats);
        metrics.on_scrape(move |m| {
            let queued = stats.queued.load(std::sync::atomic::Ordering::Relaxed);
            m.audit_queue.set(i64::try_from(queued).unwrap_or(i64::MAX));
        });
    }
    let quota_file;
    (gateway, quota_file) = limit_stores(
        gateway,
        config.cluster.redis.as_ref(),
        &config.data_dir,
        &metrics,
        &rx,
    )?;
    let mut data_settings = config.listener;
    if config.metrics_enabled {
        gateway = gateway.with_metrics(Arc::clone(&metrics));
        data_settings.open_connections =
            Some(metrics.open_connections.with_label_values(&["data"]));
    }
    let gateway = Arc::new(gateway);
    {
        // Token requests refused by the failure limits, counted by the guard.
        let guard = gateway.token_guard();
        metrics.on_scrape(move |m| {
            let (by_source, by_client) = guard.throttled_counts();
            for (by, n) in [("source", by_source), ("client", by_client)] {
                gerbang_proxy::metrics::copy_counter(
                    &m.token_auth_throttled.with_label_values(&[by]),
                    n,
                );
            }
        });
    }
    let health = Arc::new(Health::new());
    {
        // Instance health as gauges, read from the registry in force at each scrape.
        let gateway = Arc::clone(&gateway);
        metrics.on_scrape(move |m| {
            m.upstream_instance_healthy.reset();
            for svc in gateway.registry().services() {
                for (inst, state) in svc.instance_states() {
                    let up = i64::from(state == gerbang_registry::InstanceState::Healthy);
                    m.upstream_instance_healthy
                        .with_label_values(&[svc.full_id(), inst.name.as_str()])
                        .set(up);
                }
            }
        });
    }
    tokio::spawn(gerbang_proxy::health_check::run(
        Arc::clone(&gateway),
        gateway.upstream_tls(),
        stop(rx.clone()),
    ));
    let reloader = Arc::new(reload_seed.finish(
        Arc::clone(&gateway),
        Arc::clone(&metrics),
        externals,
        listener_issuer,
    ));
    if let Some(c) = &cluster {
        c.set_metrics(Arc::clone(&metrics));
        reloader.set_cluster(Arc::clone(c));
        tokio::spawn(Arc::clone(c).run(Arc::clone(&reloader), stop(rx.clone())));
    }
    // Installed before the gateway reports ready: an early SIGHUP must reload, not end the
    // process (its default action).
    tokio::spawn(crate::reload::on_sighup(
        crate::reload::hangup_signal(),
        Arc::clone(&reloader),
        stop(rx.clone()),
    ));
    // Key files added by another replica's rotation or a Secret update (see keys_watch).
    tokio::spawn(crate::keys_watch::poll_keys_dir(
        Arc::clone(&reloader),
        keys_dir,
        keys_poll_interval,
        stop(rx.clone()),
    ));
    if watch_files {
        tokio::spawn(crate::reload::watch_files(
            Arc::clone(&reloader),
            std::time::Duration::from_millis(300),
            stop(rx.clone()),
        ));
    }

    let admin_settings = gerbang_proxy::ListenerSettings {
        tls: None,
        max_connections: 256,
        open_connections: Some(metrics.open_connections.with_label_values(&["admin"])),
        ..data_settings.clone()
    };
    let admin_api = Arc::new(
        crate::admin_api::AdminApi::new(
            Admin::new(Arc::clone(&health))
                .with_metrics(Arc::clone(&metrics))
                .with_gateway(Arc::clone(&gateway)),
            Arc::clone(&reloader),
            Arc::clone(&gateway),
        )
        .with_console(gerbang_admin::console::ConsoleSettings {
            audit_dir: console_audit.as_ref().map(|(d, _)| d.clone()),
            seal_public_key: console_audit.map(|(_, k)| k),
            metrics: Some(metrics),
            // The admin listener speaks plain HTTP (loopback by default).
            secure_cookie: admin_settings.tls.is_some(),
            idle: console_sessions.0,
            absolute: console_sessions.1,
            clock: None,
            // Cluster mode: sessions in Redis, the same on every replica.
            shared_sessions: console_shared_sessions,
            sso: console_sso,
            replica: replica_id.clone(),
            audit_fanout: console_audit_fanout,
            expected_replicas: console_expected_replicas,
        }),
    );
    // The console's overview: the counters once a minute, an hour of them kept.
    tokio::spawn({
        let api = Arc::clone(&admin_api);
        let stopped = stop(rx.clone());
        async move {
            tokio::pin!(stopped);
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => api.sample(),
                    _ = &mut stopped => break,
                }
            }
        }
    });
    let admin_task = tokio::spawn(serve(admin, admin_api, admin_settings, stop(rx.clone())));
    let data_task = tokio::spawn(serve(data, Arc::clone(&gateway), data_settings, stop(rx)));
    let task = tokio::spawn(async move {
        let data = data_task.await.unwrap_or(ShutdownOutcome::DeadlineExceeded);
        let _ = admin_task.await;
        data
    });
    health.set_ready(true);
    tracing::info!(%data_addr, %admin_addr, "gateway ready");
    Ok(Running {
        data_addr,
        admin_addr,
        health,
        gateway,
        reloader,
        shutdown: tx,
        task,
        quota_file,
    })
}

/// Agreement limits: in cluster mode shared by every replica through Redis (the local limiter
/// is the fallback, at this replica's share); on one node counted here, with the quota use
/// kept in `<data_dir>/quota-use.json` (read now, written each second when it changed).
fn limit_stores(
    gateway: Gateway,
    redis: Option<&crate::config::RedisSettings>,
    data_dir: &std::path::Path,
    metrics: &gerbang_proxy::metrics::Metrics,
    rx: &watch::Receiver<bool>,
) -> Result<
    (
        Gateway,
        Option<Arc<gerbang_cluster::quota_file::FileQuotaStore>>,
    ),
    StartError,
> {
    use gerbang_cluster::limits::{FailureMode, SharedLimitSettings, SharedLimits};
    if let Some(r) = redis {
        let settings = SharedLimitSettings {
            url: r.url.clone(),
            on_failure: match r.on_failure {
                crate::config::RedisFailureMode::Local => FailureMode::Local,
                crate::config::RedisFailureMode::Closed => FailureMode::Closed,
            },
            expected_replicas: r.expected_replicas,
            timeout: r.timeout,
            connections: r.connections,
        };
        let store = SharedLimits::new(&settings, Some(metrics.limit_store()))
            .map_err(|e| StartError::Limits(format!("{}: {e}", r.redacted())))?;
        tracing::info!(redis = %r.redacted(), on_failure = ?settings.on_failure,
            "agreement limits are shared through Redis");
        let store = Arc::new(store);
        // Finds Redis back after an outage even when no limited call comes to probe it.
        let mut stop = rx.clone();
        tokio::spawn(
            Arc::clone(&store).watch(gerbang_cluster::limits::DOWN_FOR, async move {
                let _ = stop.wait_for(|v| *v).await;
            }),
        );
        return Ok((gateway.with_shared_limits(store), None));
    }
    let store = gerbang_cluster::quota_file::FileQuotaStore::open(
        data_dir,
        gerbang_cluster::quota_file::unix_now(),
    )
    .map(Arc::new)
    .map_err(|e| StartError::Limits(e.to_string()))?;
    let gateway = gateway.with_quota_store(Arc::clone(&store) as _);
    let mut stop = rx.clone();
    tokio::spawn(
        Arc::clone(&store).run(std::time::Duration::from_secs(1), async move {
            let _ = stop.wait_for(|v| *v).await;
        }),
    );
    Ok((gateway, Some(store)))
}

/// Builds the external issuers' key sources: static keys as they are; JWKS URLs fetched once
/// now (a failure is logged and the gateway starts anyway: tokens of that issuer are refused
/// until a fetch succeeds) and then refreshed in the background until shutdown.
async fn start_external_issuers<F, Fut>(
    specs: Vec<ExternalSpec>,
    tls: &Arc<rustls::ClientConfig>,
    rx: &watch::Receiver<bool>,
    stop: F,
) -> Result<Vec<Arc<External>>, StartError>
where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut out = Vec::new();
    let mut client = None;
    for spec in specs {
        let keys = match spec.keys {
            ExternalKeySpec::Static(keys) => ExternalKeys::Static(Arc::new(keys)),
            ExternalKeySpec::Jwks {
                url,
                refresh_interval,
                min_refetch,
            } => {
                let client = match &client {
                    Some(c) => Clone::clone(c),
                    None => {
                        let c = reqwest::Client::builder()
                            .tls_backend_preconfigured((**tls).clone())
                            .timeout(std::time::Duration::from_secs(10))
                            .redirect(reqwest::redirect::Policy::none())
                            .build()
                            .map_err(|e| StartError::Auth(format!("JWKS client: {e}")))?;
                        client = Some(c.clone());
                        c
                    }
                };
                let source = Arc::new(JwksSource::new(url.clone(), client, min_refetch));
                match source.refresh().await {
                    Ok(n) => {
                        tracing::info!(issuer = %spec.issuer.issuer, keys = n, "external issuer keys fetched")
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %spec.issuer.issuer, %url, error = %e, "external issuer keys could not be fetched; its tokens are refused until a fetch succeeds")
                    }
                }
                tokio::spawn(Arc::clone(&source).run(refresh_interval, stop(rx.clone())));
                ExternalKeys::Jwks(source)
            }
        };
        out.push(Arc::new(External {
            issuer: spec.issuer,
            keys,
        }));
    }
    Ok(out)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called,
/// not when the future is first polled: a signal that arrives in between must not fall to the
/// default action (which ends the process at once, without draining).
pub fn termination_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections that the kernel completes without the gateway accepting any: with tokio's
    /// default backlog of 128 the rest of a burst waits for SYN retransmissions (seconds).
    #[tokio::test]
    async fn a_burst_of_connections_is_queued_by_the_kernel_not_dropped() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(128);
        let listener = bind("test", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Never accepted during the burst.
        let burst = 600.min(somaxconn.saturating_sub(10));
        let mut connected = 0;
        let mut held = Vec::new();
        for _ in 0..burst {
            let c = tokio::time::timeout(
                std::time::Duration::from_millis(300),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            match c {
                Ok(Ok(s)) => {
                    connected += 1;
                    held.push(s);
                }
                // The queue is full: the rest would time out too.
                _ => break,
            }
        }
        assert_eq!(
            connected, burst,
            "only {connected} of {burst} connections completed (somaxconn {somaxconn})"
        );
        drop(listener);
    }
}
