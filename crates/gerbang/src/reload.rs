//! Live reconfiguration: read and validate the configuration again, then swap the new registry,
//! agreements and credentials in at once. Requests in flight finish on the snapshot they began
//! with; client connections stay open; unchanged instances keep their health and idle upstream
//! connections. A configuration with problems is refused whole and the running one stays.
//!
//! Triggers: `SIGHUP`, `POST /admin/reload`, an admin API change, and (with
//! `admin.watch_files`) a change to a registry, agreement or key file.
//!
//! What a reload applies: registry files (agencies, applications and their credentials,
//! services, instances, balancing, health checks, retries, breakers), agreement files, signing
//! keys and `[auth]` token settings. Listener addresses, TLS, limits, the audit log, metrics,
//! tracing and `[[auth.external]]` issuers take effect on restart; a reload that sees them
//! changed says so in its report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gerbang_auth::authn::{Authenticator, External};
use gerbang_proxy::metrics::Metrics;
use gerbang_proxy::Gateway;

use crate::config::{Config, Overrides, Problem};

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// The new configuration's hash (`gerbang_config_info`).
    pub hash: String,
    /// Settings that changed but take effect on restart only.
    pub restart_needed: Vec<String>,
    /// Warnings of the new configuration (expired or overlapping agreements).
    pub warnings: Vec<String>,
}

