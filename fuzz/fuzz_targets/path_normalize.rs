//! The path normaliser (`gerbang_proxy::path::normalize`) on any string.
//!
//! Invariants of an accepted path:
//! - it starts with `/`, holds only RFC 3986 pchars without `;` (plus `/`) and upper-case `%XX`
//!   triplets of reserved or non-ASCII bytes: never `\`, NUL, space, controls, `%2F`, `%5C`,
//!   an encoded control, `%25` + two hex digits, nor a decodable unreserved triplet;
//! - no empty, `.` or `..` segment (a trailing `/` is allowed);
//! - normalising it again gives the same path and route parts (idempotence), and so does
//!   normalising it through the slow path (a leading `/` added);
//! - `route_parts` rebuilds the path, and agency and service are the first two segments of the
//!   input (after decoding unreserved triplets) that are neither empty nor `.`: `..` never
//!   climbs out of `/{agency}/{service}`.
//!
//! And on any input: the slow path (a `/` prepended) refuses exactly what the input's own
//! normalisation refuses, with the same reason.
#![no_main]

use gerbang_proxy::path::{normalize, NormalizedPath};
use libfuzzer_sys::fuzz_target;

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn check_normal_form(p: &NormalizedPath) {
    let b = p.path.as_bytes();
    assert_eq!(b.first(), Some(&b'/'), "{:?}", p.path);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (h, l) = (b[i + 1], b[i + 2]);
            assert!(
                h.is_ascii_digit() || (b'A'..=b'F').contains(&h),
                "lower-case or bad hex in {:?}",
                p.path
            );
            assert!(l.is_ascii_digit() || (b'A'..=b'F').contains(&l));
            let v = (hex(h).unwrap() << 4) | hex(l).unwrap();
            assert!(!unreserved(v), "unreserved triplet kept in {:?}", p.path);
            assert!(v != b'/' && v != b'\\', "encoded separator in {:?}", p.path);
            assert!(v >= 0x20 && v != 0x7F, "encoded control in {:?}", p.path);
            if v == b'%' {
                let next_two = b.get(i + 3).copied().and_then(hex).is_some()
                    && b.get(i + 4).copied().and_then(hex).is_some();
                assert!(!next_two, "double encoding in {:?}", p.path);
            }
            i += 3;
            continue;
        }
        assert!(
            unreserved(c) || b"/!$&'()*+,=:@".contains(&c),
            "byte {c:#x} in {:?}",
            p.path
        );
        i += 1;
    }
    let body = &p.path[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if !body.is_empty() {
        for seg in body.split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "segment {seg:?} in {:?}",
                p.path
            );
        }
    }
    if let Some((agency, service, rest)) = p.route_parts() {
        assert!(!agency.is_empty() && !agency.contains('/'));
        assert!(!service.is_empty() && !service.contains('/'));
        assert!(rest.is_empty() || rest.starts_with('/'));
        assert_eq!(format!("/{agency}/{service}{rest}"), p.path);
    } else {
        // Fewer than two segments.
        assert!(
            body.split('/').filter(|s| !s.is_empty()).count() < 2,
            "{:?}",
            p.path
        );
    }
}

/// The first two segments of `raw` that are neither empty nor `.`, with unreserved triplets
/// decoded (as the normaliser compares them).
fn first_two_segments(raw: &str) -> Vec<String> {
    let b = raw.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let v = (h << 4) | l;
                if unreserved(v) {
                    decoded.push(v);
                } else {
                    decoded.extend_from_slice(format!("%{v:02X}").as_bytes());
                }
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&decoded)
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .take(2)
        .map(str::to_owned)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let result = normalize(raw);
    if raw.starts_with('/') {
        // An extra leading '/' only adds an empty segment, and forces the slow path.
        let slow = normalize(&format!("/{raw}"));
        match (&result, &slow) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "fast and slow paths differ on {raw:?}"),
            (Err(a), Err(b)) => assert_eq!(a, b, "{raw:?}"),
            _ => panic!("{raw:?}: {result:?} but with a leading '/': {slow:?}"),
        }
    }
    let Ok(p) = result else {
        return;
    };
    check_normal_form(&p);
    let again = normalize(&p.path);
    assert_eq!(again.as_ref(), Ok(&p), "not idempotent on {raw:?}");
    if let Some((agency, service, _)) = p.route_parts() {
        let first = first_two_segments(raw);
        assert_eq!(
            first,
            [agency.to_owned(), service.to_owned()],
            "route of {raw:?} is not its first two segments"
        );
    }
});
