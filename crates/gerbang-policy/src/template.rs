//! Endpoint templates: `/penduduk/{nik}`, `/faskes`, `/wilayah/{kode}/desa`, and with declared
//! query parameters `/penduduk?nik={nik}` or `/laporan?nik={nik}&jenis=ringkas`.
//!
//! The path part matches a normalised path segment by segment: a literal matches itself
//! exactly (case-sensitive: `/Penduduk` is not `/penduduk`), a `{param}` matches one non-empty
//! segment. A trailing `/*` matches any rest (one or more segments), for services that publish
//! a subtree. Matching never decodes anything: the gateway normalised the path once before.
//! With [`PathMatching::CaseInsensitive`] (a provider that ignores case and trailing dots, as
//! IIS and many Windows or .NET stacks do) a literal also matches its case and trailing-dot
//! variants: `/laporan/REKAP-NIK` and `/laporan/rekap-nik.` match `/laporan/rekap-nik`.
//!
//! The query part declares the parameters an endpoint takes: `name={param}` binds a value,
//! `name=value` requires that literal value. A query is checked ([`PathTemplate::match_query`])
//! strictly and without interpreting anything the provider might read differently: see
//! [`QueryError`] for what is refused.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A declared query parameter: `name={param}` or `name=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueryParam {
    name: String,
    value: Segment,
}

/// How the provider of a service matches paths, as its registry entry declares
/// (`path_matching`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathMatching {
    /// The provider matches paths byte for byte (the default).
    #[default]
    Exact,
    /// The provider ignores case and trailing dots (and spaces): literals are compared after
    /// folding both sides.
    CaseInsensitive,
}

/// A parsed endpoint template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    /// Ends in `/*`: matches any non-empty rest.
    rest: bool,
    /// Declared query parameters, in template order.
    query: Vec<QueryParam>,
    text: String,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a path template starts with '/'")]
    NotAbsolute,
    #[error("empty segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("`{0}` is not a parameter name (letters, digits, '_')")]
    BadParam(String),
    #[error("parameter `{0}` appears twice")]
    DuplicateParam(String),
    #[error("segment `{0}` has a character a normalised path never has")]
    BadLiteral(String),
    #[error("'*' may only be the whole last segment")]
    MisplacedWildcard,
    #[error(
        "query part `{0}` is not `name={{param}}` or `name=value` (name and value of letters, \
         digits, '-', '.', '_', '~'; parts joined by '&')"
    )]
    BadQuery(String),
    #[error("query parameter `{0}` is declared twice")]
    DuplicateQueryName(String),
}

/// Why a request's query was refused by an endpoint that checks its query (one that declares
/// query parameters or names a subject). Anything that two parsers could read differently is
/// refused rather than interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// Not `name=value` pairs joined by `&`: an empty part (`&&`, a trailing `&`), a part
    /// without `=`, an empty name, a name with anything but letters, digits, `-`, `.`, `_`,
    /// `~` (so no percent-encoded name such as `%6Eik`), `;` or `+` anywhere, a raw `=` in a
    /// value, a bad `%` triplet, an encoded `%`, `&`, `=`, `;`, `+`, `#` or control character,
    /// a value that does not decode to UTF-8; or a subject value that is not plain (letters,
    /// digits, `-`, `.`, `_`, `~`: what is audited is then exactly what the provider decodes).
    Malformed,
    /// A parameter the endpoint does not declare (on an endpoint that names a subject), a name
    /// that differs from a declared one only by case or `-`/`.`/`_`, or a value other than a
    /// declared literal.
    NotAllowed,
    /// A declared parameter (on a subject endpoint: any parameter) given more than once.
    Repeated,
    /// A declared parameter is absent, or its `{param}` value is empty.
    Missing,
}

/// The parameters a match bound (name, value), in template order; up to four kept inline.
pub type Params<'t, 'p> = smallvec::SmallVec<[(&'t str, &'p str); 4]>;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn param_name(part: &str) -> Option<&str> {
    let name = part.strip_prefix('{')?.strip_suffix('}')?;
    Some(name)
}

