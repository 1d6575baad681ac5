//! Tokens of an external issuer (a mock Keycloak serving a JWKS), signed with the `p256` crate:
//! accepted and mapped to registered applications; key rotation picked up at once; an issuer
//! outage does not log anyone out; the algorithm is pinned. Applications are bound to one
//! issuer: another issuer cannot mint tokens for them, `aud` is always checked, a registry id
//! names an application only when it opts in, and a reload that removes a mapping ends the
//! cached tokens that relied on it.

use std::collections::HashMap;

use gerbang::demo::Kind;
use gerbang_e2e::*;
use serde_json::{json, Value};

pub(crate) const ISS: &str = "https://sso.kab.test/realms/opd";

async fn gateway_with(idp: &MockIdp, echo: &Upstream, min_refetch: &str) -> TestGateway {
    let portal = format!(
        "[agency]\nid = \"diskominfo\"\nname = \"Diskominfo\"\n\n[[application]]\n\
         id = \"portal\"\nname = \"Portal\"\nauth_methods = [\"external_jwt\"]\n\
         external_issuer = \"{ISS}\"\nexternal_client_ids = [\"portal-client\"]\n\n\
         [[application]]\nid = \"kiosk\"\nname = \"Kiosk\"\nauth_methods = [\"external_jwt\"]\n\
         external_issuer = \"{ISS}\"\nexternal_client_id_is_registry_id = true\n"
    );
    TestGateway::start(
        &[&agency("a", "s", &[echo.url()], ""), &portal],
        "",
        &format!(
            "[[auth.external]]\nissuer = \"{ISS}\"\naudiences = [\"gerbang\"]\n\
             algorithms = [\"ES256\"]\njwks_url = \"{}\"\nclient_claim = \"azp\"\n\
             leeway = \"10s\"\nmin_refetch_interval = \"{min_refetch}\"\n",
            idp.url
        ),
    )
    .await
}

pub(crate) fn claims(azp: &str, jti: &str) -> Value {
    let t = now();
    json!({
        "iss": ISS, "aud": ["account", "gerbang"], "azp": azp, "sub": "f81d4fae-7dec",
        "iat": t, "exp": t + 300, "jti": jti, "scope": "profile email"
    })
}

pub(crate) fn header(kid: &str) -> Value {
    json!({"alg": "ES256", "typ": "JWT", "kid": kid})
}

async fn call(gw: &TestGateway, token: &str) -> RawResponse {
    raw_request_as_is(
        gw.addr,
        &get("/a/s/x", &format!("Authorization: Bearer {token}\r\n")),
    )
    .await
}

