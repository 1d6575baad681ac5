//! Header rewriting between client and upstream: hop-by-hop removal, forwarding headers,
//! request id.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Maps with at most this many field values are searched by walking them: for the handful of
/// fields most requests and responses carry that is a little cheaper than hashing the name for
/// the map's index (callgrind: about 100 instructions per lookup against about 120). Larger
/// maps use the index, so a client that sends many fields makes no lookup dearer than the
/// map's own.
const WALK_AT_MOST: usize = 16;

/// The values of `name` in `map`, in order: what `HeaderMap::get_all` yields.
pub fn values<'a>(map: &'a HeaderMap, name: &'a HeaderName) -> Values<'a> {
    if map.len() <= WALK_AT_MOST {
        Values::Walk(map.iter(), name)
    } else {
        Values::Index(map.get_all(name).into_iter())
    }
}

/// The iterator of [`values`].
pub enum Values<'a> {
    Walk(header::Iter<'a, HeaderValue>, &'a HeaderName),
    Index(header::ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a HeaderValue;

    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            Values::Walk(fields, name) => fields.find_map(|(n, v)| (n == *name).then_some(v)),
            Values::Index(values) => values.next(),
        }
    }
}

/// Forwarding headers the gateway does not maintain: a client could use them to impersonate an
/// address, port or prefix to a provider that trusts them, so they are removed.
const UNMAINTAINED_FORWARDING: [HeaderName; 4] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1 and the historical
/// `Keep-Alive`/`Proxy-Connection`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Whether `name` (any case) is one of [`HOP_BY_HOP`]: compared on the bytes, lengths first,
/// so that a parser can ask before it makes a `HeaderName`.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| {
        let h = h.as_str().as_bytes();
        h.len() == name.len() && name.eq_ignore_ascii_case(h)
    })
}

/// Prefix of the headers only the gateway sets (verified identity, assertions).
pub const GATEWAY_HEADER_PREFIX: &str = "x-gerbang-";

/// The one `X-Gerbang-*` header a client may send: the purpose of processing (read by policy).
pub static X_GERBANG_PURPOSE: HeaderName = HeaderName::from_static("x-gerbang-purpose");

/// W3C Trace Context.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Whether `v` is a W3C `traceparent` this gateway passes on: version `00`, a 32-hex trace id
/// and a 16-hex parent id that are not all zeros, 2-hex flags, lower case.
pub fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zero = |b: &[u8]| b.iter().all(|c| *c == b'0');
    v.len() == 55
        && &v[..3] == b"00-"
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && hex(&v[36..52])
        && hex(&v[53..55])
        && !zero(&v[3..35])
        && !zero(&v[36..52])
}

/// The API key header (`X-API-Key`).
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The verified calling application, `agency/app`.
pub static X_GERBANG_CONSUMER: HeaderName = HeaderName::from_static("x-gerbang-consumer");
/// The verified calling application's agency.
pub static X_GERBANG_CONSUMER_AGENCY: HeaderName =
    HeaderName::from_static("x-gerbang-consumer-agency");
/// How the caller authenticated (`client_secret`, `external_jwt`, `api_key`, `mtls`).
pub static X_GERBANG_AUTH_METHOD: HeaderName = HeaderName::from_static("x-gerbang-auth-method");
/// The id of the agreement that allowed the call.
pub static X_GERBANG_AGREEMENT: HeaderName = HeaderName::from_static("x-gerbang-agreement");
/// The gateway's signed assertion of the caller, for the provider to verify.
pub static X_GERBANG_ASSERTION: HeaderName = HeaderName::from_static("x-gerbang-assertion");

/// Headers that make a provider run another method or path than the one the policy judged
/// (frameworks honour them to tunnel methods through proxies): removed from every request.
const OVERRIDE_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Headers whose meaning framing, routing or conditional handling depends on: a name that is
/// one of these once `_` is read as `-` never passes, whatever a service allows.
const FRAMING_AND_ROUTING: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::EXPECT,
];

