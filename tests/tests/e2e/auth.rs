//! Authentication end to end: the built-in issuer's token endpoint and tokens, API keys, the
//! refusal of malformed and forged tokens, and the identity providers receive.

use std::collections::HashMap;

use base64::Engine;
use gerbang::demo::Kind;
use gerbang_e2e::*;
use serde_json::{json, Value};

const SIMPUS_SECRET: &str = "demo-secret-simpus";

/// Registry files: `a/s` (echo) and three callers: `dinkes/simpus` (client secret, scopes read
/// and write), `bapenda/esppt` (API keys: one valid, one expired) and `kc/portal` (external JWT).
fn registry(echo: &Upstream, valid_key: &str, expired_key: &str) -> Vec<String> {
    let hash = gerbang_auth::secret::hash_secret(SIMPUS_SECRET).unwrap();
    let digest = gerbang_auth::apikey::digest_of;
    vec![
        agency("a", "s", &[echo.url()], ""),
        format!(
            "[agency]\nid = \"dinkes\"\nname = \"Dinkes\"\n\n[[application]]\nid = \"simpus\"\n\
             name = \"SIMPUS\"\nauth_methods = [\"client_secret\"]\n\
             client_secret_hashes = [\"{hash}\"]\nscopes = [\"read\", \"write\"]\n"
        ),
        format!(
            "[agency]\nid = \"bapenda\"\nname = \"Bapenda\"\n\n[[application]]\nid = \"esppt\"\n\
             name = \"e-SPPT\"\nauth_methods = [\"api_key\"]\napi_keys = [\n\
             {{ digest = \"{}\" }},\n\
             {{ digest = \"{}\", expires = 2020-01-01T00:00:00+07:00 }},\n]\n",
            digest(valid_key),
            digest(expired_key)
        ),
    ]
}

struct Setup {
    gw: TestGateway,
    _echo: Upstream,
    valid_key: String,
    expired_key: String,
}

async fn setup() -> Setup {
    let echo = backend(Kind::Echo, "echo").await;
    let (valid_key, _) = gerbang_auth::apikey::generate().unwrap();
    let (expired_key, _) = gerbang_auth::apikey::generate().unwrap();
    let files = registry(&echo, &valid_key, &expired_key);
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let gw = TestGateway::start(&refs, "", "[auth]\ntoken_ttl = \"5m\"\nleeway = \"30s\"\n").await;
    Setup {
        gw,
        _echo: echo,
        valid_key,
        expired_key,
    }
}