#[tokio::test]
async fn external_tokens_map_to_applications_survive_rotation_and_outage() {
    let echo = backend(Kind::Echo, "echo").await;
    let kc1 = P256Signer::new("kc-1", 1);
    let kc2 = P256Signer::new("kc-2", 2);
    let idp = MockIdp::start(&[&kc1]).await;
    let gw = gateway_with(&idp, &echo, "30s").await;
    assert_eq!(idp.fetches(), 1, "keys fetched at start");

    // Mapped by external_client_ids, and by the application id itself (kiosk opted in).
    let r = call(
        &gw,
        &kc1.sign(&header("kc-1"), &claims("portal-client", "t1")),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let seen = r.json()["headers"].clone();
    assert_eq!(seen["x-gerbang-consumer"], "diskominfo/portal");
    assert_eq!(seen["x-gerbang-auth-method"], "external_jwt");
    let r = call(
        &gw,
        &kc1.sign(&header("kc-1"), &claims("diskominfo/kiosk", "t2")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-gerbang-consumer"],
        "diskominfo/kiosk"
    );

    // Refusals specific to external tokens.
    let mut wrong_aud = claims("portal-client", "t3");
    wrong_aud["aud"] = json!("another-api");
    let mut expired = claims("portal-client", "t4");
    expired["exp"] = json!(now() - 60);
    let refused = [
        (
            "client not registered",
            kc1.sign(&header("kc-1"), &claims("unknown-client", "t5")),
            "unknown_application",
        ),
        (
            "wrong audience",
            kc1.sign(&header("kc-1"), &wrong_aud),
            "wrong_audience",
        ),
        ("expired", kc1.sign(&header("kc-1"), &expired), "expired"),
        (
            "algorithm not pinned for this issuer",
            kc1.sign(
                &json!({"alg": "ES384", "kid": "kc-1"}),
                &claims("portal-client", "t6"),
            ),
            "algorithm_not_allowed",
        ),
        (
            "no client claim",
            kc1.sign(&header("kc-1"), &{
                let mut c = claims("x", "t7");
                c.as_object_mut().unwrap().remove("azp");
                c
            }),
            "missing_claim",
        ),
    ];
    for (name, token, _) in &refused {
        let r = call(&gw, token).await;
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.error_code(), "invalid_token", "{name}");
    }

    // Rotation: the issuer starts signing with kc-2. The first kc-2 token triggers one refetch.
    idp.serve_keys(&[&kc1, &kc2]);
    let r = call(
        &gw,
        &kc2.sign(&header("kc-2"), &claims("portal-client", "t8")),
    )
    .await;
    assert_eq!(r.status, 200, "a new key is fetched at once");
    assert_eq!(idp.fetches(), 2);
    // Made-up key ids do not make the gateway hammer the issuer: within min_refetch_interval
    // no further fetch happens.
    let kc9 = P256Signer::new("kc-9", 9);
    for i in 0..5 {
        let r = call(
            &gw,
            &kc9.sign(&header("kc-9"), &claims("portal-client", &format!("u{i}"))),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        idp.fetches(),
        2,
        "unknown kids within the interval: no refetch"
    );

    // Outage: the issuer answers 500; new tokens of known keys still verify.
    idp.fail_with(500);
    for (signer, kid) in [(&kc1, "kc-1"), (&kc2, "kc-2")] {
        let r = call(
            &gw,
            &signer.sign(&header(kid), &claims("portal-client", &format!("o-{kid}"))),
        )
        .await;
        assert_eq!(
            r.status, 200,
            "{kid} still verifies while the issuer is down"
        );
    }

    let reasons: HashMap<String, u64> = gw
        .running
        .as_ref()
        .unwrap()
        .gateway
        .auth_failures()
        .into_iter()
        .collect();
    let mut expected: HashMap<String, u64> = HashMap::new();
    for (_, _, reason) in &refused {
        *expected.entry(reason.to_string()).or_default() += 1;
    }
    expected.insert("unknown_kid".into(), 5);
    assert_eq!(reasons, expected);
}

#[tokio::test]
async fn an_issuer_down_at_start_is_used_once_it_answers() {
    let echo = backend(Kind::Echo, "echo").await;
    let kc1 = P256Signer::new("kc-1", 1);
    let idp = MockIdp::start(&[&kc1]).await;
    idp.fail_with(503);
    let gw = gateway_with(&idp, &echo, "1s").await;
    let token = kc1.sign(&header("kc-1"), &claims("portal-client", "s1"));
    assert_eq!(idp.fetches(), 1, "the start-up fetch failed");
    // The first token's unknown kid refetches at once, still failing.
    let r = call(&gw, &token).await;
    assert_eq!(r.status, 401);
    assert_eq!(idp.fetches(), 2);
    // Within the interval, no further fetch.
    let r = call(&gw, &token).await;
    assert_eq!(r.status, 401);
    assert_eq!(idp.fetches(), 2, "rate limit holds during an outage");
    // The issuer recovers: after the interval the next token fetches and verifies.
    // Calls within the interval fetch nothing, so polling until one passes costs no fetch.
    idp.serve_keys(&[&kc1]);
    assert!(
        eventually_async(std::time::Duration::from_secs(5), || async {
            call(&gw, &token).await.status == 200
        })
        .await,
        "the token never passed once the issuer answered"
    );
    assert_eq!(idp.fetches(), 3);
}

/// Keys from PEM files instead of a JWKS URL: EC P-256 and Ed25519 public keys, each named by its
/// file (the `kid`). Tokens name the key and must use an algorithm pinned for the issuer.
#[tokio::test]
async fn external_issuer_keys_from_pem_files() {
    let echo = backend(Kind::Echo, "echo").await;
    let dir = tempfile::tempdir().unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ec_file = write_file(dir.path(), "kc-ec.pem", &ec.public_key_pem());
    let ed_file = write_file(dir.path(), "kc-ed.pem", &ed.public_key_pem());
    let portal = format!(
        "[agency]\nid = \"diskominfo\"\nname = \"Diskominfo\"\n\n[[application]]\n\
         id = \"portal\"\nname = \"Portal\"\nauth_methods = [\"external_jwt\"]\n\
         external_issuer = \"{ISS}\"\nexternal_client_ids = [\"portal-client\"]\n"
    );
    let gw = TestGateway::start(
        &[&agency("a", "s", &[echo.url()], ""), &portal],
        "",
        &format!(
            "[[auth.external]]\nissuer = \"{ISS}\"\naudiences = [\"gerbang\"]\n\
             algorithms = [\"ES256\", \"EdDSA\"]\nkey_files = [\"{ec_file}\", \"{ed_file}\"]\n"
        ),
    )
    .await;
    let sign = |alg: jsonwebtoken::Algorithm, kid: &str, pem: &str, claims: &Value| {
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = Some(kid.to_owned());
        let key = match alg {
            jsonwebtoken::Algorithm::EdDSA => {
                jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes())
            }
            _ => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
        }
        .unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    };
    let es = jsonwebtoken::Algorithm::ES256;
    let eddsa = jsonwebtoken::Algorithm::EdDSA;
    let ok_ec = sign(
        es,
        "kc-ec",
        &ec.serialize_pem(),
        &claims("portal-client", "p1"),
    );
    let ok_ed = sign(
        eddsa,
        "kc-ed",
        &ed.serialize_pem(),
        &claims("portal-client", "p2"),
    );
    for t in [&ok_ec, &ok_ed] {
        let r = call(&gw, t).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json()["headers"]["x-gerbang-consumer"],
            "diskominfo/portal"
        );
    }
    // The EC key under the Ed25519 key's name, and the other way round: refused.
    let swapped = sign(
        es,
        "kc-ed",
        &ec.serialize_pem(),
        &claims("portal-client", "p3"),
    );
    assert_eq!(call(&gw, &swapped).await.status, 401);
    let unknown = sign(
        es,
        "kc-new",
        &ec.serialize_pem(),
        &claims("portal-client", "p4"),
    );
    assert_eq!(call(&gw, &unknown).await.status, 401);
    let reasons: HashMap<String, u64> = gw
        .running
        .as_ref()
        .unwrap()
        .gateway
        .auth_failures()
        .into_iter()
        .collect();
    assert_eq!(
        reasons.get("algorithm_not_allowed"),
        Some(&1),
        "{reasons:?}"
    );
    assert_eq!(reasons.get("unknown_kid"), Some(&1), "{reasons:?}");
}

