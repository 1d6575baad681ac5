//! Gerbang's configuration: `gerbang.toml` (+ `GERBANG__SECTION__KEY` environment overrides),
//! a directory of registry files (one per agency) and a directory of agreement files.
//!
//! Flow: files → raw serde structs (`deny_unknown_fields`) → checks → typed [`Config`]. Every
//! problem found in every file is collected with its file, key or line, and reason (a broken
//! main file does not hide the registry's problems, nor the registry's the agreements'); nothing
//! half-valid is returned. [`load_with`] checks files as an [`Overlay`] (an admin edit) would
//! leave them. Only this crate knows the file format.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gerbang_proxy::{Limits, ListenerSettings, PoolSettings};
use gerbang_registry::{
    Agency, Application, Instance, Registry, RegistryBuilder, Scheme, ServiceLimits, ServiceSpec,
};
use serde::Deserialize;

mod audit;
mod auth;
mod cluster;
mod policy;
pub use audit::{
    audit_dirs_of, ensure_audit_keys, ensure_seal_key, ensure_subject_key, seal_dir_of,
    AuditConfig, AuditDirs, SEAL_KEY_FILE, SEAL_PUBLIC_FILE, SUBJECT_KEY_FILE,
};
pub use auth::{
    create_signing_key, key_activation_delay_of, key_creation_time, keys_dir_of,
    newest_key_activation, AuthConfig, ConsoleSignIn, ExternalKeySpec, ExternalSpec,
};
use auth::{RawApplication, RawAuth};
pub use cluster::{valid_replica_id, ClusterConfig, RedisFailureMode, RedisSettings};

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted key (`server.listen`, `service[0].instance[1].url`), `line N` for syntax errors,
    /// or `line N: what` for a located entry (`line 12: agreement pks-001: service`).
    pub key: String,
    pub message: String,
}

impl Problem {
    /// The line the key names, when it names one (`line N` or `line N: …`).
    pub fn line(&self) -> Option<usize> {
        split_line(&self.key).map(|(n, _)| n)
    }
}

/// `line N` → (N, ""); `line N: rest` → (N, rest).
fn split_line(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("line ")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let n = rest.get(..digits)?.parse().ok()?;
    match rest.get(digits..)? {
        "" => Some((n, "")),
        tail => tail.strip_prefix(": ").map(|t| (n, t)),
    }
}

impl fmt::Display for Problem {
    /// `file: key: message`, or `file:N: rest: message` when the key names a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match split_line(&self.key) {
            Some((n, "")) => write!(f, "{file}:{n}: {}", self.message),
            Some((n, rest)) => write!(f, "{file}:{n}: {rest}: {}", self.message),
            None if self.key.is_empty() => write!(f, "{file}: {}", self.message),
            None => write!(f, "{file}: {}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in one load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- raw: gerbang.toml

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    audit: audit::RawAudit,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    tracing: RawTracing,
    #[serde(default)]
    cluster: cluster::RawCluster,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTracing {
    /// OTLP/HTTP (protobuf) traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`; empty: off.
    otlp_endpoint: String,
    /// `service.name` of the exported spans.
    service_name: String,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "gerbang".into(),
        }
    }
}

/// Where the gateway's spans go (OTLP over HTTP).
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub service_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    /// Count calls for `GET /metrics`.
    enabled: bool,
    /// Label requests by consumer application (off: by agency only, for very large registries).
    per_application: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            enabled: true,
            per_application: true,
        }
    }
}

fn d(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    worker_threads: usize,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    max_connections: usize,
    tls: Option<RawTls>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            worker_threads: 0,
            shutdown_grace: d(30),
            header_read_timeout: d(10),
            max_connections: 10_000,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// "none", "optional" or "required": whether clients are asked for a certificate (mTLS).
    #[serde(default = "default_client_auth")]
    client_auth: String,
    /// CAs that client certificates must chain to.
    #[serde(default)]
    client_ca_files: Vec<PathBuf>,
}

fn default_client_auth() -> String {
    "none".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    /// Bearer tokens of the admin API, by name (who, in the audit log) and SHA-256 digest.
    tokens: Vec<RawAdminToken>,
    /// Reload when a registry, agreement or key file changes.
    watch_files: bool,
    /// A console session ends after this long without a request.
    #[serde(with = "humantime_serde")]
    console_idle_timeout: Duration,
    /// A console session ends this long after sign-in, however busy.
    #[serde(with = "humantime_serde")]
    console_max_session: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminToken {
    name: String,
    digest: String,
    /// `admin` (the default), `operator`, `auditor` or `viewer`.
    #[serde(default)]
    role: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9080".into(),
            tokens: Vec::new(),
            watch_files: true,
            console_idle_timeout: d(30 * 60),
            console_max_session: d(8 * 3600),
        }
    }
}

/// A bearer token of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Who uses it; recorded with every admin action.
    pub name: String,
    /// `sha256:` + hex of the token.
    pub digest: String,
    /// What the token may do on the admin API and the console.
    pub role: AdminRole,
}

/// What an admin token may do (`[admin] tokens = [{ …, role = "…" }]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AdminRole {
    /// Everything.
    #[default]
    Admin,
    /// Reload, validate, health; read everything; no edits.
    Operator,
    /// The audit views; read agreements; explain.
    Auditor,
    /// Read only (no audit search, no edits, no reload).
    Viewer,
}

impl AdminRole {
    /// Every role, most powerful first.
    pub const ALL: [AdminRole; 4] = [Self::Admin, Self::Operator, Self::Auditor, Self::Viewer];

