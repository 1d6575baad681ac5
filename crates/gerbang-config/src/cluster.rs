//! The `[cluster]` section: how this process takes part in a group of replicas that behave as
//! one gateway (shared limits and quotas in Redis, configuration revisions, its own name for
//! the audit chain and seal key).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCluster {
    /// This replica's name (audit chain, seal key, revision authorship); empty: the host name.
    replica_id: String,
    /// `redis://host:port/db` or `rediss://…` (TLS); empty: one node, nothing shared.
    redis_url: String,
    /// "local" (each replica limits on its own with the rate divided by `expected_replicas`)
    /// or "closed" (`503 limit_store_unavailable`) while Redis cannot be reached.
    on_redis_failure: String,
    /// How many replicas share the limits (the local fallback divides by it).
    expected_replicas: u32,
    /// How long one Redis round trip may take before it counts as a failure.
    #[serde(with = "humantime_serde")]
    redis_timeout: Duration,
    /// Connections to Redis (each multiplexes any number of calls).
    redis_connections: usize,
    /// How often each replica asks Redis for a newer configuration revision.
    #[serde(with = "humantime_serde")]
    revision_poll_interval: Duration,
    /// How many configuration revisions Redis keeps (older ones are dropped).
    revisions_kept: usize,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            replica_id: String::new(),
            redis_url: String::new(),
            on_redis_failure: "local".into(),
            expected_replicas: 2,
            redis_timeout: Duration::from_millis(250),
            redis_connections: 2,
            revision_poll_interval: Duration::from_secs(1),
            revisions_kept: 200,
        }
    }
}

/// What to do while the shared limit store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailureMode {
    /// Limit locally, at the agreed rate divided by the expected number of replicas.
    Local,
    /// Refuse limited calls with `503 limit_store_unavailable`.
    Closed,
}

/// The validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// This replica's name: `[A-Za-z0-9._-]`, at most 64 characters.
    pub replica_id: String,
    /// The shared store; `None` on one node.
    pub redis: Option<RedisSettings>,
}

/// How to reach Redis and what to do without it.
#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    /// The URL as configured (it may carry a password: never log it; see [`Self::redacted`]).
    pub url: String,
    pub on_failure: RedisFailureMode,
    pub expected_replicas: u32,
    pub timeout: Duration,
    pub connections: usize,
    pub revision_poll_interval: Duration,
    pub revisions_kept: usize,
}

impl RedisSettings {
    /// The URL without user information, for logs and reports.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted())
            .field("on_failure", &self.on_failure)
            .field("expected_replicas", &self.expected_replicas)
            .field("timeout", &self.timeout)
            .field("connections", &self.connections)
            .field("revision_poll_interval", &self.revision_poll_interval)
            .field("revisions_kept", &self.revisions_kept)
            .finish()
    }
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// The host name, for the default replica id (`HOSTNAME`, else the kernel's).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gerbang".into())
}

/// A replica id: what may name a file and a Redis key part.
pub fn valid_replica_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with('.')
}

