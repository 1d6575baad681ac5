//! The adversarial corpus: one table of hostile requests against one gateway, each with the
//! exact status (and error code) it must get, what the provider may or may not receive (a
//! recording upstream sees every byte), and one invariant over every response byte: no masked
//! or dropped value of the filtered record, and none of the provider's validators, ever leaves
//! the gateway.
//!
//! Every reproduction of issue 11 is a case here; so are path tricks, header tricks, forged
//! credentials, framing tricks and filtered-response tricks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gerbang_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The record the provider keeps for the test subject.
const NIK: &str = "3603015505900001";
const OTHER_NIK: &str = "3603015505900002";
const MARITAL: &str = "KAWIN-TERCATAT";
const RECORD: &str = r#"{"nik":"3603015505900001","nama":"SITI AMINAH","alamat":"JL. MERDEKA 1","status_perkawinan":"KAWIN-TERCATAT"}"#;
/// The provider's validators of the unfiltered record: never to be seen by a client.
const ETAG: &str = "\"unfiltered-v1-9f8e7d\"";
const LAST_MODIFIED: &str = "Mon, 02 Feb 2026 01:02:03 GMT";
const CONTENT_MD5: &str = "c2VjcmV0LWRpZ2VzdA==";
/// What must never appear in any response byte.
const NEVER_OUT: [&str; 6] = [NIK, OTHER_NIK, MARITAL, ETAG, LAST_MODIFIED, CONTENT_MD5];

/// A request as the provider received it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request ended as its framing said (all Content-Length bytes, or the last chunk).
    pub complete: bool,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Every request head the provider saw (complete or not), by `X-Request-Id`.
#[derive(Default, Clone)]
pub struct Recorder(Arc<Mutex<HashMap<String, Vec<Seen>>>>);

impl Recorder {
    pub fn get(&self, id: &str) -> Vec<Seen> {
        self.0.lock().unwrap().get(id).cloned().unwrap_or_default()
    }
    fn put(&self, seen: Seen) {
        let id = seen.header("x-request-id").unwrap_or("-").to_owned();
        self.0.lock().unwrap().entry(id).or_default().push(seen);
    }
}

/// A provider that honours everything a real one might: `Range` (206), `If-None-Match`
/// (304), `If-Match` (412), unsatisfiable ranges (416), HEAD, and validators on every answer.
/// `x-test-respond: 206|304|412|416` makes it send that status whatever was asked.
pub async fn recording_provider() -> (SocketAddr, Recorder) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Recorder::default();
    let r = rec.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let r = r.clone();
            tokio::spawn(async move { serve_one(s, r).await });
        }
    });
    (addr, rec)
}

async fn serve_one(mut s: TcpStream, rec: Recorder) {
    loop {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut rl = lines.next().unwrap_or("").split(' ');
        let method = rl.next().unwrap_or("").to_owned();
        let target = rl.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect();
        let mut seen = Seen {
            method,
            target,
            headers,
            ..Seen::default()
        };
        let mut rest = buf[head_end + 4..].to_vec();
        // The body, as framed by the gateway.
        let cl = seen
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = seen
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        let mut eof = false;
        if let Some(cl) = cl {
            while rest.len() < cl && !eof {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                    _ => eof = true,
                }
            }
            seen.complete = rest.len() >= cl;
            seen.body = rest[..rest.len().min(cl)].to_vec();
        } else if chunked {
            loop {
                if let Some(body) = dechunk_complete(&rest) {
                    seen.body = body;
                    seen.complete = true;
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                    _ => {
                        eof = true;
                        break;
                    }
                }
            }
        } else {
            seen.complete = true;
        }
        let respond = seen.complete;
        let reply = respond.then(|| answer(&seen));
        rec.put(seen);
        let Some(reply) = reply else {
            return;
        };
        if s.write_all(&reply).await.is_err() || eof {
            return;
        }
    }
}

/// The body of a complete chunked message, or `None` while it is incomplete.
fn dechunk_complete(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let p = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..p]).ok()?.trim(), 16).ok()?;
        if size == 0 {
            return b[p + 2..].starts_with(b"\r\n").then_some(out);
        }
        if b.len() < p + 2 + size + 2 {
            return None;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + size]);
        b = &b[p + 2 + size + 2..];
    }
}

fn answer(seen: &Seen) -> Vec<u8> {
    if !seen.target.starts_with("/penduduk/") {
        // Any other service: a plain answer that carries nothing secret.
        let body = br#"{"ok":true}"#;
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if seen.method != "HEAD" {
            out.extend_from_slice(body);
        }
        return out;
    }
    let validators = format!(
        "ETag: {ETAG}\r\nLast-Modified: {LAST_MODIFIED}\r\nAccept-Ranges: bytes\r\nContent-MD5: {CONTENT_MD5}\r\nDigest: md5={CONTENT_MD5}\r\nRepr-Digest: md5=:{CONTENT_MD5}:\r\n"
    );
    let body = RECORD.as_bytes();
    let head_only = seen.method == "HEAD";
    let forced = seen.header("x-test-respond").map(str::to_owned);
    let range = seen.header("range").map(str::to_owned);
    let status = match (forced.as_deref(), &range) {
        (Some(f), _) => f.to_owned(),
        (None, _) if seen.header("if-none-match").is_some() => "304".into(),
        (None, _) if seen.header("if-match").is_some() => "412".into(),
        (None, Some(r)) if r.contains("999999") => "416".into(),
        (None, Some(_)) => "206".into(),
        (None, None) => "200".into(),
    };
    let (extra, payload): (String, Vec<u8>) = match status.as_str() {
        "206" => {
            // bytes=a-b of the unfiltered record (default 8-25: the NIK with its quotes).
            let (a, b) = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split(',').next())
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        a.trim().parse::<usize>().ok()?,
                        b.trim().parse::<usize>().ok()?,
                    ))
                })
                .unwrap_or((7, 24));
            let b = b.min(body.len() - 1);
            let a = a.min(b);
            (
                format!("Content-Range: bytes {a}-{b}/{}\r\n", body.len()),
                body[a..=b].to_vec(),
            )
        }
        "304" => (String::new(), Vec::new()),
        "412" | "416" => (
            format!("Content-Range: bytes */{}\r\n", body.len()),
            br#"{"error":"precondition"}"#.to_vec(),
        ),
        _ => (String::new(), body.to_vec()),
    };
    let reason = match status.as_str() {
        "200" => "OK",
        "206" => "Partial Content",
        "304" => "Not Modified",
        "412" => "Precondition Failed",
        "416" => "Range Not Satisfiable",
        _ => "X",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{validators}{extra}"
    )
    .into_bytes();
    if status != "304" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", payload.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && status != "304" {
        out.extend_from_slice(&payload);
    }
    out
}

