//! Path normalisation: done once, before routing; the gateway routes on, and forwards, exactly
//! the path this module returns.
//!
//! Rules, in order (RFC 3986 §6.2.2 plus what gateways' CVEs taught):
//! 1. the path must start with `/` and hold only visible ASCII (no controls, space, `\`, `;`);
//! 2. every `%` must start a valid triplet; `%2F`/`%5C` (encoded separators), `%00` and other
//!    encoded controls are refused, and so is `%25` followed by two hex digits (double encoding);
//! 3. the decoded bytes must be valid UTF-8;
//! 4. triplets of unreserved characters are decoded (`%41` → `A`, `%2E` → `.`), the others keep
//!    their encoding with upper-case hex;
//! 5. empty segments are merged (`//` → `/`), `.` segments removed, and `..` removes the previous
//!    segment, but never one of the first two (`{agency}/{service}`): leaving the service root
//!    is refused.

use std::fmt;

/// Why a path was refused; each has a stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not absolute (`*`, empty) or holds a character that is never allowed.
    InvalidCharacter,
    /// A `%` not followed by two hex digits.
    InvalidEncoding,
    /// `%2F` or `%5C`: an encoded path separator.
    EncodedSeparator,
    /// `%00` or another encoded control character.
    EncodedControl,
    /// `%25` followed by two hex digits.
    DoubleEncoding,
    /// Decoded bytes are not UTF-8.
    InvalidUtf8,
    /// A `..` segment would leave `/{agency}/{service}`.
    Traversal,
}

