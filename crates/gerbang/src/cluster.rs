//! Cluster mode in the process: configuration revisions.
//!
//! With `[cluster] redis_url`, the registry and agreement files in force are a **working copy**
//! under the data directory (`<data_dir>/cluster/config/{registry,agreements}`), not the
//! bootstrap files the main file names (in Kubernetes a read-only ConfigMap). The working copy
//! holds the newest revision this replica applied:
//!
//! - at start, the newest of the bootstrap files and Redis: bootstrap files whose content was
//!   never published are newer than anything in Redis (they were edited) and are published;
//!   otherwise Redis' newest revision is taken. Without Redis, the working copy of the last run
//!   (or the bootstrap files, when they changed since);
//! - a change made here (admin API; a reload of edited bootstrap files) is validated, published
//!   as a new revision (compare-and-set on the revision it was based on), and only then swapped
//!   in: a change that cannot be published is refused, so replicas never drift apart;
//! - every `revision_poll_interval`, a newer revision from Redis is written to the working copy
//!   and applied through the same validation and swap as any reload. One that does not validate
//!   here is refused (logged, counted) and the replica keeps its configuration.
//!
//! A replica that cannot reach Redis keeps serving its last applied revision and refuses
//! changes until Redis is back.

use std::path::PathBuf;
use std::sync::Arc;

use gerbang_cluster::revisions::{self, Files, Revision, RevisionError, RevisionStore};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Overrides, Problem, RedisSettings};
use crate::reload::Reloader;

/// What this replica last applied, kept across restarts (`<data_dir>/cluster/state.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// The revision in the working copy (`None`: bootstrap files not yet published).
    revision: Option<u64>,
    /// The working copy's content hash.
    hash: String,
    /// The content hash of the bootstrap files when this replica last looked at them.
    bootstrap_hash: String,
}

/// The replica's side of configuration revisions.
pub struct ClusterSync {
    settings: RedisSettings,
    replica: String,
    bootstrap: (PathBuf, PathBuf),
    work: (PathBuf, PathBuf),
    state_file: PathBuf,
    state: std::sync::Mutex<State>,
    store: RevisionStore,
    /// The newest revision that failed validation here (not retried until a newer one).
    refused: std::sync::Mutex<Option<u64>>,
    metrics: std::sync::OnceLock<Arc<gerbang_proxy::metrics::Metrics>>,
}

/// A problem of the cluster machinery, in the shape the configuration reports problems.
fn problem(message: impl Into<String>) -> Problem {
    Problem {
        file: PathBuf::new(),
        key: "cluster.redis_url".into(),
        message: message.into(),
    }
}

impl ClusterSync {
    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The revision in force and its content hash.
    pub fn applied(&self) -> (Option<u64>, String) {
        self.state
            .lock()
            .map(|s| (s.revision, s.hash.clone()))
            .unwrap_or_default()
    }

    /// Reports the revision in force to the metrics from now on.
    pub fn set_metrics(&self, metrics: Arc<gerbang_proxy::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
        self.show();
    }