/// The gateway of the corpus: `dukcapil/penduduk` (filtered: NIK masked, marital status
/// dropped, purpose required, declared endpoints) and `uji/echo` (unfiltered, any path).
pub async fn corpus_gateway(provider: SocketAddr, service_extra: &str, extra: &str) -> TestGateway {
    let dukcapil = format!(
        r#"[agency]
id = "dukcapil"
name = "Disdukcapil"

[[service]]
id = "penduduk"
name = "Penduduk"
max_body_bytes = 4096
{service_extra}
[[service.endpoint]]
method = "GET"
path = "/penduduk/{{nik}}"
classification = "rahasia"
subject = "nik"

[[service.endpoint]]
method = "HEAD"
path = "/penduduk/{{nik}}"
classification = "rahasia"
subject = "nik"

[[service.endpoint]]
method = "POST"
path = "/penduduk/{{nik}}/catatan"
classification = "rahasia"
subject = "nik"

[[service.instance]]
name = "p1"
url = "http://{provider}"

[[service]]
id = "cari"
name = "Pencarian (NIK in the query)"

[[service.endpoint]]
method = "GET"
path = "/penduduk?nik={{nik}}"
classification = "rahasia"
subject = "nik"

[[service.instance]]
name = "c1"
url = "http://{provider}"

[[service]]
id = "laporan"
name = "Laporan (a case-insensitive provider)"
path_matching = "case_insensitive"

[[service.endpoint]]
method = "GET"
path = "/laporan/{{id}}"
classification = "terbuka"

[[service.endpoint]]
method = "GET"
path = "/laporan/rekap-nik"
classification = "rahasia"

[[service.instance]]
name = "l1"
url = "http://{provider}"
"#
    );
    let uji = format!(
        r#"[agency]
id = "uji"
name = "Uji"

[[service]]
id = "echo"
name = "Echo"
max_body_bytes = 4096
allow_underscore_headers = ["x_trace_tag"]

[[service.instance]]
name = "e1"
url = "http://{provider}"
"#
    );
    let agreements = r#"
[[agreement]]
id = "pks-uji-penduduk"
title = "t"
legal_basis = "test"
service = "dukcapil/penduduk"
consumers = ["test/client"]
purposes = ["pelayanan-kesehatan"]
max_classification = "rahasia"
[agreement.fields]
mask = [{ path = "nik", keep_first = 6, keep_last = 4 }]
deny = ["status_perkawinan"]

[[agreement]]
id = "pks-uji-cari"
title = "t"
legal_basis = "test"
service = "dukcapil/cari"
consumers = ["test/client"]
max_classification = "rahasia"

[[agreement]]
id = "open-uji-laporan"
title = "t"
legal_basis = "test"
service = "dukcapil/laporan"
consumers = ["test/client"]
max_classification = "terbuka"

[[agreement]]
id = "open-uji-echo"
title = "t"
legal_basis = "test"
service = "uji/echo"
consumers = ["*"]
max_classification = "sangat-rahasia"
"#;
    TestGateway::start_with_agreements(
        &[dukcapil.as_str(), uji.as_str()],
        Some(agreements),
        "",
        extra,
    )
    .await
}

/// A check of the request the provider received.
pub type SeenCheck = Box<dyn Fn(&Seen) -> Result<(), String> + Send + Sync>;