fn valid_param_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl PathTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let (path_text, query_text) = match text.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (text, None),
        };
        let body = path_text
            .strip_prefix('/')
            .ok_or(TemplateError::NotAbsolute)?;
        let mut segments = Vec::new();
        let mut rest = false;
        let mut names: Vec<&str> = Vec::new();
        if !body.is_empty() {
            let parts: Vec<&str> = body.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                if part.is_empty() {
                    return Err(TemplateError::EmptySegment);
                }
                if *part == "*" {
                    if i + 1 != parts.len() {
                        return Err(TemplateError::MisplacedWildcard);
                    }
                    rest = true;
                    continue;
                }
                if part.contains('*') {
                    return Err(TemplateError::MisplacedWildcard);
                }
                if let Some(name) = param_name(part) {
                    if !valid_param_name(name) {
                        return Err(TemplateError::BadParam((*part).to_owned()));
                    }
                    if names.contains(&name) {
                        return Err(TemplateError::DuplicateParam(name.to_owned()));
                    }
                    names.push(name);
                    segments.push(Segment::Param(name.to_owned()));
                } else {
                    let ok = part.bytes().all(|b| {
                        b.is_ascii_graphic()
                            && !matches!(b, b'{' | b'}' | b'?' | b'#' | b'%' | b'\\' | b';')
                    }) && *part != "."
                        && *part != "..";
                    if !ok {
                        return Err(TemplateError::BadLiteral((*part).to_owned()));
                    }
                    segments.push(Segment::Literal((*part).to_owned()));
                }
            }
        }
        let mut query: Vec<QueryParam> = Vec::new();
        if let Some(q) = query_text {
            for part in q.split('&') {
                let bad = || TemplateError::BadQuery(part.to_owned());
                let (name, value) = part.split_once('=').ok_or_else(bad)?;
                if name.is_empty() || !name.bytes().all(is_unreserved) {
                    return Err(bad());
                }
                if query.iter().any(|p| p.name == name) {
                    return Err(TemplateError::DuplicateQueryName(name.to_owned()));
                }
                let value = if let Some(param) = param_name(value) {
                    if !valid_param_name(param) {
                        return Err(TemplateError::BadParam(value.to_owned()));
                    }
                    if names.contains(&param) {
                        return Err(TemplateError::DuplicateParam(param.to_owned()));
                    }
                    names.push(param);
                    Segment::Param(param.to_owned())
                } else if !value.is_empty() && value.bytes().all(is_unreserved) {
                    Segment::Literal(value.to_owned())
                } else {
                    return Err(bad());
                };
                query.push(QueryParam {
                    name: name.to_owned(),
                    value,
                });
            }
        }
        Ok(Self {
            segments,
            rest,
            query,
            text: text.to_owned(),
        })
    }

    /// The template as written, e.g. `/penduduk/{nik}` or `/penduduk?nik={nik}` (a safe
    /// metrics label).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The path part, without a declared query: `/penduduk` of `/penduduk?nik={nik}`.
    pub fn path_str(&self) -> &str {
        self.text.split_once('?').map_or(&self.text, |(p, _)| p)
    }

    /// Names of the parameters, of the path then of the query.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        let path = self.segments.iter();
        let query = self.query.iter().map(|q| &q.value);
        path.chain(query).filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether the template declares query parameters.
    pub fn declares_query(&self) -> bool {
        !self.query.is_empty()
    }

    /// Whether `name` is a parameter of the declared query (not of the path).
    pub fn is_query_param(&self, name: &str) -> bool {
        self.query
            .iter()
            .any(|q| matches!(&q.value, Segment::Param(n) if n == name))
    }

    /// Matches a normalised path (`/…`, no query) byte for byte; returns the bound parameters.
    pub fn matches<'t, 'p>(&'t self, path: &'p str) -> Option<Params<'t, 'p>> {
        self.matches_with(path, PathMatching::Exact)
    }

    /// Matches a normalised path (`/…`, no query) the way the provider does.
    pub fn matches_with<'t, 'p>(
        &'t self,
        path: &'p str,
        matching: PathMatching,
    ) -> Option<Params<'t, 'p>> {
        let body = path.strip_prefix('/')?;
        let mut parts = if body.is_empty() {
            None
        } else {
            Some(Segments(Some(body)))
        };
        let mut params = Params::new();
        for seg in &self.segments {
            let part = parts.as_mut().and_then(Iterator::next)?;
            if part.is_empty() {
                return None;
            }
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(l)
                    if matching == PathMatching::CaseInsensitive && folded_eq(l, part) => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.as_str(), part)),
            }
        }
        let mut remaining = parts.into_iter().flatten().peekable();
        if self.rest {
            // At least one more non-empty segment.
            let mut any = false;
            for p in remaining {
                if p.is_empty() {
                    return None;
                }
                any = true;
            }
            any.then_some(params)
        } else {
            remaining.peek().is_none().then_some(params)
        }
    }

    /// Checks a request's raw query (`None`: no `?`) against the declared parameters and
    /// returns their values, raw (as the provider receives them).
    ///
    /// The whole query must be plain `name=value` pairs (see [`QueryError::Malformed`]); every
    /// declared parameter must be there exactly once, with a non-empty value for a `{param}`
    /// and the declared value for a literal. With `only_declared` (an endpoint that names a
    /// subject) no other parameter is allowed; without it, other names pass unless they differ
    /// from a declared name only by case or `-`/`.`/`_`. The parameter named `plain` (the
    /// subject) must have a plain value (unreserved characters only), so that its raw and
    /// decoded forms are the same.
    pub fn match_query<'t, 'q>(
        &'t self,
        query: Option<&'q str>,
        only_declared: bool,
        plain: Option<&str>,
    ) -> Result<Params<'t, 'q>, QueryError> {
        let mut given: smallvec::SmallVec<[(&'q str, &'q str); 8]> = smallvec::SmallVec::new();
        let raw = query.unwrap_or("");
        // `?` alone is no parameter at all; otherwise every part counts (`&&` is refused).
        let parts = (!raw.is_empty()).then(|| raw.split('&'));
        for part in parts.into_iter().flatten() {
            let (name, value) = part.split_once('=').ok_or(QueryError::Malformed)?;
            if name.is_empty() || !name.bytes().all(is_unreserved) {
                return Err(QueryError::Malformed);
            }
            check_value(value)?;
            let declared = self.query.iter().find(|q| q.name == name);
            let lookalike = || {
                self.query
                    .iter()
                    .any(|q| q.name != name && loose_eq(&q.name, name))
            };
            if declared.is_none() && (only_declared || lookalike()) {
                return Err(QueryError::NotAllowed);
            }
            if declared.is_some() && given.iter().any(|(n, _)| *n == name) {
                return Err(QueryError::Repeated);
            }
            given.push((name, value));
        }
        let mut params = Params::new();
        for q in &self.query {
            let value = given
                .iter()
                .find(|(n, _)| *n == q.name)
                .map(|(_, v)| *v)
                .ok_or(QueryError::Missing)?;
            match &q.value {
                Segment::Literal(l) if l == value => {}
                Segment::Literal(_) => return Err(QueryError::NotAllowed),
                Segment::Param(_) if value.is_empty() => return Err(QueryError::Missing),
                Segment::Param(p) => {
                    if plain == Some(p.as_str()) && !value.bytes().all(is_unreserved) {
                        return Err(QueryError::Malformed);
                    }
                    params.push((p.as_str(), value));
                }
            }
        }
        Ok(params)
    }

    /// Literal segments first: a more specific template wins when two match (`/penduduk/baru`
    /// over `/penduduk/{nik}`). The query plays no part.
    pub fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (literals, self.segments.len(), !self.rest)
    }

    /// Whether this template, matched exactly, takes a path that a provider which ignores case
    /// and trailing dots would serve as `other`'s: `other` has a literal segment where this
    /// one has a `{param}` (or its `/*`), and the rest of both can match one path. Returns a
    /// path in `other`'s form that shows it (`/laporan/REKAP-NIK`).
    pub fn shadows(&self, other: &PathTemplate) -> Option<String> {
        let (na, nb) = (self.segments.len(), other.segments.len());
        let lengths_meet = match (self.rest, other.rest) {
            (false, false) => na == nb,
            (true, false) => nb > na,
            (false, true) => na > nb,
            (true, true) => true,
        };
        if !lengths_meet {
            return None;
        }
        let mut at = None;
        for k in 0..na.max(nb) {
            match (self.segments.get(k), other.segments.get(k)) {
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if !folded_eq(x, y) => {
                    return None;
                }
                // A `{param}` here, or this template's `/*` covering the position.
                (Some(Segment::Param(_)) | None, Some(Segment::Literal(_))) => {
                    at.get_or_insert(k);
                }
                _ => {}
            }
        }
        let at = at?;
        let mut example = String::new();
        for (k, seg) in other.segments.iter().enumerate() {
            example.push('/');
            match seg {
                Segment::Literal(l) if k == at => {
                    let upper = l.to_ascii_uppercase();
                    if upper == *l {
                        example.push_str(l);
                        example.push('.');
                    } else {
                        example.push_str(&upper);
                    }
                }
                Segment::Literal(l) => example.push_str(l),
                Segment::Param(p) => {
                    example.push('{');
                    example.push_str(p);
                    example.push('}');
                }
            }
        }
        if other.rest {
            example.push_str("/*");
        }
        Some(example)
    }

    /// Whether the two path parts are the same once case and trailing dots are folded (two
    /// such endpoints cannot be told apart by a provider that ignores case).
    pub fn same_when_folded(&self, other: &PathTemplate) -> bool {
        self.rest == other.rest
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => folded_eq(x, y),
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }
}