    fn save(&self, state: &State) {
        let text = serde_json::to_vec_pretty(state).unwrap_or_default();
        let tmp = self.state_file.with_extension("json.tmp");
        let written =
            std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &self.state_file));
        if let Err(e) = written {
            tracing::error!(path = %self.state_file.display(), error = %e, "could not save the cluster state");
        }
    }

    fn set_applied(&self, revision: Option<u64>, hash: String) {
        if let Ok(mut s) = self.state.lock() {
            s.revision = revision;
            s.hash = hash;
            let copy = s.clone();
            drop(s);
            self.save(&copy);
        }
        self.show();
    }

    /// The revision in force and its hash on the metrics.
    fn show(&self) {
        let Some(m) = self.metrics.get() else { return };
        let (revision, hash) = self.applied();
        m.config_revision.set(revision.map_or(0, |r| r as i64));
        m.config_info.reset();
        m.config_info.with_label_values(&[hash.as_str()]).set(1);
    }

    /// The working copy's files.
    pub fn working_files(&self) -> std::io::Result<Files> {
        revisions::read_files(&self.work.0, &self.work.1)
    }

    /// Before a reload that is not a revision: when the bootstrap files changed since this
    /// replica last looked, they become the working copy (to be validated and published).
    pub fn take_bootstrap_if_changed(&self) -> Result<(), Problem> {
        let files = revisions::read_files(&self.bootstrap.0, &self.bootstrap.1)
            .map_err(|e| problem(format!("cannot read the bootstrap configuration: {e}")))?;
        let hash = revisions::content_hash(&files);
        let changed = self
            .state
            .lock()
            .map(|s| s.bootstrap_hash != hash)
            .unwrap_or(false);
        if changed {
            revisions::write_files(&self.work.0, &self.work.1, &files)
                .map_err(|e| problem(format!("cannot write the working copy: {e}")))?;
            if let Ok(mut s) = self.state.lock() {
                s.bootstrap_hash = hash;
            }
            tracing::info!(
                "bootstrap configuration files changed; they are proposed as the next revision"
            );
        }
        Ok(())
    }

    /// After validation of a change made on this replica: publishes the working copy when it
    /// differs from the revision in force. Refuses (the caller does not swap) when Redis cannot
    /// take it.
    pub async fn publish_working_copy(&self, trigger: &str) -> Result<(), Problem> {
        let files = self
            .working_files()
            .map_err(|e| problem(format!("cannot read the working copy: {e}")))?;
        let hash = revisions::content_hash(&files);
        let (based_on, in_force) = self.applied();
        if hash == in_force && based_on.is_some() {
            return Ok(());
        }
        let author = trigger
            .strip_prefix("admin api (")
            .and_then(|r| r.split(')').next())
            .unwrap_or("files");
        match self
            .store
            .publish(files, author, &self.replica, trigger, based_on)
            .await
        {
            Ok(r) => {
                tracing::info!(revision = r.meta.id, hash = %r.meta.hash, author, "configuration revision published");
                self.set_applied(Some(r.meta.id), r.meta.hash);
                Ok(())
            }
            Err(e @ RevisionError::Conflict { .. }) => Err(problem(format!(
                "{e}: this replica applies it within seconds; retry the change on top of it"
            ))),
            Err(e) => Err(problem(format!(
                "the configuration store (Redis at {}) did not take the change ({e}): it is \
                 not applied, so that replicas do not drift apart; retry when Redis is back",
                self.settings.redacted()
            ))),
        }
    }

    /// Applies revision `r` to the working copy and the gateway (under the reload lock).
    async fn apply(
        &self,
        reloader: &Reloader,
        r: Revision,
        trigger: &str,
    ) -> Result<(), Vec<Problem>> {
        let mut current = reloader.lock().await;
        let previous = self.working_files().unwrap_or_default();
        if let Err(e) = revisions::write_files(&self.work.0, &self.work.1, &r.files) {
            return Err(vec![problem(format!("cannot write the working copy: {e}"))]);
        }
        match reloader.reload_locked(&mut current, trigger, false).await {
            Ok(_) => {
                self.set_applied(Some(r.meta.id), r.meta.hash.clone());
                tracing::info!(revision = r.meta.id, hash = %r.meta.hash, author = %r.meta.author, "configuration revision applied");
                Ok(())
            }
            Err(problems) => {
                if let Err(e) = revisions::write_files(&self.work.0, &self.work.1, &previous) {
                    tracing::error!(error = %e, "could not put the working copy back after a refused revision");
                }
                Err(problems)
            }
        }
    }

    /// Checks Redis once for a newer revision and applies it; also publishes bootstrap files
    /// taken while Redis was away.
    pub async fn sync_once(&self, reloader: &Reloader) {
        let store = &self.store;
        let newest = match store.current_id().await {
            Ok(id) => id,
            Err(e) => {
                self.count_error();
                tracing::debug!(error = %e, "cannot ask redis for the newest configuration revision");
                return;
            }
        };
        let (applied, _) = self.applied();
        match newest {
            None => {
                // An empty store (first start of the cluster, or Redis lost its data): what
                // this replica runs becomes the first revision.
                let _guard = reloader.lock().await;
                if applied.is_some() {
                    tracing::warn!("redis holds no configuration revision (restarted without its data?): publishing the configuration in force");
                    let hash = self.applied().1;
                    self.set_applied(None, hash);
                }
                if let Err(p) = self.publish_working_copy("bootstrap").await {
                    tracing::warn!(problem = %p, "could not publish the configuration in force");
                }
            }
            Some(id) if Some(id) != applied => {
                if self.refused.lock().map(|r| *r == Some(id)).unwrap_or(false) {
                    return;
                }
                let revision = match store.get(id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        self.count_error();
                        tracing::warn!(error = %e, revision = id, "cannot read a configuration revision");
                        return;
                    }
                };
                if applied.is_none() {
                    // Files taken while Redis was away: publish them on top when Redis never
                    // saw them; otherwise follow Redis.
                    let hash = self.applied().1;
                    if matches!(store.revision_with_hash(&hash).await, Ok(None)) {
                        let _guard = reloader.lock().await;
                        if let Err(p) = self.publish_working_copy("files").await {
                            tracing::warn!(problem = %p, "could not publish the configuration in force");
                        }
                        return;
                    }
                }
                if let Err(problems) = self
                    .apply(reloader, revision, &format!("revision {id}"))
                    .await
                {
                    if let Ok(mut r) = self.refused.lock() {
                        *r = Some(id);
                    }
                    for p in &problems {
                        tracing::error!(revision = id, problem = %p, "configuration revision refused on this replica; it keeps its configuration");
                    }
                }
            }
            Some(_) => {}
        }
    }

    fn count_error(&self) {
        if let Some(m) = self.metrics.get() {
            m.config_revision_errors.inc();
        }
    }

    /// Polls for newer revisions until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        reloader: Arc<Reloader>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.settings.revision_poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => self.sync_once(&reloader).await,
            }
        }
    }

    /// Up to `limit` revisions, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<revisions::RevisionMeta>, String> {
        self.store
            .list(limit)
            .await
            .map_err(|e| format!("{}: {e}", self.unreachable()))
    }

    /// One revision (the newest for `None`) with its diff against its parent.
    pub async fn get(&self, id: Option<u64>) -> Result<Option<(Revision, Option<String>)>, String> {
        let store = &self.store;
        let r = match id {
            Some(id) => store.get(id).await,
            None => store.current().await,
        }
        .map_err(|e| format!("{}: {e}", self.unreachable()))?;
        let Some(r) = r else { return Ok(None) };
        let diff = match r.meta.parent {
            Some(p) => store
                .get(p)
                .await
                .ok()
                .flatten()
                .map(|parent| revisions::diff(&parent.files, &r.files)),
            None => None,
        };
        Ok(Some((r, diff)))
    }

    /// Publishes revision `id`'s files again as the newest revision and applies it here.
    pub async fn restore(
        &self,
        reloader: &Reloader,
        id: u64,
        author: &str,
    ) -> Result<Revision, RestoreError> {
        let store = &self.store;
        let old = store
            .get(id)
            .await
            .map_err(|e| RestoreError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                RestoreError::NotFound(format!("revision {id} is not kept (or never was)"))
            })?;
        let mut current = reloader.lock().await;
        // Validate the old files here first: a restore that this replica would refuse is not
        // published.
        let previous = self.working_files().unwrap_or_default();
        revisions::write_files(&self.work.0, &self.work.1, &old.files).map_err(|e| {
            RestoreError::Unavailable(format!("cannot write the working copy: {e}"))
        })?;
        let put_back = |why: &str| {
            if let Err(e) = revisions::write_files(&self.work.0, &self.work.1, &previous) {
                tracing::error!(error = %e, why, "could not put the working copy back");
            }
        };
        if let Err(problems) = reloader.validate().await {
            put_back("restore refused");
            return Err(RestoreError::Invalid(problems));
        }
        let (based_on, _) = self.applied();
        let published = match store
            .publish(
                old.files.clone(),
                author,
                &self.replica,
                &format!("restore of revision {id}"),
                based_on,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                put_back("restore not published");
                return Err(RestoreError::Unavailable(e.to_string()));
            }
        };
        self.set_applied(Some(published.meta.id), published.meta.hash.clone());
        if let Err(problems) = reloader
            .reload_locked(
                &mut current,
                &format!("revision {} (restore)", published.meta.id),
                false,
            )
            .await
        {
            return Err(RestoreError::Invalid(problems));
        }
        Ok(published)
    }

    fn unreachable(&self) -> String {
        format!(
            "the configuration store (Redis at {}) cannot be reached",
            self.settings.redacted()
        )
    }
}

