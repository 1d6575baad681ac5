//! The `[auth]` section of `gerbang.toml` (built-in issuer, external issuers, identity headers)
//! and the credential keys of `[[application]]` entries in registry files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gerbang_auth::authn::{AppCredentials, Methods};
use gerbang_auth::external::{ExternalConfigError, ExternalIssuer, IssuerKeys};
use gerbang_auth::keys::{KeyRing, SigningKey};
use gerbang_auth::token::Issuer;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{d, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    /// `iss` of the gateway's tokens and the base URL of its token endpoint; default
    /// `http(s)://{server.listen}`.
    issuer: Option<String>,
    audience: String,
    #[serde(with = "humantime_serde")]
    token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    leeway: Duration,
    /// Signing keys (`<kid>.pem`), relative to `paths.data_dir`.
    keys_dir: PathBuf,
    token_cache_size: usize,
    /// Forward a signed `X-Gerbang-Assertion` to providers.
    assertion: bool,
    #[serde(with = "humantime_serde")]
    assertion_ttl: Duration,
    /// How long a signing key is used before it should be rotated: the key's expiry metric
    /// (and its alert) counts from the key file's time.
    #[serde(with = "humantime_serde")]
    signing_key_max_age: Duration,
    /// How long after its creation a new signing key that has a predecessor starts signing
    /// (it is published at once): longer than it takes every replica to see the key file.
    #[serde(with = "humantime_serde")]
    key_activation_delay: Duration,
    /// How often the keys directory is checked for new or removed key files.
    #[serde(with = "humantime_serde")]
    keys_poll_interval: Duration,
    /// Request headers removed on every route, besides `X-Gerbang-*`.
    strip_headers: Vec<String>,
    /// Argon2 verifications run at once by the token endpoint; 0 = two per core.
    token_endpoint_concurrency: usize,
    /// Argon2 verifications one source address may have running or waiting for a slot.
    token_endpoint_concurrency_per_source: usize,
    /// Failed client authentications one source address may make in a burst; 0 = no limit.
    token_failures_per_source: u32,
    /// Failed client authentications for one registered client id in a burst; 0 = no limit.
    token_failures_per_client: u32,
    /// Time in which a used-up allowance of failures comes back whole.
    #[serde(with = "humantime_serde")]
    token_failure_window: Duration,
    pub(super) external: Vec<RawExternal>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: "gerbang".into(),
            token_ttl: d(300),
            leeway: d(30),
            keys_dir: "keys".into(),
            token_cache_size: 100_000,
            assertion: true,
            assertion_ttl: d(60),
            signing_key_max_age: d(90 * 86_400),
            key_activation_delay: d(300),
            keys_poll_interval: d(5),
            strip_headers: Vec::new(),
            token_endpoint_concurrency: 0,
            token_endpoint_concurrency_per_source: 1,
            token_failures_per_source: 10,
            token_failures_per_client: 30,
            token_failure_window: d(60),
            external: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExternal {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Vec<String>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    key_files: Vec<PathBuf>,
    #[serde(default = "default_client_claim")]
    client_claim: String,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    leeway: Duration,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    refresh_interval: Duration,
    #[serde(default = "default_min_refetch", with = "humantime_serde")]
    min_refetch_interval: Duration,
    /// `[auth.external.console]`: admins sign in to the console through this issuer.
    #[serde(default)]
    console: Option<RawConsoleSignIn>,
}

/// `[auth.external.console]`: OpenID Connect sign-in to the console (authorization code with
/// PKCE) through the issuer above, a claim of the ID token mapped to an admin role.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsoleSignIn {
    #[serde(default)]
    label: Option<String>,
    client_id: String,
    /// A file holding the client secret (a confidential client); none: a public client.
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    authorization_endpoint: String,
    token_endpoint: String,
    /// This console's `…/console/sso/kembali` as the issuer knows it.
    redirect_uri: String,
    #[serde(default = "default_sso_scopes")]
    scopes: Vec<String>,
    /// The claim holding the person's groups or roles (a dotted path: `realm_access.roles`).
    #[serde(default = "default_role_claim")]
    role_claim: String,
    /// Role → the claim values that give it (the most powerful match wins).
    #[serde(default)]
    roles: std::collections::BTreeMap<String, Vec<String>>,
    /// The claim that names the person in sessions and the audit log.
    #[serde(default = "default_name_claim")]
    name_claim: String,
}

fn default_sso_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}
fn default_role_claim() -> String {
    "groups".into()
}
fn default_name_claim() -> String {
    "preferred_username".into()
}

/// A validated `[auth.external.console]`.
#[derive(Debug, Clone)]
pub struct ConsoleSignIn {
    /// The sign-in button's text.
    pub label: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub role_claim: String,
    /// (role, claim values), most powerful role first.
    pub roles: Vec<(crate::AdminRole, Vec<String>)>,
    pub name_claim: String,
}

