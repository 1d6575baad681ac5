//! Phase 1: what a request must satisfy before anything else looks at it.

use http::header::{self, HeaderMap};
use http::{Request, Version};

use crate::error::GatewayError;
use crate::framing::AMBIGUOUS_FRAMING_MARKER;
use crate::gateway::Limits;
use crate::headers;

/// Target and header-block size, framing (`framing_error`: [`framing_error`] of the request,
/// found once by the caller, who also closes the connection for it), `Host` and `Expect`.
/// Returns the declared body length.
pub(crate) fn request<B>(
    req: &Request<B>,
    limits: &Limits,
    framing_error: bool,
) -> Result<Option<u64>, GatewayError> {
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            len: target_len,
            limit: limits.max_uri_bytes,
        });
    }
    let header_len = headers::header_block_len(req.headers());
    if header_len > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            len: header_len,
            limit: limits.max_header_bytes,
        });
    }
    // hyper drops Content-Length when Transfer-Encoding is present; the framing guard below
    // hyper renamed it to the marker so that the request can be refused here.
    let content_length = content_length(req)?;
    if framing_error {
        return Err(GatewayError::AmbiguousFraming);
    }
    check_host(req)?;
    check_expect(req)?;
    Ok(content_length)
}

/// The framing guard's marker as a header name: a lookup by name is a hash and a probe, where
/// a lookup by `&str` parses the name first (twice per call, as the profile showed).
const AMBIGUOUS_FRAMING: http::HeaderName = http::HeaderName::from_static(AMBIGUOUS_FRAMING_MARKER);

/// Whether the request's framing is ambiguous (then the connection cannot be reused).
pub(crate) fn framing_error(h: &HeaderMap) -> bool {
    headers::has(h, &AMBIGUOUS_FRAMING)
        || (headers::has(h, &header::TRANSFER_ENCODING) && headers::has(h, &header::CONTENT_LENGTH))
}

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

/// The request's declared body length; several differing values are refused.
fn content_length<B>(req: &Request<B>) -> Result<Option<u64>, GatewayError> {
    let mut found: Option<u64> = None;
    for v in headers::values(req.headers(), &header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(GatewayError::InvalidContentLength)?;
        match found {
            Some(prev) if prev != n => return Err(GatewayError::InvalidContentLength),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// RFC 9112 §3.2 and RFC 9113 §8.3.1: an HTTP/1.1 request names its host in exactly one
/// `Host`; an absolute-form target or `:authority` and `Host` must agree; user information
/// in either is refused (it is not part of a host, and providers must not see it).
fn check_host<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let mut hosts = headers::values(req.headers(), &header::HOST);
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::InvalidHost("several Host headers"));
    }
    let authority = req.uri().authority();
    if authority.is_some_and(|a| a.as_str().contains('@'))
        || host.is_some_and(|h| h.as_bytes().contains(&b'@'))
    {
        return Err(GatewayError::InvalidHost(
            "user information in the authority",
        ));
    }
    match (host, authority) {
        (None, None) if req.version() == Version::HTTP_11 => Err(GatewayError::InvalidHost(
            "an HTTP/1.1 request without Host",
        )),
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => Err(
            GatewayError::InvalidHost("Host disagrees with the request target's authority"),
        ),
        (Some(h), _) if h.is_empty() => Err(GatewayError::InvalidHost("an empty Host")),
        _ => Ok(()),
    }
}

/// The only expectation met is `100-continue` (hyper sends the interim answer when the body is
/// first read; a refused call never reads it): anything else is 417 (RFC 9110 §10.1.1).
fn check_expect<B>(req: &Request<B>) -> Result<(), GatewayError> {
    for v in headers::values(req.headers(), &header::EXPECT) {
        if !v
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
        {
            return Err(GatewayError::ExpectationFailed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)], version: Version, uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(version);
        for (n, v) in lines {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_must_be_single_plain_and_agree() {
        let ok = |r: &Request<()>| check_host(r).is_ok();
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
    fn only_100_continue_is_expected() {
        let ok = |v: &str| check_expect(&req(&[("expect", v)], Version::HTTP_11, "/")).is_ok();
        assert!(ok("100-continue") && ok("100-Continue"));
        assert!(!ok("200-ok") && !ok("100-continue, x"));
    }

    #[test]
    fn content_lengths_must_agree() {
        let cl = |v: &[&str]| {
            let lines: Vec<(&str, &str)> = v.iter().map(|v| ("content-length", *v)).collect();
            content_length(&req(&lines, Version::HTTP_11, "/"))
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