/// The name as CGI, WSGI, Rack and similar stacks see it: lower case (a [`HeaderName`] already
/// is) with `_` read as `-`, so that `X_Remote_User` and `x-remote-user` compare equal.
pub fn canonical_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('_') {
        std::borrow::Cow::Owned(name.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Whether a client may not pass on a header with this canonical name (see
/// [`client_controlled`]); `lengths` is [`ListedLengths`] of `extra`.
fn client_may_not_send(canonical: &str, extra: &[HeaderName], lengths: ListedLengths) -> bool {
    canonical.starts_with(GATEWAY_HEADER_PREFIX)
        || (lengths.may_hold(canonical.len())
            && (canonical == header::AUTHORIZATION.as_str()
                || canonical == X_API_KEY.as_str()
                || UNMAINTAINED_FORWARDING
                    .iter()
                    .any(|u| u.as_str() == canonical)
                || OVERRIDE_HEADERS.iter().any(|u| u.as_str() == canonical)
                || extra
                    .iter()
                    .any(|u| canonical_name(u.as_str()).as_ref() == canonical)))
}

/// The lengths of the names a client may not send (besides the `x-gerbang-` prefix), one bit
/// each: most names a client sends (`host`, `accept`, `user-agent`, …) have a length none of
/// them has, and are passed without a comparison. Names of 64 bytes and more are compared.
#[derive(Clone, Copy)]
struct ListedLengths(u64);

impl ListedLengths {
    /// The fixed names' lengths and those of `extra` (`_` read as `-` keeps a length).
    fn with(extra: &[HeaderName]) -> Self {
        static FIXED: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
            [&header::AUTHORIZATION, &X_API_KEY]
                .into_iter()
                .chain(&UNMAINTAINED_FORWARDING)
                .chain(&OVERRIDE_HEADERS)
                .fold(0, |bits, n| bits | ListedLengths::bit(n.as_str().len()))
        });
        Self(
            extra
                .iter()
                .fold(*FIXED, |bits, n| bits | Self::bit(n.as_str().len())),
        )
    }

    fn bit(len: usize) -> u64 {
        if len < 64 {
            1 << len
        } else {
            0
        }
    }

    fn may_hold(self, len: usize) -> bool {
        len >= 64 || self.0 & (1 << len) != 0
    }
}

/// The names one pass found to remove: a few at most (`Authorization`, `Connection`), so
/// held on the stack rather than allocated for every request.
type Found = smallvec::SmallVec<[HeaderName; 4]>;

/// Removes every field [`client_controlled`] names, by itself: the rule as the tests state it,
/// and the reference [`strip_request`] (which the request path runs) is held to.
#[cfg(test)]
fn remove_client_controlled(
    headers: &mut HeaderMap,
    extra: &[HeaderName],
    allow_underscore: &[String],
) {
    let mut found: Found = Found::new();
    let lengths = ListedLengths::with(extra);
    for name in headers.keys() {
        if client_controlled(name, extra, lengths, allow_underscore) {
            found.push(name.clone());
        }
    }
    for name in &found {
        headers.remove(name);
    }
}

/// Whether a client may not pass on a field named `name`; `lengths` is [`ListedLengths`] of
/// `extra`. It may not pass on:
///
/// - every name containing `_`, unless the service allows that exact name (`allow_underscore`)
///   and its canonical form is nothing the gateway guards: many provider stacks read
///   `X_Gerbang_Consumer` as `X-Gerbang-Consumer`, so such a name would carry a forged
///   identity past the strip (nginx drops them by default for the same reason);
/// - `X-Gerbang-*` except the purpose (a provider must only ever see identity headers the
///   gateway verified and set);
/// - the forwarding headers the gateway does not maintain (`Forwarded`, `X-Real-IP`, …);
/// - method and URL overrides (`X-HTTP-Method-Override`, `X-Original-URL`, …): the provider
///   must run the method and path the policy judged;
/// - the credentials meant for the gateway (`Authorization`, `X-API-Key`: a provider must not
///   be able to replay them), and the configured `extra` names.
///
/// Names are compared on their canonical form ([`canonical_name`]).
fn client_controlled(
    name: &HeaderName,
    extra: &[HeaderName],
    lengths: ListedLengths,
    allow_underscore: &[String],
) -> bool {
    let s = name.as_str();
    if s.contains('_') {
        let canonical = canonical_name(s);
        !allow_underscore.iter().any(|a| a == s)
            || canonical == X_GERBANG_PURPOSE.as_str()
            || client_may_not_send(&canonical, extra, lengths)
            || HOP_BY_HOP.iter().any(|h| h.as_str() == canonical)
            || FRAMING_AND_ROUTING.iter().any(|h| h.as_str() == canonical)
    } else {
        *name != X_GERBANG_PURPOSE && client_may_not_send(s, extra, lengths)
    }
}

/// What [`strip_request`] saw of the fields it kept.
#[derive(Debug)]
pub struct Kept {
    /// The first `Host` value.
    pub host: Option<HeaderValue>,
    /// The bits ([`gateway_set_bit`]) of the names the gateway sets that the map may still
    /// hold: every such name it kept has its bit (a name the client listed in `Connection`
    /// may have one though it is gone, which costs its removal a lookup, nothing more).
    client_sent: u16,
}

/// A client's request fields made fit to go on, in one walk of them: what
/// [`remove_hop_by_hop`] removes and what [`client_controlled`] names go (the two sets are
/// independent, so one pass gives their union), and the `Host` value and the names
/// [`Added`] must know of are noted on the way (each was a walk of its own).
pub fn strip_request(
    headers: &mut HeaderMap,
    extra: &[HeaderName],
    allow_underscore: &[String],
) -> Kept {
    let mut found = Found::new();
    let lengths = ListedLengths::with(extra);
    let mut kept = Kept {
        host: None,
        client_sent: 0,
    };
    let mut connection = false;
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        // A name's further values follow it at once, with the same key.
        if previous.is_some_and(|p| std::ptr::eq(p, name)) {
            continue;
        }
        previous = Some(name);
        if *name == header::CONNECTION {
            connection = true;
        }
        if is_hop_by_hop_name(name) || client_controlled(name, extra, lengths, allow_underscore) {
            found.push(name.clone());
        } else if *name == header::HOST {
            kept.host = Some(value.clone());
        } else if let Some(bit) = gateway_set_bit(name.as_str()) {
            kept.client_sent |= 1 << bit;
        }
    }
    if connection {
        // Names the client listed in `Connection` (rare: most clients send none, or only
        // `keep-alive`, itself hop-by-hop).
        let listed: smallvec::SmallVec<[&HeaderValue; 2]> =
            values(headers, &header::CONNECTION).collect();
        for name in headers.keys() {
            if connection_listed(name, &listed) && !found.contains(name) {
                found.push(name.clone());
            }
        }
    }
    for name in &found {
        headers.remove(name);
    }
    kept
}