/// Whether `url` is https, or http to a loopback host (tests, a local issuer).
fn secure_or_loopback(url: &str) -> bool {
    let Ok(u) = url.parse::<http::Uri>() else {
        return false;
    };
    match (u.scheme_str(), u.host()) {
        (Some("https"), Some(_)) => true,
        (Some("http"), Some(h)) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

fn console_sign_in(
    c: &RawConsoleSignIn,
    issuer: &str,
    key: &dyn Fn(&str) -> String,
    file: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Problems,
) -> Option<ConsoleSignIn> {
    let before = problems.list.len();
    let key = |k: &str| key(&format!("console.{k}"));
    if c.client_id.is_empty() {
        problems.push(file, key("client_id"), "must not be empty");
    }
    for (name, url) in [
        ("authorization_endpoint", &c.authorization_endpoint),
        ("token_endpoint", &c.token_endpoint),
        ("redirect_uri", &c.redirect_uri),
    ] {
        if !secure_or_loopback(url) {
            problems.push(
                file,
                key(name),
                format!("`{url}` must be an https URL (http only to a loopback address)"),
            );
        }
    }
    if !c.redirect_uri.ends_with("/console/sso/kembali") {
        problems.push(
            file,
            key("redirect_uri"),
            "must be this console's sign-in return address, ending in /console/sso/kembali",
        );
    }
    if !c.scopes.iter().any(|s| s == "openid") {
        problems.push(file, key("scopes"), "must include `openid`");
    }
    if c.role_claim.is_empty() {
        problems.push(file, key("role_claim"), "must not be empty");
    }
    if c.name_claim.is_empty() {
        problems.push(file, key("name_claim"), "must not be empty");
    }
    let mut roles = Vec::new();
    for (name, values) in &c.roles {
        match crate::AdminRole::parse(name) {
            Some(r) if !values.is_empty() && values.iter().all(|v| !v.is_empty()) => {
                roles.push((r, values.clone()))
            }
            Some(_) => problems.push(
                file,
                key(&format!("roles.{name}")),
                "give the claim values (non-empty) that grant this role",
            ),
            None => problems.push(
                file,
                key(&format!("roles.{name}")),
                "not a role: admin, operator, auditor or viewer",
            ),
        }
    }
    if c.roles.is_empty() {
        problems.push(
            file,
            key("roles"),
            "required: which claim values grant which role, e.g. roles = { admin = [\"gerbang-admin\"] }; nobody gets a role by default",
        );
    }
    roles.sort_by_key(|(r, _)| crate::AdminRole::ALL.iter().position(|x| x == r));
    let client_secret = match &c.client_secret_file {
        None => None,
        Some(f) => {
            let path = resolve(f);
            match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                Ok(_) => {
                    problems.push(
                        file,
                        key("client_secret_file"),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    problems.push(
                        file,
                        key("client_secret_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
    };
    let label = c.label.clone().unwrap_or_else(|| {
        issuer
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .unwrap_or_else(|| issuer.to_owned())
    });
    (problems.list.len() == before).then(|| ConsoleSignIn {
        label,
        client_id: c.client_id.clone(),
        client_secret,
        authorization_endpoint: c.authorization_endpoint.clone(),
        token_endpoint: c.token_endpoint.clone(),
        redirect_uri: c.redirect_uri.clone(),
        scopes: c.scopes.clone(),
        role_claim: c.role_claim.clone(),
        roles,
        name_claim: c.name_claim.clone(),
    })
}

impl RawExternal {
    /// What identifies this issuer to applications (`external_issuer` in registry files): its
    /// `issuer`, the `iss` of its tokens.
    pub(super) fn issuer_id(&self) -> String {
        self.issuer.clone()
    }
}

fn default_client_claim() -> String {
    "azp".into()
}
fn default_leeway() -> Duration {
    d(30)
}
fn default_refresh() -> Duration {
    d(600)
}
fn default_min_refetch() -> Duration {
    d(30)
}

/// An `[[application]]` of a registry file, with its credential keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApplication {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub auth_methods: Vec<String>,
    #[serde(default)]
    pub client_secret_hashes: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    #[serde(default)]
    pub cert_fingerprints: Vec<String>,
    #[serde(default)]
    pub cert_names: Vec<String>,
    /// The `[[auth.external]]` issuer (its `issuer`) whose tokens may identify this
    /// application; required with `external_jwt`.
    #[serde(default)]
    pub external_issuer: Option<String>,
    #[serde(default)]
    pub external_client_ids: Vec<String>,
    /// Whether a client claim equal to the application's full id (`agency/app`) identifies it
    /// besides `external_client_ids` (off unless set).
    #[serde(default)]
    pub external_client_id_is_registry_id: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKey {
    digest: String,
    #[serde(default)]
    expires: Option<toml::value::Datetime>,
}

/// Where an external issuer's keys come from.
pub enum ExternalKeySpec {
    /// Read from PEM files at load.
    Static(IssuerKeys),
    /// Fetched from a JWKS URL at start and refreshed.
    Jwks {
        url: String,
        refresh_interval: Duration,
        min_refetch: Duration,
    },
}

/// A validated external issuer.
pub struct ExternalSpec {
    pub issuer: ExternalIssuer,
    pub keys: ExternalKeySpec,
    /// Console sign-in through this issuer, when configured.
    pub console: Option<ConsoleSignIn>,
}

/// The validated authentication settings.
pub struct AuthConfig {
    pub issuer: Issuer,
    /// Set when `auth.issuer` is not configured: the issuer URL is then this scheme and the
    /// address the data plane actually bound (known only at start, e.g. for port 0).
    pub issuer_from_listener: Option<&'static str>,
    pub externals: Vec<ExternalSpec>,
    pub token_cache_size: usize,
    /// Lifetime of gateway assertions; `None` when they are off.
    pub assertion_ttl: Option<Duration>,
    pub strip_headers: Vec<http::HeaderName>,
    /// Base URL of the token endpoint in the metadata document.
    pub public_base_url: String,
    /// The token endpoint's limits (argon2 slots, failed authentications).
    pub token_endpoint: gerbang_proxy::token_guard::TokenEndpointSettings,
    /// When the signing key in force is due for rotation: its kid and Unix time.
    pub signing_key_due: Option<(String, i64)>,
    /// How often the keys directory is polled for changes (a process setting).
    pub keys_poll_interval: Duration,
}

/// Key files older than their successor by more than this are retired: no token they signed
/// can still be valid.
fn retire_after(raw: &RawAuth) -> Duration {
    raw.token_ttl.max(raw.assertion_ttl) + raw.leeway
}

pub(super) fn load_auth(
    raw: &RawAuth,
    file: &Path,
    data_dir: &Path,
    listener_scheme: &'static str,
    listen: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Problems,
) -> Option<AuthConfig> {
    let before = problems.list.len();
    let issuer_url = raw
        .issuer
        .clone()
        .unwrap_or_else(|| format!("{listener_scheme}://{listen}"));
    let public_base_url = issuer_url.trim_end_matches('/').to_owned();
    match issuer_url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.query().is_none() => {}
        _ => problems.push(
            file,
            "auth.issuer",
            format!("`{issuer_url}` is not an http(s) URL without a query"),
        ),
    }
    if raw.audience.is_empty() {
        problems.push(file, "auth.audience", "must not be empty");
    }
    if raw.token_ttl < d(10) || raw.token_ttl > d(24 * 3600) {
        problems.push(
            file,
            "auth.token_ttl",
            "must be between 10s and 24h (short-lived tokens: 5m is the default)",
        );
    }
    if raw.leeway > d(300) {
        problems.push(file, "auth.leeway", "at most 5m");
    }
    if raw.assertion && (raw.assertion_ttl < d(5) || raw.assertion_ttl > d(600)) {
        problems.push(file, "auth.assertion_ttl", "must be between 5s and 10m");
    }
    if raw.signing_key_max_age < d(86_400) {
        problems.push(file, "auth.signing_key_max_age", "at least 1d");
    }
    if raw.keys_poll_interval < Duration::from_millis(100) || raw.keys_poll_interval > d(600) {
        problems.push(
            file,
            "auth.keys_poll_interval",
            "must be between 100ms and 10m",
        );
    }
    if raw.key_activation_delay > d(7 * 86_400) {
        problems.push(file, "auth.key_activation_delay", "at most 7d");
    } else if !raw.key_activation_delay.is_zero()
        && raw.key_activation_delay <= raw.keys_poll_interval
    {
        problems.push(
            file,
            "auth.key_activation_delay",
            format!(
                "must be longer than auth.keys_poll_interval ({}): every replica must see a new \
                 key before any signs with it (0s: a new key signs at once, for a single node)",
                humantime_serde::re::humantime::format_duration(raw.keys_poll_interval)
            ),
        );
    }
    if !(1..=10_000_000).contains(&raw.token_cache_size) {
        problems.push(
            file,
            "auth.token_cache_size",
            "must be between 1 and 10000000",
        );
    }
    check_token_endpoint(raw, file, problems);
    let mut strip_headers = Vec::new();
    for (i, h) in raw.strip_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if is_protected(&n) => problems.push(
                file,
                format!("auth.strip_headers[{i}]"),
                format!("`{h}` is needed to route or authenticate and cannot be stripped"),
            ),
            Ok(n) => strip_headers.push(n),
            Err(_) => problems.push(
                file,
                format!("auth.strip_headers[{i}]"),
                format!("`{h}` is not a header name"),
            ),
        }
    }

    let keys_dir = resolve_in(data_dir, &raw.keys_dir);
    let (ring, active_time) = load_signing_keys(
        &keys_dir,
        retire_after(raw),
        raw.key_activation_delay,
        SystemTime::now(),
        file,
        problems,
    );
    let mut externals = Vec::new();
    for (i, e) in raw.external.iter().enumerate() {
        if let Some(spec) = external_spec(e, i, file, resolve, problems) {
            if spec.issuer.issuer == issuer_url
                || externals
                    .iter()
                    .any(|o: &ExternalSpec| o.issuer.issuer == spec.issuer.issuer)
            {
                problems.push(
                    file,
                    format!("auth.external[{i}].issuer"),
                    "this issuer is configured twice (or is the gateway's own)",
                );
            }
            externals.push(spec);
        }
    }
    let ring = ring?;
    // The newest key is the one to rotate next (it signs now or soon).
    let signing_key_due = ring.kids().next().zip(active_time).map(|(kid, t)| {
        let made = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (
            kid.to_owned(),
            made.saturating_add(raw.signing_key_max_age.as_secs() as i64),
        )
    });
    (problems.list.len() == before).then(|| AuthConfig {
        signing_key_due,
        keys_poll_interval: raw.keys_poll_interval,
        issuer: Issuer {
            issuer: issuer_url,
            audience: raw.audience.clone(),
            ttl: raw.token_ttl,
            leeway: raw.leeway,
            keys: ring,
        },
        issuer_from_listener: raw.issuer.is_none().then_some(listener_scheme),
        externals,
        token_cache_size: raw.token_cache_size,
        assertion_ttl: raw.assertion.then_some(raw.assertion_ttl),
        strip_headers,
        public_base_url,
        token_endpoint: gerbang_proxy::token_guard::TokenEndpointSettings {
            concurrency: if raw.token_endpoint_concurrency == 0 {
                2 * std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                raw.token_endpoint_concurrency
            },
            per_source: raw.token_endpoint_concurrency_per_source,
            failures_per_source: raw.token_failures_per_source,
            failures_per_client: raw.token_failures_per_client,
            failure_window: raw.token_failure_window,
        },
    })
}

/// The token endpoint's limits: a source gets at least one secret check at a time; the window
/// is long enough to divide; one source alone cannot use up a client's allowance.
fn check_token_endpoint(raw: &RawAuth, file: &Path, problems: &mut Problems) {
    if raw.token_endpoint_concurrency_per_source == 0 {
        problems.push(
            file,
            "auth.token_endpoint_concurrency_per_source",
            "at least 1 (secret checks one source address may have running or waiting at once)",
        );
    }
    if raw.token_failure_window < d(1) || raw.token_failure_window > d(86_400) {
        problems.push(
            file,
            "auth.token_failure_window",
            "must be between 1s and 24h",
        );
    }
    for (k, n) in [
        ("token_failures_per_source", raw.token_failures_per_source),
        ("token_failures_per_client", raw.token_failures_per_client),
    ] {
        if n > 1_000_000 {
            problems.push(file, format!("auth.{k}"), "at most 1000000 (0 = no limit)");
        }
    }
    let (per_source, per_client) = (raw.token_failures_per_source, raw.token_failures_per_client);
    if per_source > 0 && per_client > 0 && per_client <= per_source {
        problems.push(
            file,
            "auth.token_failures_per_client",
            format!(
                "must be larger than token_failures_per_source ({per_source}) or 0: otherwise one \
                 source address guessing at a client's secret can keep that client from getting \
                 tokens"
            ),
        );
    }
}

impl RawAuth {
    /// `auth.issuer` is not configured (it then follows the listener's address).
    pub(super) fn issuer_is_unset(&self) -> bool {
        self.issuer.as_deref().is_none_or(|i| i.trim().is_empty())
    }
}

fn is_protected(n: &http::HeaderName) -> bool {
    n == http::header::HOST
        || n == http::header::AUTHORIZATION
        || n == http::header::CONTENT_LENGTH
        || n == http::header::TRANSFER_ENCODING
        || n.as_str() == "x-api-key"
        || n.as_str() == "x-request-id"
}

fn resolve_in(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The hint for a missing or empty keys directory.
const KEYS_HINT: &str = "create the keys with `gerbang rotate-key --config FILE`, or for a keys \
                         directory shared by replicas (a Kubernetes Secret, a shared volume) with \
                         `gerbang rotate-key --keys-dir DIR` (the demo creates its own)";

/// When the key `kid` was made: the UTC time its name encodes (`kYYYYMMDDtHHMMSSz`, as
/// [`create_signing_key`] names keys, optionally with `-N`), the same on every replica; else
/// the file's modification time.
pub fn key_creation_time(kid: &str, mtime: Option<SystemTime>) -> Option<SystemTime> {
    kid_time(kid).or(mtime)
}

fn kid_time(kid: &str) -> Option<SystemTime> {
    let stem = kid.split_once('-').map_or(kid, |(a, _)| a);
    let b = stem.as_bytes();
    if b.len() != 17 || b[0] != b'k' || b[9] != b't' || b[16] != b'z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = stem.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, m, dd) = (num(1..5)?, num(5..7)?, num(7..9)?);
    let (h, mi, se) = (num(10..12)?, num(12..14)?, num(14..16)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, dd) * 86_400 + h * 3600 + mi * 60 + se;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// One key file: its kid, path and creation time.
struct KeyFile {
    kid: String,
    path: PathBuf,
    created: SystemTime,
}

/// The key files of `dir`, oldest first (by creation time, then name).
fn key_files(dir: &Path) -> std::io::Result<Vec<KeyFile>> {
    let mut files: Vec<KeyFile> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .filter_map(|p| {
            let kid = p.file_stem()?.to_str()?.to_owned();
            let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            let created = key_creation_time(&kid, mtime).unwrap_or(SystemTime::UNIX_EPOCH);
            Some(KeyFile {
                kid,
                path: p,
                created,
            })
        })
        .collect();
    files.sort_by(|a, b| (a.created, a.kid.len(), &a.kid).cmp(&(b.created, b.kid.len(), &b.kid)));
    Ok(files)
}

/// When each key of `files` (oldest first) may sign: the oldest at once (`None`: a fresh
/// gateway with one key signs immediately), every later one `delay` after its creation.
fn activations(files: &[KeyFile], delay: Duration) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| (i > 0).then(|| f.created + delay))
        .collect()
}

/// When the newest key in `dir` starts signing under `delay` (for `rotate-key`'s message):
/// `None` when it is the only key (it signs at once).
pub fn newest_key_activation(dir: &Path, delay: Duration) -> std::io::Result<Option<SystemTime>> {
    let files = key_files(dir)?;
    Ok(activations(&files, delay).last().copied().flatten())
}

/// The signing keys in `dir`: every `<kid>.pem`, newest first. A key with a predecessor signs
/// from `activation_delay` after its creation (see [`key_creation_time`]); it is published at
/// once. A key whose successor has been signing for longer than `retire_after` (no token it
/// signed can still be valid) is left out of the JWKS. Returns the ring and the newest key's
/// creation time.
fn load_signing_keys(
    dir: &Path,
    retire_after: Duration,
    activation_delay: Duration,
    now: SystemTime,
    file: &Path,
    problems: &mut Problems,
) -> (Option<KeyRing>, Option<SystemTime>) {
    let files = match key_files(dir) {
        Ok(f) => f,
        Err(e) => {
            problems.push(
                file,
                "auth.keys_dir",
                format!("cannot read {}: {e}; {KEYS_HINT}", dir.display()),
            );
            return (None, None);
        }
    };
    if files.is_empty() {
        problems.push(
            file,
            "auth.keys_dir",
            format!(
                "no signing key (<kid>.pem) in {}; {KEYS_HINT}",
                dir.display()
            ),
        );
        return (None, None);
    }
    let activation = activations(&files, activation_delay);
    let newest_created = files.last().map(|f| f.created);
    let mut keys = Vec::new();
    for (i, f) in files.iter().enumerate().rev() {
        // Retired: the successor has signed for longer than any token lives.
        let retired = activation
            .get(i + 1)
            .copied()
            .flatten()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > retire_after);
        if retired {
            continue;
        }
        let pem = match std::fs::read(&f.path) {
            Ok(p) => p,
            Err(e) => {
                problems.push(
                    file,
                    "auth.keys_dir",
                    format!("cannot read {}: {e}", f.path.display()),
                );
                continue;
            }
        };
        match SigningKey::from_pem(&f.kid, &pem) {
            Ok(k) => keys.push((k, activation[i])),
            Err(e) => problems.push(file, "auth.keys_dir", format!("{}: {e}", f.path.display())),
        }
    }
    (KeyRing::with_activation(keys).ok(), newest_created)
}

/// Writes a new P-256 signing key to `dir` (created with mode 0700 if missing), named after the
/// current UTC time so that it sorts after every earlier key and becomes the active one.
/// Returns its path.
pub fn create_signing_key(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let pem =
        gerbang_auth::keys::generate_pem().map_err(|e| std::io::Error::other(e.to_string()))?;
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, dd) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut kid = format!(
        "k{y:04}{m:02}{dd:02}t{:02}{:02}{:02}z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    let mut n = 1;
    while dir.join(format!("{kid}.pem")).exists() {
        n += 1;
        kid = format!("{}-{n}", kid.split('-').next().unwrap_or("k"));
    }
    let path = dir.join(format!("{kid}.pem"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(&path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    Ok(path)
}

/// The signing key directory a configuration names, for `rotate-key` and the demo (which may
/// run before the configuration is valid, since a missing key is what they fix).
pub fn keys_dir_of(main_file: &Path) -> Result<PathBuf, String> {
    #[derive(Deserialize, Default)]
    struct Partial {
        #[serde(default)]
        paths: PartialPaths,
        #[serde(default)]
        auth: PartialAuth,
    }
    #[derive(Deserialize, Default)]
    struct PartialPaths {
        data_dir: Option<PathBuf>,
    }
    #[derive(Deserialize, Default)]
    struct PartialAuth {
        keys_dir: Option<PathBuf>,
    }
    let text = std::fs::read_to_string(main_file)
        .map_err(|e| format!("cannot read {}: {e}", main_file.display()))?;
    let p: Partial = toml::from_str(&text).map_err(|e| format!("{}: {e}", main_file.display()))?;
    // The same environment overrides `load` applies, so that `rotate-key` writes where `serve`
    // reads (the systemd unit sets GERBANG__PATHS__DATA_DIR).
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = main_file.parent().unwrap_or(Path::new("."));
    let data_dir = env("GERBANG__PATHS__DATA_DIR")
        .or(p.paths.data_dir)
        .unwrap_or_else(|| "data".into());
    let keys_dir = env("GERBANG__AUTH__KEYS_DIR")
        .or(p.auth.keys_dir)
        .unwrap_or_else(|| "keys".into());
    Ok(resolve_in(&resolve_in(base, &data_dir), &keys_dir))
}

/// `[auth] key_activation_delay` of a configuration (or its `GERBANG__AUTH__KEY_ACTIVATION_DELAY`
/// override), read leniently for `rotate-key`; the default when unset.
pub fn key_activation_delay_of(main_file: &Path) -> Result<Duration, String> {
    #[derive(Deserialize, Default)]
    struct Partial {
        #[serde(default)]
        auth: PartialAuth,
    }
    #[derive(Deserialize, Default)]
    struct PartialAuth {
        #[serde(default, with = "humantime_serde")]
        key_activation_delay: Option<Duration>,
    }
    let text = std::fs::read_to_string(main_file)
        .map_err(|e| format!("cannot read {}: {e}", main_file.display()))?;
    let p: Partial = toml::from_str(&text).map_err(|e| format!("{}: {e}", main_file.display()))?;
    let env = std::env::var("GERBANG__AUTH__KEY_ACTIVATION_DELAY")
        .ok()
        .filter(|v| !v.is_empty());
    match env {
        Some(v) => humantime_serde::re::humantime::parse_duration(&v)
            .map_err(|e| format!("GERBANG__AUTH__KEY_ACTIVATION_DELAY: {e}")),
        None => Ok(p
            .auth
            .key_activation_delay
            .unwrap_or(RawAuth::default().key_activation_delay)),
    }
}

fn external_spec(
    e: &RawExternal,
    i: usize,
    file: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problems: &mut Problems,
) -> Option<ExternalSpec> {
    let key = |k: &str| format!("auth.external[{i}].{k}");
    let before = problems.list.len();
    let mut algorithms = Vec::new();
    for (j, a) in e.algorithms.iter().enumerate() {
        match a.parse::<Algorithm>() {
            Ok(alg) => algorithms.push(alg),
            Err(_) => problems.push(
                file,
                key(&format!("algorithms[{j}]")),
                format!("`{a}` is not a JWS algorithm name (ES256, RS256, EdDSA, …)"),
            ),
        }
    }
    if e.audiences.is_empty() {
        problems.push(
            file,
            key("audiences"),
            "required: the `aud` values (any one suffices) that mark a token as meant for this \
             gateway, e.g. [\"gerbang\"]; without it the issuer's tokens for any other service \
             would be accepted here",
        );
    }
    for (j, a) in e.audiences.iter().enumerate() {
        if a.is_empty() {
            problems.push(file, key(&format!("audiences[{j}]")), "must not be empty");
        }
    }
    let issuer = match ExternalIssuer::new(
        e.issuer.clone(),
        e.audiences.clone(),
        algorithms,
        e.leeway,
        e.client_claim.clone(),
    ) {
        Ok(i) => Some(i),
        // Reported above, by key.
        Err(ExternalConfigError::NoAudience) => None,
        Err(err @ ExternalConfigError::NoClientClaim) => {
            problems.push(file, key("client_claim"), err.to_string());
            None
        }
        Err(err) => {
            problems.push(file, key("algorithms"), err.to_string());
            None
        }
    };
    if e.issuer.is_empty() {
        problems.push(file, key("issuer"), "must not be empty");
    }
    let keys = match (&e.jwks_url, e.key_files.is_empty()) {
        (Some(_), false) | (None, true) => {
            problems.push(
                file,
                key("jwks_url"),
                "give exactly one of jwks_url and key_files",
            );
            None
        }
        (Some(url), true) => {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
            if !ok {
                problems.push(
                    file,
                    key("jwks_url"),
                    format!("`{url}` is not an http(s) URL"),
                );
            }
            if e.refresh_interval < d(10) {
                problems.push(file, key("refresh_interval"), "at least 10s");
            }
            Some(ExternalKeySpec::Jwks {
                url: url.clone(),
                refresh_interval: e.refresh_interval,
                min_refetch: e.min_refetch_interval,
            })
        }
        (None, false) => {
            let mut set = jsonwebtoken::jwk::JwkSet { keys: Vec::new() };
            for (j, f) in e.key_files.iter().enumerate() {
                let k = key(&format!("key_files[{j}]"));
                let path = resolve(f);
                let Ok(pem) = std::fs::read(&path) else {
                    problems.push(file, k, format!("cannot read {}", path.display()));
                    continue;
                };
                // The `kid` is the file's stem, so tokens name the file.
                let kid = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                match gerbang_auth::jwk::from_pem_public_key(&pem, kid) {
                    Some(jwk) => set.keys.push(jwk),
                    None => problems.push(
                        file,
                        k,
                        "not a PEM public key (EC, RSA or Ed25519 SubjectPublicKeyInfo)",
                    ),
                }
            }
            Some(ExternalKeySpec::Static(IssuerKeys::from_jwks(&set)))
        }
    };
    let console = e
        .console
        .as_ref()
        .and_then(|c| console_sign_in(c, &e.issuer, &key, file, resolve, problems));
    let (issuer, keys) = (issuer?, keys?);
    (problems.list.len() == before).then_some(ExternalSpec {
        issuer,
        keys,
        console,
    })
}

/// Validates the credential keys of `application[i]` and builds its credentials;
/// `external_issuers` are the `issuer`s of the `[[auth.external]]` entries.
pub(super) fn app_credentials(
    path: &Path,
    i: usize,
    agency: &str,
    raw: &RawApplication,
    external_issuers: &[String],
    problems: &mut Problems,
) -> AppCredentials {
    let key = |k: &str| format!("application[{i}].{k}");
    let mut methods = Methods::default();
    for (j, m) in raw.auth_methods.iter().enumerate() {
        if !methods.enable(m) {
            problems.push(
                path,
                key(&format!("auth_methods[{j}]")),
                format!("`{m}` is not one of {}", Methods::NAMES.join(", ")),
            );
        }
    }
    if raw.auth_methods.is_empty() {
        problems.push(
            path,
            key("auth_methods"),
            format!(
                "list how the application authenticates: one or more of {}",
                Methods::NAMES.join(", ")
            ),
        );
    }
    let mut need = |enabled: bool, given: bool, k: &str, method: &str| {
        if enabled && !given {
            problems.push(
                path,
                key(k),
                format!("`{method}` is in auth_methods but {k} is empty"),
            );
        }
        if !enabled && given {
            problems.push(
                path,
                key(k),
                format!("{k} is set but `{method}` is not in auth_methods"),
            );
        }
    };
    need(
        methods.client_secret,
        !raw.client_secret_hashes.is_empty(),
        "client_secret_hashes",
        "client_secret",
    );
    need(
        methods.api_key,
        !raw.api_keys.is_empty(),
        "api_keys",
        "api_key",
    );
    need(
        methods.mtls,
        !(raw.cert_fingerprints.is_empty() && raw.cert_names.is_empty()),
        "cert_fingerprints",
        "mtls",
    );
    if !methods.external_jwt && !raw.external_client_ids.is_empty() {
        problems.push(
            path,
            key("external_client_ids"),
            "external_client_ids is set but `external_jwt` is not in auth_methods",
        );
    }
    check_external(
        path,
        &key,
        raw,
        methods.external_jwt,
        external_issuers,
        problems,
    );
    for (j, h) in raw.client_secret_hashes.iter().enumerate() {
        if !gerbang_auth::secret::is_valid_hash(h) {
            problems.push(
                path,
                key(&format!("client_secret_hashes[{j}]")),
                "not an argon2 hash; make one with `gerbang hash-secret` (never put the secret itself here)",
            );
        }
    }
    for (j, s) in raw.scopes.iter().enumerate() {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !ok {
            problems.push(
                path,
                key(&format!("scopes[{j}]")),
                format!(
                    "`{s}` is not a scope token (printable ASCII, no space, quote or backslash)"
                ),
            );
        }
    }
    let mut api_keys = Vec::new();
    for (j, k) in raw.api_keys.iter().enumerate() {
        if !gerbang_auth::apikey::is_valid_digest(&k.digest) {
            problems.push(
                path,
                key(&format!("api_keys[{j}].digest")),
                "not a key digest (sha256: and 64 lower-case hex digits); `gerbang new-api-key` makes a key and its digest",
            );
        }
        let expires = match &k.expires {
            None => None,
            Some(dt) => match datetime_to_unix(dt) {
                Some(t) => Some(t),
                None => {
                    problems.push(
                        path,
                        key(&format!("api_keys[{j}].expires")),
                        "give a date and time with an offset, e.g. 2027-06-30T23:59:59+07:00",
                    );
                    None
                }
            },
        };
        api_keys.push((k.digest.clone(), expires));
    }
    for (j, p) in raw.cert_fingerprints.iter().enumerate() {
        if gerbang_auth::mtls::normalize_pin(p).is_none() {
            problems.push(
                path,
                key(&format!("cert_fingerprints[{j}]")),
                "not a SHA-256 pin: sha256: and 64 hex digits (colons allowed)",
            );
        }
    }
    AppCredentials {
        application: format!("{agency}/{}", raw.id),
        agency: agency.to_owned(),
        methods,
        secret_hashes: raw.client_secret_hashes.clone(),
        scopes: raw.scopes.clone(),
        api_keys,
        cert_fingerprints: raw.cert_fingerprints.clone(),
        cert_names: raw.cert_names.clone(),
        external_issuer: raw.external_issuer.clone(),
        external_client_ids: raw.external_client_ids.clone(),
        external_client_id_is_registry_id: raw.external_client_id_is_registry_id,
    }
}

/// An application with `external_jwt` names one configured issuer and at least one way its
/// tokens name the application; without `external_jwt` it names none.
fn check_external(
    path: &Path,
    key: &dyn Fn(&str) -> String,
    raw: &RawApplication,
    external_jwt: bool,
    external_issuers: &[String],
    problems: &mut Problems,
) {
    if !external_jwt {
        if raw.external_issuer.is_some() {
            problems.push(
                path,
                key("external_issuer"),
                "external_issuer is set but `external_jwt` is not in auth_methods",
            );
        }
        if raw.external_client_id_is_registry_id {
            problems.push(
                path,
                key("external_client_id_is_registry_id"),
                "external_client_id_is_registry_id is set but `external_jwt` is not in auth_methods",
            );
        }
        return;
    }
    let known = if external_issuers.is_empty() {
        "gerbang.toml configures no [[auth.external]] issuer".to_owned()
    } else {
        format!("one of {}", external_issuers.join(", "))
    };
    match &raw.external_issuer {
        None => problems.push(
            path,
            key("external_issuer"),
            format!(
                "`external_jwt` is in auth_methods but external_issuer is missing: name the \
                 [[auth.external]] issuer (its `issuer`) whose tokens may identify this \
                 application ({known})"
            ),
        ),
        Some(iss) if !external_issuers.contains(iss) => problems.push(
            path,
            key("external_issuer"),
            format!("`{iss}` is not the `issuer` of an [[auth.external]] entry ({known})"),
        ),
        Some(_) => {}
    }
    if raw.external_client_ids.is_empty() && !raw.external_client_id_is_registry_id {
        problems.push(
            path,
            key("external_client_ids"),
            "`external_jwt` is in auth_methods but external_client_ids is empty: list the values \
             of the issuer's client claim that identify this application (or set \
             external_client_id_is_registry_id = true to accept its full id `agency/app`)",
        );
    }
    for (j, id) in raw.external_client_ids.iter().enumerate() {
        if id.is_empty() {
            problems.push(
                path,
                key(&format!("external_client_ids[{j}]")),
                "must not be empty",
            );
        }
    }
}

/// Seconds since the epoch of a TOML offset date-time; `None` for a local or partial one.
pub(super) fn datetime_to_unix(dt: &toml::value::Datetime) -> Option<u64> {
    let date = dt.date?;
    let time = dt.time?;
    let offset_min: i64 = match dt.offset? {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_min * 60;
    u64::try_from(secs).ok()
}

// One calendar for the whole gateway: the policy crate's (quota periods use it too).
pub(super) use gerbang_policy::limits::{civil_from_days, days_from_civil};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_conversions_agree_with_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(
            civil_from_days(days_from_civil(2026, 11, 28)),
            (2026, 11, 28)
        );
        let dt: toml::value::Datetime = "2027-06-30T23:59:59+07:00".parse().unwrap();
        // 2027-06-30T16:59:59Z
        assert_eq!(datetime_to_unix(&dt), Some(1_814_374_799));
        let local: toml::value::Datetime = "2027-06-30T23:59:59".parse().unwrap();
        assert_eq!(datetime_to_unix(&local), None);
    }
}
