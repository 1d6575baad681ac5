//! Configuration revisions in Redis: the registry and agreement files as one validated whole,
//! with who made it, when, why, and its content hash. The replica that makes a change publishes
//! it (compare-and-set on the revision it was based on); every replica polls for the newest id
//! and applies a newer revision through its own validation and atomic swap.
//!
//! Keys (prefix `gerbang:config:`):
//! - `current`: the newest revision's id;
//! - `rev:{id}`: the revision as JSON (files included);
//! - `ids`: a list of ids, newest first, trimmed to `kept` (older `rev:{id}` deleted with it);
//! - `hashes`: a hash map content hash → first id with that content, never trimmed, so that a
//!   replica can tell whether a set of bootstrap files was ever published (then it is old).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// The files of a revision by relative path (`registry/x.toml`, `agreements/y.toml`).
pub type Files = BTreeMap<String, String>;

/// The two directories a revision covers, as they appear in its file names.
pub const REGISTRY: &str = "registry";
pub const AGREEMENTS: &str = "agreements";

/// One configuration revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    #[serde(flatten)]
    pub meta: RevisionMeta,
    pub files: Files,
}

/// What a revision is, without its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionMeta {
    pub id: u64,
    /// [`content_hash`] of its files.
    pub hash: String,
    /// Who made it: an admin token's name, `files` (a reload of edited files), `bootstrap`.
    pub author: String,
    /// The replica that published it.
    pub replica: String,
    /// Unix time (seconds) of publication.
    pub at: i64,
    /// Why: the admin action, the reload's trigger, or `restore of revision N`.
    pub reason: String,
    /// The revision it was based on (`None` for the first).
    pub parent: Option<u64>,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("revision {0} is malformed in redis: {1}")]
    Malformed(u64, String),
    #[error("{}", conflict_text(*based_on, *current))]
    Conflict {
        based_on: Option<u64>,
        current: Option<u64>,
    },
}

fn conflict_text(based_on: Option<u64>, current: Option<u64>) -> String {
    let base = based_on.map_or("none".to_owned(), |b| format!("revision {b}"));
    match current {
        Some(c) => format!(
            "another replica published revision {c} since this replica's {base}; the change was \
             not published"
        ),
        None => format!(
            "the store holds no revision (Redis restarted without its data?) while this replica \
             runs {base}; the change was not published"
        ),
    }
}

/// SHA-256 (hex, first 16 digits as the configuration hash is shown) of a file set: each file
/// as its path, a NUL, its length and its text, in path order.
pub fn content_hash(files: &Files) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (path, text) in files {
        ctx.update(path.as_bytes());
        ctx.update(&[0]);
        ctx.update(&(text.len() as u64).to_be_bytes());
        ctx.update(text.as_bytes());
    }
    let d = ctx.finish();
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the `*.toml` files of the registry and agreement directories as a file set.
pub fn read_files(registry_dir: &Path, agreements_dir: &Path) -> std::io::Result<Files> {
    let mut files = Files::new();
    for (prefix, dir) in [(REGISTRY, registry_dir), (AGREEMENTS, agreements_dir)] {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            // A configuration may have no agreements directory yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let path = e?.path();
            if path.extension().is_none_or(|x| x != "toml") || !path.is_file() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            files.insert(format!("{prefix}/{name}"), std::fs::read_to_string(&path)?);
        }
    }
    Ok(files)
}

/// A revision file name as (directory, file name), when it is one a revision may hold:
/// `registry/NAME.toml` or `agreements/NAME.toml` with a plain file name.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    let (dir, file) = name.split_once('/')?;
    let plain = !file.is_empty()
        && !file.starts_with('.')
        && file.ends_with(".toml")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (plain && (dir == REGISTRY || dir == AGREEMENTS)).then_some((dir, file))
}