/// Request headers that ask for a part of a representation or make the answer depend on its
/// validators. On a filtered route the client gets the gateway's representation, never the
/// provider's, so none of them may reach the provider.
const RANGE_AND_CONDITIONS: [HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// Response headers that describe the provider's representation: its validators, digests and
/// ranges. A filtered body is another representation, so they never leave with it (an `ETag`
/// of the unfiltered body is an offline oracle for the masked digits).
const VALIDATORS: [HeaderName; 9] = [
    header::ETAG,
    header::LAST_MODIFIED,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    HeaderName::from_static("content-md5"),
    HeaderName::from_static("digest"),
    HeaderName::from_static("repr-digest"),
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("want-repr-digest"),
];

/// Removes `Range`, `If-Range` and every conditional request header.
pub fn remove_range_and_conditions(headers: &mut HeaderMap) {
    remove_named(headers, &RANGE_AND_CONDITIONS);
}

/// Removes the validators, digests and range headers of a response.
pub fn remove_validators(headers: &mut HeaderMap) {
    remove_named(headers, &VALIDATORS);
}

/// Removes every field named in `names` (at most 16), all of its values. One walk over the
/// map's names finds those present (usually none or a few): a lookup per name hashed and
/// probed each of the fifteen names on every filtered call.
fn remove_named(headers: &mut HeaderMap, names: &[HeaderName]) {
    debug_assert!(names.len() <= 16);
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = names.iter().take(16).position(|n| n == name) {
            present |= 1 << i;
        }
    }
    for (i, name) in names.iter().enumerate().take(16) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `cookie` into several fields; before the
/// request goes on as HTTP/1.1 they are joined into one with `"; "`.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Headers that naming in `Connection` does not remove.
const PROTECTED: [HeaderName; 2] = [header::CONTENT_LENGTH, header::HOST];

/// Removes hop-by-hop headers: the fixed list, `Transfer-Encoding` (the body is re-framed) and
/// every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) present names, each compared with the tokens of `Connection`
    // where they lie: no token becomes a name of its own, and nothing is allocated unless a
    // header must go. Removal itself is rare, except of `Connection` (most upstreams send
    // `Connection: keep-alive`).
    let listed: smallvec::SmallVec<[&HeaderValue; 2]> =
        values(headers, &header::CONNECTION).collect();
    let mut found = Found::new();
    for name in headers.keys() {
        if is_hop_by_hop_name(name) || connection_listed(name, &listed) {
            found.push(name.clone());
        }
    }
    drop(listed);
    for name in &found {
        headers.remove(name);
    }
}

/// Whether `name` is hop-by-hop whatever `Connection` says: [`HOP_BY_HOP`] and
/// `Transfer-Encoding` (the body is re-framed).
fn is_hop_by_hop_name(name: &HeaderName) -> bool {
    name == header::TRANSFER_ENCODING || HOP_BY_HOP.iter().any(|h| h == name)
}

/// Whether one of the `Connection` values `listed` names `name`. `Connection` may not take
/// away what framing and routing rely on: a client that lists Content-Length there would
/// otherwise send its body to the upstream unframed (request smuggling).
fn connection_listed(name: &HeaderName, listed: &[&HeaderValue]) -> bool {
    !listed.is_empty()
        && !PROTECTED.iter().any(|p| p == name)
        && listed.iter().any(|v| names(v, name.as_str()))
}

/// Whether a `Connection` value lists `name` (lower case) among its comma-separated tokens.
fn names(value: &HeaderValue, name: &str) -> bool {
    connection_names(value.as_bytes(), name)
}

/// [`names`] for a value's bytes (the HTTP/1.1 client's parse, before there is a map).
pub(crate) fn connection_names(value: &[u8], name: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

/// A header field the gateway sets on a request going upstream. Named by this, not by a
/// `HeaderName`, the fields need no name cloned, compared or dropped per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    // The first seven are the names a client may send and the gateway replaces (the bits of
    // `gateway_set_bit`, in its order).
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XGerbangPurpose,
    Traceparent,
    AcceptEncoding,
    XRequestId,
    // `X-Gerbang-*` names no client request keeps (`client_controlled`).
    XGerbangConsumer,
    XGerbangConsumerAgency,
    XGerbangAuthMethod,
    XGerbangAssertion,
    XGerbangAgreement,
}