impl PathError {
    pub fn code(self) -> &'static str {
        match self {
            PathError::InvalidCharacter => "path_invalid_character",
            PathError::InvalidEncoding => "path_invalid_encoding",
            PathError::EncodedSeparator => "path_encoded_separator",
            PathError::EncodedControl => "path_encoded_control",
            PathError::DoubleEncoding => "path_double_encoding",
            PathError::InvalidUtf8 => "path_invalid_utf8",
            PathError::Traversal => "path_traversal",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            PathError::InvalidCharacter => {
                "the path contains a character that is not allowed (control, space, '\\', ';' or non-ASCII)"
            }
            PathError::InvalidEncoding => "the path contains a '%' that is not followed by two hex digits",
            PathError::EncodedSeparator => "the path contains an encoded '/' or '\\' (%2F, %5C)",
            PathError::EncodedControl => "the path contains an encoded control character such as %00",
            PathError::DoubleEncoding => "the path contains a double-encoded character (%25 followed by hex digits)",
            PathError::InvalidUtf8 => "the path does not decode to valid UTF-8",
            PathError::Traversal => "the path uses '..' to leave the service it addresses",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PathError {}

/// Segments of a normalised path that the router needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// The whole normalised path, starting with `/`.
    pub path: String,
    /// Byte offset in `path` where the part after `/{agency}/{service}` starts (it begins with
    /// `/` or is empty); `None` when the path has fewer than two segments.
    rest_at: Option<usize>,
}

impl NormalizedPath {
    /// `(agency, service, rest)` when the path has at least two segments. `rest` is empty or
    /// starts with `/`.
    pub fn route_parts(&self) -> Option<(&str, &str, &str)> {
        let rest_at = self.rest_at?;
        let head = self.path.get(1..rest_at)?;
        // A byte scan: `split_once`'s searcher costs more than these few bytes do.
        let slash = head.bytes().position(|b| b == b'/')?;
        let (agency, service) = (head.get(..slash)?, head.get(slash + 1..)?);
        Some((agency, service, self.path.get(rest_at..).unwrap_or("")))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const fn allowed_literal(b: u8) -> bool {
    // RFC 3986 pchar without ';' (parameters, see Tomcat's "..;/" confusion) plus '/'.
    is_unreserved(b)
        || matches!(
            b,
            b'/' | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// The bytes an already-normal path may hold ([`allowed_literal`] except `/`, which the scan
/// handles itself); `%` is not among them. One table lookup per byte on the request path.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b as u8 != b'/' && allowed_literal(b as u8);
        b += 1;
    }
    t
};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// For a path that needs no change, where its rest begins ([`NormalizedPath::rest_at`]);
/// `None` for any other. A path needs no change when it starts with `/`, holds plain
/// characters only (no `%`), and has no empty segment but a trailing one and no `.` or `..`
/// segment. Most requests take this path: one scan of the bytes, each segment checked as its
/// `/` is reached.
fn already_normal(bytes: &[u8]) -> Option<Option<usize>> {
    if bytes.first() != Some(&b'/') {
        return None;
    }
    if bytes.len() == 1 {
        return Some(None);
    }
    let dots = |seg: &[u8]| seg == b"." || seg == b"..";
    let (mut second, mut third) = (None, None);
    let mut seg_start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if b == b'/' {
            let seg = &bytes[seg_start..i];
            if seg.is_empty() || dots(seg) {
                return None;
            }
            if second.is_none() {
                second = Some(i);
            } else if third.is_none() {
                third = Some(i);
            }
            seg_start = i + 1;
        } else if !PLAIN[usize::from(b)] {
            return None;
        }
    }
    // The last segment may be empty (a trailing `/` after a segment), never a dot segment.
    if dots(&bytes[seg_start..]) {
        return None;
    }
    // The rest starts at the third `/` (or is empty) when there are two whole segments.
    Some(match second {
        Some(s) if s + 1 < bytes.len() => Some(third.unwrap_or(bytes.len())),
        _ => None,
    })
}

/// Normalises a request path (without the query). See the module documentation for the rules.
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    match already_normal(raw.as_bytes()) {
        Some(rest_at) => Ok(NormalizedPath {
            path: raw.to_owned(),
            rest_at,
        }),
        None => normalize_slow(raw),
    }
}

/// The full normalisation, for paths that need a change or a closer look.
fn normalize_slow(raw: &str) -> Result<NormalizedPath, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::InvalidCharacter);
    }
    // Pass 1: validate and decode unreserved triplets into `decoded` (still a URI path, with
    // reserved characters kept encoded); collect fully decoded bytes for the UTF-8 check.
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut needs_utf8_check = false;
    let mut fully: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&h), Some(&l)) => (h, l),
                _ => return Err(PathError::InvalidEncoding),
            };
            let v = match (hex_val(h), hex_val(l)) {
                (Some(h), Some(l)) => (h << 4) | l,
                _ => return Err(PathError::InvalidEncoding),
            };
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0x00..=0x1F | 0x7F => return Err(PathError::EncodedControl),
                b'%' => {
                    let next_two_hex = matches!(
                        (
                            bytes.get(i + 3).copied().and_then(hex_val),
                            bytes.get(i + 4).copied().and_then(hex_val)
                        ),
                        (Some(_), Some(_))
                    );
                    if next_two_hex {
                        return Err(PathError::DoubleEncoding);
                    }
                }
                _ => {}
            }
            if v >= 0x80 {
                needs_utf8_check = true;
            }
            if is_unreserved(v) {
                decoded.push(v);
            } else {
                decoded.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 0xF) as usize]]);
            }
            fully.push(v);
            i += 3;
        } else if allowed_literal(b) {
            decoded.push(b);
            fully.push(b);
            i += 1;
        } else {
            return Err(PathError::InvalidCharacter);
        }
    }
    if needs_utf8_check && std::str::from_utf8(&fully).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    // Double encoding again, after unreserved triplets were decoded: `%25%32%46` is `%252F` to
    // anyone who decodes once more.
    if decoded
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex_val(w[3]).is_some() && hex_val(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoding);
    }

    // Pass 2: segments. `decoded` is ASCII, so splitting on '/' is safe.
    let trailing_slash = decoded.len() > 1 && decoded.last() == Some(&b'/');
    let mut out: Vec<&[u8]> = Vec::new();
    let mut last_was_dot = false;
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" => {}
            b"." => last_was_dot = true,
            b".." => {
                if out.len() <= 2 {
                    return Err(PathError::Traversal);
                }
                out.pop();
                last_was_dot = true;
            }
            s => {
                out.push(s);
                last_was_dot = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    let mut rest_at = None;
    for (n, seg) in out.iter().enumerate() {
        if n == 2 {
            rest_at = Some(path.len());
        }
        path.push('/');
        // Every byte is ASCII: checked in pass 1.
        for &c in seg.iter() {
            path.push(c as char);
        }
    }
    if out.len() == 2 {
        rest_at = Some(path.len());
    }
    // A trailing '/' (or a final '.'/'..' segment, which names a directory) is kept.
    if path.is_empty() || ((trailing_slash || last_was_dot) && !out.is_empty()) {
        path.push('/');
    }
    Ok(NormalizedPath { path, rest_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, expected normalised path or error).
    const TABLE: &[(&str, Result<&str, PathError>)] = &[
        // plain and merged
        (
            "/dukcapil/penduduk/penduduk/3603",
            Ok("/dukcapil/penduduk/penduduk/3603"),
        ),
        ("/dukcapil/penduduk", Ok("/dukcapil/penduduk")),
        ("/dukcapil/penduduk/", Ok("/dukcapil/penduduk/")),
        ("//dukcapil///penduduk//x", Ok("/dukcapil/penduduk/x")),
        ("/", Ok("/")),
        // dot segments inside the service
        ("/a/s/x/./y", Ok("/a/s/x/y")),
        ("/a/s/x/../y", Ok("/a/s/y")),
        ("/a/s/x/y/..", Ok("/a/s/x/")),
        ("/a/./s/x", Ok("/a/s/x")),
        // traversal out of the service root (Envoy CVE-2019-9901 class)
        ("/a/s/../t/x", Err(PathError::Traversal)),
        ("/a/s/x/../../../b/t", Err(PathError::Traversal)),
        ("/a/s/..", Err(PathError::Traversal)),
        ("/..", Err(PathError::Traversal)),
        ("/a/s/%2e%2e/t", Err(PathError::Traversal)),
        ("/a/s/%2E./t", Err(PathError::Traversal)),
        ("/a/s/.%2e/t", Err(PathError::Traversal)),
        ("/a/s/x/%2e%2e/y", Ok("/a/s/y")),
        // encoded separators (Envoy CVE-2021-29492, Traefik CVE-2025-32431)
        ("/a/s/x%2Fy", Err(PathError::EncodedSeparator)),
        ("/a/s/x%2fy", Err(PathError::EncodedSeparator)),
        ("/a%2Fs/x", Err(PathError::EncodedSeparator)),
        ("/a/s/x%5Cy", Err(PathError::EncodedSeparator)),
        ("/a/s/x%5c..%5c..%5cb", Err(PathError::EncodedSeparator)),
        // raw backslash, NUL, controls, space, ';' parameters (Tomcat "..;/"), '#'
        ("/a/s/x\\y", Err(PathError::InvalidCharacter)),
        ("/a/s/..;/t", Err(PathError::InvalidCharacter)),
        ("/a/s/x;jsessionid=1", Err(PathError::InvalidCharacter)),
        ("/a/s/x y", Err(PathError::InvalidCharacter)),
        ("/a/s/x#/../y", Err(PathError::InvalidCharacter)),
        ("/a/s/x\u{0}", Err(PathError::InvalidCharacter)),
        ("a/s/x", Err(PathError::InvalidCharacter)),
        ("*", Err(PathError::InvalidCharacter)),
        ("", Err(PathError::InvalidCharacter)),
        ("/a/s/é", Err(PathError::InvalidCharacter)),
        // encoded NUL and controls
        ("/a/s/x%00y", Err(PathError::EncodedControl)),
        ("/a/s/x%0D%0Ay", Err(PathError::EncodedControl)),
        ("/a/s/x%7F", Err(PathError::EncodedControl)),
        // double encoding (APISIX CVE-2021-43557, Traefik CVE-2025-66490 class)
        ("/a/s/x%252Fy", Err(PathError::DoubleEncoding)),
        ("/a/s/%252e%252e/t", Err(PathError::DoubleEncoding)),
        ("/a/s/%25%32%46x", Err(PathError::DoubleEncoding)),
        ("/a/s/%252%65", Err(PathError::DoubleEncoding)),
        ("/a/s/%25%41%42", Err(PathError::DoubleEncoding)),
        ("/a/s/%25%47", Ok("/a/s/%25G")),
        ("/a/s/100%25", Ok("/a/s/100%25")),
        ("/a/s/100%25off", Ok("/a/s/100%25off")),
        // malformed escapes
        ("/a/s/x%", Err(PathError::InvalidEncoding)),
        ("/a/s/x%2", Err(PathError::InvalidEncoding)),
        ("/a/s/x%G1", Err(PathError::InvalidEncoding)),
        // UTF-8
        ("/a/s/caf%C3%A9", Ok("/a/s/caf%C3%A9")),
        ("/a/s/caf%c3%a9", Ok("/a/s/caf%C3%A9")),
        ("/a/s/%C3%28", Err(PathError::InvalidUtf8)),
        ("/a/s/%FF", Err(PathError::InvalidUtf8)),
        ("/a/s/%C0%AF", Err(PathError::InvalidUtf8)),
        // unreserved characters decoded, reserved kept encoded
        ("/a/s/%41%62%7e%2D", Ok("/a/s/Ab~-")),
        ("/%64ukcapil/penduduk/x", Ok("/dukcapil/penduduk/x")),
        ("/a/s/x%3Fy%23z", Ok("/a/s/x%3Fy%23z")),
        ("/a/s/x%3by", Ok("/a/s/x%3By")),
        ("/a/s/x:y@z!$&'()*+,=", Ok("/a/s/x:y@z!$&'()*+,=")),
    ];

    #[test]
    fn path_table() {
        assert!(TABLE.len() >= 30);
        for (input, want) in TABLE {
            let got = normalize(input).map(|p| p.path);
            let want = want.map(str::to_owned);
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn normalisation_is_idempotent() {
        for (input, want) in TABLE {
            if want.is_ok() {
                let once = normalize(input).unwrap().path;
                let twice = normalize(&once).unwrap().path;
                assert_eq!(once, twice, "input {input:?}");
            }
        }
    }

    #[test]
    fn route_parts_split_agency_service_rest() {
        let p = normalize("/dukcapil/penduduk/penduduk/3603").unwrap();
        assert_eq!(
            p.route_parts(),
            Some(("dukcapil", "penduduk", "/penduduk/3603"))
        );
        let p = normalize("/dukcapil/penduduk").unwrap();
        assert_eq!(p.route_parts(), Some(("dukcapil", "penduduk", "")));
        let p = normalize("/dukcapil/penduduk/").unwrap();
        assert_eq!(p.route_parts(), Some(("dukcapil", "penduduk", "/")));
        assert_eq!(normalize("/dukcapil").unwrap().route_parts(), None);
        assert_eq!(normalize("/").unwrap().route_parts(), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Paths built from the characters that matter: separators, dots, escapes of every kind.
    fn path_strategy() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%2f".to_owned()),
            Just("%5C".to_owned()),
            Just("%25".to_owned()),
            Just("%00".to_owned()),
            Just("%41".to_owned()),
            Just("%C3%A9".to_owned()),
            Just("%FF".to_owned()),
            Just(";".to_owned()),
            Just("\\".to_owned()),
            "[a-z0-9]{1,3}",
            "%[0-9A-Fa-f]{2}",
            // Other characters a path may hold as they are, and some it may not.
            "[-!$&'()*+,=:@~_A-Z]{1,2}",
            "[ \"<>#?\\x7f\\x01é]",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    /// The table of plain bytes is `allowed_literal` without `/` (and so without `%`), for
    /// every byte.
    #[test]
    fn plain_bytes_are_the_allowed_literals() {
        for b in 0..=255u8 {
            assert_eq!(
                PLAIN[usize::from(b)],
                b != b'/' && allowed_literal(b),
                "{b:#04x}"
            );
        }
        assert!(!PLAIN[usize::from(b'%')] && !PLAIN[usize::from(b';')]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever is accepted is already normal: no dot segments, no empty segments, no
        /// encoded separator, control or double encoding; and normalising again changes nothing.
        #[test]
        fn accepted_paths_are_normal_and_stable(raw in path_strategy()) {
            if let Ok(n) = normalize(&raw) {
                let p = &n.path;
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.contains("//"), "{p}");
                for seg in p.split('/').skip(1) {
                    prop_assert!(seg != "." && seg != "..", "{p}");
                }
                let upper = p.to_ascii_uppercase();
                for bad in ["%2F", "%5C", "%00", "%2E", "\\", ";"] {
                    prop_assert!(!upper.contains(bad), "{bad} in {p}");
                }
                let b = p.as_bytes();
                for w in b.windows(5) {
                    let double = w.starts_with(b"%25") && hex_val(w[3]).is_some() && hex_val(w[4]).is_some();
                    prop_assert!(!double, "double encoding in {p}");
                }
                prop_assert_eq!(normalize(p).map(|x| x.path), Ok(p.clone()));
            }
        }

        /// The fast path for already-normal paths agrees with the full normalisation.
        #[test]
        fn fast_path_agrees_with_full_normalisation(raw in path_strategy()) {
            prop_assert_eq!(normalize(&raw), normalize_slow(&raw));
        }

        /// The route parts always name the first two segments of the normalised path, and
        /// the rest is what follows them.
        #[test]
        fn route_parts_rebuild_the_path(raw in path_strategy()) {
            if let Ok(n) = normalize(&raw) {
                if let Some((a, s, rest)) = n.route_parts() {
                    prop_assert!(!a.is_empty() && !s.is_empty());
                    prop_assert_eq!(format!("/{a}/{s}{rest}"), n.path.clone());
                }
            }
        }
    }
}
