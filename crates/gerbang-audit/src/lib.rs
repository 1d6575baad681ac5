//! The tamper-evident audit log: one JSON line per record in append-only files
//! (`audit-YYYYMMDD-NNNNNN.jsonl`, rotated by size and by Asia/Jakarta day).
//!
//! - Every line is a JSON object with `seq` (1, 2, … across all files), `prev` (the SHA-256 of
//!   the previous line's bytes, 64 zeros for the first), `kind` and the record's fields. The
//!   chain continues across files, so an edit, deletion, insertion or reordering anywhere breaks
//!   a link that [`verify`] names by file and line.
//! - At intervals the writer appends a `seal` line: an Ed25519 signature over the hash of the
//!   line before it. Whoever holds the public key can check that the chain up to a seal is the
//!   one the gateway wrote (rewriting the whole chain needs the private key). In a cluster each
//!   replica writes its own chain with its own seal key, and each seal names the replica
//!   (`replica`, from `[cluster] replica_id`); logs without it (earlier versions) verify too.
//! - Data subjects (a NIK) are stored only as `subject_hmac`, HMAC-SHA-256 under a key of the
//!   gateway's, so [`query`] can find a citizen's records without the log holding the id.
//!
//! The writer is synchronous and owns its file; the gateway runs it on a thread of its own.

pub mod chain;
pub mod keys;
pub mod query;

pub use chain::{
    replica_of, verify, verify_with_anchors, Anchor, Verification, VerifyError, Writer,
    WriterSettings,
};
pub use keys::{SealKey, SubjectKey};
pub use query::{query, query_many, Filter, ReplicaLog};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