/// What the provider must (not) have received for a case.
pub enum Reach {
    /// The gateway refused the call: nothing reached the provider.
    Never,
    /// The call reached the provider, complete, without any of these headers (lower case).
    Without(Vec<&'static str>),
    /// The call reached the provider; the check says what it must have looked like.
    Check(SeenCheck),
    /// Whatever reached the provider never reached it complete.
    NeverComplete,
}

pub struct Case {
    pub name: String,
    /// The request bytes, sent as they are (no credentials are added).
    pub request: Vec<u8>,
    pub status: u16,
    pub code: Option<&'static str>,
    pub reach: Reach,
    /// Close the sending side after the request (a body cut short).
    pub half_close: bool,
}

const KEY_HEADER: &str = "X-API-Key: ";
const PURPOSE: &str = "X-Gerbang-Purpose: pelayanan-kesehatan\r\n";

/// A request to the gateway, credentials of `test/client` included, with the case id as its
/// request id and `Connection: close`.
fn req(id: &str, method: &str, target: &str, headers: &str, body: &str) -> Vec<u8> {
    let cl = if body.is_empty() && !matches!(method, "POST" | "PUT") {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!(
        "{method} {target} HTTP/1.1\r\nHost: gw.test\r\n{KEY_HEADER}{TEST_API_KEY}\r\nX-Request-Id: {id}\r\n{headers}{cl}Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

fn case(
    name: &str,
    request: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
    reach: Reach,
) -> Case {
    Case {
        name: name.to_owned(),
        request,
        status,
        code,
        reach,
        half_close: false,
    }
}

/// Every case of the corpus, ids `c0`, `c1`, … in order.
pub fn corpus() -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    let mut n = 0usize;
    let mut id = || {
        n += 1;
        format!("c{n}")
    };
    let rec_path = format!("/dukcapil/penduduk/penduduk/{NIK}");

    // ---- filtered-response tricks: ranges, conditions, HEAD -----------------------------
    let range_and_conditions = vec![
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    ];
    for h in [
        "Range: bytes=8-23",
        "Range: bytes=60-66",
        "Range: bytes=0-999",
        "Range: bytes=-10",
        "Range: bytes=0-0,8-23",
        "Range: bytes=999999-",
        "range: BYTES=8-23",
        "Range: bytes=8-23\r\nIf-Range: \"x\"",
        "If-None-Match: *",
        &format!("If-None-Match: {ETAG}"),
        "If-Match: \"nope\"",
        "If-Match: *",
        &format!("If-Modified-Since: {LAST_MODIFIED}"),
        "If-Unmodified-Since: Mon, 01 Jan 1990 00:00:00 GMT",
        "If-Range: Mon, 01 Jan 1990 00:00:00 GMT\r\nRange: bytes=0-5",
        "Range: bytes=8-23\r\nRange: bytes=60-66",
        "Range: items=0-1",
    ] {
        let i = id();
        v.push(case(
            &format!("filtered GET with {h:?} is answered in full, filtered"),
            req(&i, "GET", &rec_path, &format!("{PURPOSE}{h}\r\n"), ""),
            200,
            None,
            Reach::Without(range_and_conditions.clone()),
        ));
    }
    for forced in ["206", "304", "412", "416"] {
        for method in ["GET", "HEAD"] {
            let i = id();
            v.push(case(
                &format!("provider answering {forced} to a filtered {method} fails closed"),
                req(
                    &i,
                    method,
                    &rec_path,
                    &format!("{PURPOSE}X-Test-Respond: {forced}\r\n"),
                    "",
                ),
                502,
                // A HEAD answer has no body to carry the code.
                (method == "GET").then_some("response_filter_failed"),
                Reach::Without(range_and_conditions.clone()),
            ));
        }
    }
    for h in [
        "",
        "Range: bytes=8-23\r\n",
        "If-None-Match: *\r\n",
        "Range: bytes=999999-\r\n",
    ] {
        let i = id();
        v.push(case(
            &format!("filtered HEAD with {h:?} is a filtered GET without body"),
            req(&i, "HEAD", &rec_path, &format!("{PURPOSE}{h}"), ""),
            200,
            None,
            Reach::Check(Box::new(|s: &Seen| {
                if s.method != "GET" {
                    return Err(format!("provider got {} instead of GET", s.method));
                }
                if s.header("range").is_some() || s.header("if-none-match").is_some() {
                    return Err("range or condition forwarded".into());
                }
                Ok(())
            })),
        ));
    }
    for ae in ["gzip", "br, gzip;q=1", "*"] {
        let i = id();
        v.push(case(
            &format!("filtered GET with Accept-Encoding {ae} asks the provider for identity"),
            req(
                &i,
                "GET",
                &rec_path,
                &format!("{PURPOSE}Accept-Encoding: {ae}\r\n"),
                "",
            ),
            200,
            None,
            Reach::Check(Box::new(|s: &Seen| {
                match s.all("accept-encoding").as_slice() {
                    ["identity"] => Ok(()),
                    other => Err(format!("accept-encoding {other:?}")),
                }
            })),
        ));
    }

    // ---- identity and routing headers that must not reach the provider ------------------
    let smuggled = [
        "X_Remote_User: admin",
        "X_Gerbang_Consumer: dukcapil/siak",
        "X_GERBANG_CONSUMER: dukcapil/siak",
        "x_gerbang_consumer_agency: dukcapil",
        "X_Gerbang_Agreement: pks-lain",
        "X_Gerbang_Assertion: forged",
        "X_Gerbang_Auth_Method: mtls",
        "X_Gerbang_Purpose: penegakan-hukum",
        "X_API_Key: gk_forged",
        "X_Forwarded_For: 10.0.0.1",
        "X_Forwarded_Host: evil.example",
        "X_Forwarded_Proto: https",
        "X_Real_IP: 10.0.0.1",
        "X_Forwarded_Prefix: /admin",
        "Remote_User: admin",
        "Content_Length: 5",
        "Transfer_Encoding: chunked",
        "X_Original_URL: /admin",
        "X_Http_Method_Override: DELETE",
        "X-Gerbang-Consumer: dukcapil/siak",
        "x-gerbang-consumer-agency: dukcapil",
        "X-Gerbang-Agreement: pks-lain",
        "X-Gerbang-Assertion: forged",
        "X-Gerbang-Auth-Method: mtls",
        "X-Gerbang-Anything: x",
        "X-Real-IP: 10.0.0.1",
        "Forwarded: for=10.0.0.1;host=evil.example",
        "X-Forwarded-Port: 8443",
        "X-Forwarded-Prefix: /admin",
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "X-Original-URL: /admin/hapus",
        "X-Rewrite-URL: /admin/hapus",
        "x-http-method-override: PUT",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Upgrade: websocket",
        "Proxy-Connection: keep-alive",
        "Connection: close, X-Secret-Hop\r\nX-Secret-Hop: 1",
        "Expect: 100-continue",
    ];
    for (target, extra) in [("/uji/echo/x", ""), (rec_path.as_str(), PURPOSE)] {
        for h in smuggled {
            let i = id();
            let name = h.split(':').next().unwrap_or("").trim().to_owned();
            let forbidden_values: Vec<String> = h
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .map(|(n, _)| n.trim().to_owned())
                .collect();
            let sent_value = h
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default();
            let is_gateway_set = name.eq_ignore_ascii_case("x-gerbang-consumer")
                || name.eq_ignore_ascii_case("x-gerbang-consumer-agency")
                || name.eq_ignore_ascii_case("x-gerbang-agreement")
                || name.eq_ignore_ascii_case("x-gerbang-assertion")
                || name.eq_ignore_ascii_case("x-gerbang-auth-method")
                || name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("x-forwarded-proto")
                || name.eq_ignore_ascii_case("x-forwarded-host");
            v.push(case(
                &format!("{h:?} on {target} does not reach the provider"),
                req(&i, "GET", target, &format!("{extra}{h}\r\n"), ""),
                200,
                None,
                Reach::Check(Box::new(move |s: &Seen| {
                    for f in &forbidden_values {
                        // Exactly this spelling never arrives; a header the gateway sets
                        // itself arrives with the gateway's value, not the client's.
                        if is_gateway_set && !f.contains('_') {
                            if s.all(f).iter().any(|v| v.contains(sent_value.as_str())) {
                                return Err(format!("client value of {f} arrived"));
                            }
                        } else if s.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(f)) {
                            return Err(format!("{f} arrived"));
                        }
                    }
                    if s.method != "GET" {
                        return Err(format!("method {}", s.method));
                    }
                    Ok(())
                })),
            ));
        }
    }
    // The one underscore name the echo service allows passes.
    let i = id();
    v.push(case(
        "an allowed underscore header passes",
        req(&i, "GET", "/uji/echo/x", "X_Trace_Tag: t-1\r\n", ""),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| match s.header("x_trace_tag") {
            Some("t-1") => Ok(()),
            other => Err(format!("x_trace_tag {other:?}")),
        })),
    ));
    // The gateway's own identity arrives, whatever the client claimed.
    let i = id();
    v.push(case(
        "the provider sees the verified consumer",
        req(
            &i,
            "GET",
            &rec_path,
            &format!("{PURPOSE}X-Gerbang-Consumer: dukcapil/siak\r\nX_Gerbang_Consumer: dukcapil/siak\r\n"),
            "",
        ),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| {
            match (s.all("x-gerbang-consumer").as_slice(), s.header("x-gerbang-agreement")) {
                (["test/client"], Some("pks-uji-penduduk")) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })),
    ));

    // ---- purpose --------------------------------------------------------------------------
    for (h, code) in [
        (
            "X-Gerbang-Purpose: pelayanan-kesehatan\r\nX-Gerbang-Purpose: penegakan-hukum",
            Some("purpose_ambiguous"),
        ),
        (
            "X-Gerbang-Purpose: penegakan-hukum\r\nX-Gerbang-Purpose: pelayanan-kesehatan",
            Some("purpose_ambiguous"),
        ),
        (
            "X-Gerbang-Purpose: pelayanan-kesehatan\r\nX-Gerbang-Purpose: pelayanan-kesehatan",
            Some("purpose_ambiguous"),
        ),
        (
            "X-Gerbang-Purpose: pelayanan-kesehatan, penegakan-hukum",
            Some("purpose_ambiguous"),
        ),
        (
            "X-Gerbang-Purpose: pelayanan-kesehatan,",
            Some("purpose_ambiguous"),
        ),
        (
            "x-gerbang-purpose: pelayanan-kesehatan\r\nX-GERBANG-PURPOSE: uji",
            Some("purpose_ambiguous"),
        ),
        ("X-Gerbang-Purpose: ", Some("purpose_ambiguous")),
        (
            "X-Gerbang-Purpose: pelayanan-kesehatan\u{ff}",
            Some("purpose_ambiguous"),
        ),
        // hyper itself refuses a control character in a value.
        ("X-Gerbang-Purpose: pelayanan\x01kesehatan", None),
    ] {
        let i = id();
        v.push(case(
            &format!("purpose {h:?} is ambiguous"),
            req(&i, "GET", &rec_path, &format!("{h}\r\n"), ""),
            400,
            code,
            Reach::Never,
        ));
    }
    let i = id();
    v.push(case(
        "the provider receives exactly the checked purpose",
        req(
            &i,
            "GET",
            &rec_path,
            "X-Gerbang-Purpose:   pelayanan-kesehatan  \r\n",
            "",
        ),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| {
            match s.all("x-gerbang-purpose").as_slice() {
                ["pelayanan-kesehatan"] => {}
                other => return Err(format!("{other:?}")),
            }
            // The gateway's assertion names the purpose and the agreement it checked.
            let claims = s
                .header("x-gerbang-assertion")
                .and_then(|t| t.split('.').nth(1))
                .and_then(|p| {
                    use base64::Engine;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p)
                        .ok()
                })
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .ok_or("no readable assertion")?;
            if claims["purpose"] != "pelayanan-kesehatan"
                || claims["agreement"] != "pks-uji-penduduk"
            {
                return Err(format!("assertion claims {claims}"));
            }
            Ok(())
        })),
    ));
    for (h, code) in [
        ("", "purpose_missing"),
        (
            "X-Gerbang-Purpose: penegakan-hukum\r\n",
            "purpose_not_allowed",
        ),
        (
            "X_Gerbang_Purpose: pelayanan-kesehatan\r\n",
            "purpose_missing",
        ),
        (
            "X-Gerbang-Purpose: PELAYANAN-KESEHATAN\r\n",
            "purpose_not_allowed",
        ),
    ] {
        let i = id();
        v.push(case(
            &format!("purpose {h:?} is refused by policy"),
            req(&i, "GET", &rec_path, h, ""),
            403,
            Some(code),
            Reach::Never,
        ));
    }

    // ---- the query under policy: the audited subject is the one the provider receives ----
    let cari = "/dukcapil/cari/penduduk";
    for (q, code) in [
        (format!("?nik={NIK}&nik={OTHER_NIK}"), "query_repeated"),
        (format!("?nik={OTHER_NIK}&nik={NIK}"), "query_repeated"),
        (format!("?nik={NIK}&cetak=1"), "query_not_allowed"),
        (format!("?nik={NIK}&NIK={OTHER_NIK}"), "query_not_allowed"),
        (format!("?nik={NIK}&%6Eik={OTHER_NIK}"), "query_malformed"),
        (format!("?%6Eik={NIK}"), "query_malformed"),
        (format!("?nik={NIK};nik={OTHER_NIK}"), "query_malformed"),
        (format!("?nik=%33{}", &NIK[1..]), "query_malformed"),
        (format!("?nik={NIK}%26nik%3D{OTHER_NIK}"), "query_malformed"),
        (format!("?nik={NIK}+{OTHER_NIK}"), "query_malformed"),
        (format!("?nik={NIK}&"), "query_malformed"),
        (format!("?&nik={NIK}"), "query_malformed"),
        ("?nik".to_owned(), "query_malformed"),
        (format!("?nik={NIK}=x"), "query_malformed"),
        (String::new(), "query_missing"),
        ("?cetak=1".to_owned(), "query_not_allowed"),
    ] {
        let i = id();
        v.push(case(
            &format!("query {q:?} on a query-subject endpoint"),
            req(&i, "GET", &format!("{cari}{q}"), "", ""),
            400,
            Some(code),
            Reach::Never,
        ));
    }
    let i = id();
    v.push(case(
        "a declared query subject passes byte for byte",
        req(&i, "GET", &format!("{cari}?nik={NIK}"), "", ""),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| {
            (s.target == format!("/penduduk?nik={NIK}"))
                .then_some(())
                .ok_or_else(|| format!("target {}", s.target))
        })),
    ));
    for (q, code) in [
        (format!("?nik={OTHER_NIK}"), "query_not_allowed"),
        ("?x=1".to_owned(), "query_not_allowed"),
        (format!("?nik={OTHER_NIK}&nik={NIK}"), "query_not_allowed"),
    ] {
        let i = id();
        v.push(case(
            &format!("query {q:?} beside a path subject"),
            req(&i, "GET", &format!("{rec_path}{q}"), PURPOSE, ""),
            400,
            Some(code),
            Reach::Never,
        ));
    }

    // ---- a literal endpoint shadowed by a template: judged as the provider matches it ----
    for p in [
        "/laporan/rekap-nik",
        "/laporan/REKAP-NIK",
        "/laporan/Rekap-Nik",
        "/laporan/rekap-nik.",
        "/laporan/rekap-nik..",
        "/laporan/rekap-nik%2E",
        "/laporan/rekap%2Dnik",
        "/laporan/REKAP-NIK%20",
        "/laporan/rekap-ni%E2%84%AA",
    ] {
        let i = id();
        v.push(case(
            &format!("{p} is judged as the secret literal"),
            req(&i, "GET", &format!("/dukcapil/laporan{p}"), "", ""),
            403,
            Some("classification_exceeded"),
            Reach::Never,
        ));
    }
    let i = id();
    v.push(case(
        "an open report passes",
        req(&i, "GET", "/dukcapil/laporan/laporan/2026-01", "", ""),
        200,
        None,
        Reach::Without(vec![]),
    ));

    // ---- Host, Expect, absolute form --------------------------------------------------------
    let raw = |i: &str, head: &str| -> Vec<u8> {
        format!(
            "{head}{KEY_HEADER}{TEST_API_KEY}\r\nX-Request-Id: {i}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    for head in [
        "GET /uji/echo/x HTTP/1.1\r\n".to_owned(),
        "GET /uji/echo/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n".to_owned(),
        "GET /uji/echo/x HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n".to_owned(),
        "GET http://a.test/uji/echo/x HTTP/1.1\r\nHost: b.test\r\n".to_owned(),
        "GET http://user:pw@a.test/uji/echo/x HTTP/1.1\r\nHost: a.test\r\n".to_owned(),
        "GET /uji/echo/x HTTP/1.1\r\nHost: user:pw@evil.example\r\n".to_owned(),
        "GET /uji/echo/x HTTP/1.1\r\nHost: \r\n".to_owned(),
        format!("GET {rec_path} HTTP/1.1\r\n{PURPOSE}"),
    ] {
        let i = id();
        v.push(case(
            &format!("host trick {head:?}"),
            raw(&i, &head),
            400,
            Some("invalid_host"),
            Reach::Never,
        ));
    }
    let i = id();
    v.push(case(
        "absolute form agreeing with Host is served, X-Forwarded-Host from the target",
        raw(
            &i,
            "GET http://a.test/uji/echo/x HTTP/1.1\r\nHost: a.test\r\n",
        ),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| match s.header("x-forwarded-host") {
            Some("a.test") => Ok(()),
            other => Err(format!("x-forwarded-host {other:?}")),
        })),
    ));
    for e in [
        "Expect: 200-ok",
        "Expect: 100-continue, x",
        "Expect: nothing",
    ] {
        let i = id();
        v.push(case(
            &format!("{e:?} is refused"),
            req(&i, "POST", "/uji/echo/x", &format!("{e}\r\n"), "{}"),
            417,
            Some("expectation_failed"),
            Reach::Never,
        ));
    }
    let i = id();
    v.push(case(
        "Expect: 100-continue is met by the gateway, not passed on",
        req(
            &i,
            "POST",
            "/uji/echo/x",
            "Expect: 100-continue\r\n",
            "{\"a\":1}",
        ),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| {
            if s.header("expect").is_some() {
                return Err("expect forwarded".into());
            }
            (s.body == b"{\"a\":1}")
                .then_some(())
                .ok_or_else(|| format!("body {:?}", s.body))
        })),
    ));

    // ---- framing ----------------------------------------------------------------------------
    let framing = |i: &str, rest: &str| -> Vec<u8> {
        format!(
            "POST /uji/echo/x HTTP/1.1\r\nHost: gw.test\r\n{KEY_HEADER}{TEST_API_KEY}\r\nX-Request-Id: {i}\r\n{rest}"
        )
        .into_bytes()
    };
    for (rest, code) in [
        (
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some("ambiguous_framing"),
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            Some("ambiguous_framing"),
        ),
        ("Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", None),
        ("Content-Length: 4, 5\r\n\r\nabcde", None),
        ("Content-Length: -1\r\n\r\n", None),
        ("Content-Length: +4\r\n\r\nabcd", None),
        ("Content-Length: 0x4\r\n\r\nabcd", None),
        (
            "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            None,
        ),
        ("Transfer-Encoding: identity\r\n\r\n", None),
        ("Transfer-Encoding: gzip\r\n\r\n", None),
        ("Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", None),
        (
            "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            None,
        ),
        (
            "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            None,
        ),
        (
            "Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
            None,
        ),
        ("Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", None),
        ("X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n", None),
        (" Content-Length: 4\r\n\r\nabcd", None),
        ("Content-Length : 4\r\n\r\nabcd", None),
        ("Content-Length:\t4\x00\r\n\r\nabcd", None),
    ] {
        let i = id();
        v.push(case(
            &format!("framing {rest:?}"),
            framing(&i, rest),
            400,
            code,
            Reach::NeverComplete,
        ));
    }
    // Chunk extensions are dropped: the gateway frames the body anew.
    let i = id();
    v.push(case(
        "a chunk extension with a control character is not passed on",
        framing(
            &i,
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;\x01\r\nabc\r\n0\r\n\r\n",
        ),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| {
            (s.body == b"abc" && s.complete)
                .then_some(())
                .ok_or_else(|| format!("body {:?}", s.body))
        })),
    ));
    // A body that ends before its declared length never reaches the provider complete.
    let i = id();
    let mut truncated = framing(&i, "Content-Length: 100\r\nConnection: close\r\n\r\n");
    truncated.extend_from_slice(b"{\"short\":true}");
    v.push(Case {
        half_close: true,
        ..case(
            "a body cut short of its Content-Length",
            truncated,
            0,
            None,
            Reach::NeverComplete,
        )
    });
    let i = id();
    let mut unfinished = framing(
        &i,
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    unfinished.extend_from_slice(b"5\r\nhello\r\n");
    v.push(Case {
        half_close: true,
        ..case(
            "a chunked body without its last chunk",
            unfinished,
            0,
            None,
            Reach::NeverComplete,
        )
    });

    // ---- path tricks ----------------------------------------------------------------------
    for (p, st, code) in [
        (
            "/dukcapil/penduduk/penduduk/..%2F..%2Fadmin",
            400,
            "path_encoded_separator",
        ),
        (
            "/dukcapil/penduduk/penduduk%2F3603015505900001",
            400,
            "path_encoded_separator",
        ),
        (
            "/dukcapil/penduduk/penduduk%5C3603015505900001",
            400,
            "path_encoded_separator",
        ),
        (
            "/dukcapil/penduduk/penduduk/3603015505900001%00",
            400,
            "path_encoded_control",
        ),
        (
            "/dukcapil/penduduk/penduduk/%2e%2e/%2e%2e/uji/echo",
            400,
            "path_traversal",
        ),
        ("/dukcapil/penduduk/../../uji/echo/x", 400, "path_traversal"),
        (
            "/dukcapil/penduduk/penduduk/3603015505900001;x=1",
            400,
            "path_invalid_character",
        ),
        (
            "/dukcapil/penduduk/penduduk/%252e%252e",
            400,
            "path_double_encoding",
        ),
        (
            "/dukcapil/penduduk/penduduk/%zz",
            400,
            "path_invalid_encoding",
        ),
        (
            "/dukcapil/penduduk/penduduk/%C0%AE",
            400,
            "path_invalid_utf8",
        ),
        (
            "/dukcapil/penduduk/penduduk\\3603015505900001",
            400,
            "path_invalid_character",
        ),
        (
            "/dukcapil/penduduk/penduduk/3603015505900001%0d%0aX:1",
            400,
            "path_encoded_control",
        ),
        ("/dukcapil/PENDUDUK/penduduk/1", 404, "unknown_service"),
        ("/DUKCAPIL/penduduk/penduduk/1", 404, "unknown_agency"),
        ("/dukcapil/penduduk/admin", 403, "endpoint_not_declared"),
        (
            "/dukcapil/penduduk/penduduk/1/2",
            403,
            "endpoint_not_declared",
        ),
        (
            "/dukcapil/penduduk/PENDUDUK/1",
            403,
            "endpoint_not_declared",
        ),
        ("/dukcapil", 404, "route_not_found"),
        ("/nosuch/x/y", 404, "unknown_agency"),
        ("/uji/nosuch/y", 404, "unknown_service"),
        ("/admin/reload", 404, "unknown_agency"),
        ("/oauth/token/../x", 400, "path_traversal"),
    ] {
        let i = id();
        v.push(case(
            &format!("path {p}"),
            req(&i, "GET", p, PURPOSE, ""),
            st,
            Some(code),
            Reach::Never,
        ));
    }
    // Normalised paths are judged and forwarded as normalised.
    for (p, upstream) in [
        ("//dukcapil/penduduk/penduduk/1", "/penduduk/1"),
        ("/dukcapil/penduduk//penduduk/./1", "/penduduk/1"),
        ("/uji/echo/a/./b", "/a/b"),
        ("/uji/echo/a//b", "/a/b"),
        ("/uji/echo/a/b/../c", "/a/c"),
        ("/uji/echo/%61", "/a"),
    ] {
        let i = id();
        v.push(case(
            &format!("path {p} is forwarded normalised"),
            req(&i, "GET", p, PURPOSE, ""),
            200,
            None,
            Reach::Check(Box::new(move |s: &Seen| {
                (s.target == upstream)
                    .then_some(())
                    .ok_or_else(|| format!("target {}", s.target))
            })),
        ));
    }
    // Methods outside the declared endpoints.
    for m in ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        let i = id();
        v.push(case(
            &format!("{m} on a declared GET endpoint"),
            req(&i, m, &rec_path, PURPOSE, ""),
            403,
            Some("method_not_allowed"),
            Reach::Never,
        ));
    }

    // ---- forged credentials ---------------------------------------------------------------
    let forged = |i: &str, auth: &str| -> Vec<u8> {
        format!(
            "GET /uji/echo/x HTTP/1.1\r\nHost: gw.test\r\nX-Request-Id: {i}\r\n{auth}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let none_token = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"at+jwt"}"#),
        b64url(br#"{"sub":"test/client","iss":"x","aud":"x","exp":9999999999}"#)
    );
    let hs_token = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"HS256","typ":"at+jwt","kid":"k"}"#),
        b64url(br#"{"sub":"test/client","exp":9999999999}"#),
        b64url(b"sig")
    );
    for (auth, code) in [
        ("", "missing_credentials"),
        ("Authorization: Bearer\r\n", "invalid_token"),
        ("Authorization: Bearer x.y.z\r\n", "invalid_token"),
        (
            &format!("Authorization: Bearer {none_token}\r\n"),
            "invalid_token",
        ),
        (
            &format!("Authorization: Bearer {hs_token}\r\n"),
            "invalid_token",
        ),
        ("Authorization: Basic dGVzdDp0ZXN0\r\n", "invalid_token"),
        (
            "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
            "invalid_token",
        ),
        (
            "X-API-Key: gk_0000000000000000000000000000000000000000000000000000000000000000\r\n",
            "invalid_api_key",
        ),
        ("X-API-Key: not-a-key\r\n", "invalid_api_key"),
        (
            &format!("X-API-Key: {TEST_API_KEY}\r\nX-API-Key: {TEST_API_KEY}\r\n"),
            "invalid_api_key",
        ),
        (
            &format!("X_API_Key: {TEST_API_KEY}\r\n"),
            "missing_credentials",
        ),
        (
            &format!("X-Api-Key: {TEST_API_KEY}x\r\n"),
            "invalid_api_key",
        ),
        (
            &format!("Authorization: Bearer {TEST_API_KEY}\r\n"),
            "invalid_token",
        ),
        ("X-Gerbang-Consumer: test/client\r\n", "missing_credentials"),
        ("X-Remote-User: test/client\r\n", "missing_credentials"),
    ] {
        let i = id();
        v.push(case(
            &format!("credentials {auth:?}"),
            forged(&i, auth),
            401,
            Some(code),
            Reach::Never,
        ));
    }
    // The API key in the query is not a credential, and never reaches the provider either way.
    let i = id();
    v.push(case(
        "an API key in the query is no credential",
        format!(
            "GET /uji/echo/x?api_key={TEST_API_KEY} HTTP/1.1\r\nHost: gw.test\r\nX-Request-Id: {i}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
        401,
        Some("missing_credentials"),
        Reach::Never,
    ));

    // ---- request bodies ---------------------------------------------------------------------
    let i = id();
    let big = "x".repeat(5000);
    v.push(case(
        "a body over the service's limit",
        req(&i, "POST", "/uji/echo/x", "", &big),
        413,
        Some("body_too_large"),
        Reach::NeverComplete,
    ));
    let i = id();
    v.push(case(
        "a complete body is forwarded byte for byte",
        req(&i, "POST", "/uji/echo/x", "", "{\"ok\":1}"),
        200,
        None,
        Reach::Check(Box::new(|s: &Seen| {
            (s.body == b"{\"ok\":1}" && s.complete)
                .then_some(())
                .ok_or_else(|| format!("body {:?}", s.body))
        })),
    ));
    v
}

/// Sends each case on its own connection and checks it; returns the failures.
pub async fn run_corpus(gw: SocketAddr, rec: &Recorder, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for (k, c) in cases.iter().enumerate() {
        let id = format!("c{}", k + 1);
        let (status, raw_bytes) = send_raw(gw, &c.request, c.half_close).await;
        let text = String::from_utf8_lossy(&raw_bytes).into_owned();
        let mut problems = Vec::new();
        if c.status != 0 && status != Some(c.status) {
            problems.push(format!("status {status:?}, want {}", c.status));
        }
        if let Some(code) = c.code {
            if !text.contains(&format!("\"code\":\"{code}\"")) {
                problems.push(format!("no code {code}"));
            }
        }
        for secret in NEVER_OUT {
            if text.contains(secret) {
                problems.push(format!("response carries {secret:?}"));
            }
        }
        // The provider's view (its reader waits up to 5 s for a body that never comes).
        let seen = wait_seen(rec, &id, &c.reach).await;
        match &c.reach {
            Reach::Never => {
                if !seen.is_empty() {
                    problems.push(format!("reached the provider: {:?}", seen[0]));
                }
            }
            Reach::NeverComplete => {
                if seen.iter().any(|s| s.complete && !s.body.is_empty())
                    || seen.iter().any(|s| s.complete && s.method == "POST")
                {
                    problems.push(format!("reached the provider complete: {seen:?}"));
                }
            }
            Reach::Without(names) => match seen.as_slice() {
                [s] => {
                    for n in names {
                        if s.header(n).is_some() {
                            problems.push(format!("provider got {n}"));
                        }
                    }
                }
                other => problems.push(format!("provider saw {} requests", other.len())),
            },
            Reach::Check(f) => match seen.as_slice() {
                [s] => {
                    if let Err(e) = f(s) {
                        problems.push(e);
                    }
                }
                other => problems.push(format!("provider saw {} requests", other.len())),
            },
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{id} {}: {}\n    {}",
                c.name,
                problems.join("; "),
                text.lines().next().unwrap_or("")
            ));
        }
    }
    failures
}