/// Why a restore did not happen.
#[derive(Debug)]
pub enum RestoreError {
    NotFound(String),
    Unavailable(String),
    Invalid(Vec<Problem>),
}

/// At start, in cluster mode: chooses what the working copy holds (see the module docs), writes
/// it, and loads the configuration from it. Without `[cluster] redis_url`, returns `config` as
/// it is.
pub async fn prepare(config: Config) -> Result<(Config, Option<Arc<ClusterSync>>), Vec<Problem>> {
    let Some(settings) = config.cluster.redis.clone() else {
        return Ok((config, None));
    };
    let root = config.data_dir.join("cluster");
    let work = (root.join("config/registry"), root.join("config/agreements"));
    let bootstrap = (config.registry_dir.clone(), config.agreements_dir.clone());
    let io = |what: &str, e: std::io::Error| vec![problem(format!("{what}: {e}"))];
    std::fs::create_dir_all(&root).map_err(|e| io(&root.display().to_string(), e))?;
    let state_file = root.join("state.json");
    let mut state: State = std::fs::read(&state_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let boot_files = revisions::read_files(&bootstrap.0, &bootstrap.1)
        .map_err(|e| io("cannot read the bootstrap configuration", e))?;
    let boot_hash = revisions::content_hash(&boot_files);
    let have_work = revisions::read_files(&work.0, &work.1)
        .ok()
        .filter(|f| !f.is_empty() && revisions::content_hash(f) == state.hash);

    let store = RevisionStore::new(&settings.url, settings.revisions_kept, settings.timeout)
        .map_err(|e| vec![problem(e.to_string())])?;
    // (files, the revision they are)
    let newest = store.current().await;
    let boot_known = match &newest {
        Ok(Some(_)) => store.revision_with_hash(&boot_hash).await,
        _ => Ok(None),
    };
    let chosen: (Files, Option<u64>) = match (newest, boot_known) {
        (Ok(Some(r)), Ok(Some(_))) => {
            tracing::info!(revision = r.meta.id, hash = %r.meta.hash, "taking the newest configuration revision from redis");
            (r.files, Some(r.meta.id))
        }
        (Ok(Some(r)), Ok(None)) => {
            // Files never published: edited since; they win (validated below, then published
            // by the first sync).
            tracing::info!(revision = r.meta.id, "bootstrap files differ from every revision in redis: they are proposed as the next revision");
            (boot_files.clone(), None)
        }
        (Ok(None), _) => (boot_files.clone(), None),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, redis = %settings.redacted(), "redis not reachable at start; serving the last applied revision (or the bootstrap files) until it is");
            local_choice(&state, &boot_hash, have_work, &boot_files)
        }
    };
    let (files, revision) = chosen;
    revisions::write_files(&work.0, &work.1, &files)
        .map_err(|e| io("cannot write the working copy", e))?;
    state.bootstrap_hash = boot_hash;
    state.hash = revisions::content_hash(&files);
    state.revision = revision;
    let overrides = Overrides {
        registry_dir: Some(work.0.display().to_string()),
        agreements_dir: Some(work.1.display().to_string()),
        ..config.overrides.clone()
    };
    let file = config.file.clone();
    let loaded = match crate::config::load(&file, &overrides) {
        Ok(c) => c,
        Err(e) if revision.is_some() => {
            // The revision does not validate on this replica (say, a file it names is
            // missing here): start from the bootstrap files, which validated a moment ago.
            for p in &e.problems {
                tracing::error!(problem = %p, "the newest configuration revision does not validate here; starting from the bootstrap files");
            }
            revisions::write_files(&work.0, &work.1, &boot_files)
                .map_err(|e| io("cannot write the working copy", e))?;
            state.hash = revisions::content_hash(&boot_files);
            state.revision = None;
            crate::config::load(&file, &overrides).map_err(|e| e.problems)?
        }
        Err(e) => return Err(e.problems),
    };
    let sync = ClusterSync {
        replica: loaded.cluster.replica_id.clone(),
        settings,
        bootstrap,
        work,
        state_file,
        state: std::sync::Mutex::new(state.clone()),
        store,
        refused: std::sync::Mutex::new(None),
        metrics: std::sync::OnceLock::new(),
    };
    sync.save(&state);
    Ok((loaded, Some(Arc::new(sync))))
}