/// Settings fixed for the life of the process, to tell when a reload cannot apply a change:
/// each as the configuration key an operator would change, and its value in a comparable form.
/// Everything else a reload applies (registry, agreements, credentials, signing keys, admin
/// tokens, [`gerbang_proxy::Reloadable`]). `tests/tests/e2e/reload_boundary.rs` changes every
/// key of the configuration reference and checks that a reload applies it or names it here.
#[derive(Debug, Clone, PartialEq)]
struct Fixed(Vec<(&'static str, String)>);

impl Fixed {
    fn of(c: &Config) -> Self {
        // What the typed configuration cannot compare (TLS material, trust roots) is compared
        // as written in the main file.
        let raw: toml::Table = std::fs::read_to_string(&c.file)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_default();
        let written = |section: &str, key: &str| {
            raw.get(section)
                .and_then(|s| s.get(key))
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        let audit = c.audit.as_ref().map(|a| {
            format!(
                "{} {:?} {} {} {} {} {:?} {:?}",
                a.dir.display(),
                a.fsync,
                a.fail_closed,
                a.max_file_bytes,
                a.seal_every,
                a.queue,
                a.ack_timeout,
                a.idle_sync
            )
        });
        let externals: Vec<String> = c
            .auth
            .externals
            .iter()
            .map(|e| format!("{:?}", e.issuer))
            .collect();
        Fixed(vec![
            ("server.listen", c.listen.to_string()),
            ("server.worker_threads", c.worker_threads.to_string()),
            (
                "server.shutdown_grace",
                format!("{:?}", c.listener.shutdown_grace),
            ),
            (
                "server.header_read_timeout",
                format!("{:?}", c.listener.header_read_timeout),
            ),
            (
                "server.max_connections",
                c.listener.max_connections.to_string(),
            ),
            ("server.tls", written("server", "tls")),
            ("admin.listen", c.admin_listen.to_string()),
            ("admin.watch_files", c.watch_files.to_string()),
            // The console's sessions are set up at start.
            (
                "admin.console_sessions",
                format!("{:?}", c.console_sessions),
            ),
            ("upstream.system_roots", written("upstream", "system_roots")),
            ("upstream.ca_files", written("upstream", "ca_files")),
            (
                "upstream.pool_idle_timeout",
                format!("{:?}", c.pool.idle_timeout),
            ),
            (
                "upstream.pool_max_idle_per_host",
                c.pool.max_idle_per_host.to_string(),
            ),
            ("paths.registry_dir", c.registry_dir.display().to_string()),
            (
                "paths.agreements_dir",
                c.agreements_dir.display().to_string(),
            ),
            ("paths.data_dir", c.data_dir.display().to_string()),
            ("auth.keys_dir", c.keys_dir.display().to_string()),
            (
                "auth.keys_poll_interval",
                format!("{:?}", c.auth.keys_poll_interval),
            ),
            ("log", format!("{} {}", c.log.json, c.log.level)),
            (
                "tracing.otlp_endpoint",
                format!("{:?}", c.otlp.as_ref().map(|o| &o.endpoint)),
            ),
            ("tracing.service_name", written("tracing", "service_name")),
            // The metadata document's base URL (the issuer itself is applied).
            ("auth.issuer", c.auth.public_base_url.clone()),
            ("auth.token_cache_size", c.auth.token_cache_size.to_string()),
            (
                "auth.token_endpoint",
                format!("{:?}", c.auth.token_endpoint),
            ),
            ("auth.external", externals.join(" | ")),
            ("audit", format!("{audit:?}")),
            ("cluster", format!("{:?}", c.cluster)),
            (
                "metrics",
                format!("{} {}", c.metrics_enabled, c.metrics_per_application),
            ),
        ])
    }

    /// The keys whose values differ.
    fn differences(&self, other: &Fixed) -> Vec<String> {
        self.0
            .iter()
            .zip(&other.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0.to_owned())
            .collect()
    }
}

/// Reloads the configuration of a running gateway.
pub struct Reloader {
    file: PathBuf,
    overrides: Overrides,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    externals: Vec<Arc<External>>,
    /// The issuer URL when it comes from the bound listener (port 0 in tests).
    listener_issuer: Option<String>,
    token_cache_size: usize,
    fixed: Fixed,
    /// One reload at a time; admin changes hold it from validation to swap. Holds the hash of
    /// the configuration in force.
    lock: tokio::sync::Mutex<String>,
    /// Paths the file watcher watches.
    pub watched: Vec<PathBuf>,
    registry_dir: PathBuf,
    agreements_dir: PathBuf,
    /// Admin API tokens in force (a reload revokes removed ones at once).
    admin_tokens: std::sync::RwLock<Arc<Vec<crate::config::AdminToken>>>,
    /// Cluster mode: configuration revisions (a change made here is published before it is
    /// swapped in).
    cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterSync>>,
}

/// What a [`Reloader`] needs from the configuration it starts with (taken before the
/// configuration is consumed by the start).
pub struct Seed {
    file: PathBuf,
    overrides: Overrides,
    token_cache_size: usize,
    fixed: Fixed,
    watched: Vec<PathBuf>,
    registry_dir: PathBuf,
    agreements_dir: PathBuf,
    hash: String,
    admin_tokens: Vec<crate::config::AdminToken>,
}

impl Seed {
    pub fn of(config: &Config) -> Self {
        let mut watched = vec![
            config.file.clone(),
            config.registry_dir.clone(),
            config.agreements_dir.clone(),
            config.keys_dir.clone(),
        ];
        watched.dedup();
        Self {
            file: config.file.clone(),
            overrides: config.overrides.clone(),
            token_cache_size: config.auth.token_cache_size,
            fixed: Fixed::of(config),
            watched,
            registry_dir: config.registry_dir.clone(),
            agreements_dir: config.agreements_dir.clone(),
            hash: config.fingerprint.clone(),
            admin_tokens: config.admin_tokens.clone(),
        }
    }

    pub fn finish(
        self,
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
        externals: Vec<Arc<External>>,
        listener_issuer: Option<String>,
    ) -> Reloader {
        Reloader {
            file: self.file,
            overrides: self.overrides,
            gateway,
            metrics,
            externals,
            listener_issuer,
            token_cache_size: self.token_cache_size,
            fixed: self.fixed,
            lock: tokio::sync::Mutex::new(self.hash),
            watched: self.watched,
            registry_dir: self.registry_dir,
            agreements_dir: self.agreements_dir,
            admin_tokens: std::sync::RwLock::new(Arc::new(self.admin_tokens)),
            cluster: std::sync::OnceLock::new(),
        }
    }
}

impl Reloader {
    /// Cluster mode: publish changes made here as revisions before applying them.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::ClusterSync>) {
        let _ = self.cluster.set(cluster);
    }

    /// Cluster mode's revisions, when on.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterSync>> {
        self.cluster.get()
    }

    /// The main configuration file.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The admin API tokens in force.
    pub fn admin_tokens(&self) -> Arc<Vec<crate::config::AdminToken>> {
        self.admin_tokens
            .read()
            .map(|t| Arc::clone(&t))
            .unwrap_or_default()
    }

    /// The registry directory.
    pub fn registry_dir(&self) -> &std::path::Path {
        &self.registry_dir
    }

    /// The agreements directory.
    pub fn agreements_dir(&self) -> &std::path::Path {
        &self.agreements_dir
    }

    /// Holds the reload lock (admin changes: validate, persist, apply without a reload
    /// in between).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, String> {
        self.lock.lock().await
    }

    /// Loads and checks the configuration on disk without applying it.
    pub async fn validate(&self) -> Result<Config, Vec<Problem>> {
        self.validate_with(crate::config::Overlay::new()).await
    }

    /// As [`Reloader::validate`], with files replaced as `overlay` says (a proposed change).
    pub async fn validate_with(
        &self,
        overlay: crate::config::Overlay,
    ) -> Result<Config, Vec<Problem>> {
        let (file, overrides) = (self.file.clone(), self.overrides.clone());
        tokio::task::spawn_blocking(move || crate::config::load_with(&file, &overrides, &overlay))
            .await
            .map_err(|e| {
                vec![Problem {
                    file: PathBuf::new(),
                    key: String::new(),
                    message: format!("validation did not finish: {e}"),
                }]
            })?
            .map_err(|e| e.problems)
    }

    /// Reloads from disk; `trigger` names the cause for the log.
    pub async fn reload(&self, trigger: &str) -> Result<Applied, Vec<Problem>> {
        let mut current = self.lock.lock().await;
        self.reload_locked(&mut current, trigger, false).await
    }

    /// Reloads after a file change, unless the files are what is in force already (an admin
    /// API write wakes the watcher too).
    pub async fn reload_if_changed(&self, trigger: &str) -> Result<Applied, Vec<Problem>> {
        let mut current = self.lock.lock().await;
        self.reload_locked(&mut current, trigger, true).await
    }

    /// [`Reloader::reload`] for a caller that holds [`Reloader::lock`] (`current` is what it
    /// guards: the hash in force). With `skip_unchanged`, a configuration whose hash is the one
    /// in force is not swapped in again.
    pub async fn reload_locked(
        &self,
        current: &mut String,
        trigger: &str,
        skip_unchanged: bool,
    ) -> Result<Applied, Vec<Problem>> {
        let started = std::time::Instant::now();
        // Cluster mode: a revision from Redis is applied as it is; an admin API change is in
        // the working copy already; any other reload (SIGHUP, POST /admin/reload, the file
        // watcher) first takes bootstrap files that were edited since.
        let cluster = self.cluster.get().cloned();
        let from_revision = trigger.starts_with("revision ");
        if let Some(c) = cluster.as_ref().filter(|_| !from_revision) {
            if !trigger.starts_with("admin api (") {
                if let Err(p) = c.take_bootstrap_if_changed() {
                    let problems = vec![p];
                    self.refused(trigger, &problems);
                    return Err(problems);
                }
            }
        }
        let config = match self.validate().await {
            Ok(c) => c,
            Err(problems) => {
                self.refused(trigger, &problems);
                return Err(problems);
            }
        };
        // Published before it is swapped in: a change Redis does not take is not applied, so
        // replicas never drift apart.
        if let Some(c) = cluster.as_ref().filter(|_| !from_revision) {
            if let Err(p) = c.publish_working_copy(trigger).await {
                let problems = vec![p];
                self.refused(trigger, &problems);
                return Err(problems);
            }
        }
        if skip_unchanged && config.fingerprint == *current {
            tracing::debug!(trigger, hash = %current, "configuration unchanged; nothing to apply");
            return Ok(Applied {
                hash: current.clone(),
                restart_needed: Vec::new(),
                warnings: Vec::new(),
            });
        }
        let new_fixed = Fixed::of(&config);
        let tokens = config.admin_tokens.clone();
        let Config {
            auth: auth_config,
            credentials,
            registry,
            policy,
            fingerprint: hash,
            expiries,
            warnings,
            limits,
            ..
        } = config;
        // What a reload applies besides registry, credentials and agreements.
        let settings = gerbang_proxy::Reloadable {
            limits,
            strip_headers: auth_config.strip_headers,
            assertion_ttl: auth_config.assertion_ttl,
        };
        let mut issuer = auth_config.issuer;
        if let (Some(url), Some(_)) = (&self.listener_issuer, auth_config.issuer_from_listener) {
            issuer.issuer.clone_from(url);
        }
        let externals = self.externals.clone();
        let cache = self.token_cache_size;
        // Building the authenticator hashes a dummy secret (argon2): off the runtime's threads.
        let auth = tokio::task::spawn_blocking(move || {
            Authenticator::new(Arc::new(issuer), &credentials, externals, cache)
        })
        .await;
        let mut auth = match auth {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(self.refuse(trigger, e.to_string())),
            Err(e) => return Err(self.refuse(trigger, e.to_string())),
        };
        // Unchanged applications and keys: the tokens verified so far stay verified.
        let kept_cache = auth.adopt_cache(&self.gateway.authenticator());
        let restart_needed = self.fixed.differences(&new_fixed);
        let warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        let expiries: Vec<(&str, &str, i64)> = expiries
            .iter()
            .map(|(k, n, at)| (*k, n.as_str(), *at))
            .collect();
        self.metrics.set_expiries(&expiries);
        self.gateway
            .replace_registry(registry, Arc::new(auth), policy, settings);
        // In cluster mode the hash shown is the revision's content hash, the same on every
        // replica that applied it (the main file differs per replica).
        let shown = cluster
            .as_ref()
            .map_or_else(|| hash.clone(), |c| c.applied().1);
        self.metrics.config_loaded(Ok(&shown), true);
        current.clone_from(&hash);
        if let Ok(mut t) = self.admin_tokens.write() {
            *t = Arc::new(tokens);
        }
        tracing::info!(
            trigger,
            hash,
            took_ms = started.elapsed().as_millis() as u64,
            kept_token_cache = kept_cache,
            restart_needed = ?restart_needed,
            "configuration reloaded"
        );
        Ok(Applied {
            hash,
            restart_needed,
            warnings,
        })
    }

    /// Counts and logs a refused change (the running configuration stays).
    pub fn refused(&self, trigger: &str, problems: &[Problem]) {
        self.metrics.config_loaded(Err(()), true);
        for p in problems {
            tracing::error!(trigger, problem = %p, "configuration refused; the running configuration stays");
        }
    }

    fn refuse(&self, trigger: &str, message: String) -> Vec<Problem> {
        self.metrics.config_loaded(Err(()), true);
        tracing::error!(trigger, problem = %message, "configuration refused; the running configuration stays");
        vec![Problem {
            file: self.file.clone(),
            key: "application".into(),
            message,
        }]
    }
}