impl Field {
    pub fn name(self) -> &'static HeaderName {
        match self {
            Field::XForwardedFor => &X_FORWARDED_FOR,
            Field::XForwardedProto => &X_FORWARDED_PROTO,
            Field::XForwardedHost => &X_FORWARDED_HOST,
            Field::XGerbangPurpose => &X_GERBANG_PURPOSE,
            Field::Traceparent => &TRACEPARENT,
            Field::AcceptEncoding => &header::ACCEPT_ENCODING,
            Field::XRequestId => &X_REQUEST_ID,
            Field::XGerbangConsumer => &X_GERBANG_CONSUMER,
            Field::XGerbangConsumerAgency => &X_GERBANG_CONSUMER_AGENCY,
            Field::XGerbangAuthMethod => &X_GERBANG_AUTH_METHOD,
            Field::XGerbangAssertion => &X_GERBANG_ASSERTION,
            Field::XGerbangAgreement => &X_GERBANG_AGREEMENT,
        }
    }

    /// The name and `": "` as a request head has them, for the HTTP/1.1 client's writer.
    pub fn head_prefix(self) -> &'static [u8] {
        match self {
            Field::XForwardedFor => b"x-forwarded-for: ",
            Field::XForwardedProto => b"x-forwarded-proto: ",
            Field::XForwardedHost => b"x-forwarded-host: ",
            Field::XGerbangPurpose => b"x-gerbang-purpose: ",
            Field::Traceparent => b"traceparent: ",
            Field::AcceptEncoding => b"accept-encoding: ",
            Field::XRequestId => b"x-request-id: ",
            Field::XGerbangConsumer => b"x-gerbang-consumer: ",
            Field::XGerbangConsumerAgency => b"x-gerbang-consumer-agency: ",
            Field::XGerbangAuthMethod => b"x-gerbang-auth-method: ",
            Field::XGerbangAssertion => b"x-gerbang-assertion: ",
            Field::XGerbangAgreement => b"x-gerbang-agreement: ",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// Header fields the gateway sets on a request going upstream, kept beside the client's map
/// instead of inserted into it: each insert hashes its name and the first ones grow and
/// rehash the map, while the HTTP/1.1 client only has to write them after the map's fields
/// (the HTTPS client appends them to its copy of the map). Invariant, kept by [`Added::set`]
/// and, for the shared fields, by [`Added::set_shared_absent`] and `Added::own`: no name here
/// is also in the map, and none is here twice. Made only by [`Added::for_stripped`] (tests:
/// `Added::for_call`): a default would claim that the client sent none of the names it sets.
#[derive(Debug)]
pub struct Added {
    fields: Vec<(Field, HeaderValue)>,
    /// Fields many calls share, written after `fields`: the caller's identity, made once per
    /// identity cache entry and handed over whole (one reference count, not one per value).
    shared: Option<Arc<[(Field, HeaderValue)]>>,
    /// The bits ([`Field::bit`]) of the fields in `fields` and `shared`.
    present: u16,
    /// The bits of the fields in `shared`.
    shared_bits: u16,
    /// Which of the names the gateway sets ([`gateway_set_bit`]) the client's map held when
    /// this was made: the others need no lookup to be removed (a lookup hashes the name).
    client_sent: u16,
}

/// The bit of a name the gateway sets on every call (or on filtered ones), for
/// [`Added::client_sent`]: that of its [`Field`]; `None` for any other name.
fn gateway_set_bit(name: &str) -> Option<u8> {
    Some(match name {
        "x-forwarded-for" => Field::XForwardedFor,
        "x-forwarded-proto" => Field::XForwardedProto,
        "x-forwarded-host" => Field::XForwardedHost,
        "x-gerbang-purpose" => Field::XGerbangPurpose,
        "traceparent" => Field::Traceparent,
        "accept-encoding" => Field::AcceptEncoding,
        "x-request-id" => Field::XRequestId,
        _ => return None,
    } as u8)
}

/// The fields with a bit of [`gateway_set_bit`]; the map may hold any other name whatever
/// the scan saw.
const SCANNED: u16 = (1 << (Field::XRequestId as u16 + 1)) - 1;

impl Added {
    /// [`Added::for_stripped`] for any map `headers` as it is now, by a walk of its names (the
    /// tests' way to make one).
    #[cfg(test)]
    pub fn for_call(headers: &HeaderMap) -> Self {
        let mut client_sent = 0u16;
        for name in headers.keys() {
            if let Some(bit) = gateway_set_bit(name.as_str()) {
                client_sent |= 1 << bit;
            }
        }
        Self::with_client_sent(client_sent)
    }

    /// Room for what one call sets (forwarding, identity, agreement, trace, request id), for
    /// a map just stripped by [`strip_request`], which noted on its walk which names the
    /// gateway sets the client sent. Nothing may have been added to the map since, and
    /// nothing may be added afterwards except through this (or a name it sets could be missed
    /// when it is removed).
    pub fn for_stripped(kept: &Kept) -> Self {
        Self::with_client_sent(kept.client_sent)
    }

    fn with_client_sent(client_sent: u16) -> Self {
        Self {
            fields: Vec::with_capacity(8),
            shared: None,
            present: 0,
            shared_bits: 0,
            client_sent,
        }
    }

    /// Whether the client's map may hold `field` (always, for a field the scan does not see).
    pub fn client_sent(&self, field: Field) -> bool {
        field.bit() & SCANNED == 0 || self.client_sent & field.bit() != 0
    }

    /// Sets `field` to `value`: the client's fields of that name go.
    pub fn set(&mut self, headers: &mut HeaderMap, field: Field, value: HeaderValue) {
        if self.client_sent(field) {
            headers.remove(field.name());
        }
        self.set_absent(field, value);
    }

    /// Sets `field`, which the map is known not to hold (a name the client's strip removed).
    pub fn set_absent(&mut self, field: Field, value: HeaderValue) {
        self.own(field);
        if self.present & field.bit() != 0 {
            if let Some(slot) = self.fields.iter_mut().find(|(f, _)| *f == field) {
                slot.1 = value;
            }
        } else {
            self.present |= field.bit();
            self.fields.push((field, value));
        }
    }

    /// Removes `field` from the map and from what was set.
    pub fn remove(&mut self, headers: &mut HeaderMap, field: Field) {
        if self.client_sent(field) {
            headers.remove(field.name());
        }
        self.own(field);
        if self.present & field.bit() != 0 {
            self.present &= !field.bit();
            self.fields.retain(|(f, _)| *f != field);
        }
    }

    /// Sets the shared `fields`, none of which the map holds or this has set (names the
    /// client's strip removed, set only here): those already set are left as they are.
    pub fn set_shared_absent(&mut self, fields: Arc<[(Field, HeaderValue)]>) {
        let bits = fields.iter().fold(0u16, |bits, &(f, _)| bits | f.bit());
        if self.present & bits != 0
            || self.shared.is_some()
            || bits.count_ones() as usize != fields.len()
        {
            // Not expected (the caller sets each of these names once, and shares one set per
            // call); kept correct, one field at a time.
            for (f, v) in fields.iter() {
                self.set_absent(*f, v.clone());
            }
            return;
        }
        self.present |= bits;
        self.shared_bits = bits;
        self.shared = Some(fields);
    }

    /// Makes `field`, when it is one of the shared fields, a field of this call's own, so
    /// that it can be replaced or removed.
    fn own(&mut self, field: Field) {
        if self.shared_bits & field.bit() == 0 {
            return;
        }
        if let Some(shared) = self.shared.take() {
            self.fields.extend(shared.iter().cloned());
        }
        self.shared_bits = 0;
    }

    #[cfg(test)]
    fn get(&self, field: Field) -> Option<&HeaderValue> {
        self.fields()
            .into_iter()
            .flatten()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v)
    }

    /// The fields set, in the order they are written: this call's own, then the shared.
    pub fn fields(&self) -> [&[(Field, HeaderValue)]; 2] {
        [&self.fields, self.shared.as_deref().unwrap_or_default()]
    }

    /// The map and the set fields as one map (the HTTPS client's request, tests).
    pub fn merged(&self, headers: &HeaderMap) -> HeaderMap {
        let set = self.fields().into_iter().flatten();
        let mut all = HeaderMap::with_capacity(headers.len() + set.clone().count());
        for (n, v) in headers {
            all.append(n, v.clone());
        }
        for (f, v) in set {
            all.append(f.name(), v.clone());
        }
        all
    }
}

