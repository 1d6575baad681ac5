//! The `[audit]` section and the audit log's keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gerbang_audit::{SealKey, SubjectKey};
use serde::Deserialize;

use super::{d, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    enabled: bool,
    /// Relative to `paths.data_dir`.
    dir: PathBuf,
    /// "always", "interval" or "never".
    fsync: String,
    #[serde(with = "humantime_serde")]
    fsync_interval: Duration,
    /// "closed" (refuse calls that cannot be recorded) or "open" (serve and count the loss).
    on_failure: String,
    max_file_bytes: u64,
    seal_every: u64,
    queue: usize,
    #[serde(with = "humantime_serde")]
    ack_timeout: Duration,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "audit".into(),
            fsync: "interval".into(),
            fsync_interval: d(1),
            on_failure: "closed".into(),
            max_file_bytes: 64 * 1024 * 1024,
            seal_every: 1000,
            queue: 10_000,
            ack_timeout: d(2),
        }
    }
}

/// File names of the audit keys: the seal key pair is each replica's own, in
/// `<data_dir>/keys/` ([`seal_dir_of`]); the subject key is shared, in `auth.keys_dir` (the
/// same directory when `keys_dir` is the default `keys`).
pub const SEAL_KEY_FILE: &str = "audit-seal.pk8";
pub const SEAL_PUBLIC_FILE: &str = "audit-seal.pub";
pub const SUBJECT_KEY_FILE: &str = "audit-subject.key";

/// The validated audit settings with their keys.
pub struct AuditConfig {
    pub dir: PathBuf,
    pub fsync: gerbang_audit::chain::Fsync,
    pub fail_closed: bool,
    pub max_file_bytes: u64,
    pub seal_every: u64,
    pub queue: usize,
    pub ack_timeout: Duration,
    pub idle_sync: Duration,
    /// This replica's seal key; `None` when it has none yet: `serve` creates it in `seal_dir`
    /// ([`ensure_seal_key`]), so that a new replica needs nothing but the shared keys.
    pub seal_key: Option<SealKey>,
    /// Where this replica's seal key is (or is created): `<data_dir>/keys`.
    pub seal_dir: PathBuf,
    /// Set when the seal key was read from the shared keys directory, where earlier versions
    /// kept it: that file.
    pub legacy_seal_key: Option<PathBuf>,
    pub subject_key: SubjectKey,
}

/// Where a replica keeps its own seal key pair: `<data_dir>/keys`.
pub fn seal_dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