async fn wait_seen(rec: &Recorder, id: &str, reach: &Reach) -> Vec<Seen> {
    match reach {
        Reach::Never | Reach::NeverComplete => {
            // Give a forwarded request time to arrive before concluding it did not.
            tokio::time::sleep(Duration::from_millis(20)).await;
            rec.get(id)
        }
        _ => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let s = rec.get(id);
                if !s.is_empty() || tokio::time::Instant::now() > deadline {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Writes `request`, half-closes, and reads everything the gateway sends until it closes.
async fn send_raw(addr: SocketAddr, request: &[u8], half_close: bool) -> (Option<u16>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    // The final status: interim (1xx) answers are skipped.
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split("\r\n\r\n")
        .filter_map(|head| head.strip_prefix("HTTP/1.1 "))
        .filter_map(|rest| rest.get(..3)?.parse::<u16>().ok())
        .find(|s| *s >= 200);
    (status, out)
}

#[tokio::test]
async fn hostile_requests_get_exact_answers_and_leak_nothing() {
    let (provider, rec) = recording_provider().await;
    let gw = corpus_gateway(provider, "", "[audit]\nfsync = \"always\"\n").await;
    let cases = corpus();
    assert!(cases.len() >= 200, "the corpus has {} cases", cases.len());
    let failures = run_corpus(gw.addr, &rec, &cases).await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn filtered_record_is_masked_and_head_matches_get() {
    let (provider, _rec) = recording_provider().await;
    let gw = corpus_gateway(provider, "", "[audit]\nfsync = \"always\"\n").await;
    let path = format!("/dukcapil/penduduk/penduduk/{NIK}");
    let get = raw_request(gw.addr, &get(&path, PURPOSE)).await;
    assert_eq!(get.status, 200);
    let body = get.json();
    assert_eq!(body["nik"], "360301******0001");
    assert!(body.get("status_perkawinan").is_none());
    for h in [
        "etag",
        "last-modified",
        "accept-ranges",
        "content-md5",
        "digest",
        "repr-digest",
        "content-range",
    ] {
        assert!(get.header(h).is_none(), "{h} left with a filtered body");
    }
    let head = raw_head_request(
        gw.addr,
        format!("HEAD {path} HTTP/1.1\r\nHost: gw.test\r\n{PURPOSE}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "HEAD states the filtered GET's length"
    );
    assert!(head.header("etag").is_none() && head.header("accept-ranges").is_none());
}

/// Every audit record the gateway wrote so far.
fn audit_records(gw: &TestGateway) -> Vec<serde_json::Value> {
    let dir = gw.dir.path().join("data/audit");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str(line) {
                out.push(v);
            }
        }
    }
    out
}

/// An HTTP/2 (prior knowledge) connection to the gateway.
async fn h2_conn(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn h2_req(method: &str, uri: &str, id: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", TEST_API_KEY)
        .header("x-request-id", id);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap()
}

/// Sends a request whose body is `data` (each a DATA frame), then END_STREAM or a reset;
/// returns the status (None: the stream was reset) and the response body.
async fn h2_send(
    addr: SocketAddr,
    req: http::Request<()>,
    data: &[&[u8]],
    end: bool,
) -> (Option<u16>, Vec<u8>) {
    let mut send = h2_conn(addr).await;
    let no_body = data.is_empty() && end;
    let Ok((resp, mut stream)) = send.send_request(req, no_body) else {
        return (None, Vec::new());
    };
    if !no_body {
        for (k, d) in data.iter().enumerate() {
            let last = end && k + 1 == data.len();
            let _ = stream.send_data(bytes::Bytes::copy_from_slice(d), last);
        }
        if data.is_empty() && end {
            let _ = stream.send_data(bytes::Bytes::new(), true);
        }
        if !end {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), resp).await {
        Ok(Ok(r)) => {
            let status = r.status().as_u16();
            let mut body = r.into_body();
            let mut out = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            (Some(status), out)
        }
        _ => (None, Vec::new()),
    }
}

#[tokio::test]
async fn http2_requests_reach_the_provider_complete_or_not_at_all() {
    let (provider, rec) = recording_provider().await;
    let gw = corpus_gateway(provider, "", "[audit]\nfsync = \"always\"\n").await;
    let url = |p: &str| format!("http://{}{p}", gw.addr);
    let rec_path = format!("/dukcapil/penduduk/penduduk/{NIK}");
    let mut failures: Vec<String> = Vec::new();

    // DATA that disagrees with content-length, or a stream reset after the declared bytes:
    // the provider never sees a complete request.
    let bodies: [(&str, &str, &[&[u8]], bool); 5] = [
        ("h1", "10", &[b"0123456789ab"], true),
        ("h2", "0", &[b"abc"], true),
        ("h3", "10", &[b"0123456789", b"ab"], true),
        ("h4", "5", &[b"01234"], false),
        ("h5", "10", &[b"01234", b"56"], true),
    ];
    for (id, cl, data, end) in bodies {
        let req = h2_req("POST", &url("/uji/echo/x"), id, &[("content-length", cl)]);
        let (status, body) = h2_send(gw.addr, req, data, end).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = rec.get(id);
        if seen.iter().any(|s| s.complete) {
            failures.push(format!(
                "{id}: content-length {cl}, data {data:?}, end {end}: provider saw a complete request {seen:?} (client got {status:?} {})",
                String::from_utf8_lossy(&body)
            ));
        }
        if status == Some(200) {
            failures.push(format!("{id}: the client got 200"));
        }
    }
    // Every one of them is audited, with the bytes the gateway actually received (h2 refuses
    // the frame that breaks the declared length, so at most the 5 before it), never the
    // declared 10.
    let audited = audit_records(&gw);
    for id in ["h1", "h2", "h3", "h4", "h5"] {
        let r = audited.iter().find(|r| r["request_id"] == id);
        let bytes_in = r.and_then(|r| r["bytes_in"].as_u64());
        let want_max = if id == "h3" { 10 } else { 5 };
        if bytes_in.is_none_or(|b| b > want_max) {
            failures.push(format!(
                "{id}: audit record {r:?}, want bytes_in <= {want_max}"
            ));
        }
    }
    // The complete body passes.
    let req = h2_req(
        "POST",
        &url("/uji/echo/x"),
        "h6",
        &[("content-length", "5")],
    );
    let (status, _) = h2_send(gw.addr, req, &[b"01", b"234"], true).await;
    let seen = rec.get("h6");
    if status != Some(200) || seen.len() != 1 || !seen[0].complete || seen[0].body != b"01234" {
        failures.push(format!("h6: a complete body: {status:?} {seen:?}"));
    }

    // HEAD answered by the gateway itself (401, 403, 404) and a filtered HEAD: headers, no
    // reset.
    for (id, path, key, status_want) in [
        ("h7", "/uji/echo/x", false, 401),
        ("h8", "/nosuch/x/y", true, 404),
        ("h9", rec_path.as_str(), true, 403),
        ("h10", "/dukcapil/penduduk/tidak-ada", true, 403),
    ] {
        let mut b = http::Request::builder()
            .method("HEAD")
            .uri(url(path))
            .header("x-request-id", id);
        if key {
            b = b.header("x-api-key", TEST_API_KEY);
        }
        let (status, body) = h2_send(gw.addr, b.body(()).unwrap(), &[], true).await;
        if status != Some(status_want) || !body.is_empty() {
            failures.push(format!(
                "{id}: HEAD {path}: {status:?} body {} bytes",
                body.len()
            ));
        }
    }
    let req = h2_req(
        "HEAD",
        &url(&rec_path),
        "h11",
        &[
            ("x-gerbang-purpose", "pelayanan-kesehatan"),
            ("range", "bytes=8-23"),
        ],
    );
    let (status, body) = h2_send(gw.addr, req, &[], true).await;
    if status != Some(200) || !body.is_empty() {
        failures.push(format!(
            "h11: filtered HEAD over HTTP/2: {status:?} {body:?}"
        ));
    }

    // Cookies are joined; :authority wins; user information is refused.
    let req = h2_req(
        "GET",
        &url("/uji/echo/x"),
        "h12",
        &[("cookie", "a=1"), ("cookie", "b=2")],
    );
    let (status, _) = h2_send(gw.addr, req, &[], true).await;
    let seen = rec.get("h12");
    let ok = seen.len() == 1
        && seen[0].all("cookie") == ["a=1; b=2"]
        && seen[0].header("x-forwarded-host") == Some(gw.addr.to_string().as_str());
    if status != Some(200) || !ok {
        failures.push(format!(
            "h12: cookies and forwarded host: {status:?} {seen:?}"
        ));
    }
    let userinfo = format!("http://user:pw@{}/uji/echo/x", gw.addr);
    for (id, uri, host) in [
        ("h13", userinfo.as_str(), None),
        ("h14", &*url("/uji/echo/x"), Some("evil.example")),
    ] {
        let mut hs = Vec::new();
        if let Some(h) = host {
            hs.push(("host", h));
        }
        let (status, body) = h2_send(gw.addr, h2_req("GET", uri, id, &hs), &[], true).await;
        let text = String::from_utf8_lossy(&body);
        if status != Some(400) || !text.contains("invalid_host") || !rec.get(id).is_empty() {
            failures.push(format!("{id}: {uri} host {host:?}: {status:?} {text}"));
        }
    }
    // Two purposes over HTTP/2 are as ambiguous as over HTTP/1.1.
    let req = h2_req(
        "GET",
        &url(&rec_path),
        "h15",
        &[
            ("x-gerbang-purpose", "pelayanan-kesehatan"),
            ("x-gerbang-purpose", "uji"),
        ],
    );
    let (status, body) = h2_send(gw.addr, req, &[], true).await;
    if status != Some(400) || !String::from_utf8_lossy(&body).contains("purpose_ambiguous") {
        failures.push(format!("h15: two purposes: {status:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Forged and misbound tokens of external issuers: each is refused before the provider sees
/// anything, while the properly bound ones pass (so the refusals are not a broken setup).
#[tokio::test]
async fn external_tokens_speak_only_for_applications_bound_to_their_issuer() {
    use crate::external_issuer::{claims_of, header, two_issuer_registry, two_issuers, ISS, ISS_B};
    let (provider, rec) = recording_provider().await;
    let (ka, kb) = (P256Signer::new("a-1", 1), P256Signer::new("b-1", 2));
    let (idp_a, idp_b) = (MockIdp::start(&[&ka]).await, MockIdp::start(&[&kb]).await);
    let uji = format!(
        "[agency]\nid = \"uji\"\nname = \"Uji\"\n\n[[service]]\nid = \"echo\"\nname = \"Echo\"\n\n\
         [[service.instance]]\nname = \"e1\"\nurl = \"http://{provider}\"\n"
    );
    let agreements =
        "[[agreement]]\nid = \"open-uji-echo\"\ntitle = \"t\"\nlegal_basis = \"test\"\n\
        service = \"uji/echo\"\nconsumers = [\"*\"]\nmax_classification = \"terbatas\"\n";
    let gw = TestGateway::start_with_agreements(
        &[&uji, &two_issuer_registry("\"portal-client\"")],
        Some(agreements),
        "",
        &two_issuers(&idp_a, &idp_b),
    )
    .await;
    let t = now();
    let a = |c: serde_json::Value| ka.sign(&header("a-1"), &c);
    let b = |c: serde_json::Value| kb.sign(&header("b-1"), &c);
    let with = |mut c: serde_json::Value, k: &str, v: serde_json::Value| {
        c[k] = v;
        c
    };
    let without = |mut c: serde_json::Value, k: &str| {
        if let Some(m) = c.as_object_mut() {
            m.remove(k);
        }
        c
    };
    let hs = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"HS256","typ":"JWT","kid":"a-1"}"#),
        b64url(claims_of(ISS, "portal-client", "hs").to_string().as_bytes()),
        b64url(b"forged")
    );
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            claims_of(ISS, "portal-client", "none")
                .to_string()
                .as_bytes()
        ),
    );
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "A as its own portal-client",
            a(claims_of(ISS, "portal-client", "1")),
            200,
        ),
        (
            "B as its own kiosk-client",
            b(claims_of(ISS_B, "kiosk-client", "2")),
            200,
        ),
        (
            "B by the opted-in registry id",
            b(claims_of(ISS_B, "diskominfo/kiosk", "3")),
            200,
        ),
        (
            "B as A's portal-client",
            b(claims_of(ISS_B, "portal-client", "4")),
            401,
        ),
        (
            "B as A's diskominfo/portal",
            b(claims_of(ISS_B, "diskominfo/portal", "5")),
            401,
        ),
        (
            "A as B's kiosk-client",
            a(claims_of(ISS, "kiosk-client", "6")),
            401,
        ),
        (
            "A as B's diskominfo/kiosk",
            a(claims_of(ISS, "diskominfo/kiosk", "7")),
            401,
        ),
        (
            "A by a registry id without opt-in",
            a(claims_of(ISS, "diskominfo/portal", "8")),
            401,
        ),
        (
            "A's key under B's iss",
            ka.sign(&header("a-1"), &claims_of(ISS_B, "kiosk-client", "9")),
            401,
        ),
        (
            "B's key under A's iss",
            kb.sign(&header("b-1"), &claims_of(ISS, "portal-client", "10")),
            401,
        ),
        (
            "A with another audience",
            a(with(
                claims_of(ISS, "portal-client", "11"),
                "aud",
                "other".into(),
            )),
            401,
        ),
        (
            "A without an audience",
            a(without(claims_of(ISS, "portal-client", "12"), "aud")),
            401,
        ),
        (
            "A expired",
            a(with(
                claims_of(ISS, "portal-client", "13"),
                "exp",
                (t - 600).into(),
            )),
            401,
        ),
        (
            "A not yet valid",
            a(with(
                claims_of(ISS, "portal-client", "14"),
                "nbf",
                (t + 600).into(),
            )),
            401,
        ),
        (
            "A without a client claim",
            a(without(claims_of(ISS, "portal-client", "15"), "azp")),
            401,
        ),
        (
            "A with an unknown kid",
            ka.sign(&header("a-9"), &claims_of(ISS, "portal-client", "16")),
            401,
        ),
        (
            "an unknown issuer",
            a(claims_of("https://evil.example/", "portal-client", "17")),
            401,
        ),
        ("HS256 under A's kid", hs, 401),
        ("alg none", none, 401),
    ];
    let mut failures = Vec::new();
    for (k, (what, token, want)) in cases.iter().enumerate() {
        let id = format!("x{k}");
        let r = raw_request_as_is(
            gw.addr,
            format!(
                "GET /uji/echo/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let reached = !rec.get(&id).is_empty();
        let ok = r.status == *want
            && reached == (*want == 200)
            && (*want == 200 || r.error_code() == "invalid_token");
        if !ok {
            failures.push(format!("{what}: {} reached={reached}", r.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
