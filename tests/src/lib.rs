//! Test support for Gerbang's end-to-end tests: a real gateway on `127.0.0.1:0` over a
//! configuration written to a temporary directory, real upstream servers (the demo backends and
//! misbehaving ones), and a raw HTTP/1.1 client that sends bytes exactly as given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

pub mod mock_oidc;
pub use mock_oidc::{query_pairs, MockOidc};

use gerbang::demo::{Backend, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The API key of the application `test/client` that every [`TestGateway`] registers; the raw
/// request helpers send it unless a request carries its own credentials.
pub const TEST_API_KEY: &str =
    "gk_7e57000000000000000000000000000000000000000000000000000000000001";

/// The registry file of the test caller `test/client` (API key [`TEST_API_KEY`]).
pub fn test_client_registry() -> String {
    format!(
        "[agency]\nid = \"test\"\nname = \"Test callers\"\n\n[[application]]\nid = \"client\"\nname = \"Test client\"\nauth_methods = [\"api_key\"]\napi_keys = [{{ digest = \"{}\" }}]\n",
        gerbang_auth::apikey::digest_of(TEST_API_KEY)
    )
}

/// One agreement per service in `registry` (agency files as TOML) for every application: every
/// endpoint, every method, any classification.
pub fn test_client_agreements(registry: &[&str]) -> String {
    let mut out = String::new();
    for text in registry {
        let v: toml::Value = toml::from_str(text).unwrap();
        let agency = v["agency"]["id"].as_str().unwrap();
        for s in v
            .get("service")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
        {
            let id = s["id"].as_str().unwrap();
            out.push_str(&format!(
                "[[agreement]]\nid = \"test-{agency}-{id}\"\ntitle = \"t\"\nlegal_basis = \"test\"\n\
                 service = \"{agency}/{id}\"\nconsumers = [\"*\"]\n\
                 max_classification = \"sangat-rahasia\"\n\n"
            ));
        }
    }
    out
}

/// A gateway running in the test process.
pub struct TestGateway {
    pub running: Option<gerbang::Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway whose registry holds `registry` (TOML of one agency file each) and whose
    /// `gerbang.toml` gets `extra` appended (sections other than `[server]`/`[admin]` listen).
    pub async fn start(registry: &[&str], server_extra: &str, extra: &str) -> TestGateway {
        TestGateway::start_with_agreements(registry, None, server_extra, extra).await
    }

    /// As [`TestGateway::start`], with `agreements` as the only agreement file (`None`: one
    /// agreement per service lets every application call everything).
    pub async fn start_with_agreements(
        registry: &[&str],
        agreements: Option<&str>,
        server_extra: &str,
        extra: &str,
    ) -> TestGateway {
        let agreements_given = agreements.is_some();
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = agreements {
            std::fs::create_dir_all(dir.path().join("agreements")).unwrap();
            std::fs::write(dir.path().join("agreements/given.toml"), text).unwrap();
        }
        let main = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n"
        );
        std::fs::write(dir.path().join("gerbang.toml"), main).unwrap();
        std::fs::create_dir_all(dir.path().join("registry")).unwrap();
        for (i, text) in registry.iter().enumerate() {
            std::fs::write(dir.path().join(format!("registry/a{i}.toml")), text).unwrap();
        }
        // The caller the raw helpers authenticate as, unless a test registers agency `test`.
        if !registry.iter().any(|t| t.contains("id = \"test\"")) {
            std::fs::write(
                dir.path().join("registry/zz-test-client.toml"),
                test_client_registry(),
            )
            .unwrap();
        }
        gerbang::config::create_signing_key(&dir.path().join("data/keys")).unwrap();
        gerbang::config::ensure_audit_keys(&dir.path().join("data/keys")).unwrap();
        // Every application may call every service (tests of agreements bring their own).
        std::fs::create_dir_all(dir.path().join("agreements")).unwrap();
        if !agreements_given {
            std::fs::write(
                dir.path().join("agreements/zz-test-client.toml"),
                test_client_agreements(registry),
            )
            .unwrap();
        }
        let cfg = gerbang::load(
            &dir.path().join("gerbang.toml"),
            &gerbang::Overrides::default(),
        )
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let running = gerbang::start(cfg).await.unwrap();
        TestGateway {
            addr: running.data_addr,
            admin: running.admin_addr,
            running: Some(running),
            dir,
        }
    }

    /// A gateway with one agency `a` offering one service `s` on `urls`, with `service_extra`
    /// TOML lines for the service (timeouts, limits).
    pub async fn single(urls: &[String], service_extra: &str) -> TestGateway {
        TestGateway::start(&[&agency("a", "s", urls, service_extra)], "", "").await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins the graceful shutdown and returns its outcome.
    pub async fn shutdown(&mut self) -> gerbang_proxy::ShutdownOutcome {
        self.running.take().unwrap().shutdown().await
    }
}

/// TOML of an agency file with one service whose instances are `urls`.
pub fn agency(agency: &str, service: &str, urls: &[String], service_extra: &str) -> String {
    let mut s = format!(
        "[agency]\nid = \"{agency}\"\nname = \"{agency}\"\n\n[[service]]\nid = \"{service}\"\nname = \"{service}\"\n{service_extra}\n"
    );
    for (i, u) in urls.iter().enumerate() {
        s.push_str(&format!(
            "\n[[service.instance]]\nname = \"i{i}\"\nurl = \"{u}\"\n"
        ));
    }
    s
}

/// An upstream that stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    /// Connections accepted so far (counted by [`raw_upstream`] only).
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections a [`raw_upstream`] has accepted so far (always 0 for other upstreams): a
    /// test waits on this to know that a call has reached the upstream.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Starts a demo backend of `kind`, named `instance`, on `127.0.0.1:0`.
pub async fn backend(kind: Kind, instance: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let b = Backend::new(kind, instance);
    tokio::spawn(gerbang::demo::serve_backend(listener, b, async {
        let _ = rx.await;
    }));
    Upstream {
        addr,
        _stop: tx,
        accepted: Default::default(),
    }
}

/// Starts an echo backend behind TLS with `tls` (HTTP/2 and HTTP/1.1 offered).
pub async fn tls_backend(tls: std::sync::Arc<rustls::ServerConfig>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let settings = gerbang_proxy::ListenerSettings {
        tls: Some(tls),
        ..Default::default()
    };
    let b = std::sync::Arc::new(Backend::new(Kind::Echo, "tls-echo"));
    tokio::spawn(gerbang_proxy::serve(listener, b, settings, async {
        let _ = rx.await;
    }));
    Upstream {
        addr,
        _stop: tx,
        accepted: Default::default(),
    }
}

/// What a raw upstream does with each connection after reading the request head.
#[derive(Clone)]
pub enum RawBehaviour {
    /// Write these bytes, then close.
    Respond(Vec<u8>),
    /// Wait, then write these bytes, then close.
    RespondAfter(Duration, Vec<u8>),
    /// Never answer (keep the connection open).
    Hang,
    /// Close at once without a response.
    Close,
}

/// An upstream written byte by byte, for behaviour a real server would not show.
pub async fn raw_upstream(behaviour: RawBehaviour) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = oneshot::channel::<()>();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                _ = &mut rx => return,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => return },
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let b = behaviour.clone();
            tokio::spawn(async move {
                let _ = read_head(&mut s).await;
                match b {
                    RawBehaviour::Respond(bytes) => {
                        let _ = s.write_all(&bytes).await;
                    }
                    RawBehaviour::RespondAfter(d, bytes) => {
                        tokio::time::sleep(d).await;
                        let _ = s.write_all(&bytes).await;
                    }
                    RawBehaviour::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    RawBehaviour::Close => {}
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Upstream {
        addr,
        _stop: tx,
        accepted,
    }
}

async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// An address where connections are refused, for as long as the value lives: a socket bound
/// to it that never listens. A port bound and closed again is free for any other test's
/// server to take meanwhile, and the parallel suite once saw a call to such a "dead" instance
/// answered 404, which a refused connection cannot give; a held port cannot be taken.
pub struct RefusedAddr {
    pub addr: SocketAddr,
    _bound: tokio::net::TcpSocket,
}

impl std::fmt::Display for RefusedAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

pub async fn refused_addr() -> RefusedAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    RefusedAddr {
        addr,
        _bound: socket,
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The gateway's error code, asserting the one error shape.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "only `error` at the top: {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["request_id"].is_string(), "{v}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        e["code"].as_str().expect("code").to_owned()
    }
}

/// `request` with `X-API-Key: {TEST_API_KEY}` after its request line, unless its head already
/// carries `Authorization` or `X-API-Key`. Everything else stays byte for byte.
pub fn authed(request: &[u8]) -> Vec<u8> {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    if head.contains("\r\nauthorization:") || head.contains("\r\nx-api-key:") {
        return request.to_vec();
    }
    let Some(line_end) = request.windows(2).position(|w| w == b"\r\n") else {
        return request.to_vec();
    };
    let mut out = Vec::with_capacity(request.len() + 90);
    out.extend_from_slice(&request[..line_end + 2]);
    out.extend_from_slice(format!("X-API-Key: {TEST_API_KEY}\r\n").as_bytes());
    out.extend_from_slice(&request[line_end + 2..]);
    out
}

/// Sends `request` on a new connection, authenticated as `test/client` (see [`authed`]), and
/// reads one response (closing the connection is requested by the caller's
/// `Connection: close` or by the server).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    raw_request_as_is(addr, &authed(request)).await
}