    /// The role's name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
            Self::Viewer => "viewer",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for AdminRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_uri_bytes: usize,
    max_header_bytes: usize,
    max_filtered_response_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_uri_bytes: l.max_uri_bytes,
            max_header_bytes: l.max_header_bytes,
            max_filtered_response_bytes: l.max_filtered_response_bytes,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    system_roots: bool,
    ca_files: Vec<PathBuf>,
    #[serde(with = "humantime_serde")]
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        let p = PoolSettings::default();
        Self {
            connect_timeout: d(5),
            request_timeout: d(30),
            system_roots: true,
            ca_files: Vec::new(),
            pool_idle_timeout: p.idle_timeout,
            pool_max_idle_per_host: p.max_idle_per_host,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPaths {
    registry_dir: PathBuf,
    agreements_dir: PathBuf,
    data_dir: PathBuf,
}

impl Default for RawPaths {
    fn default() -> Self {
        Self {
            registry_dir: "registry".into(),
            agreements_dir: "agreements".into(),
            data_dir: "data".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

// ---------------------------------------------------------------- raw: registry files

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgencyFile {
    agency: RawAgency,
    #[serde(default)]
    application: Vec<RawApplication>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgency {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    id: String,
    name: String,
    #[serde(default)]
    base_path: String,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    /// SPBE/BSSN level of the service's data (default for its endpoints).
    #[serde(default)]
    classification: Option<String>,
    #[serde(default)]
    instance: Vec<RawInstance>,
    /// Declared endpoints; when present, calls to other paths are refused.
    #[serde(default)]
    endpoint: Vec<policy::RawEndpoint>,
    /// How the provider matches paths: `exact` or `case_insensitive` (needed when a literal
    /// endpoint is shadowed by a `{param}` of a lower classification).
    #[serde(default)]
    path_matching: Option<String>,
    /// `round_robin` (default), `weighted`, `least_request` or `consistent_hash`.
    #[serde(default)]
    load_balancing: Option<String>,
    /// The header whose value `consistent_hash` keeps on one instance.
    #[serde(default)]
    hash_header: Option<String>,
    #[serde(default)]
    health_check: Option<RawHealthCheck>,
    #[serde(default)]
    outlier_detection: Option<RawOutlier>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    circuit_breaker: Option<RawBreaker>,
    /// Request header names with `_` that the provider expects; every other such name is
    /// dropped (many stacks read `_` as `-`, so they could carry forged identity headers).
    #[serde(default)]
    allow_underscore_headers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetry {
    attempts: u32,
    #[serde(with = "humantime_serde")]
    per_try_timeout: Option<Duration>,
    budget_percent: u32,
    min_retry_concurrency: u32,
    #[serde(with = "humantime_serde")]
    backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    backoff_max: Duration,
}

impl Default for RawRetry {
    fn default() -> Self {
        let d = gerbang_registry::RetryPolicy::default();
        Self {
            attempts: d.attempts,
            per_try_timeout: d.per_try_timeout,
            budget_percent: d.budget_percent,
            min_retry_concurrency: d.min_retry_concurrency,
            backoff_base: d.backoff_base,
            backoff_max: d.backoff_max,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBreaker {
    max_requests: u32,
    max_pending: u32,
}

impl Default for RawBreaker {
    fn default() -> Self {
        let d = gerbang_registry::BreakerSettings::default();
        Self {
            max_requests: d.max_requests,
            max_pending: d.max_pending,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    name: String,
    url: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealthCheck {
    path: String,
    #[serde(with = "humantime_serde")]
    interval: Duration,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOutlier {
    consecutive_failures: u32,
    #[serde(with = "humantime_serde")]
    base_ejection: Duration,
    #[serde(with = "humantime_serde")]
    max_ejection: Duration,
}

impl Default for RawOutlier {
    fn default() -> Self {
        let d = gerbang_registry::OutlierSettings::default();
        Self {
            consecutive_failures: d.consecutive_failures,
            base_ejection: d.base_ejection,
            max_ejection: d.max_ejection,
        }
    }
}

// ---------------------------------------------------------------- typed

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub json: bool,
    /// An `EnvFilter` directive, e.g. `info` or `gerbang_proxy=debug,info`.
    pub level: String,
}

/// The validated configuration.
pub struct Config {
    /// The main file this was loaded from.
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Worker threads of the runtime; 0 = one per core.
    pub worker_threads: usize,
    pub listener: ListenerSettings,
    pub limits: Limits,
    pub pool: PoolSettings,
    pub upstream_tls: Arc<rustls::ClientConfig>,
    pub registry_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log: LogSettings,
    pub registry: Registry,
    pub auth: AuthConfig,
    /// Credentials of every registered application.
    pub credentials: Vec<gerbang_auth::authn::AppCredentials>,
    /// Agreements and declared endpoints.
    pub policy: gerbang_policy::PolicySet,
    /// Things that are allowed but probably wrong (expired or overlapping agreements).
    pub warnings: Vec<Problem>,
    /// The audit log; `None` when `audit.enabled = false`.
    pub audit: Option<AuditConfig>,
    /// Label metrics by consumer application.
    pub metrics_per_application: bool,
    /// Count calls for `GET /metrics`.
    pub metrics_enabled: bool,
    /// SHA-256 (first 16 hex digits) of every configuration input: the main file, the registry
    /// and agreement files, and `GERBANG__*` overrides.
    pub fingerprint: String,
    /// When credentials of the gateway expire: (kind, name, Unix time).
    pub expiries: Vec<(&'static str, String, i64)>,
    /// Span export; `None` when `tracing.otlp_endpoint` is empty.
    pub otlp: Option<OtlpSettings>,
    /// The command-line overrides this was loaded with (a reload uses them again).
    pub overrides: Overrides,
    pub agreements_dir: PathBuf,
    /// Where the signing keys are.
    pub keys_dir: PathBuf,
    pub admin_tokens: Vec<AdminToken>,
    pub watch_files: bool,
    /// The console's session lifetimes: idle, absolute.
    pub console_sessions: (Duration, Duration),
    /// `[cluster]`: this replica's name and the shared store.
    pub cluster: ClusterConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("registry_dir", &self.registry_dir)
            .finish_non_exhaustive()
    }
}

/// Registry and agreement files as a proposed change would leave them: path → new text, or
/// `None` for a file the change deletes. The admin API validates a change against the files
/// on disk with its overlay before it writes anything.
pub type Overlay = std::collections::HashMap<PathBuf, Option<String>>;

/// The `*.toml` files of `dir` as `overlay` would leave them, sorted.
pub fn toml_files(dir: &Path, overlay: &Overlay) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    for (path, text) in overlay {
        if path.parent() == Some(dir) && path.extension().is_some_and(|x| x == "toml") {
            match text {
                Some(_) if !files.contains(path) => files.push(path.clone()),
                None => files.retain(|f| f != path),
                Some(_) => {}
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The text of `path` as `overlay` would leave it.
pub fn read_text(path: &Path, overlay: &Overlay) -> std::io::Result<String> {
    match overlay.get(path) {
        Some(Some(text)) => Ok(text.clone()),
        Some(None) => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        None => std::fs::read_to_string(path),
    }
}

/// Overrides given on the command line, applied after the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Where the registry and agreement files are read instead of `paths.*_dir` (cluster
    /// mode: the replica's working copy of the configuration revision in force).
    pub registry_dir: Option<String>,
    pub agreements_dir: Option<String>,
}

struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn push(&mut self, file: &Path, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            file: file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Loads and validates `file`, its environment overrides and its registry directory.
pub fn load(file: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    load_with(file, overrides, &Overlay::new())
}

/// [`load`] with registry and agreement files replaced as `overlay` says.
pub fn load_with(
    file: &Path,
    overrides: &Overrides,
    overlay: &Overlay,
) -> Result<Config, ConfigError> {
    let mut fp = Fingerprint::new();
    fp.add("main", &std::fs::read(file).unwrap_or_default());
    let mut problems = Problems { list: Vec::new() };
    let mut builder = config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("GERBANG")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("upstream.ca_files")
                .with_list_parse_key("auth.strip_headers"),
        );
    let mut set = |key: &str, v: &Option<String>| {
        if let Some(v) = v {
            builder = std::mem::take(&mut builder)
                .set_override(key, v.as_str())
                .unwrap_or_default();
        }
    };
    set("server.listen", &overrides.listen);
    set("admin.listen", &overrides.admin_listen);
    set("paths.registry_dir", &overrides.registry_dir);
    set("paths.agreements_dir", &overrides.agreements_dir);
    let base = file.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let raw: RawConfig = match builder.build().and_then(|c| c.try_deserialize()) {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(file, "", describe_config_error(&e));
            // The registry and the agreements do not depend on the rest of the main file:
            // check them where it says (or, if it cannot say, where the defaults put them), so
            // that one typo does not hide their problems.
            let paths = PathsOf::main_file(file);
            let _ = load_registry_and_agreements(
                &resolve(&paths.registry_dir),
                &resolve(&paths.agreements_dir),
                &RawUpstream::default().service_defaults(),
                &paths.external_issuers,
                overlay,
                &mut fp,
                &mut problems,
            );
            return Err(ConfigError {
                problems: problems.list,
            });
        }
    };

    let listen = parse_addr(&raw.server.listen, file, "server.listen", &mut problems);
    let admin_listen = parse_addr(&raw.admin.listen, file, "admin.listen", &mut problems);
    let mut admin_tokens: Vec<AdminToken> = Vec::new();
    for (i, t) in raw.admin.tokens.iter().enumerate() {
        if t.name.is_empty() || t.name.len() > 64 {
            problems.push(
                file,
                format!("admin.tokens[{i}].name"),
                "1 to 64 characters",
            );
        }
        if !gerbang_auth::apikey::is_valid_digest(&t.digest) {
            problems.push(
                file,
                format!("admin.tokens[{i}].digest"),
                "not `sha256:` + 64 lower-case hex digits (`gerbang new-api-key` makes a token and its digest)",
            );
        }
        if admin_tokens
            .iter()
            .any(|o| o.digest == t.digest || o.name == t.name)
        {
            problems.push(
                file,
                format!("admin.tokens[{i}]"),
                "two admin tokens share a name or a digest",
            );
        }
        let role = match t.role.as_deref() {
            None => AdminRole::Admin,
            Some(r) => AdminRole::parse(r).unwrap_or_else(|| {
                problems.push(
                    file,
                    format!("admin.tokens[{i}].role"),
                    "one of admin, operator, auditor, viewer",
                );
                AdminRole::Viewer
            }),
        };
        admin_tokens.push(AdminToken {
            name: t.name.clone(),
            digest: t.digest.clone(),
            role,
        });
    }
    for (key, d) in [
        ("admin.console_idle_timeout", raw.admin.console_idle_timeout),
        ("admin.console_max_session", raw.admin.console_max_session),
    ] {
        if d.is_zero() {
            problems.push(file, key, "must be longer than zero");
        }
    }
    if let (Some(a), Some(b)) = (listen, admin_listen) {
        if a == b && a.port() != 0 {
            problems.push(file, "admin.listen", "must differ from server.listen");
        }
    }
    if raw.server.worker_threads > 1024 {
        problems.push(
            file,
            "server.worker_threads",
            "at most 1024 (0 = one per core)",
        );
    }
    if !(1..=1_000_000).contains(&raw.server.max_connections) {
        problems.push(
            file,
            "server.max_connections",
            "must be between 1 and 1000000",
        );
    }
    if raw.server.header_read_timeout.is_zero() {
        problems.push(
            file,
            "server.header_read_timeout",
            "must be greater than zero",
        );
    }
    if !(256..=65536).contains(&raw.limits.max_uri_bytes) {
        problems.push(
            file,
            "limits.max_uri_bytes",
            "must be between 256 and 65536",
        );
    }
    if !(1024..=256 * 1024 * 1024).contains(&raw.limits.max_filtered_response_bytes) {
        problems.push(
            file,
            "limits.max_filtered_response_bytes",
            "must be between 1024 and 268435456",
        );
    }
    if !(1024..=1024 * 1024).contains(&raw.limits.max_header_bytes) {
        problems.push(
            file,
            "limits.max_header_bytes",
            "must be between 1024 and 1048576",
        );
    }
    for (key, v) in [
        ("upstream.connect_timeout", raw.upstream.connect_timeout),
        ("upstream.request_timeout", raw.upstream.request_timeout),
    ] {
        if v.is_zero() {
            problems.push(file, key, "must be greater than zero");
        }
    }
    let log = match raw.log.format.as_str() {
        "human" | "json" => Some(LogSettings {
            json: raw.log.format == "json",
            level: raw.log.level.clone(),
        }),
        other => {
            problems.push(
                file,
                "log.format",
                format!("`{other}` is not a log format; use \"human\" or \"json\""),
            );
            None
        }
    };

    let mut server_cert_expiry = None;
    let server_tls = raw.server.tls.as_ref().and_then(|t| {
        let cert = read_file(
            &resolve(&t.cert_file),
            file,
            "server.tls.cert_file",
            &mut problems,
        );
        let key = read_file(
            &resolve(&t.key_file),
            file,
            "server.tls.key_file",
            &mut problems,
        );
        let mut client_cas = Vec::new();
        for (i, ca) in t.client_ca_files.iter().enumerate() {
            let key = format!("server.tls.client_ca_files[{i}]");
            if let Some(pem) = read_file(&resolve(ca), file, &key, &mut problems) {
                match gerbang_proxy::tls::parse_certs(&pem) {
                    Ok(certs) => client_cas.extend(certs),
                    Err(e) => problems.push(file, key, e.to_string()),
                }
            }
        }
        let client_auth = match t.client_auth.as_str() {
            "none" => gerbang_proxy::tls::ClientAuth::None,
            "optional" | "required" if t.client_ca_files.is_empty() => {
                problems.push(
                    file,
                    "server.tls.client_ca_files",
                    "client_auth needs at least one CA file for client certificates",
                );
                return None;
            }
            "optional" => gerbang_proxy::tls::ClientAuth::Optional(client_cas),
            "required" => gerbang_proxy::tls::ClientAuth::Required(client_cas),
            other => {
                problems.push(
                    file,
                    "server.tls.client_auth",
                    format!("`{other}` is not one of \"none\", \"optional\", \"required\""),
                );
                return None;
            }
        };
        let (cert, key) = (cert?, key?);
        server_cert_expiry = certificate_not_after(&cert);
        match gerbang_proxy::tls::server_config_with_client_auth(&cert, &key, client_auth) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(file, "server.tls", e.to_string());
                None
            }
        }
    });
    let mut extra_roots = Vec::new();
    for (i, ca) in raw.upstream.ca_files.iter().enumerate() {
        let key = format!("upstream.ca_files[{i}]");
        if let Some(pem) = read_file(&resolve(ca), file, &key, &mut problems) {
            match gerbang_proxy::tls::parse_certs(&pem) {
                Ok(certs) => extra_roots.extend(certs),
                Err(e) => problems.push(file, key, e.to_string()),
            }
        }
    }
    let upstream_tls =
        match gerbang_proxy::tls::client_config(raw.upstream.system_roots, &extra_roots) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(file, "upstream", e.to_string());
                None
            }
        };

    let defaults = raw.upstream.service_defaults();
    let registry_dir = resolve(&raw.paths.registry_dir);
    let otlp = (!raw.tracing.otlp_endpoint.is_empty()).then(|| OtlpSettings {
        endpoint: raw.tracing.otlp_endpoint.clone(),
        service_name: raw.tracing.service_name.clone(),
    });
    if let Some(o) = &otlp {
        match o.endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => problems.push(
                file,
                "tracing.otlp_endpoint",
                format!("`{}` is not an http(s) URL", o.endpoint),
            ),
        }
        if !cfg!(feature = "otlp") {
            problems.push(
                file,
                "tracing.otlp_endpoint",
                "this build has no OTLP exporter; build with `cargo build --release --features otlp` \
                 or leave the endpoint empty",
            );
        }
    }
    let data_dir = resolve(&raw.paths.data_dir);
    let listener_scheme = if raw.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let keys_dir_early = auth::keys_dir_of(file).unwrap_or_else(|_| data_dir.join("keys"));
    fp.add_keys(&keys_dir_early);
    let auth = auth::load_auth(
        &raw.auth,
        file,
        &data_dir,
        listener_scheme,
        &raw.server.listen,
        &resolve,
        &mut problems,
    );
    let keys_dir = auth::keys_dir_of(file).unwrap_or_else(|_| data_dir.join("keys"));
    let audit = audit::load_audit(&raw.audit, file, &data_dir, &keys_dir, &mut problems);
    let cluster = cluster::load_cluster(&raw.cluster, file, &mut problems);
    // Replicas behind one load balancer must issue and accept tokens under one `iss`; the
    // default (the address this process bound) differs per replica.
    if cluster.as_ref().is_some_and(|c| c.redis.is_some()) && raw.auth.issuer_is_unset() {
        problems.push(
            file,
            "auth.issuer",
            "cluster mode (cluster.redis_url) needs auth.issuer: the public URL every replica \
             serves under (e.g. https://gerbang.example.go.id); without it each replica's tokens \
             carry its own address as `iss` and the others refuse them",
        );
    }
    // Applications name the external issuer they trust by its `issuer` (`iss`).
    let external_issuers: Vec<String> = raw.auth.external.iter().map(|e| e.issuer_id()).collect();
    let stages = load_registry_and_agreements(
        &registry_dir,
        &resolve(&raw.paths.agreements_dir),
        &defaults,
        &external_issuers,
        overlay,
        &mut fp,
        &mut problems,
    );
    let mut warnings = stages.warnings;
    // One identity across replicas: in cluster mode the signing keys (and the audit subject
    // key) must be one directory every replica mounts; one inside this replica's data directory
    // is shared only if that directory is (then so would be the audit chain).
    if cluster.as_ref().is_some_and(|c| c.redis.is_some()) && keys_dir.starts_with(&data_dir) {
        warnings.push(
            file,
            "auth.keys_dir",
            format!(
                "cluster mode with the signing keys in this replica's data directory ({}): unless \
                 every replica reads this very directory, each signs with and publishes its own \
                 keys and the others refuse its tokens; mount one shared keys directory (a \
                 Secret, made with `gerbang rotate-key --keys-dir DIR`) as auth.keys_dir",
                keys_dir.display()
            ),
        );
    }
    // An application that authenticates by client certificate needs a listener that asks for
    // one.
    let asks_for_certificates = raw
        .server
        .tls
        .as_ref()
        .is_some_and(|t| matches!(t.client_auth.as_str(), "optional" | "required"));
    if !asks_for_certificates {
        let missing = match &raw.server.tls {
            None => "gerbang.toml has no [server.tls]",
            Some(_) => "[server.tls] asks clients for no certificate",
        };
        for (path, key) in &stages.mtls_applications {
            problems.push(
                path,
                key.as_str(),
                format!(
                    "`mtls` is in auth_methods but {missing}: add [server.tls] with cert_file, \
                     key_file, client_auth = \"optional\" (or \"required\") and client_ca_files \
                     (the CAs of the client certificates) to {}",
                    file.display()
                ),
            );
        }
    }
    let loaded = stages.complete.then_some(stages.loaded);
    let agreements = Some(stages.agreements);

    match (
        listen,
        admin_listen,
        log,
        upstream_tls,
        loaded,
        auth,
        agreements,
    ) {
        (
            Some(listen),
            Some(admin_listen),
            Some(log),
            Some(upstream_tls),
            Some(Loaded {
                registry,
                credentials,
                services,
            }),
            Some(auth),
            Some(agreements),
        ) if problems.list.is_empty() => {
            let Some(cluster) = cluster else {
                return Err(ConfigError {
                    problems: problems.list,
                });
            };
            let mut expiries = Vec::new();
            if let Some((kid, at)) = &auth.signing_key_due {
                expiries.push(("signing_key", kid.clone(), *at));
            }
            if let Some(at) = server_cert_expiry {
                expiries.push(("tls_certificate", "server".to_owned(), at));
            }
            for c in &credentials {
                if let Some(at) = c.api_keys.iter().filter_map(|(_, e)| *e).min() {
                    expiries.push(("api_key", c.application.clone(), at as i64));
                }
            }
            let fingerprint = fp.finish(overrides);
            Ok(Config {
                fingerprint,
                expiries,
                otlp,
                overrides: overrides.clone(),
                agreements_dir: resolve(&raw.paths.agreements_dir),
                keys_dir: keys_dir.clone(),
                admin_tokens,
                watch_files: raw.admin.watch_files,
                console_sessions: (
                    raw.admin.console_idle_timeout,
                    raw.admin.console_max_session,
                ),
                cluster,
                file: file.to_path_buf(),
                listen,
                admin_listen,
                worker_threads: raw.server.worker_threads,
                listener: ListenerSettings {
                    tls: server_tls,
                    header_read_timeout: raw.server.header_read_timeout,
                    // hyper's own buffer sits above the gateway's limits so that the gateway
                    // answers an oversized request with its JSON error.
                    max_head_bytes: raw.limits.max_uri_bytes + raw.limits.max_header_bytes + 4096,
                    shutdown_grace: raw.server.shutdown_grace,
                    max_connections: raw.server.max_connections,
                    open_connections: None,
                    park_idle_after: ListenerSettings::PARK_IDLE_AFTER,
                },
                limits: Limits {
                    max_uri_bytes: raw.limits.max_uri_bytes,
                    max_header_bytes: raw.limits.max_header_bytes,
                    max_filtered_response_bytes: raw.limits.max_filtered_response_bytes,
                },
                pool: PoolSettings {
                    idle_timeout: raw.upstream.pool_idle_timeout,
                    max_idle_per_host: raw.upstream.pool_max_idle_per_host,
                },
                upstream_tls,
                registry_dir,
                data_dir,
                log,
                registry,
                auth,
                credentials,
                policy: gerbang_policy::PolicySet::new(services, agreements),
                warnings: warnings.list,
                audit,
                metrics_per_application: raw.metrics.per_application,
                metrics_enabled: raw.metrics.enabled,
            })
        }
        _ => Err(ConfigError {
            problems: problems.list,
        }),
    }
}

impl RawUpstream {
    /// Timeouts a service inherits when it sets none.
    fn service_defaults(&self) -> ServiceLimits {
        ServiceLimits {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            max_body_bytes: None,
        }
    }
}

/// What the registry and agreement checks need from a main file that did not load: read
/// leniently (any other key may be wrong), with the same environment overrides.
struct PathsOf {
    registry_dir: PathBuf,
    agreements_dir: PathBuf,
    /// `issuer` of every `[[auth.external]]` entry that has one.
    external_issuers: Vec<String>,
}

impl PathsOf {
    fn main_file(file: &Path) -> Self {
        let table: toml::Table = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .unwrap_or_default();
        let path = |key: &str, env: &str, default: &str| -> PathBuf {
            std::env::var_os(env)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    table
                        .get("paths")
                        .and_then(|p| p.get(key))
                        .and_then(|v| v.as_str())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| default.into())
        };
        let external_issuers = table
            .get("auth")
            .and_then(|a| a.get("external"))
            .and_then(|e| e.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|e| e.get("issuer").and_then(|i| i.as_str()))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            registry_dir: path("registry_dir", "GERBANG__PATHS__REGISTRY_DIR", "registry"),
            agreements_dir: path(
                "agreements_dir",
                "GERBANG__PATHS__AGREEMENTS_DIR",
                "agreements",
            ),
            external_issuers,
        }
    }
}

/// The registry and the agreements, each checked as far as it can be.
struct Stages {
    /// What the registry files declared validly.
    loaded: Loaded,
    /// No problem in the registry files.
    complete: bool,
    agreements: Vec<gerbang_policy::Agreement>,
    warnings: Problems,
    /// (file, key) of every application that lists `mtls`.
    mtls_applications: Vec<(PathBuf, String)>,
}

/// Loads the registry, then checks the agreements against whatever of it is valid: a problem
/// in a registry file does not hide the agreements' problems.
fn load_registry_and_agreements(
    registry_dir: &Path,
    agreements_dir: &Path,
    defaults: &ServiceLimits,
    external_issuers: &[String],
    overlay: &Overlay,
    fp: &mut Fingerprint,
    problems: &mut Problems,
) -> Stages {
    let before = problems.list.len();
    let (loaded, mtls_applications) = load_registry(
        registry_dir,
        defaults,
        external_issuers,
        overlay,
        fp,
        problems,
    );
    let complete = problems.list.len() == before;
    let mut warnings = Problems { list: Vec::new() };
    let known = policy::Known {
        services: &loaded.services,
        applications: loaded
            .registry
            .applications()
            .iter()
            .map(|a| a.full_id())
            .collect(),
        agencies: loaded.registry.agencies().map(|a| a.id.clone()).collect(),
        registry_complete: complete,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let agreements = policy::load_agreements(
        agreements_dir,
        overlay,
        fp,
        &known,
        now,
        problems,
        &mut warnings,
    );
    Stages {
        loaded,
        complete,
        agreements,
        warnings,
        mtls_applications,
    }
}

/// The `notAfter` of the first certificate in `pem`, as Unix time.
fn certificate_not_after(pem: &[u8]) -> Option<i64> {
    let certs = gerbang_proxy::tls::parse_certs(pem).ok()?;
    let first = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A short hash of every configuration input, for the `gerbang_config_info` series (two
/// gateways with the same value run the same configuration) and for skipping a reload of what
/// is in force. Registry and agreement files are hashed from the very text the loader parsed;
/// the main file and the key files are read before their loaders, so a file that changes
/// meanwhile makes the hash older than what was loaded, never newer (a newer hash would make the
/// next reload skip a change that was not applied).
pub(crate) struct Fingerprint(aws_lc_rs::digest::Context);

impl Fingerprint {
    fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    pub(crate) fn add(&mut self, name: &str, bytes: &[u8]) {
        self.0.update(&(name.len() as u64).to_be_bytes());
        self.0.update(name.as_bytes());
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    /// Key files by name, size and time (not their secret contents): a rotated key changes it.
    fn add_keys(&mut self, keys_dir: &Path) {
        let mut keys: Vec<(String, u64, u128)> = std::fs::read_dir(keys_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        let t = m
                            .modified()
                            .ok()?
                            .duration_since(std::time::UNIX_EPOCH)
                            .ok()?
                            .as_nanos();
                        Some((e.file_name().to_string_lossy().into_owned(), m.len(), t))
                    })
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        for (name, len, t) in keys {
            self.add(&name, format!("{len}:{t}").as_bytes());
        }
    }

    fn finish(mut self, overrides: &Overrides) -> String {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("GERBANG__"))
            .collect();
        env.sort();
        for (k, v) in env {
            self.add(&k, v.as_bytes());
        }
        for v in [&overrides.listen, &overrides.admin_listen]
            .into_iter()
            .flatten()
        {
            self.add("override", v.as_bytes());
        }
        hex::encode(&self.0.finish().as_ref()[..8])
    }
}

fn describe_config_error(e: &config::ConfigError) -> String {
    match e {
        config::ConfigError::NotFound(p) => format!("configuration key `{p}` not found"),
        other => other.to_string(),
    }
}

fn parse_addr(s: &str, file: &Path, key: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(
                file,
                key,
                format!("`{s}` is not an IP address with a port, e.g. 127.0.0.1:8080"),
            );
            None
        }
    }
}

fn read_file(path: &Path, file: &Path, key: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(file, key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// A TOML text parsed once, to find the lines of many keys in it. Loading asks for the line of
/// several fields of every agreement; parsing the file again for each of them made a file of
/// 10,000 agreements take minutes to validate (quadratic in the file's size).
pub(crate) struct Located<'a> {
    doc: Option<toml_edit::Document<&'a str>>,
    /// Byte offset of every `\n` in the text, in order.
    newlines: Vec<usize>,
}

impl<'a> Located<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Located {
            doc: toml_edit::Document::parse(text).ok(),
            newlines: newline_offsets(text),
        }
    }

    /// The line (from 1) of byte offset `pos`.
    pub(crate) fn line_at(&self, pos: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < pos) + 1
    }

    /// The line (from 1) of a dotted key such as `agreement[1].consumers[0]`: of the deepest
    /// part of the key that is in the text (the entry itself when the field is absent). `None`
    /// when the text does not parse or not even the key's first part is in it.
    pub(crate) fn line_of(&self, dotted: &str) -> Option<usize> {
        use toml_edit::{Item, TableLike, Value};
        enum Node<'a> {
            Table(&'a dyn TableLike),
            Item(&'a Item),
            Value(&'a Value),
        }
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut at = None;
        'parts: for part in dotted.split('.') {
            let (name, indexes) = part.split_at(part.find('[').unwrap_or(part.len()));
            let next = match node {
                Node::Table(t) => t.get(name).map(Node::Item),
                Node::Item(i) => i.as_table_like().and_then(|t| t.get(name)).map(Node::Item),
                Node::Value(Value::InlineTable(t)) => t.get(name).map(Node::Value),
                Node::Value(_) => None,
            };
            let Some(next) = next else { break };
            node = next;
            at = match &node {
                Node::Item(i) => i.span(),
                Node::Value(v) => v.span(),
                Node::Table(_) => None,
            }
            .map(|s| s.start)
            .or(at);
            for idx in indexes.split(['[', ']']).filter(|x| !x.is_empty()) {
                let Ok(n) = idx.parse::<usize>() else {
                    break 'parts;
                };
                let (next, span) = match node {
                    Node::Item(Item::ArrayOfTables(a)) => match a.get(n) {
                        Some(t) => (Node::Table(t), t.span()),
                        None => break 'parts,
                    },
                    Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                        match a.get(n) {
                            Some(v) => (Node::Value(v), v.span()),
                            None => break 'parts,
                        }
                    }
                    _ => break 'parts,
                };
                node = next;
                at = span.map(|s| s.start).or(at);
            }
        }
        at.map(|pos| self.line_at(pos))
    }
}

/// The line (from 1) of byte offset `pos` of `text`, for a single lookup (a parse error's).
pub(crate) fn line_at(text: &str, pos: usize) -> usize {
    text.get(..pos).unwrap_or("").matches('\n').count() + 1
}

fn newline_offsets(text: &str) -> Vec<usize> {
    text.bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'\n')
        .map(|(i, _)| i)
        .collect()
}

/// A lower-case slug: letters, digits and `-`, starting with a letter or digit, 1–63 bytes.
pub fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// What the registry directory holds.
struct Loaded {
    registry: Registry,
    credentials: Vec<gerbang_auth::authn::AppCredentials>,
    services: std::collections::HashMap<String, gerbang_policy::ServicePolicy>,
}

/// First path segments the gateway serves itself (`/oauth/token`) or will (`/catalog/…`).
const RESERVED_AGENCY_IDS: [&str; 3] = ["oauth", "catalog", "admin"];

fn load_registry(
    dir: &Path,
    defaults: &ServiceLimits,
    external_issuers: &[String],
    overlay: &Overlay,
    fp: &mut Fingerprint,
    problems: &mut Problems,
) -> (Loaded, Vec<(PathBuf, String)>) {
    let mut mtls_applications = Vec::new();
    let files = match toml_files(dir, overlay) {
        Ok(f) => f,
        Err(e) => {
            problems.push(dir, "", format!("cannot read the registry directory: {e}"));
            let empty = Loaded {
                registry: RegistryBuilder::new().build(),
                credentials: Vec::new(),
                services: std::collections::HashMap::new(),
            };
            return (empty, mtls_applications);
        }
    };
    if files.is_empty() {
        problems.push(dir, "", "the registry directory holds no .toml file");
    }
    let before = problems.list.len();
    let mut builder = RegistryBuilder::new();
    let mut agency_files: Vec<(PathBuf, RawAgencyFile)> = Vec::new();
    let mut credentials = Vec::new();
    let mut services = std::collections::HashMap::new();
    for path in files {
        let text = match read_text(&path, overlay) {
            Ok(t) => t,
            Err(e) => {
                problems.push(&path, "", format!("cannot read: {e}"));
                continue;
            }
        };
        fp.add(
            path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
            text.as_bytes(),
        );
        match toml::from_str::<RawAgencyFile>(&text) {
            Ok(raw) => agency_files.push((path, raw)),
            Err(e) => {
                let line = e.span().map(|s| line_at(&text, s.start));
                let key = line.map(|l| format!("line {l}")).unwrap_or_default();
                problems.push(&path, key, e.message().to_owned());
            }
        }
    }
    // Agencies first so that files may be read in any order.
    let mut seen_agencies: Vec<(String, PathBuf)> = Vec::new();
    for (path, raw) in &agency_files {
        let id = &raw.agency.id;
        if !is_slug(id) {
            problems.push(
                path,
                "agency.id",
                format!("`{id}` is not a slug (a-z, 0-9, '-')"),
            );
            continue;
        }
        if RESERVED_AGENCY_IDS.contains(&id.as_str()) {
            problems.push(
                path,
                "agency.id",
                format!("`{id}` is reserved for the gateway's own endpoints"),
            );
            continue;
        }
        if let Some((_, other)) = seen_agencies.iter().find(|(a, _)| a == id) {
            problems.push(
                path,
                "agency.id",
                format!("agency `{id}` is already defined in {}", other.display()),
            );
            continue;
        }
        seen_agencies.push((id.clone(), path.clone()));
        let _ = builder.agency(Agency {
            id: id.clone(),
            name: raw.agency.name.clone(),
        });
    }
    for (path, raw) in &agency_files {
        let agency = &raw.agency.id;
        for (i, app) in raw.application.iter().enumerate() {
            let key = format!("application[{i}].id");
            if !is_slug(&app.id) {
                problems.push(
                    path,
                    key,
                    format!("`{}` is not a slug (a-z, 0-9, '-')", app.id),
                );
                continue;
            }
            if let Err(e) = builder.application(Application {
                agency: agency.clone(),
                id: app.id.clone(),
                name: app.name.clone(),
            }) {
                problems.push(path, key, e.to_string());
            }
            if app.auth_methods.iter().any(|m| m == "mtls") {
                mtls_applications.push((path.clone(), format!("application[{i}].auth_methods")));
            }
            credentials.push(auth::app_credentials(
                path,
                i,
                agency,
                app,
                external_issuers,
                problems,
            ));
        }
        for (i, svc) in raw.service.iter().enumerate() {
            services.insert(
                format!("{agency}/{}", svc.id),
                policy::service_policy(
                    path,
                    i,
                    svc.classification.as_deref(),
                    svc.path_matching.as_deref(),
                    &svc.endpoint,
                    problems,
                ),
            );
            if let Some(spec) = service_spec(path, i, agency, svc, defaults, problems) {
                if let Err(e) = builder.service(spec) {
                    problems.push(path, format!("service[{i}].id"), e.to_string());
                }
            }
        }
    }
    if problems.list.len() == before {
        // Credentials that two applications share (a pin, a key digest, an external id).
        if let Err(e) = gerbang_auth::authn::Authenticator::check_unique(&credentials) {
            problems.push(dir, "application", e.to_string());
        }
    }
    let loaded = Loaded {
        registry: builder.build(),
        credentials,
        services,
    };
    (loaded, mtls_applications)
}

fn service_spec(
    path: &Path,
    i: usize,
    agency: &str,
    raw: &RawService,
    defaults: &ServiceLimits,
    problems: &mut Problems,
) -> Option<ServiceSpec> {
    let before = problems.list.len();
    let key = |k: &str| format!("service[{i}].{k}");
    if !is_slug(&raw.id) {
        problems.push(
            path,
            key("id"),
            format!("`{}` is not a slug (a-z, 0-9, '-')", raw.id),
        );
    }
    let base_path = raw.base_path.trim_end_matches('/').to_owned();
    if !base_path.is_empty() {
        let ok = base_path.starts_with('/')
            && gerbang_proxy::path::normalize(&base_path).is_ok_and(|n| n.path == base_path);
        if !ok {
            problems.push(
                path,
                key("base_path"),
                "must be a normalised absolute path such as \"/api/v1\" (no '..', '//', query or encoded '/')",
            );
        }
    }
    for (k, v) in [
        ("connect_timeout", raw.connect_timeout),
        ("request_timeout", raw.request_timeout),
    ] {
        if v.is_some_and(|d| d.is_zero()) {
            problems.push(path, key(k), "must be greater than zero");
        }
    }
    if raw.max_body_bytes == Some(0) {
        problems.push(
            path,
            key("max_body_bytes"),
            "must be greater than zero; leave it out for no limit",
        );
    }
    if raw.instance.is_empty() {
        problems.push(
            path,
            key("instance"),
            "a service needs at least one instance",
        );
    }
    let mut instances: Vec<Instance> = Vec::new();
    for (j, inst) in raw.instance.iter().enumerate() {
        let ikey = |k: &str| format!("service[{i}].instance[{j}].{k}");
        if !is_slug(&inst.name) {
            problems.push(
                path,
                ikey("name"),
                format!("`{}` is not a slug (a-z, 0-9, '-')", inst.name),
            );
        } else if instances.iter().any(|x| x.name == inst.name) {
            problems.push(
                path,
                ikey("name"),
                format!("instance `{}` is listed twice", inst.name),
            );
        }
        if !(1..=gerbang_registry::balance::MAX_WEIGHT).contains(&inst.weight) {
            problems.push(
                path,
                ikey("weight"),
                format!(
                    "must be between 1 and {}",
                    gerbang_registry::balance::MAX_WEIGHT
                ),
            );
        }
        match parse_instance_url(&inst.url) {
            Ok((scheme, authority)) => instances.push(Instance {
                name: inst.name.clone(),
                scheme,
                authority,
                weight: inst.weight,
            }),
            Err(msg) => problems.push(path, ikey("url"), msg),
        }
    }
    let balancing = balancing_of(raw, &key, path, problems);
    let health_check = raw.health_check.as_ref().and_then(|h| {
        let before = problems.list.len();
        let normalized = gerbang_proxy::path::normalize(h.path.split('?').next().unwrap_or(""));
        if !h.path.starts_with('/') || normalized.is_err() || h.path.parse::<http::Uri>().is_err() {
            problems.push(
                path,
                key("health_check.path"),
                format!("`{}` is not an absolute path such as \"/health\"", h.path),
            );
        }
        if h.interval < Duration::from_millis(100) || h.interval > Duration::from_secs(3600) {
            problems.push(
                path,
                key("health_check.interval"),
                "must be between 100ms and 1h",
            );
        }
        if h.timeout.is_zero() || h.timeout > h.interval {
            problems.push(
                path,
                key("health_check.timeout"),
                "must be greater than zero and at most the interval",
            );
        }
        for (k, v) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                problems.push(
                    path,
                    key(&format!("health_check.{k}")),
                    "must be between 1 and 100",
                );
            }
        }
        (problems.list.len() == before).then(|| gerbang_registry::HealthCheckSettings {
            path: h.path.clone(),
            interval: h.interval,
            timeout: h.timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        })
    });
    let outlier = match &raw.outlier_detection {
        None => gerbang_registry::OutlierSettings::default(),
        Some(o) => {
            if o.consecutive_failures > 1000 {
                problems.push(
                    path,
                    key("outlier_detection.consecutive_failures"),
                    "at most 1000 (0 turns passive ejection off)",
                );
            }
            if o.base_ejection.is_zero() || o.base_ejection > o.max_ejection {
                problems.push(
                    path,
                    key("outlier_detection.base_ejection"),
                    "must be greater than zero and at most max_ejection",
                );
            }
            gerbang_registry::OutlierSettings {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection,
                max_ejection: o.max_ejection,
            }
        }
    };
    let retry = match &raw.retry {
        None => gerbang_registry::RetryPolicy::default(),
        Some(r) => {
            if !(1..=10).contains(&r.attempts) {
                problems.push(
                    path,
                    key("retry.attempts"),
                    "must be between 1 (no retries) and 10",
                );
            }
            if r.per_try_timeout.is_some_and(|t| t.is_zero()) {
                problems.push(
                    path,
                    key("retry.per_try_timeout"),
                    "must be greater than zero",
                );
            }
            if r.budget_percent > 100 {
                problems.push(path, key("retry.budget_percent"), "at most 100");
            }
            if r.backoff_base > r.backoff_max || r.backoff_max > Duration::from_secs(10) {
                problems.push(
                    path,
                    key("retry.backoff_base"),
                    "must be at most backoff_max, which is at most 10s",
                );
            }
            gerbang_registry::RetryPolicy {
                attempts: r.attempts,
                per_try_timeout: r.per_try_timeout,
                budget_percent: r.budget_percent,
                min_retry_concurrency: r.min_retry_concurrency,
                backoff_base: r.backoff_base,
                backoff_max: r.backoff_max,
            }
        }
    };
    let breaker = match &raw.circuit_breaker {
        None => gerbang_registry::BreakerSettings::default(),
        Some(b) => {
            for (k, v) in [
                ("max_requests", b.max_requests),
                ("max_pending", b.max_pending),
            ] {
                if !(1..=1_000_000).contains(&v) {
                    problems.push(
                        path,
                        key(&format!("circuit_breaker.{k}")),
                        "must be between 1 and 1000000",
                    );
                }
            }
            gerbang_registry::BreakerSettings {
                max_requests: b.max_requests,
                max_pending: b.max_pending,
            }
        }
    };
    let mut allow_underscore_headers = Vec::new();
    for (j, name) in raw.allow_underscore_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) if n.as_str().contains('_') => {
                allow_underscore_headers.push(n.as_str().to_owned());
            }
            _ => problems.push(
                path,
                key(&format!("allow_underscore_headers[{j}]")),
                format!("`{name}` is not a header name containing '_' (names without '_' are never dropped)"),
            ),
        }
    }
    (problems.list.len() == before).then(|| ServiceSpec {
        allow_underscore_headers,
        retry,
        breaker,
        agency: agency.to_owned(),
        id: raw.id.clone(),
        name: raw.name.clone(),
        base_path,
        limits: ServiceLimits {
            connect_timeout: raw.connect_timeout.unwrap_or(defaults.connect_timeout),
            request_timeout: raw.request_timeout.unwrap_or(defaults.request_timeout),
            max_body_bytes: raw.max_body_bytes,
        },
        instances,
        balancing: balancing.unwrap_or(gerbang_registry::Balancing::RoundRobin),
        outlier,
        health_check,
    })
}