/// A raw query value: unreserved characters, the sub-delimiters and `:@/?` that mean nothing
/// to query parsers, and `%` triplets that decode to neither a delimiter nor a control
/// character nor `%`; the decoded bytes must be UTF-8.
fn check_value(value: &str) -> Result<(), QueryError> {
    let bytes = value.as_bytes();
    let plain_byte = |b: u8| {
        is_unreserved(b)
            || matches!(
                b,
                b'!' | b'$' | b'\'' | b'(' | b')' | b'*' | b',' | b':' | b'@' | b'/' | b'?'
            )
    };
    // Most values hold no `%`: ASCII only, nothing to decode.
    if !value.contains('%') {
        return if bytes.iter().all(|b| plain_byte(*b)) {
            Ok(())
        } else {
            Err(QueryError::Malformed)
        };
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|h| (*h as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(QueryError::Malformed);
            };
            // Both digits are below 16: the byte fits.
            let d = u8::try_from(hi * 16 + lo).map_err(|_| QueryError::Malformed)?;
            if d < 0x20 || d == 0x7f || matches!(d, b'%' | b'&' | b'=' | b';' | b'+' | b'#') {
                return Err(QueryError::Malformed);
            }
            decoded.push(d);
            i += 3;
        } else if plain_byte(b) {
            decoded.push(b);
            i += 1;
        } else {
            return Err(QueryError::Malformed);
        }
    }
    std::str::from_utf8(&decoded).map_err(|_| QueryError::Malformed)?;
    Ok(())
}