/// Without Redis: the working copy of the last run when the bootstrap files are what it saw
/// then; the bootstrap files when they changed since (they are newer).
fn local_choice(
    state: &State,
    boot_hash: &str,
    work: Option<Files>,
    boot: &Files,
) -> (Files, Option<u64>) {
    match work {
        Some(files) if state.bootstrap_hash == boot_hash => (files, state.revision),
        _ => (boot.clone(), None),
    }
}

/// Console sessions in Redis (cluster mode), for the console's [`SharedSessions`]: a person
/// signed in on one replica is signed in on every replica, and a sign-out ends it everywhere.
///
/// [`SharedSessions`]: gerbang_admin::console::session::SharedSessions
pub struct ConsoleSessions(gerbang_cluster::sessions::SessionStore);

impl ConsoleSessions {
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        gerbang_cluster::sessions::SessionStore::new(&settings.url, settings.timeout).map(Self)
    }
}

impl gerbang_admin::console::session::SharedSessions for ConsoleSessions {
    fn save<'a>(
        &'a self,
        id: &'a str,
        session: &'a gerbang_admin::console::session::SharedSession,
        idle: std::time::Duration,
    ) -> gerbang_admin::console::session::StoreFuture<'a, ()> {
        Box::pin(async move {
            let text = serde_json::to_string(session).map_err(|e| e.to_string())?;
            self.0.save(id, &text, idle).await
        })
    }

    fn load<'a>(
        &'a self,
        id: &'a str,
        idle: std::time::Duration,
    ) -> gerbang_admin::console::session::StoreFuture<
        'a,
        Option<gerbang_admin::console::session::SharedSession>,
    > {
        Box::pin(async move {
            match self.0.load(id, idle).await? {
                Some(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| e.to_string()),
                None => Ok(None),
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> gerbang_admin::console::session::StoreFuture<'a, ()> {
        Box::pin(self.0.delete(id))
    }

    fn count_failure<'a>(
        &'a self,
        client: &'a str,
    ) -> gerbang_admin::console::session::StoreFuture<'a, ()> {
        Box::pin(self.0.count_failure(client))
    }

    fn failures<'a>(
        &'a self,
        client: &'a str,
    ) -> gerbang_admin::console::session::StoreFuture<'a, u64> {
        Box::pin(self.0.failures(client))
    }
}

