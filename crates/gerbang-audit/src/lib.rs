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

/// `bytes` as lower-case hex (what `hex::encode` gives, without its char-by-char String).
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_lower_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// `bytes` as lower-case hex into `out`, which holds exactly twice as many (the chain's hashes:
/// no allocation, no capacity check per digit). Extra room in `out` is left as it is.
pub fn hex_lower_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_lower_is_hex_encode() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(super::hex_lower(&all), hex::encode(&all));
        assert_eq!(super::hex_lower(&[]), "");
        let mut out = [b'.'; 514];
        super::hex_lower_into(&all, &mut out);
        assert_eq!(&out[..512], hex::encode(&all).as_bytes());
        assert_eq!(&out[512..], b"..");
    }

    #[test]
    fn a_second_stamp_writes_what_rfc3339_writes() {
        use std::time::{Duration, UNIX_EPOCH};
        let mut stamp = crate::chain::SecondStamp::default();
        // The same second twice, the next, a day boundary, a year boundary, back in time, the
        // last second of year 9999 and the epoch.
        for ms in [
            1_795_857_302_123u64,
            1_795_857_302_999,
            1_795_857_303_000,
            1_795_910_399_999,
            1_795_910_400_001,
            1_798_761_599_999,
            1_798_761_600_000,
            1_795_857_302_007,
            253_402_300_799_000,
            253_402_300_799_123,
            0,
            5,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let mut out = b"x".to_vec();
            stamp.write(t, &mut out);
            assert_eq!(out[1..], *crate::chain::rfc3339(t).as_bytes(), "{ms}");
        }
    }

    #[test]
    fn rfc3339_writes_utc_with_milliseconds() {
        use std::time::{Duration, UNIX_EPOCH};
        let t = UNIX_EPOCH + Duration::from_millis(1_795_857_302_123);
        assert_eq!(crate::chain::rfc3339(t), "2026-11-28T09:15:02.123Z");
        assert_eq!(
            crate::chain::rfc3339(UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let t = UNIX_EPOCH + Duration::from_millis(951_782_399_007);
        assert_eq!(crate::chain::rfc3339(t), "2000-02-28T23:59:59.007Z");
    }
}
