//! Path templates of endpoints: `/penduduk/{nik}`, `/faskes`, `/wilayah/{kode}/desa`. A
//! template matches a normalised path segment by segment: a literal matches itself exactly
//! (case-sensitive: `/Penduduk` is not `/penduduk`), a `{param}` matches one non-empty segment.
//! A trailing `/*` matches any rest (one or more segments), for services that publish a
//! subtree. Matching never decodes anything: the gateway normalised the path once before.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    /// Ends in `/*`: matches any non-empty rest.
    rest: bool,
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
}

/// The parameters a match bound (name, value), in template order.
pub type Params<'t, 'p> = Vec<(&'t str, &'p str)>;

impl PathTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let body = text.strip_prefix('/').ok_or(TemplateError::NotAbsolute)?;
        let mut segments = Vec::new();
        let mut rest = false;
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
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    let ok = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ok {
                        return Err(TemplateError::BadParam((*part).to_owned()));
                    }
                    if segments
                        .iter()
                        .any(|s| matches!(s, Segment::Param(n) if n == name))
                    {
                        return Err(TemplateError::DuplicateParam(name.to_owned()));
                    }
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
        Ok(Self {
            segments,
            rest,
            text: text.to_owned(),
        })
    }

    /// The template as written, e.g. `/penduduk/{nik}` (a safe metrics label).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Names of the parameters.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a normalised path (`/…`, no query); returns the bound parameters.
    pub fn matches<'t, 'p>(&'t self, path: &'p str) -> Option<Params<'t, 'p>> {
        let body = path.strip_prefix('/')?;
        let mut parts = if body.is_empty() {
            None
        } else {
            Some(body.split('/'))
        };
        let mut params = Vec::new();
        for seg in &self.segments {
            let part = parts.as_mut().and_then(Iterator::next)?;
            if part.is_empty() {
                return None;
            }
            match seg {
                Segment::Literal(l) if l == part => {}
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

    /// Literal segments first: a more specific template wins when two match (`/penduduk/baru`
    /// over `/penduduk/{nik}`).
    pub fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (literals, self.segments.len(), !self.rest)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    #[test]
    fn matching() {
        let p = t("/penduduk/{nik}");
        assert_eq!(
            p.matches("/penduduk/3603015505900001"),
            Some(vec![("nik", "3603015505900001")])
        );
        assert_eq!(p.matches("/penduduk"), None);
        assert_eq!(p.matches("/penduduk/"), None, "empty parameter");
        assert_eq!(p.matches("/penduduk/1/x"), None);
        assert_eq!(p.matches("/Penduduk/1"), None, "case-sensitive");
        assert_eq!(t("/").matches("/"), Some(vec![]));
        assert_eq!(t("/").matches("/x"), None);
        assert_eq!(t("/faskes").matches("/faskes"), Some(vec![]));
        assert_eq!(t("/faskes").matches("/faskes/"), None);
        let w = t("/berkas/*");
        assert!(w.matches("/berkas/a/b").is_some());
        assert!(w.matches("/berkas").is_none());
        assert!(w.matches("/berkas/").is_none());
        assert!(t("/*").matches("/anything/at/all").is_some());
        assert_eq!(
            t("/wilayah/{kode}/desa/{desa}").matches("/wilayah/36/desa/7"),
            Some(vec![("kode", "36"), ("desa", "7")])
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
        ] {
            assert_eq!(PathTemplate::parse(s), Err(e), "{s}");
        }
    }
}