/// The console's audit search over every replica (cluster mode), on the Redis audit bus:
/// the question goes to every replica, this one included, and each answers from its own log.
pub struct AuditFanout {
    bus: Arc<gerbang_cluster::audit_bus::AuditBus>,
    /// How long to wait for the replicas' answers.
    wait: std::time::Duration,
}

impl AuditFanout {
    /// The bus on `settings`' Redis; this replica answers questions from `log` until `stop`.
    pub fn start(
        settings: &RedisSettings,
        log: Option<gerbang_admin::console::audit_search::LocalLog>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Self, String> {
        let bus = Arc::new(gerbang_cluster::audit_bus::AuditBus::new(
            &settings.url,
            settings.timeout,
        )?);
        if let Some(log) = log {
            let handler = gerbang_admin::console::audit_search::handler(log);
            tokio::spawn(Arc::clone(&bus).serve(handler, stop));
        }
        Ok(Self {
            bus,
            // Reading a large log takes a while; the page waits at most this long.
            wait: std::time::Duration::from_secs(5).max(settings.timeout),
        })
    }
}

impl gerbang_admin::console::audit_search::AuditFanout for AuditFanout {
    fn search<'a>(
        &'a self,
        query: &'a gerbang_admin::console::audit_search::AuditQuery,
    ) -> gerbang_admin::console::session::StoreFuture<
        'a,
        (
            usize,
            Vec<gerbang_admin::console::audit_search::AuditAnswer>,
        ),
    > {
        Box::pin(async move {
            let id = gerbang_admin::console::session::random_hex().map_err(|e| e.to_string())?;
            let question = serde_json::to_string(query).map_err(|e| e.to_string())?;
            let got = self.bus.ask(&id, &question, self.wait).await?;
            let answers = got
                .answers
                .iter()
                .filter_map(|a| serde_json::from_str(a).ok())
                .collect();
            Ok((got.asked, answers))
        })
    }
}