/// Sets the forwarding headers on a request going upstream.
///
/// `X-Forwarded-For` gets the client address appended (the existing list is kept: it is
/// information, never identity). `X-Forwarded-Proto` and `X-Forwarded-Host` are the gateway's
/// own view and replace whatever the client sent (other forwarding headers go in
/// [`strip_request`]).
pub fn set_forwarding(
    headers: &mut HeaderMap,
    added: &mut Added,
    client_ip: &HeaderValue,
    proto: &'static str,
    original_host: Option<HeaderValue>,
) {
    // Every X-Forwarded-For line the client sent is kept, in order (a list may span lines).
    let mut xff = Vec::new();
    let client_lines = added
        .client_sent(Field::XForwardedFor)
        .then(|| headers.get_all(&X_FORWARDED_FOR));
    for v in client_lines.iter().flatten() {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                xff.extend_from_slice(s.as_bytes());
                xff.extend_from_slice(b", ");
            }
        }
    }
    let value = if xff.is_empty() {
        client_ip.clone()
    } else {
        xff.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&xff).unwrap_or_else(|_| client_ip.clone())
    };
    added.set(headers, Field::XForwardedFor, value);
    added.set(
        headers,
        Field::XForwardedProto,
        HeaderValue::from_static(proto),
    );
    match original_host {
        Some(h) => added.set(headers, Field::XForwardedHost, h),
        None => added.remove(headers, Field::XForwardedHost),
    }
}

/// Appends the textual form of an address; IPv4 without the formatting machinery (it runs
/// per request: the forwarding header, the audit record).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + (o / 10) % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{ip}");
        }
    }
}

