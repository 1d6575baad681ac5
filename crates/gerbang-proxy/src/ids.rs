//! Request and trace ids: unique within the process without a system call per request, and
//! random across processes.

use std::sync::atomic::Ordering;

use http::header::HeaderValue;

use crate::headers;

/// The call's request id: the client's `X-Request-Id` when it is plain (see
/// [`headers::acceptable_request_id`]), otherwise a new one.
pub fn request_id(h: &http::HeaderMap, unix_ms: u64) -> HeaderValue {
    headers::values(h, &headers::X_REQUEST_ID)
        .next()
        .and_then(headers::acceptable_request_id)
        .and_then(|id| HeaderValue::from_str(id).ok())
        .unwrap_or_else(|| new_request_id_at(unix_ms))
}

/// A UUIDv7 request id: millisecond timestamp, then 74 bits that are unique within the process
/// (a bijective mix of a counter) and random across processes (a seed drawn once). No system
/// call per request, unlike drawing fresh randomness for each id.
pub fn new_request_id() -> HeaderValue {
    new_request_id_at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// [`new_request_id`] with the time it carries read by the caller (once per request).
pub fn new_request_id_at(millis: u64) -> HeaderValue {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let b = uuid::Uuid::new_v4().into_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[8]])
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = splitmix64(seed.wrapping_add(n));
    let mut tail = [0u8; 10];
    tail[..8].copy_from_slice(&mixed.to_le_bytes());
    tail[8..].copy_from_slice(&((seed >> 48) as u16 ^ (n >> 32) as u16).to_le_bytes());
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let len = id.hyphenated().encode_lower(&mut buf).len();
    // The buffer itself becomes the value's storage: one allocation, and the clones that go
    // upstream, into the response and into the record only count references (a value copied
    // from a `&str` is allocated once more at its first clone). A hyphenated UUID is always a
    // valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf).slice(..len))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

/// A new `traceparent` (sampled) with ids unique within the process and random across
/// processes, made without a system call (as request ids are).
pub(crate) fn new_traceparent() -> HeaderValue {
    let [a, b, c] = random_words();
    let c = c | 1;
    let mut text = [0u8; 55];
    text[..3].copy_from_slice(b"00-");
    hex16_into(&mut text[3..19], a);
    hex16_into(&mut text[19..35], b);
    text[35] = b'-';
    hex16_into(&mut text[36..52], c);
    text[52..].copy_from_slice(b"-01");
    // The array is the value's storage (one allocation; the call's record keeps a clone that
    // only counts a reference).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text)).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

/// `v` as 16 lower-case hex digits into `out` (16 bytes long; `format!("{v:016x}")` without
/// the formatting machinery: this runs for every call). Eight digits at a time: each nibble
/// of a half is spread into a byte of its own, then all eight become ASCII in one addition.
fn hex16_into(out: &mut [u8], v: u64) {
    out[..8].copy_from_slice(&hex8((v >> 32) as u32));
    out[8..16].copy_from_slice(&hex8(v as u32));
}

/// `x` as 8 lower-case hex digits.
fn hex8(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    // Nibble i (from the least significant) into byte i.
    let x = ((x & 0xFFFF_0000) << 16) | (x & 0x0000_FFFF);
    let x = ((x & 0x0000_FF00_0000_FF00) << 8) | (x & 0x0000_00FF_0000_00FF);
    let x = ((x & 0x00F0_00F0_00F0_00F0) << 4) | (x & 0x000F_000F_000F_000F);
    // 1 in each byte whose nibble is 10 or more (n + 6 carries into bit 4; no byte overflows).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    // '0' + n, and 'a' - '0' - 10 = 39 more for a letter.
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// `v` as 16 lower-case hex digits appended to `out`.
pub(crate) fn push_hex16(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 16];
    hex16_into(&mut digits, v);
    out.extend_from_slice(&digits);
}

/// Three 64-bit words unique within the process (a counter through a bijection) and random
/// across processes (a random seed): trace and span ids.
pub(crate) fn random_words() -> [u64; 3] {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seed = *SEED.get_or_init(|| {
        let b = uuid::Uuid::new_v4().into_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    });
    let n = COUNTER.fetch_add(3, Ordering::Relaxed);
    [
        splitmix64(seed ^ n),
        splitmix64(seed ^ (n + 1)),
        splitmix64(seed ^ (n + 2)),
    ]
}

/// A bijection on u64 with good mixing (Steele, Lea and Flood's SplitMix64 finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_digits_are_formats() {
        for v in [0u64, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut out = Vec::new();
            super::push_hex16(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{v:016x}"));
        }
        let mut v = 0x0123_4567_89ab_cdefu64;
        for edge in [
            0u64,
            1,
            9,
            10,
            15,
            0xdead_beef,
            u64::MAX,
            0xa9a9_a9a9_9a9a_9a9a,
        ] {
            for v in [edge, v] {
                let mut out = [0u8; 16];
                super::hex16_into(&mut out, v);
                assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
            }
            v = super::splitmix64(v);
        }
        // Every nibble in every position.
        for n in 0..16u64 {
            for pos in 0..16 {
                let v = n << (pos * 4);
                let mut out = [0u8; 16];
                super::hex16_into(&mut out, v);
                assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
            }
        }
        let tp = super::new_traceparent();
        let t = tp.to_str().unwrap();
        assert_eq!(t.len(), 55);
        assert!(
            t.starts_with("00-") && t.ends_with("-01") && t.as_bytes()[35] == b'-',
            "{t}"
        );
    }

    use super::*;

    #[test]
    fn request_ids_are_unique_uuid_v7() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_request_id();
            let u = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(u.get_version_num(), 7);
            assert_eq!(u.hyphenated().to_string(), id.to_str().unwrap());
            assert!(seen.insert(u));
        }
    }
}