pub(crate) const ISS_B: &str = "https://sso.other.test/realms/vendor";

/// Two issuers: `diskominfo/portal` (client id `portal-client`, also `legacy-client`) trusts
/// A only; `diskominfo/kiosk` (client id `kiosk-client`, and its registry id by opt-in) trusts B.
pub(crate) fn two_issuer_registry(portal_ids: &str) -> String {
    format!(
        "[agency]\nid = \"diskominfo\"\nname = \"Diskominfo\"\n\n[[application]]\n\
         id = \"portal\"\nname = \"Portal\"\nauth_methods = [\"external_jwt\"]\n\
         external_issuer = \"{ISS}\"\nexternal_client_ids = [{portal_ids}]\n\n\
         [[application]]\nid = \"kiosk\"\nname = \"Kiosk\"\nauth_methods = [\"external_jwt\"]\n\
         external_issuer = \"{ISS_B}\"\nexternal_client_ids = [\"kiosk-client\"]\n\
         external_client_id_is_registry_id = true\n"
    )
}

pub(crate) fn two_issuers(a: &MockIdp, b: &MockIdp) -> String {
    format!(
        "[[auth.external]]\nissuer = \"{ISS}\"\naudiences = [\"gerbang\"]\n\
         algorithms = [\"ES256\"]\njwks_url = \"{}\"\n\
         [[auth.external]]\nissuer = \"{ISS_B}\"\naudiences = [\"gerbang\"]\n\
         algorithms = [\"ES256\"]\njwks_url = \"{}\"\n",
        a.url, b.url
    )
}