/// The `SIGHUP` handler, installed now (see [`on_sighup`]).
#[cfg(unix)]
pub fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// No `SIGHUP` here.
#[cfg(not(unix))]
pub fn hangup_signal() -> Option<()> {
    None
}

/// Reloads on each `SIGHUP` caught by `hup` until `shutdown` completes.
#[cfg(unix)]
pub async fn on_sighup(
    hup: Option<tokio::signal::unix::Signal>,
    reloader: Arc<Reloader>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let Some(mut hup) = hup else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
        return;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            got = hup.recv() => {
                if got.is_none() { return; }
                let _ = reloader.reload("sighup").await;
            }
        }
    }
}

/// No `SIGHUP` here: reload with the admin API or a file change.
#[cfg(not(unix))]
pub async fn on_sighup(
    _hup: Option<()>,
    _reloader: Arc<Reloader>,
    _shutdown: impl std::future::Future<Output = ()>,
) {
}

/// Reloads when a watched file changes (a quiet period of `debounce` after the last change, so
/// that an editor's temporary files and renames make one reload), until `shutdown` completes.
pub async fn watch_files(
    reloader: Arc<Reloader>,
    debounce: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            // Configuration files, and Kubernetes' `..data` link, which a ConfigMap volume swaps
            // to change all its files at once.
            let relevant = e.paths.iter().any(|p| {
                p.extension().is_some_and(|x| x == "toml" || x == "pem")
                    || p.file_name().is_some_and(|n| n == "..data")
            });
            if relevant && !matches!(e.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the configuration files; reload with SIGHUP or POST /admin/reload");
            return;
        }
    };
    for path in &reloader.watched {
        // The main file is watched through its directory (editors replace files by rename).
        let target = if path.is_file() {
            path.parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| path.clone())
        } else {
            path.clone()
        };
        if let Err(e) = watcher.watch(&target, RecursiveMode::NonRecursive) {
            tracing::warn!(path = %target.display(), error = %e, "cannot watch");
        }
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            got = rx.recv() => {
                if got.is_none() { return; }
                // Quiet period: more changes restart it.
                loop {
                    match tokio::time::timeout(debounce, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let _ = reloader.reload_if_changed("file change").await;
            }
        }
    }
}
