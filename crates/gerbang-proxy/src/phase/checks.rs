//! Phase 1: what a request must satisfy before anything else looks at it.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Version;

use crate::error::GatewayError;
use crate::framing::AMBIGUOUS_FRAMING_MARKER;
use crate::gateway::Limits;

/// What phase 1 reads of a request's fields, found in one pass over them: the header block's
/// size and the `Content-Length`, `Host`, `Expect` and framing fields (read in seven passes
/// before, one per field and check). Made once, before the pipeline, by [`survey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Survey {
    /// Size of the header block as counted for the header limit: name, value and ": " + CRLF.
    block_len: usize,
    /// The declared body length; `Err` when a value is not a length or two values differ.
    content_length: Result<Option<u64>, ()>,
    /// Why the request's host is refused, if it is ([`check_host`]).
    host: Result<(), &'static str>,
    /// An `Expect` other than `100-continue` ([`check_expect`]).
    unmet_expectation: bool,
    /// Any `Expect` (the rewrite takes it out; without one there is nothing to look up).
    pub expect: bool,
    /// Ambiguous framing: the framing guard's marker, or `Transfer-Encoding` with
    /// `Content-Length` (then the connection cannot be reused).
    pub framing_error: bool,
}

/// The [`Survey`] of `req`'s fields.
pub(crate) fn survey(req: &Parts) -> Survey {
    let mut block_len = 0;
    let mut content_length = Ok(None);
    let (mut host, mut hosts) = (None, 0);
    let (mut expect, mut unmet_expectation) = (false, false);
    let (mut marker, mut te, mut cl) = (false, false, false);
    for (name, value) in &req.headers {
        block_len += name.as_str().len() + value.len() + 4;
        if *name == header::CONTENT_LENGTH {
            cl = true;
            content_length = content_length.and_then(|found| {
                let n = parse_length(value)?;
                match found {
                    Some(prev) if prev != n => Err(()),
                    _ => Ok(Some(n)),
                }
            });
        } else if *name == header::HOST {
            hosts += 1;
            host = host.or(Some(value));
        } else if *name == header::EXPECT {
            expect = true;
            unmet_expectation |= !check_expect(value);
        } else if *name == header::TRANSFER_ENCODING {
            te = true;
        } else if *name == AMBIGUOUS_FRAMING {
            marker = true;
        }
    }
    Survey {
        block_len,
        content_length,
        host: check_host(req, host, hosts > 1),
        unmet_expectation,
        expect,
        framing_error: marker || (te && cl),
    }
}

/// Target and header-block size, framing (refused when `survey` found it ambiguous; the caller
/// also closes the connection for it), `Host` and `Expect`. Returns the declared body length.
pub(crate) fn request(
    req: &Parts,
    survey: &Survey,
    limits: &Limits,
) -> Result<Option<u64>, GatewayError> {
    let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            len: target_len,
            limit: limits.max_uri_bytes,
        });
    }
    if survey.block_len > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            len: survey.block_len,
            limit: limits.max_header_bytes,
        });
    }
    // hyper drops Content-Length when Transfer-Encoding is present; the framing guard below
    // hyper renamed it to the marker so that the request can be refused here.
    let content_length = survey
        .content_length
        .map_err(|()| GatewayError::InvalidContentLength)?;
    if survey.framing_error {
        return Err(GatewayError::AmbiguousFraming);
    }
    survey.host.map_err(GatewayError::InvalidHost)?;
    if survey.unmet_expectation {
        return Err(GatewayError::ExpectationFailed);
    }
    Ok(content_length)
}

/// The framing guard's marker as a header name: a lookup by name is a hash and a probe, where
/// a lookup by `&str` parses the name first (twice per call, as the profile showed).
const AMBIGUOUS_FRAMING: http::HeaderName = http::HeaderName::from_static(AMBIGUOUS_FRAMING_MARKER);