fn balancing_of(
    raw: &RawService,
    key: &dyn Fn(&str) -> String,
    path: &Path,
    problems: &mut Problems,
) -> Option<gerbang_registry::Balancing> {
    use gerbang_registry::Balancing;
    let b = match raw.load_balancing.as_deref().unwrap_or("round_robin") {
        "round_robin" => Balancing::RoundRobin,
        "weighted" => Balancing::Weighted,
        "least_request" => Balancing::LeastRequest,
        "consistent_hash" => {
            let Some(h) = raw.hash_header.as_deref() else {
                problems.push(
                    path,
                    key("hash_header"),
                    "consistent_hash needs the header to hash on, e.g. hash_header = \"X-Session-Id\"",
                );
                return None;
            };
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(header) => Balancing::ConsistentHash { header },
                Err(_) => {
                    problems.push(
                        path,
                        key("hash_header"),
                        format!("`{h}` is not a header name"),
                    );
                    return None;
                }
            }
        }
        other => {
            problems.push(
                path,
                key("load_balancing"),
                format!(
                    "`{other}` is not one of round_robin, weighted, least_request, consistent_hash"
                ),
            );
            return None;
        }
    };
    if raw.hash_header.is_some() && !matches!(b, Balancing::ConsistentHash { .. }) {
        problems.push(
            path,
            key("hash_header"),
            "only used with load_balancing = \"consistent_hash\"",
        );
    }
    Some(b)
}

