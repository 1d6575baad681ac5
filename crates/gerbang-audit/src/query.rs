//! "Who accessed this citizen's data, when and why": filtering the audit log.

use std::path::Path;

use serde_json::Value;

use crate::keys::SubjectKey;

/// What to look for; every set field must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// The data subject's id (e.g. a NIK); matched by its keyed hash.
    pub subject: Option<String>,
    /// The calling application, `agency/app`.
    pub consumer: Option<String>,
    /// The provider service, `agency/service`.
    pub service: Option<String>,
    /// RFC 3339 UTC times (`2026-11-28T00:00:00Z`), inclusive.
    pub since: Option<String>,
    pub until: Option<String>,
}

/// The `call` records of the log in `dir` that match `filter`, in log order.
pub fn query(dir: &Path, filter: &Filter, key: &SubjectKey) -> std::io::Result<Vec<Value>> {
    let subject = filter.subject.as_deref().map(|s| key.hash(s));
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut out = Vec::new();
    crate::chain::for_each_record(dir, |v| {
        if text(&v, "kind").as_deref() != Some("call") {
            return;
        }
        if let Some(s) = &subject {
            if text(&v, "subject_hmac").as_deref() != Some(s.as_str()) {
                return;
            }
        }
        if filter.consumer.is_some() && text(&v, "consumer") != filter.consumer {
            return;
        }
        if filter.service.is_some() && text(&v, "service") != filter.service {
            return;
        }
        let time = text(&v, "time").unwrap_or_default();
        if filter.since.as_deref().is_some_and(|s| time.as_str() < s) {
            return;
        }
        if filter.until.as_deref().is_some_and(|u| time.as_str() > u) {
            return;
        }
        out.push(v);
    })?;
    Ok(out)
}

/// One replica's log for [`query_many`]: its directory and the name its records get.
#[derive(Debug, Clone)]
pub struct ReplicaLog {
    /// The replica's name: from its seals ([`crate::chain::replica_of`]) or its directory.
    pub replica: String,
    pub dir: std::path::PathBuf,
}

/// [`query`] over several replicas' logs (each its own chain), merged by time (stable: records
/// of one time keep their replica's order); each record gets a `replica` field naming its log.
pub fn query_many(
    logs: &[ReplicaLog],
    filter: &Filter,
    key: &SubjectKey,
) -> std::io::Result<Vec<Value>> {
    let mut out = Vec::new();
    for log in logs {
        for mut v in query(&log.dir, filter, key)? {
            if let Value::Object(m) = &mut v {
                m.entry("replica")
                    .or_insert_with(|| Value::from(log.replica.clone()));
            }
            out.push(v);
        }
    }
    let time = |v: &Value| {
        v.get("time")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    out.sort_by_cached_key(time);
    Ok(out)
}

/// The `admin` records of the log in `dir` (changes through the admin API and the console), in
/// log order.
pub fn admin_records(dir: &Path) -> std::io::Result<Vec<Value>> {
    let mut out = Vec::new();
    crate::chain::for_each_record(dir, |v| {
        if v.get("kind").and_then(Value::as_str) == Some("admin") {
            out.push(v);
        }
    })?;
    Ok(out)
}