/// The service's body limit against the declared length (413 before anything is read).
pub(crate) fn body_limit(
    limit: Option<u64>,
    content_length: Option<u64>,
) -> Result<(), GatewayError> {
    match (limit, content_length) {
        (Some(limit), Some(len)) if len > limit => Err(GatewayError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// A `Content-Length` value: digits (surrounding whitespace allowed) within `u64`.
fn parse_length(value: &HeaderValue) -> Result<u64, ()> {
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or(())
}

/// RFC 9112 §3.2 and RFC 9113 §8.3.1: an HTTP/1.1 request names its host in exactly one
/// `Host` (`host` is the first, `several` when there are more); an absolute-form target or
/// `:authority` and `Host` must agree; user information in either is refused (it is not part
/// of a host, and providers must not see it).
fn check_host(req: &Parts, host: Option<&HeaderValue>, several: bool) -> Result<(), &'static str> {
    if several {
        return Err("several Host headers");
    }
    let authority = req.uri.authority();
    if authority.is_some_and(|a| a.as_str().contains('@'))
        || host.is_some_and(|h| h.as_bytes().contains(&b'@'))
    {
        return Err("user information in the authority");
    }
    match (host, authority) {
        (None, None) if req.version == Version::HTTP_11 => Err("an HTTP/1.1 request without Host"),
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            Err("Host disagrees with the request target's authority")
        }
        (Some(h), _) if h.is_empty() => Err("an empty Host"),
        _ => Ok(()),
    }
}

/// The only expectation met is `100-continue` (hyper sends the interim answer when the body is
/// first read; a refused call never reads it): anything else is 417 (RFC 9110 §10.1.1).
fn check_expect(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"100-continue")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)], version: Version, uri: &str) -> Parts {
        let mut b = http::Request::builder().uri(uri).version(version);
        for (n, v) in lines {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn host_must_be_single_plain_and_agree() {
        let ok = |r: &Parts| survey(r).host.is_ok();
        assert!(ok(&req(&[("host", "a")], Version::HTTP_11, "/x")));
        assert!(ok(&req(&[], Version::HTTP_10, "/x")));
        assert!(ok(&req(&[], Version::HTTP_2, "http://a/x")));
        assert!(ok(&req(&[("host", "A")], Version::HTTP_11, "http://a/x")));
        assert!(!ok(&req(&[], Version::HTTP_11, "/x")));
        assert!(!ok(&req(
            &[("host", "a"), ("host", "a")],
            Version::HTTP_11,
            "/x"
        )));
        assert!(!ok(&req(&[("host", "b")], Version::HTTP_11, "http://a/x")));
        assert!(!ok(&req(&[("host", "b")], Version::HTTP_2, "http://a/x")));
        assert!(!ok(&req(&[("host", "u@a")], Version::HTTP_11, "/x")));
        assert!(!ok(&req(&[], Version::HTTP_2, "http://u:p@a/x")));
        assert!(!ok(&req(&[("host", "")], Version::HTTP_11, "/x")));
    }

    #[test]
    fn the_survey_finds_ambiguous_framing_and_the_block_size() {
        let framing =
            |lines: &[(&str, &str)]| survey(&req(lines, Version::HTTP_11, "/")).framing_error;
        assert!(framing(&[(AMBIGUOUS_FRAMING_MARKER, "5")]));
        assert!(framing(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "5")
        ]));
        assert!(framing(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(!framing(&[("transfer-encoding", "chunked")]));
        assert!(!framing(&[("content-length", "5"), ("host", "a")]));

        let sent = |lines: &[(&str, &str)]| survey(&req(lines, Version::HTTP_11, "/")).expect;
        assert!(sent(&[("expect", "100-continue")]) && sent(&[("host", "a"), ("expect", "x")]));
        assert!(!sent(&[("host", "a")]));

        let lines = [
            ("host", "a"),
            ("x-b", "12"),
            ("x-b", ""),
            ("authorization", "xyz"),
        ];
        let block: usize = lines.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        assert_eq!(survey(&req(&lines, Version::HTTP_11, "/")).block_len, block);
    }

    /// The survey reads everything in one pass; the refusals keep their order.
    #[test]
    fn refusals_come_in_the_phases_order() {
        let limits = Limits::default();
        let code = |lines: &[(&str, &str)]| {
            let r = req(lines, Version::HTTP_11, "/");
            request(&r, &survey(&r), &limits).map_err(|e| e.code())
        };
        let big = "v".repeat(limits.max_header_bytes);
        assert_eq!(
            code(&[("x-big", &big), ("content-length", "x")]),
            Err("headers_too_large")
        );
        let bad_length = code(&[("host", "a"), ("host", "b"), ("content-length", "x")]);
        assert_eq!(bad_length, code(&[("content-length", "x")]));
        assert_ne!(bad_length, Ok(None));
        let ambiguous = code(&[(AMBIGUOUS_FRAMING_MARKER, "5"), ("expect", "x")]);
        assert_eq!(ambiguous, Err("ambiguous_framing"));
        let host = code(&[("expect", "x")]);
        assert_eq!(host, code(&[]));
        assert_ne!(host, code(&[("host", "a"), ("expect", "x")]));
        assert_eq!(code(&[("host", "a"), ("content-length", "7")]), Ok(Some(7)));
    }

    #[test]
    fn only_100_continue_is_expected() {
        let ok = |v: &str| !survey(&req(&[("expect", v)], Version::HTTP_11, "/")).unmet_expectation;
        assert!(ok("100-continue") && ok("100-Continue"));
        assert!(!ok("200-ok") && !ok("100-continue, x"));
    }

    #[test]
    fn content_lengths_must_agree() {
        let cl = |v: &[&str]| {
            let lines: Vec<(&str, &str)> = v.iter().map(|v| ("content-length", *v)).collect();
            survey(&req(&lines, Version::HTTP_11, "/")).content_length
        };
        assert_eq!(cl(&["5"]).unwrap(), Some(5));
        assert_eq!(cl(&["5", "5"]).unwrap(), Some(5));
        assert!(cl(&["5", "6"]).is_err() && cl(&["x"]).is_err());
        assert_eq!(
            body_limit(Some(4), Some(5)).unwrap_err().code(),
            "body_too_large"
        );
        assert!(body_limit(Some(5), Some(5)).is_ok() && body_limit(None, Some(9)).is_ok());
    }
}