/// Names that some frameworks take for the same: ASCII case ignored, `-` and `.` read as `_`.
fn loose_eq(a: &str, b: &str) -> bool {
    let canon = |c: u8| match c.to_ascii_lowercase() {
        b'-' | b'.' => b'_',
        c => c,
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| canon(x) == canon(y))
}

/// A literal and a path segment compared as a provider that ignores case does: the segment
/// percent-decoded (a normalised path keeps non-ASCII and some ASCII encoded), trailing dots
/// and spaces dropped (Windows and IIS drop them), then both folded (Unicode upper then lower
/// case, so that `K` (U+212A KELVIN SIGN) and `ſ` fold like `k` and `s`).
fn folded_eq(literal: &str, segment: &str) -> bool {
    // Fast path: plain ASCII on both sides.
    if segment.is_ascii() && !segment.contains('%') {
        return trim_dots(literal).eq_ignore_ascii_case(trim_dots(segment));
    }
    let decoded = percent_decode(segment);
    let fold = |s: &str| -> String {
        trim_dots(s)
            .chars()
            .flat_map(char::to_uppercase)
            .flat_map(char::to_lowercase)
            .collect()
    };
    fold(literal) == fold(&decoded)
}

/// Without the trailing dots and spaces that Windows and IIS drop.
fn trim_dots(s: &str) -> &str {
    s.trim_end_matches(['.', ' '])
}