pub(crate) fn claims_of(iss: &str, azp: &str, jti: &str) -> Value {
    let mut c = claims(azp, jti);
    c["iss"] = json!(iss);
    c
}

fn consumer(r: &RawResponse) -> String {
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()["headers"]["x-gerbang-consumer"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_issuer_cannot_mint_tokens_for_an_application_bound_to_another() {
    let echo = backend(Kind::Echo, "echo").await;
    let (ka, kb) = (P256Signer::new("a-1", 1), P256Signer::new("b-1", 2));
    let (idp_a, idp_b) = (MockIdp::start(&[&ka]).await, MockIdp::start(&[&kb]).await);
    let gw = TestGateway::start(
        &[
            &agency("a", "s", &[echo.url()], ""),
            &two_issuer_registry("\"portal-client\""),
        ],
        "",
        &two_issuers(&idp_a, &idp_b),
    )
    .await;
    let a = |azp: &str, jti: &str| ka.sign(&header("a-1"), &claims_of(ISS, azp, jti));
    let b = |azp: &str, jti: &str| kb.sign(&header("b-1"), &claims_of(ISS_B, azp, jti));
    // Each issuer names its own applications.
    assert_eq!(
        consumer(&call(&gw, &a("portal-client", "1")).await),
        "diskominfo/portal"
    );
    assert_eq!(
        consumer(&call(&gw, &b("kiosk-client", "2")).await),
        "diskominfo/kiosk"
    );
    // B cannot mint a token for A's application: not by A's client id, not by its registry id.
    // And A cannot mint for B's application, though B's accepts its registry id from B.
    for (what, token) in [
        ("B as portal-client", b("portal-client", "3")),
        ("B as diskominfo/portal", b("diskominfo/portal", "4")),
        ("A as kiosk-client", a("kiosk-client", "5")),
        ("A as diskominfo/kiosk", a("diskominfo/kiosk", "6")),
    ] {
        let r = call(&gw, &token).await;
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.error_code(), "invalid_token", "{what}");
    }
    // A token of B signed with A's key (B's `iss`, A's kid): B does not know the key.
    let forged = ka.sign(&header("a-1"), &claims_of(ISS_B, "kiosk-client", "7"));
    assert_eq!(call(&gw, &forged).await.status, 401);
    let reasons: HashMap<String, u64> = gw
        .running
        .as_ref()
        .unwrap()
        .gateway
        .auth_failures()
        .into_iter()
        .collect();
    assert_eq!(reasons.get("unknown_application"), Some(&4), "{reasons:?}");
}

#[tokio::test]
async fn audiences_are_required_and_always_checked() {
    // An issuer without audiences is a configuration error (it would accept the issuer's
    // tokens for any other service).
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("gerbang.toml");
    std::fs::write(
        &main,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[auth.external]]\nissuer = \"{ISS}\"\n\
             algorithms = [\"ES256\"]\njwks_url = \"http://127.0.0.1:9/jwks\"\n"
        ),
    )
    .unwrap();
    let err = match gerbang::load(&main, &gerbang::Overrides::default()) {
        Ok(_) => panic!("an issuer without audiences is refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("gerbang.toml: auth.external[0].audiences: required"),
        "{err}"
    );

    let echo = backend(Kind::Echo, "echo").await;
    let kc = P256Signer::new("kc-1", 1);
    let idp = MockIdp::start(&[&kc]).await;
    let gw = gateway_with(&idp, &echo, "30s").await;
    let with_aud = |aud: Option<Value>, jti: &str| {
        let mut c = claims("portal-client", jti);
        match aud {
            Some(a) => c["aud"] = a,
            None => {
                c.as_object_mut().unwrap().remove("aud");
            }
        }
        kc.sign(&header("kc-1"), &c)
    };
    assert_eq!(
        consumer(&call(&gw, &with_aud(Some(json!("gerbang")), "1")).await),
        "diskominfo/portal"
    );
    for (what, aud) in [
        ("no aud", None),
        ("another service's aud", Some(json!("simpeg-api"))),
        ("several, none ours", Some(json!(["account", "simpeg-api"]))),
        ("empty list", Some(json!([]))),
    ] {
        let r = call(&gw, &with_aud(aud, what)).await;
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.error_code(), "invalid_token", "{what}");
    }
}

