//! Console sign-in through an `[[auth.external]]` issuer: OpenID Connect authorization code
//! flow with PKCE (S256), `state` and `nonce`.
//!
//! `GET /console/sso/<n>/mulai` makes a random state, nonce and code verifier, keeps them in
//! the browser in the short-lived cookie `gerbang_sso` (HttpOnly, `SameSite=Lax` so that the
//! issuer's redirect back carries it, path `/console/sso`, ten minutes) and sends the browser
//! to the issuer. `GET /console/sso/kembali` checks `state` against the cookie, exchanges the
//! code at the token endpoint with the verifier (and the client secret, for a confidential
//! client), verifies the ID token (signature with the issuer's keys, `iss`, `aud` = the client,
//! `exp`, `nonce`) and maps the configured claim to a role; nobody gets a role that the mapping
//! does not give. Keeping the pending sign-in in the browser rather than on the replica makes
//! the return work on any replica behind a load balancer.
//!
//! The session cookie is `SameSite=Strict`, and a browser does not send such a cookie on a
//! navigation that a cross-site redirect chain started; so the return answers with a page that
//! moves on to the console itself (a same-site navigation), not with a redirect.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use gerbang_config::{AdminRole, ConsoleSignIn};
use gerbang_proxy::response_body::{self, ResponseBody};

use super::{session, Console, ConsoleError, Ctx};

/// The pending sign-in's cookie.
pub const PENDING_COOKIE: &str = "gerbang_sso";
/// How long a pending sign-in lasts (seconds).
const PENDING_SECONDS: u32 = 600;
/// Largest token endpoint answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// One issuer admins may sign in through.
pub struct SsoProvider {
    /// The issuer with its keys (the same the data plane verifies its tokens with).
    pub external: Arc<gerbang_auth::authn::External>,
    pub sign_in: ConsoleSignIn,
    /// The client for the token endpoint (the gateway's outbound TLS settings, no redirects).
    pub client: reqwest::Client,
}

/// Why a sign-in through an issuer failed (logged; the person sees a short reason).
#[derive(Debug, thiserror::Error)]
pub(super) enum SsoError {
    #[error("the sign-in expired or was started in another browser (state does not match)")]
    State,
    #[error("the issuer refused: {0}")]
    Issuer(String),
    #[error("the token endpoint: {0}")]
    TokenEndpoint(String),
    #[error("the ID token: {0}")]
    IdToken(String),
    #[error("no role: the `{0}` claim holds no value that the configuration maps to a role")]
    NoRole(String),
}

/// A sign-in between the start and the return.
#[derive(Debug, PartialEq)]
pub(super) struct Pending {
    provider: usize,
    state: String,
    nonce: String,
    verifier: String,
}

impl Pending {
    fn new(provider: usize) -> Result<Self, session::SessionError> {
        Ok(Self {
            provider,
            state: session::random_hex()?,
            nonce: session::random_hex()?,
            // 64 hex digits: within RFC 7636's 43..128 characters of the unreserved set.
            verifier: session::random_hex()?,
        })
    }

    fn cookie_value(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.provider, self.state, self.nonce, self.verifier
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut it = text.split('.');
        let p = Self {
            provider: it.next()?.parse().ok()?,
            state: it.next()?.to_owned(),
            nonce: it.next()?.to_owned(),
            verifier: it.next()?.to_owned(),
        };
        it.next().is_none().then_some(p)
    }
}