/// `%XX` decoded where the result is UTF-8; the segment as it is otherwise.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|h| (*h as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The `/`-separated segments of a path, as `str::split('/')` yields them, found by a plain
/// byte scan: segments are a few bytes long, where the generic searcher's setup costs more
/// than the scan (one request matches a template or two).
struct Segments<'p>(Option<&'p str>);

impl<'p> Iterator for Segments<'p> {
    type Item = &'p str;

    fn next(&mut self) -> Option<&'p str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b'/') {
            Some(at) => {
                self.0 = rest.get(at + 1..);
                rest.get(..at)
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    proptest::proptest! {
        /// The byte scan yields the segments `str::split('/')` does, empty ones included.
        #[test]
        fn segments_are_what_split_yields(s in "[a/é%.]{0,12}") {
            let ours: Vec<&str> = Segments(Some(&s)).collect();
            let split: Vec<&str> = s.split('/').collect();
            proptest::prop_assert_eq!(ours, split);
        }
    }

    #[test]
    fn matching() {
        let p = t("/penduduk/{nik}");
        assert_eq!(
            p.matches("/penduduk/3603015505900001"),
            Some(smallvec::smallvec![("nik", "3603015505900001")])
        );
        assert_eq!(p.matches("/penduduk"), None);
        assert_eq!(p.matches("/penduduk/"), None, "empty parameter");
        assert_eq!(p.matches("/penduduk/1/x"), None);
        assert_eq!(p.matches("/Penduduk/1"), None, "case-sensitive");
        assert_eq!(t("/").matches("/"), Some(smallvec::smallvec![]));
        assert_eq!(t("/").matches("/x"), None);
        assert_eq!(t("/faskes").matches("/faskes"), Some(smallvec::smallvec![]));
        assert_eq!(t("/faskes").matches("/faskes/"), None);
        let w = t("/berkas/*");
        assert!(w.matches("/berkas/a/b").is_some());
        assert!(w.matches("/berkas").is_none());
        assert!(w.matches("/berkas/").is_none());
        assert!(t("/*").matches("/anything/at/all").is_some());
        assert_eq!(
            t("/wilayah/{kode}/desa/{desa}").matches("/wilayah/36/desa/7"),
            Some(smallvec::smallvec![("kode", "36"), ("desa", "7")])
        );
    }

    #[test]
    fn bad_templates() {
        for (s, e) in [
            ("penduduk", TemplateError::NotAbsolute),
            ("/a//b", TemplateError::EmptySegment),
            ("/a/", TemplateError::EmptySegment),
            ("/a/{}", TemplateError::BadParam("{}".into())),
            ("/a/{n-k}", TemplateError::BadParam("{n-k}".into())),
            ("/{x}/{x}", TemplateError::DuplicateParam("x".into())),
            ("/a/*/b", TemplateError::MisplacedWildcard),
            ("/a*", TemplateError::MisplacedWildcard),
            ("/a/..", TemplateError::BadLiteral("..".into())),
            ("/a;b", TemplateError::BadLiteral("a;b".into())),
            ("/a%2F", TemplateError::BadLiteral("a%2F".into())),
            ("/a?", TemplateError::BadQuery("".into())),
            ("/a?nik", TemplateError::BadQuery("nik".into())),
            ("/a?nik={nik}&", TemplateError::BadQuery("".into())),
            ("/a?=x", TemplateError::BadQuery("=x".into())),
            (
                "/a?n%69k={nik}",
                TemplateError::BadQuery("n%69k={nik}".into()),
            ),
            ("/a?jenis=a+b", TemplateError::BadQuery("jenis=a+b".into())),
            ("/a?jenis=", TemplateError::BadQuery("jenis=".into())),
            (
                "/a?nik={nik};x=1",
                TemplateError::BadQuery("nik={nik};x=1".into()),
            ),
            ("/a?x={n-k}", TemplateError::BadParam("{n-k}".into())),
            (
                "/a?nik={nik}&nik={x}",
                TemplateError::DuplicateQueryName("nik".into()),
            ),
            (
                "/a/{nik}?nik={nik}",
                TemplateError::DuplicateParam("nik".into()),
            ),
        ] {
            assert_eq!(PathTemplate::parse(s), Err(e), "{s}");
        }
    }

    #[test]
    fn query_declarations() {
        let p = t("/penduduk?nik={nik}&jenis=ringkas&tahun={tahun}");
        assert_eq!(p.path_str(), "/penduduk");
        assert_eq!(
            p.as_str(),
            "/penduduk?nik={nik}&jenis=ringkas&tahun={tahun}"
        );
        assert_eq!(p.params().collect::<Vec<_>>(), ["nik", "tahun"]);
        assert!(p.declares_query() && p.is_query_param("nik") && !p.is_query_param("jenis"));
        assert_eq!(
            p.matches("/penduduk"),
            Some(smallvec::smallvec![]),
            "the path part matches alone"
        );
        assert_eq!(p.specificity(), t("/penduduk").specificity());
        let q = t("/wilayah/{kode}?nik={nik}");
        assert_eq!(q.params().collect::<Vec<_>>(), ["kode", "nik"]);
        assert!(!t("/penduduk/{nik}").declares_query());
    }

    #[test]
    fn strict_query_on_a_subject_endpoint() {
        use QueryError::*;
        let p = t("/penduduk?nik={nik}&tahun={tahun}&jenis=ringkas");
        let check = |q: Option<&'static str>| p.match_query(q, true, Some("nik"));
        let ok = "nik=3603015505900001&tahun=2024&jenis=ringkas";
        assert_eq!(
            check(Some(ok)),
            Ok(smallvec::smallvec![
                ("nik", "3603015505900001"),
                ("tahun", "2024")
            ])
        );
        // Any order.
        assert_eq!(
            check(Some("jenis=ringkas&tahun=2024&nik=1")),
            Ok(smallvec::smallvec![("nik", "1"), ("tahun", "2024")])
        );
        // A non-subject value may be percent-encoded (not with delimiters).
        assert_eq!(
            check(Some("nik=1&tahun=20%C3%A924%20x&jenis=ringkas")),
            Ok(smallvec::smallvec![
                ("nik", "1"),
                ("tahun", "20%C3%A924%20x")
            ])
        );
        let base = "tahun=2024&jenis=ringkas";
        for (q, want) in [
            // Repeated: the provider could take either.
            ("nik=1&nik=2&tahun=2024&jenis=ringkas", Repeated),
            ("nik=1&tahun=2024&jenis=ringkas&jenis=ringkas", Repeated),
            // Undeclared names, case variants, look-alikes.
            ("nik=1&tahun=2024&jenis=ringkas&x=1", NotAllowed),
            ("NIK=1&tahun=2024&jenis=ringkas", NotAllowed),
            ("Nik=1&nik=2&tahun=2024&jenis=ringkas", NotAllowed),
            ("nik=1&tahun=2024&jenis=lengkap", NotAllowed),
            ("nik=1&tahun=2024&jenis=RINGKAS", NotAllowed),
            // Encoded names, separators, `+`, empty names and parts, bad encoding.
            ("%6Eik=1&tahun=2024&jenis=ringkas", Malformed),
            ("n%69k=1&tahun=2024&jenis=ringkas", Malformed),
            ("nik=1;nik=2&tahun=2024&jenis=ringkas", Malformed),
            ("nik=1&tahun=2024;jenis=ringkas", Malformed),
            ("nik=1&tahun=2024+1&jenis=ringkas", Malformed),
            ("nik+=1&tahun=2024&jenis=ringkas", Malformed),
            ("nik=1&&tahun=2024&jenis=ringkas", Malformed),
            ("nik=1&tahun=2024&jenis=ringkas&", Malformed),
            ("&nik=1&tahun=2024&jenis=ringkas", Malformed),
            ("=1&nik=1&tahun=2024&jenis=ringkas", Malformed),
            ("nik&nik=1&tahun=2024&jenis=ringkas", Malformed),
            ("nik=1=2&tahun=2024&jenis=ringkas", Malformed),
            ("nik[]=1&tahun=2024&jenis=ringkas", Malformed),
            ("nik=1&tahun=20%4&jenis=ringkas", Malformed),
            ("nik=1&tahun=20%GG&jenis=ringkas", Malformed),
            // Encoded delimiters, `%`, controls and broken UTF-8 in any value.
            ("nik=1&tahun=2024%26nik%3D2&jenis=ringkas", Malformed),
            ("nik=1&tahun=2024%3Bnik=2&jenis=ringkas", Malformed),
            ("nik=1&tahun=2024%2B&jenis=ringkas", Malformed),
            ("nik=1&tahun=%2526&jenis=ringkas", Malformed),
            ("nik=1&tahun=2024%00&jenis=ringkas", Malformed),
            ("nik=1&tahun=2024%0A&jenis=ringkas", Malformed),
            ("nik=1&tahun=%C3&jenis=ringkas", Malformed),
            ("nik=1&tahun=a b&jenis=ringkas", Malformed),
            ("nik=1&tahun=a#b&jenis=ringkas", Malformed),
            // The subject must be plain: raw and decoded the same.
            ("nik=%33603015505900001&tahun=2024&jenis=ringkas", Malformed),
            ("nik=3603,3604&tahun=2024&jenis=ringkas", Malformed),
            ("nik=3603%20&tahun=2024&jenis=ringkas", Malformed),
            // Missing or empty.
            (base, Missing),
            ("nik=&tahun=2024&jenis=ringkas", Missing),
            ("nik=1&jenis=ringkas", Missing),
            ("nik=1&tahun=2024", Missing),
            ("", Missing),
        ] {
            assert_eq!(check(Some(q)), Err(want), "{q}");
        }
        assert_eq!(check(None), Err(Missing));
    }

    #[test]
    fn a_subject_endpoint_without_declared_query_takes_none() {
        let p = t("/penduduk/{nik}");
        let check = |q: Option<&'static str>| p.match_query(q, true, Some("nik"));
        assert_eq!(check(None), Ok(smallvec::smallvec![]));
        assert_eq!(
            check(Some("")),
            Ok(smallvec::smallvec![]),
            "a lone '?' is no parameter"
        );
        assert_eq!(check(Some("nik=2")), Err(QueryError::NotAllowed));
        assert_eq!(check(Some("fields=nama")), Err(QueryError::NotAllowed));
        assert_eq!(check(Some("&")), Err(QueryError::Malformed));
    }

    #[test]
    fn declared_query_without_subject_passes_other_parameters() {
        use QueryError::*;
        let p = t("/laporan?jenis=ringkas&tahun={tahun}");
        let check = |q: &'static str| p.match_query(Some(q), false, None);
        assert_eq!(
            check("jenis=ringkas&tahun=2024"),
            Ok(smallvec::smallvec![("tahun", "2024")])
        );
        assert_eq!(
            check("jenis=ringkas&tahun=2024&halaman=2&id=1&id=2"),
            Ok(smallvec::smallvec![("tahun", "2024")]),
            "undeclared names pass, repeated too"
        );
        for (q, want) in [
            ("jenis=ringkas&jenis=lengkap&tahun=2024", Repeated),
            ("jenis=ringkas&tahun=2024&Jenis=lengkap", NotAllowed),
            ("jenis=ringkas&tahun=2024&JENIS=lengkap", NotAllowed),
            ("jenis=lengkap&tahun=2024", NotAllowed),
            ("jenis=ringkas&tahun=2024&%6Aenis=lengkap", Malformed),
            ("jenis=ringkas&tahun=2024;jenis=lengkap", Malformed),
            ("jenis=ringkas&tahun=2024&q=a+b", Malformed),
            ("tahun=2024", Missing),
        ] {
            assert_eq!(check(q), Err(want), "{q}");
        }
        let p = t("/x?kode_wilayah={k}");
        assert_eq!(
            p.match_query(Some("kode_wilayah=1&kode-wilayah=2"), false, None),
            Err(NotAllowed),
            "'-' read as '_' by some frameworks"
        );
        assert_eq!(
            p.match_query(Some("kode_wilayah=1&kode.wilayah=2"), false, None),
            Err(NotAllowed)
        );
    }

    #[test]
    fn case_insensitive_matching_folds_case_and_trailing_dots() {
        let p = t("/laporan/rekap-nik");
        let ci = PathMatching::CaseInsensitive;
        for path in [
            "/laporan/rekap-nik",
            "/laporan/REKAP-NIK",
            "/laporan/Rekap-Nik",
            "/laporan/rekap-nik.",
            "/laporan/rekap-nik...",
            "/laporan/REKAP-NIK.",
            "/laporan/rekap-nik%20",
            "/LAPORAN/rekap-nik",
            // U+212A KELVIN SIGN and U+017F LATIN SMALL LETTER LONG S fold to k and s.
            "/laporan/rekap-ni%E2%84%AA",
            "/laporan/rekap-nik%2E",
        ] {
            assert!(p.matches_with(path, ci).is_some(), "{path}");
        }
        assert!(t("/s/kasus").matches_with("/s/ka%C5%BFus", ci).is_some());
        for path in [
            "/laporan/rekap-nik/x",
            "/laporan/rekap_nik",
            "/laporan/rekapnik",
            "/laporan/.rekap-nik",
            "/laporan/rekap-nik.x",
        ] {
            assert!(p.matches_with(path, ci).is_none(), "{path}");
        }
        // Exact matching is unchanged.
        assert!(p.matches("/laporan/REKAP-NIK").is_none());
        assert!(p.matches("/laporan/rekap-nik.").is_none());
        // Parameters take the segment as it is.
        assert_eq!(
            t("/laporan/{id}").matches_with("/laporan/ABC.", ci),
            Some(smallvec::smallvec![("id", "ABC.")])
        );
    }

    #[test]
    fn shadowing_of_literals_by_parameters() {
        let shadow = |a: &str, b: &str| t(a).shadows(&t(b));
        assert_eq!(
            shadow("/laporan/{id}", "/laporan/rekap-nik").as_deref(),
            Some("/laporan/REKAP-NIK")
        );
        assert_eq!(
            shadow("/laporan/{id}", "/laporan/2024").as_deref(),
            Some("/laporan/2024."),
            "no letters: the trailing-dot variant"
        );
        assert_eq!(
            shadow("/laporan/*", "/laporan/rekap-nik/{n}").as_deref(),
            Some("/laporan/REKAP-NIK/{n}")
        );
        assert_eq!(
            shadow("/{a}/{b}", "/laporan/{x}").as_deref(),
            Some("/LAPORAN/{x}")
        );
        assert!(shadow("/*", "/laporan/rekap").is_some());
        assert!(shadow("/Laporan/{id}", "/laporan/rekap").is_some());
        // Different lengths, different literals, or no literal facing a parameter.
        assert_eq!(shadow("/laporan/{id}", "/laporan/rekap/nik"), None);
        assert_eq!(shadow("/laporan/{id}/x", "/laporan/rekap"), None);
        assert_eq!(shadow("/berkas/{id}", "/laporan/rekap"), None);
        assert_eq!(shadow("/laporan/rekap", "/laporan/{id}"), None);
        assert_eq!(shadow("/laporan/{id}", "/laporan/{x}"), None);
        assert_eq!(shadow("/laporan/{id}", "/laporan/*"), None);
        assert_eq!(shadow("/laporan", "/laporan/*"), None);
        // The query plays no part.
        assert!(shadow("/laporan/{id}?x={x}", "/laporan/rekap").is_some());

        assert!(t("/a/B/{x}").same_when_folded(&t("/a/b./{y}")));
        assert!(!t("/a/b").same_when_folded(&t("/a/{b}")));
        assert!(!t("/a/b").same_when_folded(&t("/a/b/*")));
    }
}
