//! Phase 8: the response the client gets. On a route whose agreement has field rules the
//! provider's JSON is filtered (bounded buffering, failing closed); every answer to HEAD
//! leaves without a body.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;

use crate::error::GatewayError;
use crate::headers;
use crate::response_body::{self, ResponseBody};

/// The answer to a HEAD: the headers a GET would get, no body. hyper leaves out the body of a
/// HEAD response over HTTP/1.1, but over HTTP/2 a body sent with it is a protocol error that
/// resets the stream; a gateway-made body (an error, a filtered or catalogue answer) states
/// its length first.
pub(crate) fn without_body(res: Response<ResponseBody>) -> Response<ResponseBody> {
    let (mut parts, body) = res.into_parts();
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Response::from_parts(parts, response_body::full(Bytes::new()))
}

/// Applies an agreement's field rules to a JSON response, failing closed: a response that is
/// not JSON, is compressed, or is larger than `cap` is never passed on unfiltered.
pub(crate) async fn filter_response(
    res: Response<ResponseBody>,
    rules: &gerbang_policy::FieldRules,
    cap: usize,
) -> Result<Response<ResponseBody>, GatewayError> {
    use http_body_util::BodyExt;
    let fail = |why: &str| GatewayError::ResponseFilterFailed(why.to_owned());
    let status = res.status();
    // A part of the provider's representation, or an answer about its validators, describes
    // the unfiltered body (a slice of it can be valid JSON that the filter would pass): the
    // conditions were removed before forwarding, so a provider sending these is not followed.
    if matches!(status.as_u16(), 206 | 304 | 412 | 416) {
        return Err(fail("a partial or conditional answer cannot be filtered"));
    }
    let (mut parts, body) = res.into_parts();
    headers::remove_validators(&mut parts.headers);
    if status == http::StatusCode::NO_CONTENT {
        return Ok(Response::from_parts(parts, body));
    }
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes().to_ascii_lowercase());
    if encoding.as_deref().is_some_and(|e| e != b"identity") {
        return Err(fail("the response is compressed"));
    }
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !(media == "application/json" || media.ends_with("+json")) {
        return Err(fail("the response is not JSON"));
    }
    let bytes = http_body_util::Limited::new(body, cap)
        .collect()
        .await
        .map_err(|e| GatewayError::ResponseFilterFailed(format!("reading the response: {e}")))?
        .to_bytes();
    // Only what the rules reach is parsed; the rest is copied as the provider wrote it.
    let mut out = Vec::with_capacity(bytes.len());
    rules
        .filter_json(&bytes, &mut out)
        .map_err(|e| GatewayError::ResponseFilterFailed(format!("not valid JSON: {e}")))?;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Response::from_parts(
        parts,
        response_body::full(Bytes::from(out)),
    ))
}
