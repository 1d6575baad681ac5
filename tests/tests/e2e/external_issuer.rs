//! Tokens of an external issuer (a mock Keycloak serving a JWKS), signed with the `p256` crate:
//! accepted and mapped to registered applications; key rotation picked up at once; an issuer
//! outage does not log anyone out; the algorithm is pinned.

use std::collections::HashMap;

use gerbang::demo::Kind;
use gerbang_e2e::*;
use serde_json::{json, Value};

const ISS: &str = "https://sso.kab.test/realms/opd";

async fn gateway_with(idp: &MockIdp, echo: &Upstream, min_refetch: &str) -> TestGateway {
    let portal = "[agency]\nid = \"diskominfo\"\nname = \"Diskominfo\"\n\n[[application]]\n\
                  id = \"portal\"\nname = \"Portal\"\nauth_methods = [\"external_jwt\"]\n\
                  external_client_ids = [\"portal-client\"]\n\n[[application]]\nid = \"kiosk\"\n\
                  name = \"Kiosk\"\nauth_methods = [\"external_jwt\"]\n";
    TestGateway::start(
        &[&agency("a", "s", &[echo.url()], ""), portal],
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

fn claims(azp: &str, jti: &str) -> Value {
    let t = now();
    json!({
        "iss": ISS, "aud": ["account", "gerbang"], "azp": azp, "sub": "f81d4fae-7dec",
        "iat": t, "exp": t + 300, "jti": jti, "scope": "profile email"
    })
}

fn header(kid: &str) -> Value {
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

    // Mapped by external_client_ids, and by the application id itself.
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
    idp.serve_keys(&[&kc1]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = call(&gw, &token).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
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
    let portal = "[agency]\nid = \"diskominfo\"\nname = \"Diskominfo\"\n\n[[application]]\n\
                  id = \"portal\"\nname = \"Portal\"\nauth_methods = [\"external_jwt\"]\n\
                  external_client_ids = [\"portal-client\"]\n";
    let gw = TestGateway::start(
        &[&agency("a", "s", &[echo.url()], ""), portal],
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
