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

/// File names of the audit keys in the key directory.
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
    pub seal_key: SealKey,
    pub subject_key: SubjectKey,
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
    let hint = "create it with `gerbang rotate-key --config FILE` (the demo creates its own)";
    let seal_key = match std::fs::read(keys_dir.join(SEAL_KEY_FILE)) {
        Ok(der) => SealKey::from_pkcs8(&der)
            .map_err(|e| {
                problems.push(
                    file,
                    "audit",
                    format!("{}: {e}", keys_dir.join(SEAL_KEY_FILE).display()),
                )
            })
            .ok(),
        Err(e) => {
            problems.push(
                file,
                "audit",
                format!(
                    "cannot read {}: {e}; {hint}",
                    keys_dir.join(SEAL_KEY_FILE).display()
                ),
            );
            None
        }
    };
    let subject_key = match std::fs::read_to_string(keys_dir.join(SUBJECT_KEY_FILE)) {
        Ok(text) => SubjectKey::from_hex(&text)
            .map_err(|e| {
                problems.push(
                    file,
                    "audit",
                    format!("{}: {e}", keys_dir.join(SUBJECT_KEY_FILE).display()),
                )
            })
            .ok(),
        Err(e) => {
            problems.push(
                file,
                "audit",
                format!(
                    "cannot read {}: {e}; {hint}",
                    keys_dir.join(SUBJECT_KEY_FILE).display()
                ),
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
    /// The seal public key and the subject key are here.
    pub keys_dir: PathBuf,
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
        data_dir,
        audit_dir,
    })
}

/// Creates the audit keys in `keys_dir` when missing (never replaces one: the seal key
/// verifies the existing log, the subject key finds its records). Returns the files created.
pub fn ensure_audit_keys(keys_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(keys_dir)?;
    let mut created = Vec::new();
    let write_new = |path: &Path, bytes: &[u8]| -> std::io::Result<()> {
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
    };
    let seal = keys_dir.join(SEAL_KEY_FILE);
    if !seal.exists() {
        let der = SealKey::generate_pkcs8().map_err(|e| std::io::Error::other(e.to_string()))?;
        let key = SealKey::from_pkcs8(&der).map_err(|e| std::io::Error::other(e.to_string()))?;
        write_new(&seal, &der)?;
        std::fs::write(
            keys_dir.join(SEAL_PUBLIC_FILE),
            hex::encode(key.public_key()) + "\n",
        )?;
        created.push(seal);
    }
    let subject = keys_dir.join(SUBJECT_KEY_FILE);
    if !subject.exists() {
        let hex_key =
            SubjectKey::generate_hex().map_err(|e| std::io::Error::other(e.to_string()))?;
        write_new(&subject, hex_key.as_bytes())?;
        created.push(subject);
    }
    Ok(created)
}
