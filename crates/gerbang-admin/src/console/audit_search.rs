//! The Audit page's search, on this replica's log or (cluster mode) on every replica's: each
//! replica answers from its own chain with the matching calls and its `audit verify` result;
//! the page merges them by time and names every replica that answered, and says plainly when
//! fewer answered than the cluster has.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::session::StoreFuture;

/// Most records one replica returns for one search (newest first).
pub const MAX_RECORDS: usize = 1000;

/// A search: the subject by its keyed hash (never the NIK itself), and filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    pub subject_hmac: Option<String>,
    pub consumer: Option<String>,
    pub service: Option<String>,
    /// RFC 3339 UTC, inclusive.
    pub since: Option<String>,
    pub until: Option<String>,
}

/// `audit verify` of one replica's log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Verified {
    Intact {
        files: u64,
        records: u64,
        seals: u64,
        unsealed: u64,
    },
    Broken(String),
    NoKey,
    NoLog,
}

/// One replica's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditAnswer {
    pub replica: String,
    /// Matching calls, newest first, at most [`MAX_RECORDS`]; only the fields the page shows.
    pub records: Vec<Value>,
    /// More matched than were returned.
    pub truncated: bool,
    pub verified: Verified,
    /// The log could not be read (the reason).
    pub error: Option<String>,
}

/// The search over every replica (cluster mode; the binary implements it over Redis).
pub trait AuditFanout: Send + Sync {
    /// Puts `query` to every replica: (how many replicas received it, their answers).
    fn search<'a>(&'a self, query: &'a AuditQuery) -> StoreFuture<'a, (usize, Vec<AuditAnswer>)>;
}

/// Where this replica's log is.
#[derive(Debug, Clone)]
pub struct LocalLog {
    pub dir: PathBuf,
    /// The seal public key (hex) file.
    pub seal_public_key: Option<PathBuf>,
    /// This replica's name (cluster `replica_id`), for logs whose records do not carry it.
    pub replica: String,
}

/// The fields of a call record the page shows.
const SHOWN: [&str; 8] = [
    "time",
    "consumer",
    "service",
    "endpoint",
    "purpose",
    "agreement",
    "decision",
    "status",
];

/// Answers `query` from the log at `log` (reads files: call it off the async workers).
pub fn answer(log: &LocalLog, query: &AuditQuery) -> AuditAnswer {
    let replica = gerbang_audit::chain::replica_of(&log.dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| log.replica.clone());
    let filter = gerbang_audit::Filter {
        // Matched by its hash below; the query's own key is not needed.
        subject: None,
        consumer: query.consumer.clone(),
        service: query.service.clone(),
        since: query.since.clone(),
        until: query.until.clone(),
    };
    let mut out = AuditAnswer {
        replica: replica.clone(),
        records: Vec::new(),
        truncated: false,
        verified: verify(log),
        error: None,
    };
    let found = gerbang_audit::SubjectKey::from_hex(&"0".repeat(64))
        .map_err(|e| e.to_string())
        .and_then(|unused| {
            gerbang_audit::query(&log.dir, &filter, &unused).map_err(|e| e.to_string())
        });
    match found {
        Ok(records) => {
            let mut matching = records.into_iter().rev().filter(|r| {
                query
                    .subject_hmac
                    .as_deref()
                    .is_none_or(|h| r["subject_hmac"].as_str() == Some(h))
            });
            for r in matching.by_ref().take(MAX_RECORDS) {
                let mut shown = serde_json::Map::new();
                for k in SHOWN {
                    if let Some(v) = r.get(k) {
                        shown.insert(k.to_owned(), v.clone());
                    }
                }
                let who = r["replica"].as_str().unwrap_or(&replica).to_owned();
                shown.insert("replica".into(), Value::from(who));
                out.records.push(Value::Object(shown));
            }
            out.truncated = matching.next().is_some();
        }
        Err(e) => {
            tracing::error!(error = %e, "console: the audit log cannot be read");
            out.error = Some(e);
        }
    }
    out
}

fn verify(log: &LocalLog) -> Verified {
    if !log.dir.is_dir() {
        return Verified::NoLog;
    }
    let key = log
        .seal_public_key
        .as_deref()
        .and_then(|f: &Path| std::fs::read_to_string(f).ok())
        .and_then(|t| hex::decode(t.trim()).ok());
    let Some(key) = key else {
        return Verified::NoKey;
    };
    match gerbang_audit::verify(&log.dir, &key) {
        Ok(v) => Verified::Intact {
            files: v.files as u64,
            records: v.records,
            seals: v.seals,
            unsealed: v.unsealed,
        },
        Err(e) => Verified::Broken(e.to_string()),
    }
}

/// The handler a replica serves cluster searches with: the question is an [`AuditQuery`] as
/// JSON, the answer an [`AuditAnswer`] as JSON.
pub fn handler(log: LocalLog) -> Arc<dyn Fn(&str) -> String + Send + Sync> {
    Arc::new(move |question: &str| {
        let answer = match serde_json::from_str::<AuditQuery>(question) {
            Ok(q) => answer(&log, &q),
            Err(e) => AuditAnswer {
                replica: log.replica.clone(),
                records: Vec::new(),
                truncated: false,
                verified: Verified::NoLog,
                error: Some(format!("not a search: {e}")),
            },
        };
        serde_json::to_string(&answer).unwrap_or_default()
    })
}