/// Sends `request` exactly as given (no credentials added) and reads one response.
pub async fn raw_request_as_is(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

/// Sends a `HEAD` request (authenticated, see [`authed`]) and reads the response head only (a
/// HEAD response carries `Content-Length` but no body).
pub async fn raw_head_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&authed(request)).await.unwrap();
    read_response_inner(&mut s, true).await
}

/// Reads one HTTP/1.1 response with a `Content-Length` or chunked body, or up to EOF.
pub async fn read_response(s: &mut TcpStream) -> RawResponse {
    read_response_inner(s, false).await
}

async fn read_response_inner(s: &mut TcpStream, head_only: bool) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    if head_only {
        return RawResponse {
            status,
            headers,
            body,
        };
    }
    let cl = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if let Some(cl) = cl {
        while body.len() < cl {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "body cut short");
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(cl);
    } else if chunked {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    } else if status != 204 && status != 304 {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(p) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..p]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + size]);
        b = &b[p + 2 + size + 2..];
    }
}

/// `GET {path}` with `Connection: close` and any extra header lines.
pub fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n{extra_headers}Connection: close\r\n\r\n")
        .into_bytes()
}

/// Waits until `cond` holds, checking every 20 ms for at most `patience`.
pub async fn eventually(patience: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// As [`eventually`], for a condition that must be awaited (a request, say).
pub async fn eventually_async<F, Fut>(patience: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`: (cert PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// A test CA and a client certificate it signed: (CA cert PEM, client cert PEM, client key PEM).
pub fn ca_and_client_cert(client_name: &str) -> (String, String, String) {
    let (ca, mut clients) = ca_with_clients(&[client_name]);
    let (cert, key, _) = clients.remove(0);
    (ca, cert, key)
}

/// Writes `text` to `dir/name` and returns the path as a string, for config files in tests.
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A reqwest client builder that authenticates as `test/client` (the `X-API-Key` header).
pub fn authed_client() -> reqwest::ClientBuilder {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "x-api-key",
        reqwest::header::HeaderValue::from_static(TEST_API_KEY),
    );
    reqwest::Client::builder().default_headers(h)
}

/// An ES256 signer written against the `p256` crate, independent of the `jsonwebtoken` and
/// `aws-lc-rs` code the gateway verifies with: tokens it mints test the gateway's verification,
/// not its agreement with itself.
pub struct P256Signer {
    key: p256::ecdsa::SigningKey,
    pub kid: String,
}

impl P256Signer {
    /// A key derived from `seed` (any non-zero byte gives a valid scalar).
    pub fn new(kid: &str, seed: u8) -> Self {
        let mut bytes = [seed; 32];
        bytes[0] = 0x11;
        Self {
            key: p256::ecdsa::SigningKey::from_slice(&bytes).unwrap(),
            kid: kid.to_owned(),
        }
    }

    /// The public key as a JWK (`kty: EC`, `crv: P-256`).
    pub fn jwk(&self) -> serde_json::Value {
        let point = self.key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": b64url(&bytes[1..33]), "y": b64url(&bytes[33..65]),
        })
    }

    /// A compact JWS of `header` (its `alg` as given) and `claims`, signed ES256.
    pub fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        self.sign_raw(header, claims.to_string().as_bytes())
    }

    /// As [`P256Signer::sign`] with a payload of raw bytes.
    pub fn sign_raw(&self, header: &serde_json::Value, payload: &[u8]) -> String {
        use p256::ecdsa::signature::Signer;
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(payload)
        );
        let sig: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig.to_bytes()))
    }
}

pub fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A mock external identity provider: serves whatever JWKS (or status) is set at `/jwks`, and
/// counts the fetches.
pub struct MockIdp {
    pub url: String,
    state: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl MockIdp {
    pub async fn start(keys: &[&P256Signer]) -> MockIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(std::sync::Mutex::new((200, String::new())));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, mut rx) = oneshot::channel::<()>();
        let (st, f) = (state.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    _ = &mut rx => return,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => return },
                };
                let (st, f) = (st.clone(), f.clone());
                tokio::spawn(async move {
                    let _ = read_head(&mut s).await;
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (status, body) = st.lock().unwrap().clone();
                    let res = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(res.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let idp = MockIdp {
            url: format!("http://{addr}/jwks"),
            state,
            fetches,
            _stop: tx,
        };
        idp.serve_keys(keys);
        idp
    }

    /// Serves a JWKS of `keys` from now on.
    pub fn serve_keys(&self, keys: &[&P256Signer]) {
        let set = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
        *self.state.lock().unwrap() = (200, set.to_string());
    }

    /// Answers every fetch with HTTP `status` (an outage).
    pub fn fail_with(&self, status: u16) {
        *self.state.lock().unwrap() = (status, "{}".into());
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A test CA and client certificates it signed for each of `names` (SAN and CN):
/// (CA cert PEM, [(cert PEM, key PEM, DER)]).
#[allow(clippy::type_complexity)]
pub fn ca_with_clients(names: &[&str]) -> (String, Vec<(String, String, Vec<u8>)>) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Gerbang test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let clients = names
        .iter()
        .map(|name| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![(*name).to_owned()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *name);
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        })
        .collect();
    (ca.pem(), clients)
}

/// Every log line the gateway code in this test process writes (gerbang crates, all levels),
/// captured once for the whole test binary; tests search it for secrets.
pub fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct W(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "gerbang=trace,gerbang_proxy=trace,gerbang_auth=trace",
            ))
            .with_writer(move || W(buf))
            .with_ansi(false)
            .try_init();
        buf
    })
}