/// Makes the two directories hold exactly `files`: each file written to a temporary name,
/// synced and renamed; files not in the set removed; the directories synced. A crash leaves
/// every file old or new, never half of one (the set as a whole is checked again at start).
pub fn write_files(
    registry_dir: &Path,
    agreements_dir: &Path,
    files: &Files,
) -> std::io::Result<()> {
    use std::io::Write;
    for dir in [registry_dir, agreements_dir] {
        std::fs::create_dir_all(dir)?;
    }
    let dir_of = |d: &str| {
        if d == REGISTRY {
            registry_dir
        } else {
            agreements_dir
        }
    };
    for (name, text) in files {
        let Some((d, file)) = split_name(name) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("`{name}` is not a registry or agreement file name"),
            ));
        };
        let dir = dir_of(d);
        let target = dir.join(file);
        if std::fs::read_to_string(&target).is_ok_and(|t| t == *text) {
            continue;
        }
        let tmp = dir.join(format!(".{file}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
    }
    for (prefix, dir) in [(REGISTRY, registry_dir), (AGREEMENTS, agreements_dir)] {
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !files.contains_key(&format!("{prefix}/{name}")) {
                std::fs::remove_file(&path)?;
            }
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A unified diff of two file sets (what changed from `old` to `new`), file by file.
pub fn diff(old: &Files, new: &Files) -> String {
    let mut out = String::new();
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let a = old.get(name).map_or("", String::as_str);
        let b = new.get(name).map_or("", String::as_str);
        if a == b {
            continue;
        }
        let from = if old.contains_key(name) {
            format!("a/{name}")
        } else {
            "/dev/null".into()
        };
        let to = if new.contains_key(name) {
            format!("b/{name}")
        } else {
            "/dev/null".into()
        };
        let d = similar::TextDiff::from_lines(a, b);
        out.push_str(
            &d.unified_diff()
                .context_radius(2)
                .header(&from, &to)
                .to_string(),
        );
    }
    out
}

/// Revisions in Redis.
#[derive(Clone)]
pub struct RevisionStore {
    conn: ConnectionManager,
    prefix: String,
    kept: usize,
    timeout: Duration,
}

/// Publishes atomically: refuses when `current` is not the revision the change was based on
/// (ARGV[1], "" for none); otherwise takes the next id, stores the revision, moves `current`,
/// records the hash, and trims the list (deleting the revisions it drops).
const PUBLISH: &str = r#"
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return {0, current or ''}
end
local id = redis.call('INCR', KEYS[2])
local body = string.gsub(ARGV[2], '"id":0,', '"id":' .. id .. ',', 1)
redis.call('SET', ARGV[4] .. id, body)
redis.call('LPUSH', KEYS[3], id)
redis.call('SET', KEYS[1], id)
redis.call('HSETNX', KEYS[4], ARGV[5], id)
local kept = tonumber(ARGV[3])
local old = redis.call('LRANGE', KEYS[3], kept, -1)
for _, o in ipairs(old) do
  redis.call('DEL', ARGV[4] .. o)
end
redis.call('LTRIM', KEYS[3], 0, kept - 1)
return {1, tostring(id)}
"#;

impl RevisionStore {
    /// The store at `url` (connected on first use, reconnecting on its own); `kept`
    /// revisions are kept.
    pub fn new(url: &str, kept: usize, timeout: Duration) -> Result<Self, RevisionError> {
        Ok(Self {
            conn: crate::lazy_connection(url, timeout)?,
            prefix: "gerbang:config:".into(),
            kept: kept.max(2),
            timeout,
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn run<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RevisionError> {
        Ok(tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| RevisionError::Timeout(self.timeout))??)
    }

    /// The newest revision's id.
    pub async fn current_id(&self) -> Result<Option<u64>, RevisionError> {
        let mut c = self.conn.clone();
        let key = self.key("current");
        let v: Option<u64> = self
            .run(redis::cmd("GET").arg(&key).query_async(&mut c))
            .await?;
        Ok(v)
    }

    /// One revision, when Redis still keeps it.
    pub async fn get(&self, id: u64) -> Result<Option<Revision>, RevisionError> {
        let mut c = self.conn.clone();
        let key = self.key(&format!("rev:{id}"));
        let v: Option<String> = self
            .run(redis::cmd("GET").arg(&key).query_async(&mut c))
            .await?;
        v.map(|text| {
            serde_json::from_str(&text).map_err(|e| RevisionError::Malformed(id, e.to_string()))
        })
        .transpose()
    }

    /// The newest revision.
    pub async fn current(&self) -> Result<Option<Revision>, RevisionError> {
        match self.current_id().await? {
            Some(id) => self.get(id).await,
            None => Ok(None),
        }
    }

    /// Up to `limit` revisions, newest first, without their files.
    pub async fn list(&self, limit: usize) -> Result<Vec<RevisionMeta>, RevisionError> {
        let mut c = self.conn.clone();
        let ids: Vec<u64> = self
            .run(
                redis::cmd("LRANGE")
                    .arg(self.key("ids"))
                    .arg(0)
                    .arg(limit.max(1) as i64 - 1)
                    .query_async(&mut c),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get(id).await? {
                out.push(r.meta);
            }
        }
        Ok(out)
    }

    /// The first revision that had exactly this content, if any ever had.
    pub async fn revision_with_hash(&self, hash: &str) -> Result<Option<u64>, RevisionError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = self
            .run(
                redis::cmd("HGET")
                    .arg(self.key("hashes"))
                    .arg(hash)
                    .query_async(&mut c),
            )
            .await?;
        Ok(v)
    }

    /// Publishes `files` as the next revision, if the newest revision is still `based_on`.
    pub async fn publish(
        &self,
        files: Files,
        author: &str,
        replica: &str,
        reason: &str,
        based_on: Option<u64>,
    ) -> Result<Revision, RevisionError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut revision = Revision {
            meta: RevisionMeta {
                id: 0,
                hash: content_hash(&files),
                author: author.to_owned(),
                replica: replica.to_owned(),
                at,
                reason: reason.to_owned(),
                parent: based_on,
            },
            files,
        };
        // The script puts the id it takes in place of the `"id":0,` that leads the JSON.
        let body = serde_json::to_string(&revision)
            .map_err(|e| RevisionError::Malformed(0, e.to_string()))?;
        let mut c = self.conn.clone();
        let script = redis::Script::new(PUBLISH);
        let mut inv = script.prepare_invoke();
        inv.key(self.key("current"))
            .key(self.key("next_id"))
            .key(self.key("ids"))
            .key(self.key("hashes"))
            .arg(based_on.map(|b| b.to_string()).unwrap_or_default())
            .arg(body)
            .arg(self.kept)
            .arg(self.key("rev:"))
            .arg(&revision.meta.hash);
        let (ok, value): (i64, String) = self.run(inv.invoke_async(&mut c)).await?;
        if ok != 1 {
            return Err(RevisionError::Conflict {
                based_on,
                current: value.parse().ok(),
            });
        }
        revision.meta.id = value
            .parse()
            .map_err(|_| RevisionError::Malformed(0, format!("id `{value}`")))?;
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_hash_covers_names_and_texts() {
        let a = files(&[("registry/a.toml", "x = 1\n")]);
        let b = files(&[("registry/b.toml", "x = 1\n")]);
        let c = files(&[("registry/a.toml", "x = 2\n")]);
        assert_eq!(content_hash(&a), content_hash(&a.clone()));
        assert_ne!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
        assert_eq!(content_hash(&a).len(), 16);
    }

    #[test]
    fn only_plain_registry_and_agreement_names_are_files() {
        assert_eq!(split_name("registry/a.toml"), Some(("registry", "a.toml")));
        assert_eq!(
            split_name("agreements/x-1.toml"),
            Some(("agreements", "x-1.toml"))
        );
        for bad in [
            "registry/../x.toml",
            "registry/a/b.toml",
            "keys/a.toml",
            "registry/.a.toml",
            "registry/a.txt",
            "a.toml",
        ] {
            assert_eq!(split_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn writing_a_set_replaces_the_directories_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (r, a) = (dir.path().join("registry"), dir.path().join("agreements"));
        let one = files(&[("registry/a.toml", "1"), ("agreements/p.toml", "2")]);
        write_files(&r, &a, &one).unwrap();
        assert_eq!(read_files(&r, &a).unwrap(), one);
        let two = files(&[("registry/b.toml", "3")]);
        write_files(&r, &a, &two).unwrap();
        assert_eq!(read_files(&r, &a).unwrap(), two);
        let bad = files(&[("registry/../../x.toml", "3")]);
        assert!(write_files(&r, &a, &bad).is_err());
    }

    #[test]
    fn the_diff_names_each_changed_file() {
        let old = files(&[
            ("registry/a.toml", "x = 1\ny = 2\n"),
            ("agreements/p.toml", "p\n"),
        ]);
        let new = files(&[
            ("registry/a.toml", "x = 1\ny = 3\n"),
            ("agreements/q.toml", "q\n"),
        ]);
        let d = diff(&old, &new);
        assert!(d.contains("-y = 2\n+y = 3"), "{d}");
        assert!(d.contains("--- a/agreements/p.toml\n+++ /dev/null"), "{d}");
        assert!(d.contains("--- /dev/null\n+++ b/agreements/q.toml"), "{d}");
        assert!(diff(&old, &old).is_empty());
    }
}
