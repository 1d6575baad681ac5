//! Data-sharing agreements through the real gateway: the demo's own registry and agreement
//! files (instances pointed at test backends), every deny reason, rate limits and quotas,
//! field rules that fail closed, and path tricks that must not widen an agreement.

use std::path::Path;

use gerbang::demo::Kind;
use gerbang_e2e::*;
use serde_json::Value;

fn repo(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The demo registry with instances moved to `backends` (penduduk, faskes, pbb, echo), and
/// `extra_dukcapil` appended to the population registry's file.
fn demo_registry(b: &Backends, extra_dukcapil: &str) -> Vec<String> {
    let swap = |text: String, pairs: &[(&str, String)]| {
        pairs.iter().fold(text, |t, (from, to)| t.replace(from, to))
    };
    vec![
        swap(
            repo("config/registry/dukcapil.toml"),
            &[
                ("http://127.0.0.1:18101", b.penduduk.url()),
                ("http://127.0.0.1:18102", b.penduduk.url()),
            ],
        ) + extra_dukcapil,
        swap(
            repo("config/registry/dinkes.toml"),
            &[("http://127.0.0.1:18103", b.faskes.url())],
        ),
        swap(
            repo("config/registry/bapenda.toml"),
            &[("http://127.0.0.1:18104", b.pbb.url())],
        ),
        swap(
            repo("config/registry/diskominfo.toml"),
            &[("http://127.0.0.1:18105", b.echo.url())],
        ),
    ]
}

struct Backends {
    penduduk: Upstream,
    faskes: Upstream,
    pbb: Upstream,
    echo: Upstream,
}

async fn backends() -> Backends {
    Backends {
        penduduk: backend(Kind::Penduduk, "penduduk-1").await,
        faskes: backend(Kind::Faskes, "faskes-1").await,
        pbb: backend(Kind::Pbb, "pbb-1").await,
        echo: backend(Kind::Echo, "echo-1").await,
    }
}

fn demo_agreements() -> String {
    ["bapenda", "dinkes", "diskominfo", "dukcapil"]
        .iter()
        .map(|n| repo(&format!("config/agreements/{n}.toml")))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn token(gw: &TestGateway, app: &str) -> String {
    use base64::Engine;
    let secret = format!("demo-secret-{}", app.split('/').nth(1).unwrap());
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{secret}", app.replace('/', "%2F")));
    let body = "grant_type=client_credentials";
    let r = raw_request_as_is(
        gw.addr,
        format!(
            "POST /oauth/token HTTP/1.1\r\nHost: g\r\nAuthorization: Basic {basic}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    r.json()["access_token"].as_str().unwrap().to_owned()
}

async fn call(gw: &TestGateway, method: &str, path: &str, token: &str, extra: &str) -> RawResponse {
    raw_request_as_is(
        gw.addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {token}\r\n{extra}\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
}

const NIK_PATH: &str = "/dukcapil/penduduk/penduduk/3603015505900001";
const KES: &str = "X-Gerbang-Purpose: pelayanan-kesehatan\r\n";

#[tokio::test]
async fn the_demo_agreements_hold() {
    let b = backends().await;
    let reg = demo_registry(&b, "");
    let refs: Vec<&str> = reg.iter().map(String::as_str).collect();
    let gw = TestGateway::start_with_agreements(&refs, Some(&demo_agreements()), "", "").await;
    let simpus = token(&gw, "dinkes/simpus").await;
    let esppt = token(&gw, "bapenda/esppt").await;
    let portal = token(&gw, "diskominfo/portal").await;

    // simpus: masked NIK, no marital status, the agreement named to the provider.
    let r = call(&gw, "GET", NIK_PATH, &simpus, KES).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["nik"], "360301******0001");
    assert!(v.get("status_perkawinan").is_none());
    assert!(v["nama"].is_string() && v["alamat"].is_string());
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string(),
        "Content-Length matches the rewritten body"
    );
    // esppt: only the allow-listed fields.
    let r = call(
        &gw,
        "GET",
        NIK_PATH,
        &esppt,
        "X-Gerbang-Purpose: penetapan-pajak\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let mut keys: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["alamat", "nama", "nik"]);
    // portal: nothing.
    let r = call(&gw, "GET", NIK_PATH, &portal, KES).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "no_agreement");
    // faskes: public GET for everyone.
    for t in [&simpus, &esppt, &portal] {
        assert_eq!(
            call(&gw, "GET", "/dinkes/faskes/faskes", t, "")
                .await
                .status,
            200
        );
    }
    let r = call(&gw, "POST", "/dinkes/faskes/faskes", &portal, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "method_not_allowed");
    // echo: any method, 10/s with a burst of 30 per application.
    let echoed = call(&gw, "DELETE", "/diskominfo/echo/x", &portal, "").await;
    assert_eq!(echoed.status, 200);
    assert_eq!(
        echoed.json()["headers"]["x-gerbang-agreement"],
        "open-diskominfo-echo"
    );
    assert_eq!(echoed.header("ratelimit-limit"), Some("30"));
    let mut limited = None;
    for _ in 0..40 {
        let r = call(&gw, "GET", "/diskominfo/echo/x", &portal, "").await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("the burst of 30 runs out");
    assert_eq!(r.error_code(), "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    // A reload does not hand out a fresh burst: after it, only what the rate (10/s) refilled
    // in the meantime passes, not another 30.
    let spent_at = std::time::Instant::now();
    gw.running
        .as_ref()
        .unwrap()
        .reloader
        .reload("test")
        .await
        .unwrap();
    let mut passed = 0;
    for _ in 0..40 {
        if call(&gw, "GET", "/diskominfo/echo/x", &portal, "")
            .await
            .status
            == 429
        {
            break;
        }
        passed += 1;
    }
    let refilled = (spent_at.elapsed().as_secs_f64() * 10.0).ceil() as usize + 1;
    assert!(
        passed <= refilled.min(29),
        "{passed} calls passed after the reload; the rate refilled at most {refilled}"
    );
    // Another application's budget is its own.
    assert_eq!(
        call(&gw, "GET", "/diskominfo/echo/x", &simpus, "")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn every_deny_reason_through_the_gateway() {
    let b = backends().await;
    let keluarga = "\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{nik}/keluarga\"\nclassification = \"rahasia\"\n";
    let reg = demo_registry(&b, keluarga);
    let refs: Vec<&str> = reg.iter().map(String::as_str).collect();
    let agreements = r#"
[[agreement]]
id = "a-expired"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["dukcapil/siak"]
valid_until = 2020-01-01
max_classification = "rahasia"

[[agreement]]
id = "a-future"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["diskominfo/portal"]
valid_from = 2099-01-01
max_classification = "rahasia"

[[agreement]]
id = "a-suspended"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["bapenda/esppt"]
status = "suspended"
max_classification = "rahasia"

[[agreement]]
id = "a-low"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["dinkes/simpus"]
endpoints = ["GET /penduduk/{nik}"]
max_classification = "terbatas"

[[agreement]]
id = "a-purpose"
title = "t"
legal_basis = "x"
service = "dukcapil/penduduk"
consumers = ["test/client"]
endpoints = ["GET /penduduk/{nik}"]
purposes = ["pelayanan-kesehatan"]
max_classification = "rahasia"

[[agreement]]
id = "a-quota"
title = "t"
legal_basis = "x"
service = "dinkes/faskes"
consumers = ["test/client"]
max_classification = "terbuka"
quota = { limit = 2, per = "day" }

[[agreement]]
id = "a-post-only"
title = "t"
legal_basis = "x"
service = "diskominfo/echo"
consumers = ["test"]
methods = ["POST"]
"#;
    let gw = TestGateway::start_with_agreements(&refs, Some(agreements), "", "").await;
    let key = format!("X-API-Key: {TEST_API_KEY}\r\n");
    let siak = token(&gw, "dukcapil/siak").await;
    let portal = token(&gw, "diskominfo/portal").await;
    let esppt = token(&gw, "bapenda/esppt").await;
    let simpus = token(&gw, "dinkes/simpus").await;
    let by_key = |method: &'static str, path: &'static str, extra: &'static str| {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: g\r\n{key}{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let addr = gw.addr;
        async move { raw_request_as_is(addr, req.as_bytes()).await }
    };
    let cases: Vec<(&str, RawResponse, u16, &str)> = vec![
        (
            "expired",
            call(&gw, "GET", NIK_PATH, &siak, "").await,
            403,
            "agreement_expired",
        ),
        (
            "not yet valid",
            call(&gw, "GET", NIK_PATH, &portal, "").await,
            403,
            "agreement_not_yet_valid",
        ),
        (
            "suspended",
            call(&gw, "GET", NIK_PATH, &esppt, "").await,
            403,
            "agreement_suspended",
        ),
        (
            "classification",
            call(&gw, "GET", NIK_PATH, &simpus, "").await,
            403,
            "classification_exceeded",
        ),
        (
            "purpose missing",
            by_key("GET", NIK_PATH, "").await,
            403,
            "purpose_missing",
        ),
        (
            "purpose not allowed",
            by_key("GET", NIK_PATH, "X-Gerbang-Purpose: penetapan-pajak\r\n").await,
            403,
            "purpose_not_allowed",
        ),
        (
            "endpoint not covered",
            by_key(
                "GET",
                "/dukcapil/penduduk/penduduk/3603015505900001/keluarga",
                KES,
            )
            .await,
            403,
            "endpoint_not_covered",
        ),
        (
            "endpoint not declared",
            by_key("GET", "/dukcapil/penduduk/warga/3603015505900001", KES).await,
            403,
            "endpoint_not_declared",
        ),
        (
            "method of the endpoint",
            by_key("DELETE", NIK_PATH, KES).await,
            403,
            "method_not_allowed",
        ),
        (
            "method of the agreement",
            by_key("GET", "/diskominfo/echo/x", "").await,
            403,
            "method_not_allowed",
        ),
        (
            "no agreement",
            by_key("GET", "/bapenda/pbb/pbb/360301000100200300", "").await,
            403,
            "no_agreement",
        ),
    ];
    for (name, r, status, code) in &cases {
        assert_eq!(
            r.status,
            *status,
            "{name}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), *code, "{name}");
    }
    // Allowed: the purpose given, the POST the agreement allows.
    assert_eq!(by_key("GET", NIK_PATH, KES).await.status, 200);
    assert_eq!(by_key("POST", "/diskominfo/echo/x", "").await.status, 200);
    // Quota: 2 a day, then 429 until midnight in Jakarta.
    for _ in 0..2 {
        assert_eq!(by_key("GET", "/dinkes/faskes/faskes", "").await.status, 200);
    }
    let r = by_key("GET", "/dinkes/faskes/faskes", "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "quota_exhausted");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
}

#[tokio::test]
async fn path_tricks_never_widen_an_agreement() {
    let b = backends().await;
    let reg = demo_registry(&b, "");
    let refs: Vec<&str> = reg.iter().map(String::as_str).collect();
    let gw = TestGateway::start_with_agreements(&refs, Some(&demo_agreements()), "", "").await;
    let simpus = token(&gw, "dinkes/simpus").await;
    for (path, status, code) in [
        (
            "/dukcapil/penduduk/Penduduk/3603015505900001",
            403,
            "endpoint_not_declared",
        ),
        (
            "/DUKCAPIL/penduduk/penduduk/3603015505900001",
            404,
            "unknown_agency",
        ),
        (
            "/dukcapil/Penduduk/penduduk/3603015505900001",
            404,
            "unknown_service",
        ),
        (
            "/dukcapil/penduduk/penduduk/3603015505900001/",
            403,
            "endpoint_not_declared",
        ),
        (
            "/dukcapil/penduduk/penduduk/3603015505900001;x=1",
            400,
            "path_invalid_character",
        ),
        (
            "/dukcapil/penduduk/penduduk%2F3603015505900001",
            400,
            "path_encoded_separator",
        ),
        (
            "/dukcapil/penduduk/penduduk/%2e%2e/%2e%2e/%2e%2e/dinkes/faskes/faskes",
            400,
            "path_traversal",
        ),
        (
            "/dinkes/faskes/../../dukcapil/penduduk/penduduk/3603015505900001",
            400,
            "path_traversal",
        ),
        (
            "/dukcapil/penduduk/penduduk/%252e%252e",
            400,
            "path_double_encoding",
        ),
    ] {
        let r = call(&gw, "GET", path, &simpus, KES).await;
        assert_eq!(
            r.status,
            status,
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), code, "{path}");
    }
    // Detours that normalise to the covered endpoint reach exactly that endpoint, filtered
    // (the path that is checked is the path that is forwarded).
    for path in [
        "/dukcapil/penduduk/x/../penduduk/3603015505900001",
        "/dukcapil/penduduk//penduduk/3603015505900001",
        "/dukcapil/penduduk/./penduduk/3603015505900001",
    ] {
        let r = call(&gw, "GET", path, &simpus, KES).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["nik"], "360301******0001", "{path}");
    }
    // `get` is not `GET`.
    let r = call(&gw, "get", NIK_PATH, &simpus, KES).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "method_not_allowed");
}

#[tokio::test]
async fn field_rules_fail_closed() {
    let big = format!(
        "{{\"nik\":\"3603015505900001\",\"pad\":\"{}\"}}",
        "x".repeat(10_000)
    );
    let respond = |ct: &str, extra: &str, body: &str| {
        RawBehaviour::Respond(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    };
    let upstreams = [
        (
            "ok",
            raw_upstream(respond(
                "application/json",
                "ETag: \"v1\"\r\n",
                r#"{"nik":"3603015505900001","nama":"A"}"#,
            ))
            .await,
        ),
        (
            "big",
            raw_upstream(respond("application/json", "", &big)).await,
        ),
        (
            "invalid",
            raw_upstream(respond(
                "application/json",
                "",
                r#"{"nik":"3603015505900001""#,
            ))
            .await,
        ),
        (
            "text",
            raw_upstream(respond("text/plain", "", "nik=3603015505900001")).await,
        ),
        (
            "gzip",
            raw_upstream(respond(
                "application/json",
                "Content-Encoding: gzip\r\n",
                "not really gzip 3603015505900001",
            ))
            .await,
        ),
        (
            "problem",
            raw_upstream(respond(
                "application/problem+json",
                "",
                r#"{"nik":"3603015505900001"}"#,
            ))
            .await,
        ),
    ];
    let registry: Vec<String> = upstreams
        .iter()
        .map(|(name, up)| agency(name, "s", &[up.url()], ""))
        .collect();
    let refs: Vec<&str> = registry.iter().map(String::as_str).collect();
    let agreements: String = upstreams
        .iter()
        .map(|(name, _)| {
            format!(
                "[[agreement]]\nid = \"f-{name}\"\ntitle = \"t\"\nlegal_basis = \"x\"\nservice = \"{name}/s\"\n\
                 consumers = [\"test/client\"]\n[agreement.fields]\nmask = [{{ path = \"nik\", keep_first = 6, keep_last = 4 }}]\n\n"
            )
        })
        .collect();
    let gw = TestGateway::start_with_agreements(
        &refs,
        Some(&agreements),
        "",
        "[limits]\nmax_filtered_response_bytes = 4096\n",
    )
    .await;
    let r = raw_request(gw.addr, &get("/ok/s/x", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["nik"], "360301******0001");
    assert!(
        r.header("etag").is_none(),
        "the old validator no longer fits"
    );
    let r = raw_request(gw.addr, &get("/problem/s/x", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["nik"],
        "360301******0001",
        "+json types are filtered too"
    );
    for name in ["big", "invalid", "text", "gzip"] {
        let r = raw_request(gw.addr, &get(&format!("/{name}/s/x"), "")).await;
        assert_eq!(r.status, 502, "{name}");
        assert_eq!(r.error_code(), "response_filter_failed", "{name}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            !text.contains("3603015505900001"),
            "{name}: unfiltered data leaked"
        );
    }
    // The upstream was asked for an uncompressed response.
    let echo = backend(Kind::Echo, "echo").await;
    let gw2 = TestGateway::start_with_agreements(
        &[&agency("e", "s", &[echo.url()], "")],
        Some(
            "[[agreement]]\nid = \"e\"\ntitle = \"t\"\nlegal_basis = \"x\"\nservice = \"e/s\"\n\
             consumers = [\"*\"]\n[agreement.fields]\ndeny = [\"headers.x-api-key\"]\n",
        ),
        "",
        "",
    )
    .await;
    let r = raw_request(gw2.addr, &get("/e/s/x", "Accept-Encoding: gzip, br\r\n")).await;
    assert_eq!(r.status, 200);
    let v: Value = r.json();
    assert_eq!(v["headers"]["accept-encoding"], "identity");
}

/// The call records of the gateway's audit log, oldest first.
fn call_records(gw: &TestGateway) -> Vec<Value> {
    let dir = gw.dir.path().join("data/audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .filter(|r| r["kind"] == "call")
        .collect()
}

#[tokio::test]
async fn the_query_is_under_policy_and_the_audited_subject_is_the_one_the_provider_gets() {
    let echo = backend(Kind::Echo, "echo").await;
    let registry = format!(
        "{}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk?nik={{nik}}\"\nclassification = \"rahasia\"\nsubject = \"nik\"\n\
         \n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\nclassification = \"rahasia\"\nsubject = \"nik\"\n\
         \n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/kk?nik={{nik}}&nama={{nama}}&jenis=ringkas\"\nclassification = \"rahasia\"\nsubject = \"nik\"\n",
        agency("dukcapil", "cari", &[echo.url()], "")
    );
    let admin_token = "admin-token-for-tests-0123456789";
    let gw = TestGateway::start(
        &[&registry],
        "",
        &format!(
            "tokens = [{{ name = \"ops\", digest = \"{}\" }}]\n[audit]\nfsync = \"always\"\n",
            gerbang_auth::apikey::digest_of(admin_token)
        ),
    )
    .await;
    let key = gerbang_audit::SubjectKey::from_hex(
        &std::fs::read_to_string(gw.dir.path().join("data/keys/audit-subject.key")).unwrap(),
    )
    .unwrap();
    let nik = "3603015505900001";
    let other = "3603015505900002";

    // Allowed: the provider gets the query byte for byte, and the audit record's subject is the
    // hash of the NIK it got.
    for (path, want_query) in [
        (
            format!("/dukcapil/cari/penduduk?nik={nik}"),
            format!("nik={nik}"),
        ),
        (
            format!("/dukcapil/cari/kk?jenis=ringkas&nama=Budi%20Santoso&nik={nik}"),
            format!("jenis=ringkas&nama=Budi%20Santoso&nik={nik}"),
        ),
    ] {
        let r = raw_request(gw.addr, &get(&path, "")).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let received = r.json()["query"].as_str().unwrap().to_owned();
        assert_eq!(received, want_query, "{path}");
        let provider_nik = received
            .split('&')
            .find_map(|p| p.strip_prefix("nik="))
            .unwrap();
        let record = call_records(&gw).pop().unwrap();
        assert_eq!(record["status"], 200);
        assert_eq!(
            record["subject_hmac"].as_str(),
            Some(key.hash(provider_nik).as_str()),
            "{path}: the audited subject is the NIK the provider received"
        );
    }

    // Refused before anything reaches the provider: 400 in the JSON shape, recorded as denied.
    for (path, code) in [
        (
            format!("/dukcapil/cari/penduduk?nik={nik}&nik={other}"),
            "query_repeated",
        ),
        (
            format!("/dukcapil/cari/penduduk?nik={nik}&cetak=1"),
            "query_not_allowed",
        ),
        (
            format!("/dukcapil/cari/penduduk?nik={nik}&NIK={other}"),
            "query_not_allowed",
        ),
        (
            format!("/dukcapil/cari/penduduk?nik={nik}&%6Eik={other}"),
            "query_malformed",
        ),
        (
            format!("/dukcapil/cari/penduduk?nik={nik};nik={other}"),
            "query_malformed",
        ),
        (
            format!("/dukcapil/cari/penduduk?nik=%33{}", &nik[1..]),
            "query_malformed",
        ),
        ("/dukcapil/cari/penduduk".to_owned(), "query_missing"),
        (
            format!("/dukcapil/cari/kk?nik={nik}&nama=a%26nik%3D{other}&jenis=ringkas"),
            "query_malformed",
        ),
        (
            format!("/dukcapil/cari/kk?nik={nik}&nama=a&jenis=lengkap"),
            "query_not_allowed",
        ),
        // The reproduction: a path subject, another NIK in the query.
        (
            format!("/dukcapil/cari/penduduk/{nik}?nik={other}"),
            "query_not_allowed",
        ),
    ] {
        let r = raw_request(gw.addr, &get(&path, "")).await;
        assert_eq!(
            r.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), code, "{path}");
        assert!(r.json()["error"]["request_id"].is_string());
        let record = call_records(&gw).pop().unwrap();
        assert_eq!(record["decision"], "deny", "{path}");
        assert_eq!(record["reason"], code, "{path}");
        assert_eq!(record["status"], 400, "{path}");
        assert_ne!(
            record["subject_hmac"].as_str(),
            Some(key.hash(other).as_str()),
            "{path}"
        );
    }
    // A path subject is still the audited one when the query is refused.
    let record = call_records(&gw).pop().unwrap();
    assert_eq!(
        record["subject_hmac"].as_str(),
        Some(key.hash(nik).as_str())
    );

    // The admin API's explain checks the query as the gateway does.
    let explain = |path: String| {
        let body = serde_json::json!({ "consumer": "test/client", "method": "GET", "path": path })
            .to_string();
        let req = format!(
            "POST /admin/explain HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {admin_token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let addr = gw.admin;
        async move { raw_request_as_is(addr, req.as_bytes()).await.json() }
    };
    let e = explain(format!("/dukcapil/cari/penduduk?nik={nik}&nik={other}")).await;
    assert_eq!(e["decision"], "deny", "{e}");
    assert_eq!(e["reason"], "query_repeated", "{e}");
    assert_eq!(e["endpoint"], "GET /penduduk?nik={nik}", "{e}");
    let e = explain(format!("/dukcapil/cari/penduduk?nik={nik}")).await;
    assert_eq!(e["decision"], "allow", "{e}");
}

#[tokio::test]
async fn a_case_insensitive_provider_has_case_variants_judged_as_the_secret_endpoint() {
    let echo = backend(Kind::Echo, "echo").await;
    let endpoints = "[[service.endpoint]]\nmethod = \"GET\"\npath = \"/laporan/{id}\"\nclassification = \"terbuka\"\n\
         \n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/laporan/rekap-nik\"\nclassification = \"rahasia\"\n";
    let registry = format!(
        "{}\n{endpoints}",
        agency(
            "bappeda",
            "laporan",
            &[echo.url()],
            "path_matching = \"case_insensitive\""
        )
    );
    let agreements = "[[agreement]]\nid = \"open-laporan\"\ntitle = \"t\"\nlegal_basis = \"x\"\n\
        service = \"bappeda/laporan\"\nconsumers = [\"*\"]\nmax_classification = \"terbuka\"\n";
    let gw = TestGateway::start_with_agreements(
        &[&registry],
        Some(agreements),
        "",
        "[audit]\nfsync = \"always\"\n",
    )
    .await;
    for path in [
        "/bappeda/laporan/laporan/rekap-nik",
        "/bappeda/laporan/laporan/REKAP-NIK",
        "/bappeda/laporan/laporan/Rekap-Nik",
        "/bappeda/laporan/laporan/rekap-nik.",
        "/bappeda/laporan/laporan/rekap-nik%2E%2E",
        "/bappeda/laporan/laporan/rekap-ni%E2%84%AA",
    ] {
        let r = raw_request(gw.addr, &get(path, "")).await;
        assert_eq!(
            r.status,
            403,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error_code(), "classification_exceeded", "{path}");
        let record = call_records(&gw).pop().unwrap();
        assert_eq!(record["endpoint"], "GET /laporan/rekap-nik", "{path}");
    }
    let r = raw_request(gw.addr, &get("/bappeda/laporan/laporan/2026-05", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        call_records(&gw).pop().unwrap()["endpoint"],
        "GET /laporan/{id}"
    );

    // Without path_matching the same registry is refused, saying what to add.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("registry")).unwrap();
    std::fs::write(
        dir.path().join("registry/bappeda.toml"),
        format!(
            "{}\n{endpoints}",
            agency("bappeda", "laporan", &[echo.url()], "")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let Err(e) = gerbang::load(
        &dir.path().join("gerbang.toml"),
        &gerbang::Overrides::default(),
    ) else {
        panic!("the shadowing registry is refused");
    };
    let e = e.to_string();
    assert!(
        e.contains("`GET /laporan/{id}` (terbuka) also takes `/laporan/REKAP-NIK`")
            && e.contains("path_matching"),
        "{e}"
    );
}