fn form_post(path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: g\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

async fn get_token(addr: std::net::SocketAddr, body: &str, headers: &str) -> RawResponse {
    raw_request_as_is(addr, &form_post("/oauth/token", headers, body)).await
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn header_of(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

/// Verifies `token` the way a provider would: against the gateway's published JWKS.
async fn verify_with_jwks(
    gw: &TestGateway,
    token: &str,
    typ: &str,
    aud: &str,
) -> Result<Value, String> {
    let jwks = raw_request_as_is(gw.addr, &get("/.well-known/jwks.json", ""))
        .await
        .json();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    if header.typ.as_deref() != Some(typ) {
        return Err(format!("typ {:?}", header.typ));
    }
    let jwk = set
        .find(header.kid.as_deref().unwrap_or(""))
        .ok_or("kid not in the JWKS")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[&format!("http://{}", gw.addr)]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[tokio::test]
async fn issued_tokens_work_and_providers_see_the_verified_caller_and_a_verifiable_assertion() {
    let s = setup().await;
    let gw = &s.gw;

    // client_secret_basic with the client id form-encoded, as RFC 6749 §2.3.1 says.
    let r = get_token(
        gw.addr,
        "grant_type=client_credentials",
        &basic("dinkes%2Fsimpus", SIMPUS_SECRET),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 300);
    assert_eq!(v["scope"], "read write");
    let token = v["access_token"].as_str().unwrap().to_owned();

    let h = header_of(&token);
    assert_eq!(
        (h["alg"].as_str(), h["typ"].as_str()),
        (Some("ES256"), Some("at+jwt"))
    );
    let c = claims_of(&token);
    assert_eq!(c["iss"], format!("http://{}", gw.addr));
    assert_eq!(c["sub"], "dinkes/simpus");
    assert_eq!(c["aud"], "gerbang");
    assert_eq!(c["agency"], "dinkes");
    assert_eq!(c["scope"], "read write");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 16));
    // Anyone can check it against the published keys.
    verify_with_jwks(gw, &token, "at+jwt", "gerbang")
        .await
        .unwrap();

    // client_secret_post, a narrower scope.
    let r = get_token(
        gw.addr,
        &format!("grant_type=client_credentials&client_id=dinkes%2Fsimpus&client_secret={SIMPUS_SECRET}&scope=read"),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["scope"], "read");

    // A call with the token.
    let r = raw_request_as_is(gw.addr, &get("/a/s/x", &bearer(&token))).await;
    assert_eq!(r.status, 200);
    let seen = r.json()["headers"].clone();
    assert_eq!(seen["x-gerbang-consumer"], "dinkes/simpus");
    assert_eq!(seen["x-gerbang-consumer-agency"], "dinkes");
    assert_eq!(seen["x-gerbang-auth-method"], "client_secret");
    assert!(
        seen.get("authorization").is_none(),
        "the token is not passed on: {seen}"
    );
    // The provider can verify the assertion with the JWKS; it is for this service only.
    let assertion = seen["x-gerbang-assertion"].as_str().unwrap();
    let a = verify_with_jwks(gw, assertion, "gerbang-assertion+jwt", "a/s")
        .await
        .unwrap();
    assert_eq!(a["sub"], "dinkes/simpus");
    assert_eq!(a["agency"], "dinkes");
    assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 60);
    // Reused for the next call of the same caller to the same service (half its lifetime).
    let again = raw_request_as_is(gw.addr, &get("/a/s/y", &bearer(&token)))
        .await
        .json();
    assert_eq!(again["headers"]["x-gerbang-assertion"], assertion);
    assert!(
        verify_with_jwks(gw, assertion, "gerbang-assertion+jwt", "dukcapil/penduduk")
            .await
            .is_err(),
        "an assertion for one service is refused by another"
    );

    // The metadata document points at the endpoints.
    let m = raw_request_as_is(gw.addr, &get("/.well-known/oauth-authorization-server", ""))
        .await
        .json();
    assert_eq!(m["issuer"], format!("http://{}", gw.addr));
    assert_eq!(
        m["token_endpoint"],
        format!("http://{}/oauth/token", gw.addr)
    );
    assert_eq!(
        m["jwks_uri"],
        format!("http://{}/.well-known/jwks.json", gw.addr)
    );
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc_6749() {
    let s = setup().await;
    let addr = s.gw.addr;
    let grant = "grant_type=client_credentials";
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (form_post("/oauth/token", &basic("dinkes%2Fsimpus", "wrong-secret-123"), grant), 401, "invalid_client"),
        (form_post("/oauth/token", &basic("dinkes%2Fghost", SIMPUS_SECRET), grant), 401, "invalid_client"),
        // An application without client secrets cannot get tokens.
        (form_post("/oauth/token", &basic("bapenda%2Fesppt", SIMPUS_SECRET), grant), 401, "invalid_client"),
        (form_post("/oauth/token", "", grant), 401, "invalid_client"),
        (form_post("/oauth/token", &basic("dinkes%2Fsimpus", SIMPUS_SECRET), "grant_type=password"), 400, "unsupported_grant_type"),
        (form_post("/oauth/token", &basic("dinkes%2Fsimpus", SIMPUS_SECRET), ""), 400, "invalid_request"),
        (form_post("/oauth/token", &basic("dinkes%2Fsimpus", SIMPUS_SECRET), &format!("{grant}&scope=admin")), 400, "invalid_scope"),
        (
            form_post("/oauth/token", &basic("dinkes%2Fsimpus", SIMPUS_SECRET), &format!("{grant}&client_secret={SIMPUS_SECRET}")),
            400,
            "invalid_request",
        ),
        (
            format!(
                "POST /oauth/token HTTP/1.1\r\nHost: g\r\n{}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
                basic("dinkes%2Fsimpus", SIMPUS_SECRET)
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let r = raw_request_as_is(addr, &req).await;
        assert_eq!(
            r.status,
            status,
            "case {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["error"], code, "case {i}: {v}");
        assert!(v["error_description"].is_string(), "case {i}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "case {i}");
        if status == 401 {
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Basic realm="gerbang""#),
                "case {i}"
            );
        }
    }
    // Only POST.
    let r = raw_request_as_is(addr, &get("/oauth/token", "")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.error_code(), "method_not_allowed");
}

#[tokio::test]
async fn api_keys_are_accepted_refused_and_expire() {
    let _ = captured_logs();
    let s = setup().await;
    let addr = s.gw.addr;
    let key_header = |k: &str| format!("X-API-Key: {k}\r\n");

    let r = raw_request_as_is(addr, &get("/a/s/x", &key_header(&s.valid_key))).await;
    assert_eq!(r.status, 200);
    let seen = r.json()["headers"].clone();
    assert_eq!(seen["x-gerbang-consumer"], "bapenda/esppt");
    assert_eq!(seen["x-gerbang-auth-method"], "api_key");
    assert!(
        seen.get("x-api-key").is_none(),
        "the key is not passed on: {seen}"
    );

    let (unknown, _) = gerbang_auth::apikey::generate().unwrap();
    for (name, req, code) in [
        (
            "expired",
            get("/a/s/x", &key_header(&s.expired_key)),
            "invalid_api_key",
        ),
        (
            "unknown",
            get("/a/s/x", &key_header(&unknown)),
            "invalid_api_key",
        ),
        (
            "malformed",
            get("/a/s/x", &key_header("not-a-key")),
            "invalid_api_key",
        ),
        (
            "twice",
            get(
                "/a/s/x",
                &format!("{}{}", key_header(&s.valid_key), key_header(&s.valid_key)),
            ),
            "invalid_api_key",
        ),
        // Never from the query string, where logs and proxies keep it.
        (
            "query",
            get(&format!("/a/s/x?api_key={}", s.valid_key), ""),
            "missing_credentials",
        ),
    ] {
        let r = raw_request_as_is(addr, &req).await;
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.error_code(), code, "{name}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer realm=\"gerbang\""),
            "{name}"
        );
    }
    let reasons: HashMap<_, _> =
        s.gw.running
            .as_ref()
            .unwrap()
            .gateway
            .auth_failures()
            .into_iter()
            .collect();
    assert_eq!(reasons.get("api_key_expired"), Some(&1), "{reasons:?}");
    assert_eq!(reasons.get("api_key_unknown"), Some(&1), "{reasons:?}");
    assert_eq!(reasons.get("api_key_malformed"), Some(&1), "{reasons:?}");
    assert_eq!(reasons.get("api_key_repeated"), Some(&1), "{reasons:?}");
    assert_eq!(reasons.get("missing_credentials"), Some(&1), "{reasons:?}");

    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    for secret in [&s.valid_key, &s.expired_key, &unknown] {
        assert!(
            !logs.contains(secret.as_str()),
            "an API key reached the log"
        );
    }
}

/// Signs with the gateway's own signing key (read from its key directory), to forge tokens
/// that only the claims make invalid.
struct GatewayKey {
    kid: String,
    key: jsonwebtoken::EncodingKey,
}

impl GatewayKey {
    fn of(gw: &TestGateway) -> GatewayKey {
        let dir = gw.dir.path().join("data/keys");
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "pem"))
            .unwrap();
        let kid = entry.file_stem().unwrap().to_str().unwrap().to_owned();
        let pem = std::fs::read(&entry).unwrap();
        GatewayKey {
            kid,
            key: jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
        }
    }

    fn sign(&self, typ: Option<&str>, kid: Option<&str>, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.typ = typ.map(str::to_owned);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

#[tokio::test]
async fn malformed_forged_and_misused_tokens_are_all_refused_with_their_reason() {
    let _ = captured_logs();
    let s = setup().await;
    let gw = &s.gw;
    let iss = format!("http://{}", gw.addr);
    let gk = GatewayKey::of(gw);
    let kid = gk.kid.clone();
    let t = now();
    let good = json!({
        "iss": iss, "sub": "dinkes/simpus", "aud": "gerbang", "iat": t, "nbf": t, "exp": t + 300,
        "jti": "j-1", "agency": "dinkes", "scope": "read"
    });
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let valid = gk.sign(Some("at+jwt"), Some(&kid), &good);
    // Sanity: the forger's valid token is accepted, so each refusal below is about its defect.
    let r = raw_request_as_is(gw.addr, &get("/a/s/x", &bearer(&valid))).await;
    assert_eq!(r.status, 200);
    let assertion = r.json()["headers"]["x-gerbang-assertion"]
        .as_str()
        .unwrap()
        .to_owned();

    let foreign = P256Signer::new(&kid, 7);
    let es_header = |alg: &str| json!({"alg": alg, "typ": "at+jwt", "kid": kid});
    let jwks_text = raw_request_as_is(gw.addr, &get("/.well-known/jwks.json", ""))
        .await
        .body;
    let hs256_with_public_key = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &h,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(&jwks_text).unwrap(),
        )
        .unwrap()
    };
    let (vh, vp, vs) = {
        let mut p = valid.split('.');
        (
            p.next().unwrap().to_owned(),
            p.next().unwrap().to_owned(),
            p.next().unwrap().to_owned(),
        )
    };
    let mut flipped = vs.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let tampered_payload = b64url(with("sub", json!("dukcapil/siak")).to_string().as_bytes());

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64url(
                    json!({"alg":"none","typ":"at+jwt","kid":kid})
                        .to_string()
                        .as_bytes()
                ),
                vp
            ),
            "algorithm_not_allowed",
        ),
        (
            "HS256 keyed with the public JWKS",
            hs256_with_public_key,
            "algorithm_not_allowed",
        ),
        (
            "RS256 header on an EC signature",
            foreign.sign(&es_header("RS256"), &good),
            "algorithm_not_allowed",
        ),
        (
            "ES384 header",
            foreign.sign(&es_header("ES384"), &good),
            "algorithm_not_allowed",
        ),
        (
            "unknown alg name",
            foreign.sign(&es_header("XX999"), &good),
            "algorithm_not_allowed",
        ),
        (
            "unknown kid",
            gk.sign(Some("at+jwt"), Some("not-a-key"), &good),
            "unknown_kid",
        ),
        (
            "no kid",
            gk.sign(Some("at+jwt"), None, &good),
            "missing_kid",
        ),
        (
            "another key under the gateway's kid",
            foreign.sign(&es_header("ES256"), &good),
            "bad_signature",
        ),
        (
            "flipped signature byte",
            format!("{vh}.{vp}.{flipped}"),
            "bad_signature",
        ),
        (
            "payload changed after signing",
            format!("{vh}.{tampered_payload}.{vs}"),
            "bad_signature",
        ),
        (
            "signature of another token",
            format!(
                "{vh}.{vp}.{}",
                gk.sign(Some("at+jwt"), Some(&kid), &with("jti", json!("j-2")))
                    .split('.')
                    .nth(2)
                    .unwrap()
            ),
            "bad_signature",
        ),
        (
            "expired beyond the leeway",
            gk.sign(Some("at+jwt"), Some(&kid), &with("exp", json!(t - 120))),
            "expired",
        ),
        (
            "not valid for ten minutes",
            gk.sign(Some("at+jwt"), Some(&kid), &with("nbf", json!(t + 600))),
            "not_yet_valid",
        ),
        (
            "another issuer",
            gk.sign(
                Some("at+jwt"),
                Some(&kid),
                &with("iss", json!("https://evil.example")),
            ),
            "unknown_issuer",
        ),
        (
            "wrong audience",
            gk.sign(
                Some("at+jwt"),
                Some(&kid),
                &with("aud", json!("other-gateway")),
            ),
            "wrong_audience",
        ),
        (
            "typ JWT",
            gk.sign(Some("JWT"), Some(&kid), &good),
            "wrong_type",
        ),
        ("no typ", gk.sign(None, Some(&kid), &good), "wrong_type"),
        (
            "a gateway assertion replayed as a token",
            assertion.clone(),
            "wrong_type",
        ),
        (
            "truncated signature",
            valid[..valid.len() - 10].to_owned(),
            "bad_signature",
        ),
        ("two parts", format!("{vh}.{vp}"), "malformed"),
        ("four parts", format!("{valid}.{vs}"), "malformed"),
        ("header not base64", format!("!!!.{vp}.{vs}"), "malformed"),
        (
            "payload not JSON",
            foreign.sign_raw(&es_header("ES256"), b"hello"),
            "malformed",
        ),
        (
            "payload a JSON array",
            gk.sign(Some("at+jwt"), Some(&kid), &json!([1, 2])),
            "malformed",
        ),
        (
            "huge token",
            format!("{vh}.{}.{vs}", "A".repeat(9000)),
            "token_too_large",
        ),
        (
            "no exp",
            gk.sign(Some("at+jwt"), Some(&kid), &without("exp")),
            "missing_claim",
        ),
        (
            "no sub",
            gk.sign(Some("at+jwt"), Some(&kid), &without("sub")),
            "missing_claim",
        ),
        (
            "exp as a string",
            gk.sign(Some("at+jwt"), Some(&kid), &with("exp", json!("tomorrow"))),
            "missing_claim",
        ),
        (
            "agency not the application's",
            gk.sign(
                Some("at+jwt"),
                Some(&kid),
                &with("agency", json!("bapenda")),
            ),
            "missing_claim",
        ),
        (
            "unregistered application",
            gk.sign(
                Some("at+jwt"),
                Some(&kid),
                &with("sub", json!("dinkes/ghost")),
            ),
            "unknown_application",
        ),
        (
            "application without client_secret",
            gk.sign(
                Some("at+jwt"),
                Some(&kid),
                &with("sub", json!("bapenda/esppt")).tap_agency("bapenda"),
            ),
            "method_not_allowed_for_application",
        ),
        (
            "token with a space inside",
            format!("{vh}.{vp} .{vs}"),
            "malformed",
        ),
    ];
    assert!(cases.len() >= 25);
    let mut expected: HashMap<String, u64> = HashMap::new();
    for (name, token, reason) in &cases {
        let r = raw_request_as_is(gw.addr, &get("/a/s/x", &bearer(token))).await;
        assert_eq!(
            r.status,
            401,
            "{name}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let code = r.error_code();
        let want_code = if *reason == "method_not_allowed_for_application" {
            "auth_method_not_allowed"
        } else {
            "invalid_token"
        };
        assert_eq!(code, want_code, "{name}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="gerbang", error="invalid_token""#),
            "{name}"
        );
        *expected.entry(reason.to_string()).or_default() += 1;
    }
    // Header-level defects.
    for (name, headers, reason) in [
        (
            "Basic instead of Bearer",
            "Authorization: Basic ZGlua2VzOng=\r\n".to_owned(),
            "not_bearer",
        ),
        (
            "Bearer without a token",
            "Authorization: Bearer\r\n".to_owned(),
            "not_bearer",
        ),
        (
            "two Authorization headers",
            format!("{}{}", bearer(&valid), bearer(&valid)),
            "malformed",
        ),
    ] {
        let r = raw_request_as_is(gw.addr, &get("/a/s/x", &headers)).await;
        assert_eq!(r.status, 401, "{name}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer realm=\"gerbang\", error="),
            "{name}"
        );
        *expected.entry(reason.to_string()).or_default() += 1;
    }
    // Each refusal was counted under its own reason.
    let reasons: HashMap<String, u64> = gw
        .running
        .as_ref()
        .unwrap()
        .gateway
        .auth_failures()
        .into_iter()
        .collect();
    assert_eq!(reasons, expected);

    // No token ever reaches the log, whole or in part.
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(
        logs.contains("authentication refused"),
        "refusals are logged"
    );
    for (name, token, _) in &cases {
        for part in token.split('.').filter(|p| p.len() >= 16) {
            assert!(
                !logs.contains(part),
                "{name}: part of the token reached the log"
            );
        }
    }
    assert!(!logs.contains(&vs), "a signature reached the log");
}

trait TapAgency {
    fn tap_agency(self, agency: &str) -> Value;
}

impl TapAgency for Value {
    fn tap_agency(mut self, agency: &str) -> Value {
        self["agency"] = json!(agency);
        self
    }
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let _ = captured_logs();
    let s = setup().await;
    let r = get_token(
        s.gw.addr,
        "grant_type=client_credentials",
        &basic("dinkes%2Fsimpus", SIMPUS_SECRET),
    )
    .await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let _ = get_token(
        s.gw.addr,
        "grant_type=client_credentials",
        &basic("dinkes%2Fsimpus", "wrong-secret-456"),
    )
    .await;
    let _ = raw_request_as_is(s.gw.addr, &get("/a/s/x", &bearer(&token))).await;
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(logs.contains("access token issued"), "issuance is logged");
    assert!(
        logs.contains("token request refused"),
        "refusals are logged"
    );
    for secret in [
        SIMPUS_SECRET,
        "wrong-secret-456",
        token.split('.').nth(2).unwrap(),
    ] {
        assert!(!logs.contains(secret), "a secret or token reached the log");
    }
}
