use std::time::Duration;

use gerbang_e2e::*;

/// Data plane over TLS with HTTP/2 by ALPN, forwarding to an https:// upstream verified against a
/// configured CA file.
#[tokio::test]
async fn http2_over_tls_to_an_https_upstream() {
    let (up_cert, up_key) = self_signed();
    let up_tls = gerbang_proxy::tls::server_config(up_cert.as_bytes(), up_key.as_bytes()).unwrap();
    let upstream = tls_backend(up_tls).await;

    let (gw_cert, gw_key) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| write_file(dir.path(), name, text);
    let cert_file = w("gw.crt", &gw_cert);
    let key_file = w("gw.key", &gw_key);
    let ca_file = w("upstream-ca.crt", &up_cert);
    let gw = TestGateway::start(
        &[&agency(
            "a",
            "s",
            &[format!("https://localhost:{}", upstream.addr.port())],
            "",
        )],
        &format!("[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n"),
        &format!("[upstream]\nsystem_roots = false\nca_files = [\"{ca_file}\"]\n"),
    )
    .await;

    let client = authed_client()
        .tls_certs_only([reqwest::Certificate::from_pem(gw_cert.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/a/s/over/tls?q=1", gw.addr.port());
    let res = client
        .get(&url)
        .header("x-request-id", "tls-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.version(),
        reqwest::Version::HTTP_2,
        "ALPN picked HTTP/2"
    );
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-request-id"], "tls-1");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["path"], "/over/tls");
    assert_eq!(v["query"], "q=1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(v["headers"]["x-request-id"], "tls-1");

    // An error over HTTP/2 has the same JSON shape.
    let res = client
        .get(format!("https://localhost:{}/a/nope/x", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_service");
}

/// An https:// upstream whose certificate is not trusted is refused, not used.
#[tokio::test]
async fn untrusted_upstream_certificate_is_502() {
    let (up_cert, up_key) = self_signed();
    let up_tls = gerbang_proxy::tls::server_config(up_cert.as_bytes(), up_key.as_bytes()).unwrap();
    let upstream = tls_backend(up_tls).await;
    let gw = TestGateway::start(
        &[&agency(
            "a",
            "s",
            &[format!("https://localhost:{}", upstream.addr.port())],
            "",
        )],
        "",
        "[upstream]\nsystem_roots = false\n",
    )
    .await;
    let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
}

/// HTTP/2 without TLS (prior knowledge) on the plain data plane, for clients inside a trusted
/// network; the request reaches an HTTP/1.1 upstream.
#[tokio::test]
async fn http2_cleartext_with_prior_knowledge() {
    let echo = backend(gerbang::demo::Kind::Echo, "echo").await;
    let gw = TestGateway::start(&[&agency("a", "s", &[echo.url()], "")], "", "").await;
    let client = authed_client()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let body = vec![7u8; 100_000];
    let res = client
        .post(gw.url("/a/s/h2c?z=9"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["path"], "/h2c");
    assert_eq!(v["query"], "z=9");
    assert_eq!(v["body_bytes"], 100_000);
    assert_eq!(v["headers"]["x-request-id"], id.as_str());
    assert_eq!(v["headers"]["host"], echo.addr.to_string());
    assert_eq!(
        v["headers"]["x-forwarded-host"],
        gw.addr.to_string(),
        "the :authority of the HTTP/2 request"
    );
    assert_eq!(
        v["body_sha256"],
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body))
    );
}

/// mTLS on the data plane: with `client_auth = "required"`, a client certificate from the
/// configured CA is accepted, no certificate or one from another CA is refused in the handshake;
/// with `"optional"`, clients without a certificate are served.
#[tokio::test]
async fn client_certificates_are_verified_against_the_configured_ca() {
    let echo = backend(gerbang::demo::Kind::Echo, "echo").await;
    let (gw_cert, gw_key) = self_signed();
    let (ca_pem, client_cert, client_key) = ca_and_client_cert("simpus.dinkes.test");
    let (_other_ca, stranger_cert, stranger_key) = ca_and_client_cert("stranger.test");
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| write_file(dir.path(), name, text);
    let (cert_file, key_file, ca_file) = (
        w("gw.crt", &gw_cert),
        w("gw.key", &gw_key),
        w("clients-ca.crt", &ca_pem),
    );
    let client = |identity: Option<(&str, &str)>| {
        let mut b = authed_client()
            .tls_certs_only([reqwest::Certificate::from_pem(gw_cert.as_bytes()).unwrap()])
            .timeout(Duration::from_secs(10));
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    };

    for mode in ["required", "optional"] {
        let gw = TestGateway::start(
            &[&agency("a", "s", &[echo.url()], "")],
            &format!(
                "[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n\
                 client_auth = \"{mode}\"\nclient_ca_files = [\"{ca_file}\"]\n"
            ),
            "",
        )
        .await;
        let url = format!("https://localhost:{}/a/s/x", gw.addr.port());
        let with_cert = client(Some((&client_cert, &client_key)))
            .get(&url)
            .send()
            .await;
        assert_eq!(
            with_cert.unwrap().status(),
            200,
            "{mode}: trusted client certificate"
        );
        let stranger = client(Some((&stranger_cert, &stranger_key)))
            .get(&url)
            .send()
            .await;
        assert!(
            stranger.is_err(),
            "{mode}: a certificate from another CA is refused"
        );
        let anonymous = client(None).get(&url).send().await;
        if mode == "required" {
            assert!(
                anonymous.is_err(),
                "required: no certificate, no connection"
            );
        } else {
            assert_eq!(
                anonymous.unwrap().status(),
                200,
                "optional: served without one"
            );
        }
    }
}

/// mTLS as an authentication method: the certificate's SAN/CN or its SHA-256 pin names the
/// application; a certificate the CA signed but that names no application is refused; a token
/// of another application on the same connection is refused.
#[tokio::test]
async fn client_certificates_identify_applications() {
    let echo = backend(gerbang::demo::Kind::Echo, "echo").await;
    let (gw_cert, gw_key) = self_signed();
    let (ca_pem, clients) =
        ca_with_clients(&["siak.dukcapil.test", "lab.dinkes.test", "stranger.test"]);
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| write_file(dir.path(), name, text);
    let (cert_file, key_file, ca_file) = (
        w("gw.crt", &gw_cert),
        w("gw.key", &gw_key),
        w("clients-ca.crt", &ca_pem),
    );
    let lab_pin = gerbang_auth::mtls::fingerprint(&clients[1].2);
    let registry = format!(
        "[agency]\nid = \"dukcapil\"\nname = \"D\"\n\n[[application]]\nid = \"siak\"\nname = \"SIAK\"\n\
         auth_methods = [\"mtls\"]\ncert_names = [\"SIAK.dukcapil.test\"]\n\n\
         [[application]]\nid = \"lab\"\nname = \"Lab\"\nauth_methods = [\"mtls\"]\n\
         cert_fingerprints = [\"{}\"]\n",
        lab_pin.to_uppercase().replace("SHA256:", "sha256:")
    );
    let gw = TestGateway::start(
        &[&agency("a", "s", &[echo.url()], ""), &registry],
        &format!(
            "[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n\
             client_auth = \"optional\"\nclient_ca_files = [\"{ca_file}\"]\n"
        ),
        "",
    )
    .await;
    let url = format!("https://localhost:{}/a/s/x", gw.addr.port());
    // A client that presents only its certificate (no API key, no token).
    let client = |i: usize| {
        let (cert, key, _) = &clients[i];
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(gw_cert.as_bytes()).unwrap()])
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    for (i, app) in [(0, "dukcapil/siak"), (1, "dukcapil/lab")] {
        let res = client(i).get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200, "{app}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["headers"]["x-gerbang-consumer"], app);
        assert_eq!(v["headers"]["x-gerbang-auth-method"], "mtls");
    }
    let res = client(2).get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_client_certificate");
    // siak's certificate with test/client's API key: two identities, refused.
    let res = client(0)
        .get(&url)
        .header("x-api-key", TEST_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "identity_mismatch");
}