#[tokio::test]
async fn a_registry_id_as_client_claim_needs_the_applications_opt_in() {
    let echo = backend(Kind::Echo, "echo").await;
    let kc = P256Signer::new("kc-1", 1);
    let idp = MockIdp::start(&[&kc]).await;
    // portal maps `portal-client` only; kiosk opted in to its registry id.
    let gw = gateway_with(&idp, &echo, "30s").await;
    let t = |azp: &str, jti: &str| kc.sign(&header("kc-1"), &claims(azp, jti));
    let r = call(&gw, &t("diskominfo/portal", "1")).await;
    assert_eq!(
        r.status, 401,
        "no fallback to the registry id without opt-in"
    );
    assert_eq!(r.error_code(), "invalid_token");
    assert_eq!(
        consumer(&call(&gw, &t("portal-client", "2")).await),
        "diskominfo/portal"
    );
    assert_eq!(
        consumer(&call(&gw, &t("diskominfo/kiosk", "3")).await),
        "diskominfo/kiosk"
    );
}

#[tokio::test]
async fn a_reload_that_removes_a_mapping_ends_the_cached_token() {
    let echo = backend(Kind::Echo, "echo").await;
    let (ka, kb) = (P256Signer::new("a-1", 1), P256Signer::new("b-1", 2));
    let (idp_a, idp_b) = (MockIdp::start(&[&ka]).await, MockIdp::start(&[&kb]).await);
    let gw = TestGateway::start(
        &[
            &agency("a", "s", &[echo.url()], ""),
            &two_issuer_registry("\"portal-client\", \"legacy-client\""),
        ],
        "",
        &two_issuers(&idp_a, &idp_b),
    )
    .await;
    let legacy = ka.sign(&header("a-1"), &claims_of(ISS, "legacy-client", "l1"));
    let current = ka.sign(&header("a-1"), &claims_of(ISS, "portal-client", "c1"));
    // Verified once, then served from the token cache.
    for _ in 0..2 {
        assert_eq!(consumer(&call(&gw, &legacy).await), "diskominfo/portal");
        assert_eq!(consumer(&call(&gw, &current).await), "diskominfo/portal");
    }
    let running = gw.running.as_ref().unwrap();
    assert!(running.gateway.authenticator().cached_tokens() >= 2);
    // The registry file loses `legacy-client`; everything else stays.
    std::fs::write(
        gw.dir.path().join("registry/a1.toml"),
        two_issuer_registry("\"portal-client\""),
    )
    .unwrap();
    running.reloader.reload("test").await.unwrap();
    let r = call(&gw, &legacy).await;
    assert_eq!(
        r.status, 401,
        "the cached token must not outlive its mapping"
    );
    assert_eq!(r.error_code(), "invalid_token");
    assert_eq!(consumer(&call(&gw, &current).await), "diskominfo/portal");
}

#[tokio::test]
async fn a_key_the_issuer_drops_ends_the_cached_tokens_it_signed() {
    let echo = backend(Kind::Echo, "echo").await;
    let (kc1, kc2) = (P256Signer::new("kc-1", 1), P256Signer::new("kc-2", 2));
    let idp = MockIdp::start(&[&kc1]).await;
    let gw = gateway_with(&idp, &echo, "30s").await;
    let old = kc1.sign(&header("kc-1"), &claims("portal-client", "k1"));
    // Verified, then served from the cache.
    for _ in 0..2 {
        assert_eq!(consumer(&call(&gw, &old).await), "diskominfo/portal");
    }
    // The issuer drops kc-1 (say it leaked) and signs with kc-2; the first kc-2 token makes
    // the gateway fetch the new set.
    idp.serve_keys(&[&kc2]);
    let new = kc2.sign(&header("kc-2"), &claims("portal-client", "k2"));
    assert_eq!(consumer(&call(&gw, &new).await), "diskominfo/portal");
    let r = call(&gw, &old).await;
    assert_eq!(
        r.status, 401,
        "a cached token must not outlive the key that verified it"
    );
    assert_eq!(r.error_code(), "invalid_token");
    assert_eq!(consumer(&call(&gw, &new).await), "diskominfo/portal");
}