fn parse_instance_url(s: &str) -> Result<(Scheme, http::uri::Authority), String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{s}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{s}` must not carry credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{s}` must be scheme://host:port only; put a path prefix in base_path"
        ));
    }
    Ok((scheme, authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a configuration file; with the main file comes a signing key in the default
    /// key directory, which every valid configuration needs.
    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        if name == "gerbang.toml" && !dir.join("data/keys").exists() {
            create_signing_key(&dir.join("data/keys")).unwrap();
            ensure_audit_keys(&dir.join("data/keys")).unwrap();
            std::fs::create_dir_all(dir.join("agreements")).unwrap();
        }
    }

    const AGENCY: &str = r#"
[agency]
id = "dukcapil"
name = "Disdukcapil"

[[application]]
id = "siak"
name = "SIAK"
auth_methods = ["client_secret"]
client_secret_hashes = ["$argon2id$v=19$m=19456,t=2,p=1$laVo6x40kv3Og9CrcbabSA$xlAQ/Tbznyv8PyhZyOe+aT1p3Z2mQ1B66xqCH9ViElM"]

[[service]]
id = "penduduk"
name = "Data penduduk"
base_path = "/api"
request_timeout = "3s"
max_body_bytes = 1024

[[service.instance]]
name = "penduduk-1"
url = "http://127.0.0.1:18101"
"#;

    #[test]
    fn loads_a_valid_configuration() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gerbang.toml",
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        );
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        let c = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap();
        let s = c.registry.lookup("dukcapil", "penduduk").unwrap();
        assert_eq!(s.base_path, "/api");
        assert_eq!(s.limits.request_timeout, Duration::from_secs(3));
        assert_eq!(s.limits.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.limits.max_body_bytes, Some(1024));
        assert_eq!(c.limits.max_uri_bytes, 8192);
        assert_eq!(c.limits.max_header_bytes, 32768);
    }

    #[test]
    fn admin_token_roles_default_to_admin_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let main = |role: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 console_idle_timeout = \"5m\"\ntokens = [{{ name = \"a\", digest = \"{}\" }}, \
                 {{ name = \"b\", digest = \"{}\", role = \"{role}\" }}]\n",
                digest('a'),
                digest('b')
            )
        };
        write(dir.path(), "gerbang.toml", &main("auditor"));
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        let c = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap();
        let roles: Vec<AdminRole> = c.admin_tokens.iter().map(|t| t.role).collect();
        assert_eq!(roles, [AdminRole::Admin, AdminRole::Auditor]);
        assert_eq!(
            c.console_sessions,
            (Duration::from_secs(300), Duration::from_secs(8 * 3600))
        );
        write(
            dir.path(),
            "gerbang.toml",
            &main("viewer").replace("\"5m\"", "\"0s\""),
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("admin.console_idle_timeout: must be longer than zero"),
            "{err}"
        );
        write(dir.path(), "gerbang.toml", &main("boss"));
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains(
                "gerbang.toml: admin.tokens[1].role: one of admin, operator, auditor, viewer"
            ),
            "{err}"
        );
    }

    #[test]
    fn reports_every_problem_with_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gerbang.toml",
            "[server]\nlisten = \"nowhere\"\n[limits]\nmax_uri_bytes = 10\n[log]\nformat = \"xml\"\n",
        );
        write(
            dir.path(),
            "registry/a.toml",
            r#"
[agency]
id = "Bad Id"
name = "x"
"#,
        );
        write(
            dir.path(),
            "registry/b.toml",
            r#"
[agency]
id = "dinkes"
name = "Dinkes"

[[service]]
id = "faskes"
name = "Faskes"
base_path = "/a/../b"
max_body_bytes = 0

[[service.instance]]
name = "one"
url = "ftp://127.0.0.1:1/x"
"#,
        );
        write(
            dir.path(),
            "registry/c.toml",
            "[agency]\nid = \"c\"\nname = \"C\"\ncolour = \"red\"\n",
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        for needle in [
            "gerbang.toml: server.listen:",
            "gerbang.toml: limits.max_uri_bytes:",
            "gerbang.toml: log.format:",
            "a.toml: agency.id:",
            "b.toml: service[0].base_path:",
            "b.toml: service[0].max_body_bytes:",
            "b.toml: service[0].instance[0].url:",
            "c.toml:4: unknown field `colour`",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn client_certificates_need_a_ca_and_a_known_mode() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        for (tls, want) in [
            (
                "client_auth = \"required\"",
                "server.tls.client_ca_files: client_auth needs at least one CA file",
            ),
            (
                "client_auth = \"sometimes\"\nclient_ca_files = [\"ca.pem\"]",
                "server.tls.client_auth: `sometimes` is not one of",
            ),
        ] {
            write(
                dir.path(),
                "gerbang.toml",
                &format!("[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n{tls}\n"),
            );
            let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn balancing_health_retry_and_breaker_settings_are_checked_with_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "gerbang.toml", "");
        for (settings, want) in [
            (
                "load_balancing = \"random\"",
                "service[0].load_balancing: `random` is not one of",
            ),
            (
                "load_balancing = \"consistent_hash\"",
                "service[0].hash_header: consistent_hash needs the header",
            ),
            (
                "hash_header = \"X-Session-Id\"",
                "service[0].hash_header: only used with load_balancing",
            ),
            (
                "[service.health_check]\ninterval = \"1s\"\ntimeout = \"2s\"",
                "service[0].health_check.timeout: must be greater than zero and at most the interval",
            ),
            (
                "[service.health_check]\npath = \"health\"",
                "service[0].health_check.path: `health` is not an absolute path",
            ),
            (
                "[service.health_check]\nunhealthy_threshold = 0",
                "service[0].health_check.unhealthy_threshold: must be between 1 and 100",
            ),
            (
                "[service.outlier_detection]\nbase_ejection = \"10m\"",
                "service[0].outlier_detection.base_ejection: must be greater than zero and at most max_ejection",
            ),
            (
                "[service.retry]\nattempts = 0",
                "service[0].retry.attempts: must be between 1 (no retries) and 10",
            ),
            (
                "[service.circuit_breaker]\nmax_requests = 0",
                "service[0].circuit_breaker.max_requests: must be between 1 and 1000000",
            ),
        ] {
            let agency = AGENCY.replace(
                "max_body_bytes = 1024\n",
                &format!("max_body_bytes = 1024\n{settings}\n"),
            );
            write(dir.path(), "registry/dukcapil.toml", &agency);
            let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(want), "{settings}: {err}");
        }
        let agency = AGENCY.replace(
            "url = \"http://127.0.0.1:18101\"",
            "url = \"http://127.0.0.1:18101\"\nweight = 0",
        );
        write(dir.path(), "registry/dukcapil.toml", &agency);
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("service[0].instance[0].weight: must be between 1 and 100"),
            "{err}"
        );
    }

    #[test]
    fn an_otlp_endpoint_must_be_a_url_and_needs_the_feature() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        write(
            dir.path(),
            "gerbang.toml",
            "[tracing]\notlp_endpoint = \"collector:4318\"\n",
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("tracing.otlp_endpoint: `collector:4318` is not an http(s) URL"),
            "{err}"
        );
        write(
            dir.path(),
            "gerbang.toml",
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n",
        );
        let result = load(&dir.path().join("gerbang.toml"), &Overrides::default());
        let feature_problem = result.as_ref().err().is_some_and(|e| {
            e.to_string()
                .contains("this build has no OTLP exporter; build with")
        });
        assert_eq!(feature_problem, !cfg!(feature = "otlp"));
    }

    #[test]
    fn credentials_are_checked_with_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gerbang.toml",
            "[auth]\ntoken_ttl = \"1s\"\nstrip_headers = [\"Authorization\", \"bad header\"]\n\
             [[auth.external]]\nissuer = \"https://kc\"\nalgorithms = [\"HS256\"]\njwks_url = \"https://kc/jwks\"\n\
             [[auth.external]]\nissuer = \"https://kc2\"\nalgorithms = [\"ES256\"]\n",
        );
        let digest = gerbang_auth::apikey::digest_of(&format!("gk_{}", "1".repeat(64)));
        write(
            dir.path(),
            "registry/a.toml",
            r#"
[agency]
id = "oauth"
name = "reserved"
"#,
        );
        write(
            dir.path(),
            "registry/b.toml",
            &format!(
                r#"
[agency]
id = "dinkes"
name = "Dinkes"

[[application]]
id = "no-methods"
name = "x"

[[application]]
id = "plain-secret"
name = "x"
auth_methods = ["client_secret", "password"]
client_secret_hashes = ["demo-secret-simpus"]

[[application]]
id = "keys"
name = "x"
auth_methods = ["api_key"]
api_keys = [{{ digest = "{digest}", expires = 2027-01-01 }}, {{ digest = "md5:abc" }}]
cert_fingerprints = ["sha256:zz"]
"#
            ),
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        for want in [
            "gerbang.toml: auth.token_ttl: must be between 10s and 24h",
            "gerbang.toml: auth.strip_headers[0]: `Authorization` is needed",
            "gerbang.toml: auth.strip_headers[1]: `bad header` is not a header name",
            "gerbang.toml: auth.external[0].algorithms: HMAC algorithms (HS256) are not allowed",
            "gerbang.toml: auth.external[1].jwks_url: give exactly one of jwks_url and key_files",
            "a.toml: agency.id: `oauth` is reserved",
            "b.toml: application[0].auth_methods: list how the application authenticates",
            "b.toml: application[1].auth_methods[1]: `password` is not one of",
            "b.toml: application[1].client_secret_hashes[0]: not an argon2 hash",
            "b.toml: application[2].api_keys[0].expires: give a date and time with an offset",
            "b.toml: application[2].api_keys[1].digest: not a key digest",
            "b.toml: application[2].cert_fingerprints: cert_fingerprints is set but `mtls` is not in auth_methods",
            "b.toml: application[2].cert_fingerprints[0]: not a SHA-256 pin",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
    }

    #[test]
    fn console_sign_in_through_an_issuer_is_checked_with_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let external = "[[auth.external]]\nissuer = \"https://sso.test\"\naudiences = [\"gerbang\"]\n\
             algorithms = [\"ES256\"]\njwks_url = \"https://sso.test/jwks\"\n[auth.external.console]\n";
        write(
            dir.path(),
            "gerbang.toml",
            &format!(
                "{external}client_id = \"\"\nauthorization_endpoint = \"http://sso.test/auth\"\n\
                 token_endpoint = \"https://sso.test/token\"\nredirect_uri = \"https://gw.test/console/masuk\"\n\
                 scopes = [\"profile\"]\nclient_secret_file = \"missing-secret\"\n\
                 roles = {{ boss = [\"x\"], admin = [] }}\n"
            ),
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        for want in [
            "auth.external[0].console.client_id: must not be empty",
            "auth.external[0].console.authorization_endpoint: `http://sso.test/auth` must be an https URL",
            "auth.external[0].console.redirect_uri: must be this console's sign-in return address",
            "auth.external[0].console.scopes: must include `openid`",
            "auth.external[0].console.client_secret_file: cannot read",
            "auth.external[0].console.roles.boss: not a role",
            "auth.external[0].console.roles.admin: give the claim values",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        // Valid: loopback http is allowed, the roles are ordered most powerful first.
        write(dir.path(), "console-secret", "s3cret\n");
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        write(
            dir.path(),
            "gerbang.toml",
            &format!(
                "{external}client_id = \"c\"\nauthorization_endpoint = \"http://127.0.0.1:8081/auth\"\n\
                 token_endpoint = \"https://sso.test/token\"\nredirect_uri = \"https://gw.test/console/sso/kembali\"\n\
                 client_secret_file = \"console-secret\"\n\
                 roles = {{ viewer = [\"v\"], admin = [\"a\"] }}\n"
            ),
        );
        let config = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap();
        let c = config.auth.externals[0].console.as_ref().unwrap();
        assert_eq!(c.client_secret.as_deref(), Some("s3cret"));
        assert_eq!(c.label, "sso.test");
        let order: Vec<AdminRole> = c.roles.iter().map(|(r, _)| *r).collect();
        assert_eq!(order, [AdminRole::Admin, AdminRole::Viewer]);
    }

    #[test]
    fn one_credential_belongs_to_one_application() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "gerbang.toml", "");
        let digest = gerbang_auth::apikey::digest_of(&format!("gk_{}", "2".repeat(64)));
        let app = |id: &str| {
            format!(
                "[[application]]\nid = \"{id}\"\nname = \"x\"\nauth_methods = [\"api_key\"]\n\
                 api_keys = [{{ digest = \"{digest}\" }}]\n"
            )
        };
        write(
            dir.path(),
            "registry/b.toml",
            &format!(
                "[agency]\nid = \"b\"\nname = \"B\"\n{}{}",
                app("one"),
                app("two")
            ),
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("application `b/two`: API key digest"),
            "{err}"
        );
    }

    #[test]
    fn signing_keys_rotate_newest_first_and_retire_after_their_tokens_expired() {
        let dir = tempfile::tempdir().unwrap();
        // Tokens live 5m, assertions 1m, leeway 30s: a key retires 330s after its successor
        // began signing. A key with a predecessor signs 300s (the default delay) after it was
        // made.
        write(dir.path(), "gerbang.toml", "[auth]\ntoken_ttl = \"5m\"\n");
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        let keys = dir.path().join("data/keys");
        let first = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "pem"))
            .unwrap();
        let pem = std::fs::read(&first).unwrap();
        std::fs::remove_file(&first).unwrap();
        // Kids without a time in their name: their file time is their creation time.
        let set_age = |name: &str, age_secs: u64| {
            let p = keys.join(name);
            std::fs::write(&p, &pem).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(age_secs))
                .unwrap();
        };
        let main = dir.path().join("gerbang.toml");
        set_age("k2026a.pem", 10_000);
        set_age("k2026b.pem", 3_600); // has signed since 3300s ago: a's tokens are long expired
        set_age("k2026c.pem", 60); // made a minute ago: published, signs in 240s
        let c = load(&main, &Overrides::default()).unwrap();
        let ring = &c.auth.issuer.keys;
        assert_eq!(ring.active().unwrap().kid, "k2026b", "c is not active yet");
        assert!(
            ring.find("k2026c").is_some(),
            "c is published before it signs"
        );
        let at = ring.activation("k2026c").unwrap();
        let wait = at.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(
            wait > Duration::from_secs(230) && wait <= Duration::from_secs(240),
            "{wait:?}"
        );
        // Evaluated at signing time: no reload is needed when the delay ends.
        assert_eq!(ring.active_at(at).unwrap().kid, "k2026c");
        assert!(ring.find("k2026b").is_some(), "still published");
        assert!(ring.find("k2026a").is_none(), "retired");
        let jwks = serde_json::to_value(ring.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);

        // Retirement counts from the successor's activation, not its file time: b was made
        // 500s ago (longer than 330s) but has signed only for 200s, so a's tokens may live.
        set_age("k2026b.pem", 500);
        let c = load(&main, &Overrides::default()).unwrap();
        let ring = &c.auth.issuer.keys;
        assert_eq!(ring.active().unwrap().kid, "k2026b");
        assert!(
            ring.find("k2026a").is_some(),
            "a's tokens may still be valid"
        );

        // Without a delay (a single node may choose it), the newest key signs at once.
        write(
            dir.path(),
            "gerbang.toml",
            "[auth]\ntoken_ttl = \"5m\"\nkey_activation_delay = \"0s\"\n",
        );
        let c = load(&main, &Overrides::default()).unwrap();
        assert_eq!(c.auth.issuer.keys.active().unwrap().kid, "k2026c");

        std::fs::write(keys.join("k2026d.pem"), b"not a key").unwrap();
        let err = load(&main, &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("auth.keys_dir:") && err.to_string().contains("k2026d.pem"),
            "{err}"
        );
    }

    #[test]
    fn cluster_mode_with_keys_inside_the_data_directory_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = "[auth]\nissuer = \"https://gw.example\"\n\n[cluster]\n\
                       redis_url = \"redis://127.0.0.1:6379/0\"\n";
        write(dir.path(), "gerbang.toml", cluster);
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        let main = dir.path().join("gerbang.toml");
        let warned = |c: &Config| {
            c.warnings
                .iter()
                .any(|w| w.key == "auth.keys_dir" && w.message.contains("rotate-key --keys-dir"))
        };
        assert!(warned(&load(&main, &Overrides::default()).unwrap()));
        // A shared directory elsewhere: no warning.
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        for e in std::fs::read_dir(dir.path().join("data/keys")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, shared.join(p.file_name().unwrap())).unwrap();
        }
        write(
            dir.path(),
            "gerbang.toml",
            &cluster.replace(
                "[cluster]",
                &format!("keys_dir = {:?}\n\n[cluster]", shared.display().to_string()),
            ),
        );
        assert!(!warned(&load(&main, &Overrides::default()).unwrap()));
        // One node: nothing to share.
        write(dir.path(), "gerbang.toml", "");
        assert!(!warned(&load(&main, &Overrides::default()).unwrap()));
    }

    #[test]
    fn a_first_key_signs_at_once_and_a_rotated_one_after_the_delay_counted_from_its_name() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gerbang.toml",
            "[auth]\nkey_activation_delay = \"90s\"\n",
        );
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        let main = dir.path().join("gerbang.toml");
        let keys = dir.path().join("data/keys");
        // The fixture's one key: a fresh gateway signs with it immediately.
        let c = load(&main, &Overrides::default()).unwrap();
        let ring = &c.auth.issuer.keys;
        let first = ring.active().unwrap().kid.clone();
        assert_eq!(ring.activation(&first), None, "the first key signs at once");
        // A new key: its name says when it was made, the same on every replica whatever the
        // file's time (a copy into a Secret, another volume).
        std::thread::sleep(Duration::from_millis(1100));
        let second = create_signing_key(&keys).unwrap();
        let kid = second.file_stem().unwrap().to_str().unwrap().to_owned();
        let f = std::fs::File::options().write(true).open(&second).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400))
            .unwrap();
        let made = key_creation_time(&kid, None).unwrap();
        let now = std::time::SystemTime::now();
        assert!(now.duration_since(made).unwrap() < Duration::from_secs(5));
        let c = load(&main, &Overrides::default()).unwrap();
        let ring = &c.auth.issuer.keys;
        assert_eq!(ring.active().unwrap().kid, first, "the new key waits");
        assert_eq!(ring.activation(&kid), Some(made + Duration::from_secs(90)));
        assert_eq!(
            ring.active_at(made + Duration::from_secs(89)).unwrap().kid,
            first
        );
        assert_eq!(
            ring.active_at(made + Duration::from_secs(90)).unwrap().kid,
            kid
        );
        assert_eq!(
            newest_key_activation(&keys, Duration::from_secs(90)).unwrap(),
            Some(made + Duration::from_secs(90))
        );
        // Kid times: the form create_signing_key writes, with or without a `-N` suffix.
        let t = |k: &str| {
            key_creation_time(k, None).map(|t| {
                t.duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            })
        };
        assert_eq!(t("k20261202t024137z"), Some(1_796_179_297));
        assert_eq!(t("k20261202t024137z-2"), Some(1_796_179_297));
        assert_eq!(t("k19700101t000000z"), Some(0));
        assert_eq!(t("k20261302t024137z"), None);
        assert_eq!(t("2026-11-a"), None);
        // A delay no longer than the poll interval would let a replica sign before another
        // publishes.
        write(
            dir.path(),
            "gerbang.toml",
            "[auth]\nkey_activation_delay = \"5s\"\nkeys_poll_interval = \"5s\"\n",
        );
        let err = load(&main, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("auth.key_activation_delay"), "{err}");
    }

    #[test]
    fn agreements_are_checked_with_file_and_key_and_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "gerbang.toml", "");
        write(
            dir.path(),
            "registry/dukcapil.toml",
            &format!(
                "{AGENCY}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\n\
                 classification = \"rahasia\"\nsubject = \"nik\"\n\n\
                 [[service.endpoint]]\nmethod = \"FETCH\"\npath = \"/x\"\n\n\
                 [[service.endpoint]]\nmethod = \"GET\"\npath = \"/y/{{id}}\"\nsubject = \"nik\"\nclassification = \"secret\"\n"
            ),
        );
        write(
            dir.path(),
            "agreements/a.toml",
            r#"
[[agreement]]
id = "bad id!"
title = "t"
legal_basis = "x"
service = "dukcapil/nope"
consumers = []

[[agreement]]
id = "ok-1"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["dinkes/ghost", "ghostagency", "dukcapil/siak"]
endpoints = ["GET /penduduk/{id}"]
methods = ["FETCH"]
purposes = ["Pelayanan Kesehatan"]
valid_from = 2026-02-01
valid_until = 2026-01-01
status = "paused"
max_classification = "top"
rate_limit = { limit = 0, per = "hour" }
quota = { limit = 5, per = "week" }
[agreement.fields]
deny = ["a..b"]
"#,
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        for want in [
            "dukcapil.toml: service[0].endpoint[1].method: `FETCH` is not one of",
            "dukcapil.toml: service[0].endpoint[2].subject: `nik` is not a parameter of `/y/{id}`",
            "dukcapil.toml: service[0].endpoint[2].classification: `secret` is not a classification",
            // The registry's problems do not hide the agreements': they are checked against
            // what of the registry is valid, and an unknown name says it may be its entry's fault.
            "a.toml:14: agreement ok-1: consumers[0]: `dinkes/ghost` is not a registered application or agency (or its registry entry has a problem reported here)",
            "a.toml:16: agreement ok-1: methods[0]: `FETCH` is not one of",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        // With a valid registry, an unknown name is just unknown.
        write(
            dir.path(),
            "registry/dukcapil.toml",
            &format!(
                "{AGENCY}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\n"
            ),
        );
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        for want in [
            "a.toml:3: agreement[0]: id: `bad id!` is not an id",
            "a.toml:6: agreement[0]: service: `dukcapil/nope` is not a registered service",
            "a.toml:7: agreement[0]: consumers: name at least one consumer",
            "a.toml:14: agreement ok-1: consumers[0]: `dinkes/ghost` is not a registered application or agency",
            "a.toml:14: agreement ok-1: consumers[1]: `ghostagency` is not a registered",
            "a.toml:15: agreement ok-1: endpoints[0]: `GET /penduduk/{id}` is not an endpoint of `dukcapil/penduduk` (declared: GET /penduduk/{nik})",
            "a.toml:16: agreement ok-1: methods[0]: `FETCH` is not one of",
            "a.toml:17: agreement ok-1: purposes[0]: `Pelayanan Kesehatan` is not a purpose code",
            "a.toml:19: agreement ok-1: valid_until: is before valid_from",
            "a.toml:20: agreement ok-1: status: `paused` is not",
            "a.toml:21: agreement ok-1: max_classification: `top` is not a classification",
            "a.toml:22: agreement ok-1: rate_limit.per: `hour` is not",
            "a.toml:23: agreement ok-1: quota.per: `week` is not",
            "a.toml:25: agreement ok-1: fields.deny[0]: `a..b` is not a field path",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }

        // Valid but suspicious: warnings, not errors.
        write(
            dir.path(),
            "registry/dukcapil.toml",
            &format!(
                "{AGENCY}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\n"
            ),
        );
        write(
            dir.path(),
            "agreements/a.toml",
            r#"
[[agreement]]
id = "old"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["dukcapil/siak"]
valid_until = 2020-12-31

[[agreement]]
id = "twin-a"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["dukcapil"]

[[agreement]]
id = "twin-b"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["dukcapil", "*"]
endpoints = ["GET /penduduk/{nik}"]
"#,
        );
        let c = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap();
        let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("a.toml:8: agreement old: valid_until: `old` has expired")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w
                .contains("a.toml:22: agreement twin-b: consumers: `twin-b` overlaps `twin-a` (")
                && w.contains("a.toml:11) for the same consumer")),
            "{warnings:?}"
        );
        assert_eq!(c.policy.agreements().len(), 3);
    }

    /// Thousands of agreements in one file: the lines in warnings are exact, and loading stays
    /// linear. Looking each line up by parsing the file again was quadratic (3,000 agreements
    /// took minutes in a debug build; 10,000 in a release build did not finish in a minute).
    #[test]
    fn thousands_of_agreements_in_one_file_load_quickly_with_exact_lines() {
        const N: usize = 3000;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "gerbang.toml", "");
        let mut registry = format!(
            "{AGENCY}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\n"
        );
        for k in 0..N {
            registry.push_str(&format!(
                "\n[[application]]\nid = \"app{k}\"\nname = \"A\"\nauth_methods = [\"api_key\"]\napi_keys = [{{ digest = \"sha256:{k:064x}\" }}]\n"
            ));
        }
        write(dir.path(), "registry/dukcapil.toml", &registry);
        // Eight lines per agreement: `[[agreement]]` on line 8k+1, its id on 8k+2, consumers
        // on 8k+6, valid_until on 8k+7. pks-1500 has expired; pks-2999 has pks-2998's consumer.
        let mut agreements = String::new();
        for k in 0..N {
            let consumer = if k == N - 1 { k - 1 } else { k };
            let until = if k == 1500 {
                "2020-12-31"
            } else {
                "2099-12-31"
            };
            agreements.push_str(&format!(
                "[[agreement]]\nid = \"pks-{k}\"\ntitle = \"t\"\nlegal_basis = \"x\"\nservice = \"dukcapil/penduduk\"\nconsumers = [\"dukcapil/app{consumer}\"]\nvalid_until = {until}\n\n"
            ));
        }
        write(dir.path(), "agreements/a.toml", &agreements);
        let started = std::time::Instant::now();
        let c = load(&dir.path().join("gerbang.toml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("{:.2000}", e.to_string()));
        let took = started.elapsed();
        assert_eq!(c.policy.agreements().len(), N);
        let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        let expired = format!(
            "a.toml:{}: agreement pks-1500: valid_until: `pks-1500` has expired",
            8 * 1500 + 7
        );
        assert!(
            warnings.iter().any(|w| w.contains(&expired)),
            "{warnings:?}"
        );
        let overlaps: Vec<&String> = warnings.iter().filter(|w| w.contains("overlaps")).collect();
        assert_eq!(overlaps.len(), 1, "{overlaps:?}");
        assert!(
            overlaps[0].contains(&format!(
                "a.toml:{}: agreement pks-2999: consumers: `pks-2999` overlaps `pks-2998` (",
                8 * 2999 + 6
            )) && overlaps[0].contains(&format!("a.toml:{}) for the same consumer", 8 * 2998 + 2)),
            "{overlaps:?}"
        );
        // Generous for a loaded CI machine and a debug build; the quadratic version took
        // minutes here.
        assert!(
            took < std::time::Duration::from_secs(20),
            "loading took {took:?}"
        );
    }

    #[test]
    fn unknown_keys_in_the_main_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gerbang.toml",
            "[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 1\n",
        );
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        let err = load(&dir.path().join("gerbang.toml"), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gerbang.toml",
            "[server]\nshutdown_grace = \"3s\"\nworker_threads = 2\n",
        );
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        // No other test reads shutdown_grace, so setting it here races with nothing.
        std::env::set_var("GERBANG__SERVER__SHUTDOWN_GRACE", "7s");
        let c = load(&dir.path().join("gerbang.toml"), &Overrides::default());
        std::env::remove_var("GERBANG__SERVER__SHUTDOWN_GRACE");
        let c = c.unwrap();
        assert_eq!(c.listener.shutdown_grace, Duration::from_secs(7));
        assert_eq!(c.worker_threads, 2);
    }

    #[test]
    fn cli_overrides_listen_addresses() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "gerbang.toml", "");
        write(dir.path(), "registry/dukcapil.toml", AGENCY);
        let o = Overrides {
            listen: Some("127.0.0.1:18080".into()),
            admin_listen: Some("127.0.0.1:19080".into()),
            ..Default::default()
        };
        let c = load(&dir.path().join("gerbang.toml"), &o).unwrap();
        assert_eq!(c.listen.port(), 18080);
        assert_eq!(c.admin_listen.port(), 19080);
    }
}
