//! A mock OpenID Connect provider for the console's sign-in tests (the e2e tests over HTTP and
//! the real-browser tests of crates/gerbang include this same file).
//!
//! `/authorize` remembers the PKCE challenge, nonce, client and redirect URI and redirects to
//! the redirect URI (or [`MockOidc::redirect_to`], where the console really listens when its
//! port was not known when its configuration was written) with a one-time code. `/token`
//! exchanges that code only with the matching verifier, client and redirect URI and answers an
//! ID token signed ES256 (aws-lc-rs, independent of the gateway's jsonwebtoken code). `/jwks`
//! publishes the key. Self-contained: tokio, serde_json, base64, aws-lc-rs and reqwest's `Url`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// (challenge, nonce, client_id, redirect_uri) of a code not yet exchanged.
type Grants = HashMap<String, (String, String, String, String)>;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `a=b&c=d` (a query or a form), percent- and plus-decoded.
pub fn query_pairs(text: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{text}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

struct State {
    issuer: String,
    key: EcdsaKeyPair,
    claims: Mutex<serde_json::Value>,
    forced_nonce: Mutex<Option<String>>,
    redirect_to: Mutex<Option<String>>,
    token_requests: Mutex<Vec<String>>,
    grants: Mutex<Grants>,
    counter: std::sync::atomic::AtomicUsize,
}

/// The mock provider; it stops when dropped.
pub struct MockOidc {
    pub issuer: String,
    state: Arc<State>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl MockOidc {
    /// Starts on 127.0.0.1; ID tokens carry `claims` (besides iss, aud, sub, exp, iat, nonce).
    pub async fn start(claims: serde_json::Value) -> MockOidc {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let state = Arc::new(State {
            issuer: issuer.clone(),
            key,
            claims: Mutex::new(claims),
            forced_nonce: Mutex::new(None),
            redirect_to: Mutex::new(None),
            token_requests: Mutex::new(Vec::new()),
            grants: Mutex::new(Grants::new()),
            counter: std::sync::atomic::AtomicUsize::new(0),
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    _ = &mut rx => return,
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => return },
                };
                tokio::spawn(serve(s, Arc::clone(&st)));
            }
        });
        MockOidc {
            issuer,
            state,
            _stop: tx,
        }
    }

    /// The claims of the next ID tokens.
    pub fn set_claims(&self, claims: serde_json::Value) {
        *self.state.claims.lock().unwrap() = claims;
    }

    /// Sign ID tokens with this nonce instead of the sign-in's (`None`: the sign-in's).
    pub fn force_nonce(&self, nonce: Option<&str>) {
        *self.state.forced_nonce.lock().unwrap() = nonce.map(str::to_owned);
    }

    /// Redirect browsers here instead of the redirect URI they name.
    pub fn redirect_to(&self, url: &str) {
        *self.state.redirect_to.lock().unwrap() = Some(url.to_owned());
    }

    /// The token requests' bodies, in order.
    pub fn token_requests(&self) -> Vec<String> {
        self.state.token_requests.lock().unwrap().clone()
    }

    /// The `[[auth.external]]` entry with its `console` table for this provider.
    pub fn config(&self, redirect_uri: &str, roles: &str) -> String {
        format!(
            "[[auth.external]]\nissuer = \"{iss}\"\naudiences = [\"gerbang\"]\nalgorithms = [\"ES256\"]\n\
             jwks_url = \"{iss}/jwks\"\n\n[auth.external.console]\nlabel = \"SSO Pemda\"\n\
             client_id = \"gerbang-console\"\nauthorization_endpoint = \"{iss}/authorize\"\n\
             token_endpoint = \"{iss}/token\"\nredirect_uri = \"{redirect_uri}\"\nroles = {roles}\n",
            iss = self.issuer
        )
    }
}

fn jwk(st: &State) -> serde_json::Value {
    let point = st.key.public_key().as_ref();
    serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": "oidc-1", "use": "sig", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    })
}

fn id_token(st: &State, claims: &serde_json::Value) -> String {
    let header = serde_json::json!({ "alg": "ES256", "kid": "oidc-1", "typ": "JWT" });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sig = st.key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig.as_ref()))
}

async fn serve(mut s: TcpStream, st: Arc<State>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (status, extra, body) = match path {
        "/jwks" => (
            200,
            String::new(),
            serde_json::json!({ "keys": [jwk(&st)] }).to_string(),
        ),
        "/authorize" => {
            let q = query_pairs(query);
            let get = |k: &str| q.get(k).cloned().unwrap_or_default();
            let n = st.counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let code = format!("code-{n}");
            st.grants.lock().unwrap().insert(
                code.clone(),
                (
                    get("code_challenge"),
                    get("nonce"),
                    get("client_id"),
                    get("redirect_uri"),
                ),
            );
            let to = st
                .redirect_to
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| get("redirect_uri"));
            let location = format!("{to}?code={code}&state={}", get("state"));
            (302, format!("Location: {location}\r\n"), String::new())
        }
        "/token" => {
            st.token_requests.lock().unwrap().push(body.clone());
            let f = query_pairs(&body);
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            let grant = st.grants.lock().unwrap().remove(&get("code"));
            let challenge = b64(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                get("code_verifier").as_bytes(),
            )
            .as_ref());
            match grant {
                Some((want, nonce, client, redirect))
                    if get("grant_type") == "authorization_code"
                        && want == challenge
                        && client == get("client_id")
                        && redirect == get("redirect_uri") =>
                {
                    let mut c = st.claims.lock().unwrap().clone();
                    let nonce = st.forced_nonce.lock().unwrap().clone().unwrap_or(nonce);
                    c["iss"] = st.issuer.clone().into();
                    c["aud"] = client.into();
                    c["exp"] = (secs() + 300).into();
                    c["iat"] = secs().into();
                    c["nonce"] = nonce.into();
                    if c.get("sub").is_none() {
                        c["sub"] = "user-1".into();
                    }
                    let answer = serde_json::json!({
                        "access_token": "x", "token_type": "Bearer", "id_token": id_token(&st, &c),
                    });
                    (200, String::new(), answer.to_string())
                }
                _ => (
                    400,
                    String::new(),
                    r#"{"error":"invalid_grant"}"#.to_owned(),
                ),
            }
        }
        _ => (404, String::new(), "{}".to_owned()),
    };
    let res = format!(
        "HTTP/1.1 {status} X\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(res.as_bytes()).await;
    let _ = s.shutdown().await;
}