pub(super) fn load_cluster(
    raw: &RawCluster,
    file: &Path,
    problems: &mut Problems,
) -> Option<ClusterConfig> {
    let before = problems.list.len();
    let replica_id = if raw.replica_id.trim().is_empty() {
        // A host name with other characters (rare) is cut down to what a file name may hold.
        let h: String = host_name()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        h.trim_start_matches('.').to_owned()
    } else {
        raw.replica_id.trim().to_owned()
    };
    if !valid_replica_id(&replica_id) {
        problems.push(
            file,
            "cluster.replica_id",
            format!(
                "`{replica_id}` is not a replica id: 1 to 64 of A-Z, a-z, 0-9, `.`, `_`, `-`, \
                 not starting with `.`"
            ),
        );
    }
    let redis = if raw.redis_url.trim().is_empty() {
        None
    } else {
        let url = raw.redis_url.trim();
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
            Ok(_) => problems.push(
                file,
                "cluster.redis_url",
                format!(
                    "`{}` is not a redis:// or rediss:// URL with a host",
                    redact(url)
                ),
            ),
            Err(e) => problems.push(
                file,
                "cluster.redis_url",
                format!("not a URL ({e}); e.g. redis://127.0.0.1:6379/0"),
            ),
        }
        let on_failure = match raw.on_redis_failure.as_str() {
            "local" => RedisFailureMode::Local,
            "closed" => RedisFailureMode::Closed,
            other => {
                problems.push(
                    file,
                    "cluster.on_redis_failure",
                    format!("`{other}` is not \"local\" or \"closed\""),
                );
                RedisFailureMode::Local
            }
        };
        if raw.expected_replicas == 0 {
            problems.push(file, "cluster.expected_replicas", "must be at least 1");
        }
        if raw.redis_timeout.is_zero() || raw.redis_timeout > Duration::from_secs(10) {
            problems.push(
                file,
                "cluster.redis_timeout",
                "must be more than 0 and at most 10s (a call waits this long at most)",
            );
        }
        if raw.redis_connections == 0 || raw.redis_connections > 64 {
            problems.push(file, "cluster.redis_connections", "must be 1 to 64");
        }
        if raw.revision_poll_interval < Duration::from_millis(100)
            || raw.revision_poll_interval > Duration::from_secs(5)
        {
            problems.push(
                file,
                "cluster.revision_poll_interval",
                "must be 100ms to 5s (every replica applies a new revision within 5 seconds)",
            );
        }
        if raw.revisions_kept < 2 {
            problems.push(file, "cluster.revisions_kept", "must be at least 2");
        }
        Some(RedisSettings {
            url: url.to_owned(),
            on_failure,
            expected_replicas: raw.expected_replicas.max(1),
            timeout: raw.redis_timeout,
            connections: raw.redis_connections,
            revision_poll_interval: raw.revision_poll_interval,
            revisions_kept: raw.revisions_kept,
        })
    };
    (problems.list.len() == before).then_some(ClusterConfig { replica_id, redis })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(toml_text: &str) -> Result<ClusterConfig, Vec<String>> {
        let raw: RawCluster = toml::from_str(toml_text).unwrap();
        let mut p = Problems { list: Vec::new() };
        load_cluster(&raw, Path::new("gerbang.toml"), &mut p).ok_or_else(|| {
            p.list
                .iter()
                .map(|x| format!("{}: {}", x.key, x.message))
                .collect()
        })
    }

    #[test]
    fn defaults_are_one_node_named_after_the_host() {
        let c = load("").unwrap();
        assert!(c.redis.is_none());
        assert!(valid_replica_id(&c.replica_id), "{}", c.replica_id);
    }

    #[test]
    fn a_redis_url_turns_sharing_on_and_is_never_shown_with_its_password() {
        let c = load("replica_id = \"gw-0\"\nredis_url = \"redis://:s3cret@127.0.0.1:6379/0\"")
            .unwrap();
        assert_eq!(c.replica_id, "gw-0");
        let r = c.redis.unwrap();
        assert_eq!(r.on_failure, RedisFailureMode::Local);
        assert!(!r.redacted().contains("s3cret"));
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let e = load(
            "replica_id = \"../x\"\nredis_url = \"http://x\"\non_redis_failure = \"open\"\n\
             expected_replicas = 0\nredis_timeout = \"0s\"\nrevision_poll_interval = \"10s\"",
        )
        .unwrap_err()
        .join("\n");
        for key in [
            "cluster.replica_id",
            "cluster.redis_url",
            "cluster.on_redis_failure",
            "cluster.expected_replicas",
            "cluster.redis_timeout",
            "cluster.revision_poll_interval",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        let e = load("redis_url = \"redis://:pw@\"").unwrap_err().join("\n");
        assert!(!e.contains("pw"), "{e}");
    }
}