pub(super) fn load_audit(
    raw: &RawAudit,
    file: &Path,
    data_dir: &Path,
    keys_dir: &Path,
    problems: &mut Problems,
) -> Option<AuditConfig> {
    if !raw.enabled {
        return None;
    }
    let before = problems.list.len();
    let fsync = match raw.fsync.as_str() {
        "always" => gerbang_audit::chain::Fsync::Always,
        "interval" => gerbang_audit::chain::Fsync::Interval(raw.fsync_interval),
        "never" => gerbang_audit::chain::Fsync::Never,
        other => {
            problems.push(
                file,
                "audit.fsync",
                format!("`{other}` is not \"always\", \"interval\" or \"never\""),
            );
            gerbang_audit::chain::Fsync::Never
        }
    };
    let fail_closed = match raw.on_failure.as_str() {
        "closed" => true,
        "open" => false,
        other => {
            problems.push(
                file,
                "audit.on_failure",
                format!("`{other}` is not \"closed\" or \"open\""),
            );
            true
        }
    };
    if raw.max_file_bytes < 4096 {
        problems.push(file, "audit.max_file_bytes", "at least 4096");
    }
    if raw.queue == 0 || raw.seal_every == 0 {
        problems.push(
            file,
            "audit.queue",
            "queue and seal_every must be at least 1",
        );
    }
    let seal_dir = seal_dir_of(data_dir);
    let own = seal_dir.join(SEAL_KEY_FILE);
    let legacy = keys_dir.join(SEAL_KEY_FILE);
    // This replica's key; else one in the shared directory, where earlier versions kept it (a
    // single node with its keys elsewhere keeps verifying its log); else none yet.
    let (seal_path, legacy_seal_key) = if own.exists() || legacy == own || !legacy.exists() {
        (own, None)
    } else {
        (legacy.clone(), Some(legacy))
    };
    let seal_key = match std::fs::read(&seal_path) {
        Ok(der) => match SealKey::from_pkcs8(&der) {
            Ok(k) => Some(Some(k)),
            Err(e) => {
                problems.push(file, "audit", format!("{}: {e}", seal_path.display()));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(None),
        Err(e) => {
            problems.push(
                file,
                "audit",
                format!("cannot read {}: {e}", seal_path.display()),
            );
            None
        }
    };
    let subject_file = keys_dir.join(SUBJECT_KEY_FILE);
    let hint = "the subject key is shared by every replica (their audit queries must agree): \
                create it with `gerbang rotate-key --config FILE`, or for a keys directory \
                shared by replicas (a Kubernetes Secret, a shared volume) with `gerbang \
                rotate-key --keys-dir DIR` and mount that directory as auth.keys_dir";
    let subject_key = match std::fs::read_to_string(&subject_file) {
        Ok(text) => SubjectKey::from_hex(&text)
            .map_err(|e| problems.push(file, "audit", format!("{}: {e}", subject_file.display())))
            .ok(),
        Err(e) => {
            problems.push(
                file,
                "audit",
                format!("cannot read {}: {e}; {hint}", subject_file.display()),
            );
            None
        }
    };
    let (seal_key, subject_key) = (seal_key?, subject_key?);
    let dir = if raw.dir.is_absolute() {
        raw.dir.clone()
    } else {
        data_dir.join(&raw.dir)
    };
    (problems.list.len() == before).then(|| AuditConfig {
        dir,
        fsync,
        fail_closed,
        max_file_bytes: raw.max_file_bytes,
        seal_every: raw.seal_every,
        queue: raw.queue,
        ack_timeout: raw.ack_timeout,
        idle_sync: raw.fsync_interval.min(d(1)).max(Duration::from_millis(10)),
        seal_key,
        seal_dir,
        legacy_seal_key,
        subject_key,
    })
}

/// Where a configuration keeps its audit log and its keys, resolved as `serve` resolves them
/// (`paths.data_dir`, `audit.dir`, `auth.keys_dir`, their `GERBANG__*` overrides), for the
/// `gerbang audit` commands: read leniently, so that a log can be checked while some other part
/// of the configuration is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDirs {
    pub data_dir: PathBuf,
    /// The log's files.
    pub audit_dir: PathBuf,
    /// The shared keys: the subject key is here (and, from earlier versions, maybe the seal
    /// key).
    pub keys_dir: PathBuf,
    /// This replica's seal key pair (`audit-seal.pub` verifies its log): `<data_dir>/keys`.
    pub seal_dir: PathBuf,
}

/// [`AuditDirs`] of the main file `main_file`.
pub fn audit_dirs_of(main_file: &Path) -> Result<AuditDirs, String> {
    #[derive(Deserialize, Default)]
    struct Partial {
        #[serde(default)]
        paths: PartialPaths,
        #[serde(default)]
        audit: PartialAudit,
    }
    #[derive(Deserialize, Default)]
    struct PartialPaths {
        data_dir: Option<PathBuf>,
    }
    #[derive(Deserialize, Default)]
    struct PartialAudit {
        dir: Option<PathBuf>,
    }
    let text = std::fs::read_to_string(main_file)
        .map_err(|e| format!("cannot read {}: {e}", main_file.display()))?;
    let p: Partial = toml::from_str(&text).map_err(|e| format!("{}: {e}", main_file.display()))?;
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let resolve = |base: &Path, p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let base = main_file.parent().unwrap_or(Path::new("."));
    let data_dir = resolve(
        base,
        env("GERBANG__PATHS__DATA_DIR")
            .or(p.paths.data_dir)
            .unwrap_or_else(|| "data".into()),
    );
    let audit_dir = resolve(
        &data_dir,
        env("GERBANG__AUDIT__DIR")
            .or(p.audit.dir)
            .unwrap_or_else(|| "audit".into()),
    );
    Ok(AuditDirs {
        keys_dir: super::keys_dir_of(main_file)?,
        seal_dir: seal_dir_of(&data_dir),
        data_dir,
        audit_dir,
    })
}

/// Creates both audit keys in `keys_dir` when missing (a single node whose keys directory is
/// `<data_dir>/keys`, tests, the demo): [`ensure_seal_key`] and [`ensure_subject_key`].
pub fn ensure_audit_keys(keys_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    created.extend(ensure_seal_key(keys_dir)?.1);
    created.extend(ensure_subject_key(keys_dir)?);
    Ok(created)
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// This replica's seal key in `seal_dir` (`<data_dir>/keys`), created with its public half
/// (`audit-seal.pub`) when missing (never replaced: it verifies the existing log). Returns the
/// key and, when it was created, its file.
pub fn ensure_seal_key(seal_dir: &Path) -> std::io::Result<(SealKey, Option<PathBuf>)> {
    let seal = seal_dir.join(SEAL_KEY_FILE);
    let invalid = |e: gerbang_audit::keys::KeyError| std::io::Error::other(e.to_string());
    if seal.exists() {
        let key = SealKey::from_pkcs8(&std::fs::read(&seal)?).map_err(invalid)?;
        return Ok((key, None));
    }
    std::fs::create_dir_all(seal_dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(seal_dir, std::fs::Permissions::from_mode(0o700));
    }
    let der = SealKey::generate_pkcs8().map_err(invalid)?;
    let key = SealKey::from_pkcs8(&der).map_err(invalid)?;
    write_new(&seal, &der)?;
    std::fs::write(
        seal_dir.join(SEAL_PUBLIC_FILE),
        hex::encode(key.public_key()) + "\n",
    )?;
    Ok((key, Some(seal)))
}

/// Creates the shared subject key in `keys_dir` when missing (never replaces one: it finds the
/// existing records). Returns the file when it was created.
pub fn ensure_subject_key(keys_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    std::fs::create_dir_all(keys_dir)?;
    let subject = keys_dir.join(SUBJECT_KEY_FILE);
    if subject.exists() {
        return Ok(None);
    }
    let hex_key = SubjectKey::generate_hex().map_err(|e| std::io::Error::other(e.to_string()))?;
    write_new(&subject, hex_key.as_bytes())?;
    Ok(Some(subject))
}