/// Accepts a client's request id only when it is short and plain (no log or header injection);
/// otherwise the gateway makes its own.
pub fn acceptable_request_id(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field, in the order of their bits.
    const ALL_FIELDS: [Field; 12] = [
        Field::XForwardedFor,
        Field::XForwardedProto,
        Field::XForwardedHost,
        Field::XGerbangPurpose,
        Field::Traceparent,
        Field::AcceptEncoding,
        Field::XRequestId,
        Field::XGerbangConsumer,
        Field::XGerbangConsumerAgency,
        Field::XGerbangAuthMethod,
        Field::XGerbangAssertion,
        Field::XGerbangAgreement,
    ];

    /// Each field's head prefix is its name and `": "`: every variant, by the exhaustive
    /// `match` below (a new variant fails to compile until it is listed).
    #[test]
    fn head_prefixes_are_the_names() {
        for f in ALL_FIELDS {
            match f {
                Field::XForwardedFor
                | Field::XForwardedProto
                | Field::XForwardedHost
                | Field::XGerbangPurpose
                | Field::Traceparent
                | Field::AcceptEncoding
                | Field::XRequestId
                | Field::XGerbangConsumer
                | Field::XGerbangConsumerAgency
                | Field::XGerbangAuthMethod
                | Field::XGerbangAssertion
                | Field::XGerbangAgreement => {}
            }
            assert_eq!(f.head_prefix(), format!("{}: ", f.name()).as_bytes());
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn client_sent_gateway_headers_are_stripped_except_purpose() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-gerbang-consumer",
            HeaderValue::from_static("dukcapil/siak"),
        );
        h.append("x-gerbang-consumer", HeaderValue::from_static("again"));
        h.insert("x-gerbang-assertion", HeaderValue::from_static("forged"));
        h.insert(
            "x-gerbang-purpose",
            HeaderValue::from_static("pelayanan-kesehatan"),
        );
        h.insert("x-gerbangx", HeaderValue::from_static("not ours"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert("x-api-key", HeaderValue::from_static("gk_1"));
        h.insert("x-remote-user", HeaderValue::from_static("admin"));
        remove_client_controlled(&mut h, &[HeaderName::from_static("x-remote-user")], &[]);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-gerbang-purpose"], "pelayanan-kesehatan");
        assert_eq!(h["x-gerbangx"], "not ours");
    }

    #[test]
    fn underscore_names_are_dropped_unless_allowed_and_harmless() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x_remote_user", "admin"),
            ("x_gerbang_consumer", "dukcapil/siak"),
            ("x_gerbang_purpose", "penegakan-hukum"),
            ("x_api_key", "gk_1"),
            ("x_custom_trace", "keep"),
            ("x_forwarded_prefix", "/admin"),
            ("content_length", "5"),
            ("x_http_method_override", "DELETE"),
            ("x-remote-user", "admin"),
            ("x-ok", "1"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let allow: Vec<String> = [
            "x_custom_trace",
            "x_gerbang_consumer",
            "x_remote_user",
            "x_gerbang_purpose",
            "content_length",
            "x_http_method_override",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        remove_client_controlled(&mut h, &[HeaderName::from_static("x-remote-user")], &allow);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // Allowed by the service and harmless once canonical: kept. Everything else goes,
        // allowed or not, when its canonical form is a guarded name.
        assert_eq!(left, ["x-ok", "x_custom_trace"]);
    }

    /// Configured names go whatever their length: one of a length no fixed name has (the
    /// length filter must know it), one of 64 bytes and more (compared always), and each
    /// spelled with `_`; names of the same lengths that are not listed stay.
    #[test]
    fn configured_names_of_any_length_are_stripped() {
        let long = "x-sso-".to_string() + &"p".repeat(64);
        let extra = [
            HeaderName::from_static("x-sso-principal-name-v2"),
            HeaderName::from_bytes(long.as_bytes()).unwrap(),
        ];
        let allow: Vec<String> = vec![
            "x_sso_principal_name_v2".into(),
            long.replace('-', "_"),
            "x_sso_principal_name_v3".into(),
        ];
        let mut h = HeaderMap::new();
        for n in [
            "x-sso-principal-name-v2".to_string(),
            "x_sso_principal_name_v2".to_string(),
            long.clone(),
            long.replace('-', "_"),
            "x-sso-principal-name-v3".to_string(),
            "x_sso_principal_name_v3".to_string(),
            long.replace("x-sso-", "x-ssa-"),
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("admin"),
            );
        }
        remove_client_controlled(&mut h, &extra, &allow);
        let mut left: Vec<String> = h.keys().map(|n| n.as_str().to_string()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                long.replace("x-sso-", "x-ssa-"),
                "x-sso-principal-name-v3".to_string(),
                "x_sso_principal_name_v3".to_string(),
            ]
        );
    }

    #[test]
    fn cookies_are_joined_once() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn ranges_conditions_and_validators_go() {
        let mut h = HeaderMap::new();
        for n in [
            "range",
            "if-range",
            "if-match",
            "if-none-match",
            "if-modified-since",
            "if-unmodified-since",
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("x"));
        }
        h.insert("accept", HeaderValue::from_static("application/json"));
        remove_range_and_conditions(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut r = HeaderMap::new();
        for n in [
            "etag",
            "last-modified",
            "content-range",
            "accept-ranges",
            "content-md5",
            "digest",
            "repr-digest",
            "content-digest",
        ] {
            r.insert(HeaderName::from_static(n), HeaderValue::from_static("x"));
        }
        r.insert("content-type", HeaderValue::from_static("application/json"));
        remove_validators(&mut r);
        assert_eq!(r.len(), 1, "{r:?}");
        // Repeated fields go with all their values; names of any case are the same name; the
        // last name of the list and a map holding only listed names.
        let mut r = HeaderMap::new();
        r.append(
            HeaderName::from_bytes(b"ETag").unwrap(),
            HeaderValue::from_static("\"a\""),
        );
        r.append(header::ETAG, HeaderValue::from_static("\"b\""));
        r.append(
            HeaderName::from_bytes(b"Want-Repr-Digest").unwrap(),
            HeaderValue::from_static("sha-256=1"),
        );
        remove_validators(&mut r);
        assert!(r.is_empty(), "{r:?}");
        let mut r = HeaderMap::new();
        remove_validators(&mut r);
        assert!(r.is_empty());
    }

    #[test]
    fn override_headers_are_removed() {
        let mut h = HeaderMap::new();
        for n in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("x"));
        }
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_client_controlled(&mut h, &[], &[]);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn traceparent_validation() {
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"garbage",
        ] {
            assert!(!valid_traceparent(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn connection_tokens_match_names_in_any_case_and_spacing_even_beside_obs_text() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b" X-A ,\tx-B\t,,\xe9").unwrap(),
        );
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("x-ab", HeaderValue::from_static("kept: not a token"));
        h.insert("close-x", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["close-x", "x-ab"], "{h:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// `values` answers what the map's own index answers, below and above the
        /// size where it walks the fields, repeated names and all.
        #[test]
        fn values_are_the_maps_own(
            fields in proptest::collection::vec((0usize..6, 0u8..200), 0..40),
        ) {
            const NAMES: [&str; 6] =
                ["content-length", "host", "connection", "x-gerbang-purpose", "x-a", "x-b"];
            let mut h = HeaderMap::new();
            for (n, v) in &fields {
                h.append(HeaderName::from_static(NAMES[*n]), HeaderValue::from(u16::from(*v)));
            }
            for name in NAMES {
                let name = HeaderName::from_static(name);
                let ours: Vec<_> = values(&h, &name).collect();
                let index: Vec<_> = h.get_all(&name).iter().collect();
                proptest::prop_assert_eq!(&ours, &index);
            }
        }

        /// Whatever the fields, exactly the hop-by-hop ones, `Transfer-Encoding` and those
        /// named in `Connection` (never Content-Length or Host) go; the rest stay, values and
        /// order of repeated fields intact.
        #[test]
        fn exactly_the_hop_by_hop_fields_go(
            fields in proptest::collection::vec((0usize..12, 0u8..4), 0..10),
            tokens in proptest::collection::vec((0usize..12, 0u8..4, 0u8..3), 0..6),
        ) {
            const NAMES: [&str; 12] = [
                "x-a", "x-b", "keep-alive", "te", "transfer-encoding", "content-length", "host",
                "upgrade", "proxy-connection", "x-gerbang-purpose", "close", "accept",
            ];
            let spelled = |name: &str, case: u8| match case {
                0 => name.to_owned(),
                1 => name.to_ascii_uppercase(),
                _ => name
                    .char_indices()
                    .map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c })
                    .collect(),
            };
            let mut h = HeaderMap::new();
            for (i, (n, v)) in fields.iter().enumerate() {
                h.append(NAMES[*n], HeaderValue::from_str(&format!("v{i}-{v}")).unwrap());
            }
            let mut named = Vec::new();
            let mut value = String::new();
            for (n, case, pad) in &tokens {
                named.push(NAMES[*n]);
                let pad = [" ", "\t", ""][*pad as usize];
                value.push_str(&format!("{pad}{}{pad},", spelled(NAMES[*n], *case)));
            }
            if !tokens.is_empty() {
                h.append(header::CONNECTION, HeaderValue::from_str(&value).unwrap());
            }
            let before = h.clone();
            remove_hop_by_hop(&mut h);
            for name in before.keys() {
                let goes = HOP_BY_HOP.iter().any(|x| x == name)
                    || name == header::TRANSFER_ENCODING
                    || (named.contains(&name.as_str())
                        && name != header::CONTENT_LENGTH
                        && name != header::HOST);
                if goes {
                    proptest::prop_assert!(!h.contains_key(name), "{name} stayed: {h:?}");
                } else {
                    let kept: Vec<_> = h.get_all(name).iter().collect();
                    let was: Vec<_> = before.get_all(name).iter().collect();
                    proptest::prop_assert_eq!(kept, was, "{} changed", name);
                }
            }
            proptest::prop_assert!(h.keys().all(|k| before.contains_key(k)));
        }
    }

    /// The fields of `h` by name, each name's values in order (the order of distinct names
    /// depends on the order of removals and carries no meaning).
    fn by_name(h: &HeaderMap) -> std::collections::BTreeMap<String, Vec<HeaderValue>> {
        let mut m = std::collections::BTreeMap::<String, Vec<HeaderValue>>::new();
        for (n, v) in h {
            m.entry(n.as_str().to_owned()).or_default().push(v.clone());
        }
        m
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// One walk ([`strip_request`]) removes what the two removals did one after the other,
        /// finds the first `Host`, and notes every name the gateway sets that it kept.
        #[test]
        fn one_strip_walk_is_the_two_removals(
            fields in proptest::collection::vec((0usize..26, 0usize..26, 0usize..4), 0..10),
            allow in proptest::collection::vec(0usize..4, 0..3),
            extra_custom in proptest::bool::ANY,
        ) {
            const NAMES: [&str; 26] = [
                "host", "connection", "keep-alive", "te", "transfer-encoding", "authorization",
                "x-api-key", "x-gerbang-consumer", "x-gerbang-purpose", "x_gerbang_consumer",
                "x_forwarded_for", "x-forwarded-for", "x-forwarded-host", "traceparent",
                "accept-encoding", "x-request-id", "content-length", "x-remote-user",
                "x_remote_user", "accept", "forwarded", "x-http-method-override", "upgrade",
                "cookie", "x-custom-secret", "x-forwarded-proto",
            ];
            const ALLOW: [&str; 4] =
                ["x_remote_user", "x_gerbang_consumer", "x_custom", "x_forwarded_for"];
            let mut h = HeaderMap::new();
            for &(name, token, form) in &fields {
                // A `Connection` value lists another name (in one of several spellings);
                // other values are plain.
                let value = if NAMES[name] == "connection" {
                    match form {
                        0 => NAMES[token].to_owned(),
                        1 => format!("close, {}", NAMES[token].to_ascii_uppercase()),
                        2 => format!(" {} ,keep-alive", NAMES[token]),
                        _ => "keep-alive".to_owned(),
                    }
                } else {
                    format!("v{token}")
                };
                h.append(
                    HeaderName::from_static(NAMES[name]),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            let mut extra = vec![HeaderName::from_static("x-remote-user")];
            if extra_custom {
                extra.push(HeaderName::from_static("x-custom-secret"));
            }
            let allow: Vec<String> = allow.iter().map(|&i| ALLOW[i].to_owned()).collect();

            let mut two = h.clone();
            remove_hop_by_hop(&mut two);
            remove_client_controlled(&mut two, &extra, &allow);
            let mut one = h.clone();
            let kept = strip_request(&mut one, &extra, &allow);
            proptest::prop_assert_eq!(by_name(&one), by_name(&two));
            proptest::prop_assert_eq!(kept.host.as_ref(), h.get(header::HOST));
            let added = Added::for_stripped(&kept);
            for f in ALL_FIELDS {
                if one.contains_key(f.name()) {
                    proptest::prop_assert!(added.client_sent(f), "{:?} kept but not noted", f);
                }
            }
        }
    }

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("content-length, host, x-a"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(header::HOST, HeaderValue::from_static("h"));
        h.insert("x-a", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        assert_eq!(h[header::HOST], "h");
        assert!(h.get("x-a").is_none() && h.get(header::CONNECTION).is_none());
    }

    /// The client's `h` as the upstream receives it after [`set_forwarding`].
    fn forwarded(
        mut h: HeaderMap,
        client_ip: &'static str,
        proto: &'static str,
        host: Option<HeaderValue>,
    ) -> HeaderMap {
        let mut added = Added::for_call(&h);
        let ip = HeaderValue::from_static(client_ip);
        set_forwarding(&mut h, &mut added, &ip, proto, host);
        added.merged(&h)
    }

    #[test]
    fn forwarded_for_appends_and_proto_host_replace() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert("forwarded", HeaderValue::from_static("for=10.9.9.9"));
        h.insert("x-real-ip", HeaderValue::from_static("10.9.9.9"));
        remove_client_controlled(&mut h, &[], &[]);
        let h = forwarded(
            h,
            "127.0.0.1",
            "https",
            Some(HeaderValue::from_static("gw.example")),
        );
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
    }

    #[test]
    fn added_fields_replace_the_clients_and_never_repeat() {
        let mut h = HeaderMap::new();
        h.append("x-request-id", HeaderValue::from_static("client-1"));
        h.append("x-request-id", HeaderValue::from_static("client-2"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut added = Added::for_call(&h);
        added.set(&mut h, Field::XRequestId, HeaderValue::from_static("gw-1"));
        added.set(&mut h, Field::XRequestId, HeaderValue::from_static("gw-2"));
        added.set_absent(Field::XGerbangAgreement, HeaderValue::from_static("a1"));
        added.remove(&mut h, Field::XForwardedHost);
        added.remove(&mut h, Field::XGerbangAgreement);
        // The map keeps only what the client may pass on; what was set is beside it, once.
        assert!(h.get("x-request-id").is_none() && h.get("x-forwarded-host").is_none());
        assert_eq!(added.fields().into_iter().flatten().count(), 1);
        assert_eq!(added.get(Field::XRequestId).unwrap(), "gw-2");
        // A field outside the scanned names is looked up, whatever the scan saw.
        h.insert("x-gerbang-consumer", HeaderValue::from_static("client"));
        added.set(
            &mut h,
            Field::XGerbangConsumer,
            HeaderValue::from_static("gw"),
        );
        assert!(h.get("x-gerbang-consumer").is_none());
        added.remove(&mut h, Field::XGerbangConsumer);
        let all = added.merged(&h);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all.get_all("x-request-id").iter().collect::<Vec<_>>(),
            ["gw-2"]
        );
        assert_eq!(all["accept"], "*/*");
    }

    /// Shared fields (an identity made once for many calls) are written after the call's own,
    /// each once; one of them set or removed again becomes the call's own, and the shared
    /// set is left as it was for the next call.
    #[test]
    fn shared_fields_follow_the_calls_own_and_can_still_be_replaced_or_removed() {
        let names = |added: &Added| {
            added
                .fields()
                .into_iter()
                .flatten()
                .map(|(f, v)| format!("{}={}", f.name(), v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        let shared: Arc<[(Field, HeaderValue)]> = vec![
            (
                Field::XGerbangConsumer,
                HeaderValue::from_static("dinkes/sik"),
            ),
            (Field::XGerbangAgreement, HeaderValue::from_static("a1")),
        ]
        .into();
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut added = Added::for_call(&h);
        added.set_absent(Field::XGerbangAuthMethod, HeaderValue::from_static("mtls"));
        added.set_shared_absent(Arc::clone(&shared));
        added.set(&mut h, Field::XRequestId, HeaderValue::from_static("r1"));
        assert_eq!(
            names(&added),
            [
                "x-gerbang-auth-method=mtls",
                "x-request-id=r1",
                "x-gerbang-consumer=dinkes/sik",
                "x-gerbang-agreement=a1"
            ]
        );
        assert_eq!(Arc::strong_count(&shared), 2, "handed over, not copied");
        // Replaced: once, with the new value; the other shared field stays.
        added.set_absent(Field::XGerbangAgreement, HeaderValue::from_static("a2"));
        let now = names(&added);
        assert_eq!(now.len(), 4);
        assert!(
            now.contains(&"x-gerbang-agreement=a2".to_string()),
            "{now:?}"
        );
        assert!(now.contains(&"x-gerbang-consumer=dinkes/sik".to_string()));
        // Removed: gone from what is written and from the merged map.
        added.remove(&mut h, Field::XGerbangConsumer);
        let all = added.merged(&h);
        assert!(all.get("x-gerbang-consumer").is_none());
        assert_eq!(all.get_all("x-gerbang-agreement").iter().count(), 1);
        assert_eq!(all["x-gerbang-agreement"], "a2");
        assert_eq!(all.len(), 4);
        // The shared set itself is unchanged.
        assert_eq!(shared.len(), 2);
        assert_eq!(shared[1].1, "a1");
        // Shared fields that overlap what the call set do not repeat a name.
        let mut added = Added::for_call(&h);
        added.set_absent(Field::XGerbangAgreement, HeaderValue::from_static("own"));
        added.set_shared_absent(Arc::clone(&shared));
        let now = names(&added);
        assert_eq!(now.len(), 2, "{now:?}");
        assert!(
            now.contains(&"x-gerbang-agreement=a1".to_string()),
            "{now:?}"
        );
    }

    #[test]
    fn forwarding_host_absent_removes_the_clients() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        let all = forwarded(h, "10.0.0.7", "http", None);
        assert!(all.get("x-forwarded-host").is_none());
        assert_eq!(all["x-forwarded-for"], "10.0.0.7");
        assert_eq!(all["x-forwarded-proto"], "http");
    }

    #[test]
    fn forwarded_for_keeps_every_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.1, 10.0.0.1"),
        );
        let h = forwarded(h, "127.0.0.1", "http", None);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.9, 198.51.100.1, 10.0.0.1, 127.0.0.1"
        );
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn addresses_format_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(acceptable_request_id(&HeaderValue::from_static("abc-123_x.y")).is_some());
        assert!(acceptable_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(acceptable_request_id(&HeaderValue::from_static("")).is_none());
        let long = "a".repeat(129);
        assert!(acceptable_request_id(&HeaderValue::from_str(&long).unwrap()).is_none());
    }
}