/// The PKCE S256 challenge of `verifier`.
pub(super) fn challenge(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// Where the browser goes to sign in at the issuer.
fn authorization_url(s: &ConsoleSignIn, p: &Pending) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &s.client_id)
        .append_pair("redirect_uri", &s.redirect_uri)
        .append_pair("scope", &s.scopes.join(" "))
        .append_pair("state", &p.state)
        .append_pair("nonce", &p.nonce)
        .append_pair("code_challenge", &challenge(&p.verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let sep = if s.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{query}", s.authorization_endpoint)
}

/// The claim at `path` (`groups`, or dotted: `realm_access.roles`); a literal key with dots
/// wins over the path.
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

/// The most powerful role that the claim's values give (a string or a list of strings).
pub(super) fn role_of(claims: &Value, s: &ConsoleSignIn) -> Option<AdminRole> {
    let held: Vec<&str> = match claim_at(claims, &s.role_claim)? {
        Value::String(one) => vec![one.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    // `roles` is ordered most powerful first.
    s.roles
        .iter()
        .find(|(_, values)| values.iter().any(|v| held.contains(&v.as_str())))
        .map(|(r, _)| *r)
}

/// The person's name in sessions and audit records: `sso:` and the name claim (or `sub`).
pub(super) fn name_of(claims: &Value, s: &ConsoleSignIn) -> String {
    let name = claim_at(claims, &s.name_claim)
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| claims.get("sub").and_then(Value::as_str))
        .unwrap_or("?");
    // Printable and short: it lands in logs and the audit log.
    let clean: String = name.chars().filter(|c| !c.is_control()).take(128).collect();
    format!("sso:{clean}")
}

/// What a session signed in through issuer `iss` keeps as its "digest".
pub(super) fn session_marker(iss: &str) -> String {
    format!("sso:{iss}")
}

impl Console {
    /// The issuers offered on the sign-in page: (index, label).
    pub(super) fn sso_choices(&self) -> Vec<Value> {
        self.settings
            .sso
            .iter()
            .enumerate()
            .map(|(i, p)| json!({ "index": i, "label": p.sign_in.label }))
            .collect()
    }

    /// Whether a session signed in through an issuer (`marker`) may go on: its issuer is
    /// still offered.
    pub(super) fn sso_session_valid(&self, marker: &str) -> bool {
        self.settings
            .sso
            .iter()
            .any(|p| session_marker(&p.external.issuer.issuer) == marker)
    }

    /// `GET /console/sso/<n>/mulai`.
    pub(super) fn sso_start(
        &self,
        ctx: &Ctx,
        index: &str,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let Some((i, p)) = index
            .parse::<usize>()
            .ok()
            .and_then(|i| self.settings.sso.get(i).map(|p| (i, p)))
        else {
            return self.error_page(ctx, StatusCode::NOT_FOUND, "not_found");
        };
        let pending = Pending::new(i)?;
        let to = authorization_url(&p.sign_in, &pending);
        let secure = if self.settings.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{PENDING_COOKIE}={}; Path=/console/sso; Max-Age={PENDING_SECONDS}; HttpOnly; SameSite=Lax{secure}",
            pending.cookie_value()
        );
        let mut r = Response::new(response_body::full(Bytes::new()));
        *r.status_mut() = StatusCode::SEE_OTHER;
        if let Ok(v) = HeaderValue::from_str(&to) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        Ok(r)
    }

    /// `GET /console/sso/kembali`: the issuer's answer.
    pub(super) async fn sso_return(
        &self,
        ctx: &Ctx,
        query: &HashMap<String, String>,
        cookies: &HashMap<String, String>,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let pending = cookies.get(PENDING_COOKIE).and_then(|c| Pending::parse(c));
        let outcome = match pending {
            None => Err(SsoError::State),
            Some(p) => self.sso_finish(&p, query).await.map(|ok| (p.provider, ok)),
        };
        let clear = HeaderValue::from_static(
            "gerbang_sso=; Path=/console/sso; Max-Age=0; HttpOnly; SameSite=Lax",
        );
        let mut r = match outcome {
            Ok((provider, (name, role))) => {
                let marker = self
                    .settings
                    .sso
                    .get(provider)
                    .map(|p| session_marker(&p.external.issuer.issuer))
                    .unwrap_or_default();
                let id = self.sessions.create_async(&name, role, &marker).await?;
                tracing::info!(admin = %name, role = %role, client = %ctx.client, "console sign-in through an external issuer");
                let landing = super::landing(role);
                let mut r = self.render(
                    ctx,
                    "sso_lanjut.html",
                    "sign_in_title",
                    "",
                    json!({ "landing": landing }),
                )?;
                if let Ok(v) = HeaderValue::from_str(&self.session_cookie(&id)) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
                r
            }
            Err(e) => {
                self.sessions.failed(ctx.client).await;
                tracing::warn!(client = %ctx.client, error = %e, "console sign-in through an external issuer refused");
                let key = match e {
                    SsoError::NoRole(_) => "sso_no_role",
                    SsoError::State => "sso_expired",
                    _ => "sso_failed",
                };
                let words = ctx.lang.words();
                let (status, _) = match e {
                    SsoError::NoRole(_) => (StatusCode::FORBIDDEN, ()),
                    SsoError::TokenEndpoint(_) => (StatusCode::BAD_GATEWAY, ()),
                    _ => (StatusCode::UNAUTHORIZED, ()),
                };
                self.sign_in_form(ctx, status, words.get(key).copied())?
            }
        };
        r.headers_mut().append(header::SET_COOKIE, clear);
        Ok(r)
    }

    async fn sso_finish(
        &self,
        p: &Pending,
        query: &HashMap<String, String>,
    ) -> Result<(String, AdminRole), SsoError> {
        let state = query.get("state").map(String::as_str).unwrap_or("");
        if state.is_empty() || !session::same_secret(state, &p.state) {
            return Err(SsoError::State);
        }
        let provider = self.settings.sso.get(p.provider).ok_or(SsoError::State)?;
        if let Some(e) = query.get("error") {
            let detail = query.get("error_description").map_or("", String::as_str);
            return Err(SsoError::Issuer(format!("{e} {detail}").trim().to_owned()));
        }
        let code = query
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| SsoError::Issuer("no code".into()))?;
        let s = &provider.sign_in;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", s.redirect_uri.as_str()),
            ("client_id", s.client_id.as_str()),
            ("code_verifier", p.verifier.as_str()),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = provider
            .client
            .post(&s.token_endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body);
        if let Some(secret) = &s.client_secret {
            // client_secret_basic: both parts form-encoded (RFC 6749 2.3.1).
            let enc =
                |t: &str| url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(&s.client_id), Some(enc(secret)));
        }
        let res = req
            .send()
            .await
            .map_err(|e| SsoError::TokenEndpoint(e.to_string()))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| SsoError::TokenEndpoint(e.to_string()))?;
        if bytes.len() > MAX_TOKEN_ANSWER {
            return Err(SsoError::TokenEndpoint("answer too large".into()));
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|_| SsoError::TokenEndpoint(format!("HTTP {status}, not JSON")))?;
        if !status.is_success() {
            let e = answer["error"].as_str().unwrap_or("?");
            return Err(SsoError::TokenEndpoint(format!("HTTP {status}: {e}")));
        }
        let id_token = answer["id_token"]
            .as_str()
            .ok_or_else(|| SsoError::TokenEndpoint("no id_token in the answer".into()))?;
        let claims = provider
            .external
            .verify_id_token(id_token, &s.client_id, &p.nonce)
            .await
            .map_err(|e| SsoError::IdToken(e.to_string()))?;
        let role = role_of(&claims, s).ok_or_else(|| SsoError::NoRole(s.role_claim.clone()))?;
        Ok((name_of(&claims, s), role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ConsoleSignIn {
        ConsoleSignIn {
            label: "SSO".into(),
            client_id: "gerbang-console".into(),
            client_secret: None,
            authorization_endpoint: "https://sso.test/auth?kc_idp_hint=x".into(),
            token_endpoint: "https://sso.test/token".into(),
            redirect_uri: "https://gw.test/console/sso/kembali".into(),
            scopes: vec!["openid".into(), "profile".into()],
            role_claim: "realm_access.roles".into(),
            roles: vec![
                (AdminRole::Admin, vec!["gerbang-admin".into()]),
                (AdminRole::Auditor, vec!["inspektorat".into()]),
            ],
            name_claim: "preferred_username".into(),
        }
    }

    #[test]
    fn the_s256_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_authorization_url_carries_state_nonce_and_challenge() {
        let p = Pending::new(0).unwrap_or_else(|e| panic!("{e}"));
        let u = authorization_url(&settings(), &p);
        assert!(
            u.starts_with("https://sso.test/auth?kc_idp_hint=x&response_type=code&"),
            "{u}"
        );
        for part in [
            format!("state={}", p.state),
            format!("nonce={}", p.nonce),
            format!("code_challenge={}", challenge(&p.verifier)),
            "code_challenge_method=S256".into(),
            "scope=openid+profile".into(),
            "redirect_uri=https%3A%2F%2Fgw.test%2Fconsole%2Fsso%2Fkembali".into(),
        ] {
            assert!(u.contains(&part), "{part} in {u}");
        }
        assert!(
            !u.contains(&p.verifier),
            "the verifier never leaves the browser's cookie"
        );
        assert_eq!(Pending::parse(&p.cookie_value()), Some(p));
        assert_eq!(Pending::parse("0.a.b"), None);
        assert_eq!(Pending::parse("x.a.b.c"), None);
    }

    #[test]
    fn the_most_powerful_mapped_role_wins_and_unmapped_values_give_none() {
        let s = settings();
        let c = |roles: Value| json!({ "sub": "u", "realm_access": { "roles": roles } });
        assert_eq!(
            role_of(&c(json!(["inspektorat", "gerbang-admin"])), &s),
            Some(AdminRole::Admin)
        );
        assert_eq!(
            role_of(&c(json!(["inspektorat"])), &s),
            Some(AdminRole::Auditor)
        );
        assert_eq!(
            role_of(&c(json!("inspektorat")), &s),
            Some(AdminRole::Auditor)
        );
        assert_eq!(role_of(&c(json!(["pegawai"])), &s), None);
        assert_eq!(role_of(&c(json!(7)), &s), None);
        assert_eq!(role_of(&json!({ "sub": "u" }), &s), None);
        assert_eq!(
            name_of(&json!({ "sub": "u", "preferred_username": "budi" }), &s),
            "sso:budi"
        );
        assert_eq!(name_of(&json!({ "sub": "u-1" }), &s), "sso:u-1");
    }
}
