//! Konsol Gerbang over plain HTTP (the real-browser tests are in crates/gerbang/tests): roles on
//! the admin API, sign-in and its cookie, security headers on every page, CSRF, the agreement
//! edit (field errors, dry run, save enforced at once, ETag conflict), rate-limited sign-ins,
//! session expiry and revocation, and a NIK that never appears in clear.

use gerbang::demo::Kind;
use gerbang_e2e::*;
use serde_json::{json, Value};

const ROLES: [(&str, &str); 4] = [
    ("ops", "admin"),
    ("opr", "operator"),
    ("aud", "auditor"),
    ("vie", "viewer"),
];

fn token_of(name: &str) -> String {
    format!("console-test-token-{name}-0123456789")
}

fn tokens_toml(names: &[(&str, &str)]) -> String {
    let list: Vec<String> = names
        .iter()
        .map(|(n, r)| {
            format!(
                "{{ name = \"{n}\", role = \"{r}\", digest = \"{}\" }}",
                gerbang_auth::apikey::digest_of(&token_of(n))
            )
        })
        .collect();
    format!("tokens = [{}]\n", list.join(", "))
}

fn registry(penduduk: &Upstream) -> String {
    format!(
        "{}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\nclassification = \"rahasia\"\nsubject = \"nik\"\n",
        agency("dukcapil", "penduduk", &[penduduk.url()], "")
    )
}

const AGREEMENT: &str = "[[agreement]]\nid = \"pks-test\"\ntitle = \"t\"\nlegal_basis = \"x\"\n\
    service = \"dukcapil/penduduk\"\nconsumers = [\"test/client\"]\nendpoints = [\"GET /penduduk/{nik}\"]\n\
    purposes = [\"pelayanan-kesehatan\"]\nmax_classification = \"rahasia\"\n";

async fn start(admin_extra: &str) -> (TestGateway, Upstream) {
    let up = backend(Kind::Penduduk, "p").await;
    let gw = TestGateway::start_with_agreements(
        &[&registry(&up)],
        Some(AGREEMENT),
        "",
        &format!(
            "{}{admin_extra}\n[audit]\nfsync = \"always\"\n",
            tokens_toml(&ROLES)
        ),
    )
    .await;
    (gw, up)
}

fn agreement_file(gw: &TestGateway) -> String {
    std::fs::read_to_string(gw.dir.path().join("agreements/given.toml")).unwrap()
}

/// Percent-encodes a form value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A console request with the session cookie `cookie` (or none).
async fn console(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
) -> RawResponse {
    let cookies = cookie.map(|c| format!("gerbang_console={c}"));
    console_cookies(gw, method, path, cookies.as_deref(), body).await
}

/// A console request with the `Cookie` header `cookies` (or none).
async fn console_cookies(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookies: Option<&str>,
    body: Option<&str>,
) -> RawResponse {
    let cookie = cookies
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_request_as_is(gw.admin, req.as_bytes()).await
}

/// The page, with the `/` that the template engine escapes as `&#x2f;` put back.
fn text(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).replace("&#x2f;", "/")
}

/// The value of the hidden field `name` in `html`, unescaped.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end]
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The value of the cookie `name` that `r` sets, if any.
fn set_cookie(r: &RawResponse, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

/// Posts the sign-in form with `token` as a browser does: the form first (its token, in the
/// page and the `gerbang_masuk` cookie), then the post.
async fn post_sign_in(gw: &TestGateway, token: &str) -> RawResponse {
    let page = console(gw, "GET", "/console/masuk", None, None).await;
    let cookie = set_cookie(&page, "gerbang_masuk").expect("the sign-in form sets its cookie");
    let value = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(hidden(&text(&page), "masuk_csrf"), value);
    console_cookies(
        gw,
        "POST",
        "/console/masuk",
        Some(&format!("gerbang_masuk={value}")),
        Some(&form(&[("masuk_csrf", &value), ("token", token)])),
    )
    .await
}

/// Signs in with `name`'s token: the session id.
async fn sign_in(gw: &TestGateway, name: &str) -> String {
    let r = post_sign_in(gw, &token_of(name)).await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let cookie = set_cookie(&r, "gerbang_console").unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

async fn admin_call(
    gw: &TestGateway,
    name: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> RawResponse {
    let body = body.to_string();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token_of(name),
        body.len()
    );
    raw_request_as_is(gw.admin, req.as_bytes()).await
}

#[tokio::test]
async fn roles_are_enforced_on_the_admin_api() {
    let (gw, _up) = start("").await;
    let agreement = admin_call(
        &gw,
        "ops",
        "GET",
        "/admin/agreements/pks-test",
        &Value::Null,
    )
    .await
    .json();
    let explain = json!({ "consumer": "test/client", "method": "GET", "path": "/dukcapil/penduduk/penduduk/1" });
    // (method, path, body, roles allowed)
    let cases: Vec<(&str, &str, Value, &[&str])> = vec![
        (
            "GET",
            "/admin/services",
            Value::Null,
            &["admin", "operator", "viewer"],
        ),
        (
            "GET",
            "/admin/agreements",
            Value::Null,
            &["admin", "operator", "auditor", "viewer"],
        ),
        (
            "POST",
            "/admin/explain",
            explain,
            &["admin", "operator", "auditor", "viewer"],
        ),
        (
            "POST",
            "/admin/validate",
            Value::Null,
            &["admin", "operator"],
        ),
        ("POST", "/admin/reload", Value::Null, &["admin", "operator"]),
        (
            "PUT",
            "/admin/agreements/pks-test",
            agreement.clone(),
            &["admin"],
        ),
        (
            "DELETE",
            "/admin/applications/test/nothing",
            Value::Null,
            &["admin"],
        ),
    ];
    for (method, path, body, allowed) in &cases {
        for (name, role) in ROLES {
            let r = admin_call(&gw, name, method, path, body).await;
            if allowed.contains(&role) {
                assert_ne!(r.status, 403, "{role} {method} {path}: {}", text(&r));
                assert_ne!(r.status, 401, "{role} {method} {path}");
            } else {
                assert_eq!(r.status, 403, "{role} {method} {path}: {}", text(&r));
                let e = &r.json()["error"];
                assert_eq!(e["code"], "forbidden_role");
                assert_eq!(e["role"], role);
                assert_eq!(e["needed"], json!(allowed), "{method} {path}");
                assert!(e["message"].as_str().unwrap().contains(allowed[0]));
            }
        }
    }
}

#[tokio::test]
async fn sign_in_sets_a_strict_cookie_and_every_page_has_the_security_headers() {
    let (gw, _up) = start("").await;
    let r = console(&gw, "GET", "/console/", None, None).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/console/masuk"));
    let r = console(&gw, "GET", "/console/masuk", None, None).await;
    assert_eq!(r.status, 200);
    let html = text(&r);
    assert!(
        html.contains(r#"<input id="token" name="token" type="password""#),
        "{html}"
    );
    assert!(html.contains(r#"id="masuk""#) && html.contains("Token admin"));
    let r = post_sign_in(&gw, "wrong").await;
    assert_eq!(r.status, 401);
    assert!(set_cookie(&r, "gerbang_console").is_none());
    // A sign-in posted without the form's own token (another site's form, a script) is
    // refused even with a good admin token: nobody is signed in without knowing.
    for cookies in [None, Some("gerbang_masuk=abc")] {
        let r = console_cookies(
            &gw,
            "POST",
            "/console/masuk",
            cookies,
            Some(&form(&[("masuk_csrf", "abd"), ("token", &token_of("ops"))])),
        )
        .await;
        assert_eq!(r.status, 403, "{}", text(&r));
        assert!(set_cookie(&r, "gerbang_console").is_none());
    }

    let r = post_sign_in(&gw, &token_of("ops")).await;
    assert_eq!(r.status, 303);
    let cookie = format!(
        "gerbang_console={}",
        set_cookie(&r, "gerbang_console").unwrap()
    );
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/console"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP admin listener: {cookie}"
    );
    let sid = cookie
        .strip_prefix("gerbang_console=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(sid.len(), 64);

    for page in [
        "/console/",
        "/console/layanan",
        "/console/layanan/dukcapil/penduduk",
        "/console/aplikasi",
        "/console/perjanjian",
        "/console/perjanjian/pks-test",
        "/console/perjanjian/pks-test/ubah",
        "/console/uji-akses",
        "/console/audit",
        "/console/riwayat",
        "/console/nothing-here",
        "/console/masuk",
    ] {
        let r = console(&gw, "GET", page, Some(&sid), None).await;
        let expected = if page == "/console/nothing-here" {
            404
        } else {
            200
        };
        assert_eq!(r.status, expected, "{page}: {}", text(&r));
        assert_eq!(
            r.header("content-security-policy"),
            Some(gerbang_admin_csp()),
            "{page}"
        );
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{page}"
        );
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{page}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{page}");
        let html = text(&r);
        assert!(!html.contains("<script"), "{page}");
        assert!(!html.contains(" style="), "{page}");
        assert!(html.contains("<h1>"), "{page}");
        if page != "/console/masuk" {
            assert!(html.contains("<nav"), "{page}");
            assert!(html.contains(r#"id="user-name">ops<"#), "{page}");
        }
    }
    // Explain in the console is the API's explain (a POST: the path may hold a NIK).
    let page = text(&console(&gw, "GET", "/console/uji-akses", Some(&sid), None).await);
    let explain = form(&[
        ("csrf", &hidden(&page, "csrf")),
        ("consumer", "test/client"),
        ("method", "GET"),
        ("path", "/dukcapil/penduduk/penduduk/1"),
    ]);
    let r = console(
        &gw,
        "POST",
        "/console/uji-akses",
        Some(&sid),
        Some(&explain),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-security-policy"),
        Some(gerbang_admin_csp())
    );
    let html = text(&r);
    assert!(
        html.contains(r#"id="decision" class="decision-deny">DENY<"#),
        "{html}"
    );
    assert!(html.contains("purpose_missing"), "{html}");
    assert!(html.contains("pks-test"));
    // English on request, remembered in a cookie.
    let r = console(&gw, "GET", "/console/perjanjian?lang=en", Some(&sid), None).await;
    assert!(text(&r).contains("<h1>Agreements</h1>"));
    assert!(r.header("set-cookie").unwrap().starts_with("lang=en"));

    // Sign-out ends the session (with its CSRF token only).
    let html = text(&console(&gw, "GET", "/console/", Some(&sid), None).await);
    let csrf = hidden(&html, "csrf");
    let r = console(&gw, "POST", "/console/keluar", Some(&sid), Some("csrf=x")).await;
    assert_eq!(r.status, 403);
    let r = console(
        &gw,
        "POST",
        "/console/keluar",
        Some(&sid),
        Some(&form(&[("csrf", &csrf)])),
    )
    .await;
    assert_eq!(r.status, 303);
    let r = console(&gw, "GET", "/console/", Some(&sid), None).await;
    assert_eq!(r.status, 303);
}

fn gerbang_admin_csp() -> &'static str {
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
}

/// The edit form's fields as the page shows them, with `changes` applied.
fn edit_form(html: &str, action: &str, csrf: Option<&str>, changes: &[(&str, &str)]) -> String {
    let mut fields: Vec<(String, String)> = vec![("etag".into(), hidden(html, "etag"))];
    if let Some(c) = csrf {
        fields.push(("csrf".into(), c.into()));
    }
    fields.push(("aksi".into(), action.into()));
    for (k, v) in changes {
        fields.push(((*k).into(), (*v).into()));
    }
    // The other fields as they are.
    for (name, value) in [
        ("title", "t"),
        ("legal_basis", "x"),
        ("consumers", "test/client"),
        ("endpoints", "GET /penduduk/{nik}"),
        ("purposes", "pelayanan-kesehatan"),
        ("status", "active"),
        ("max_classification", "rahasia"),
    ] {
        if !changes.iter().any(|(k, _)| *k == name) {
            fields.push((name.into(), value.into()));
        }
    }
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test]
async fn an_agreement_edit_needs_csrf_shows_errors_by_field_previews_saves_and_explains_conflicts()
{
    let (gw, _up) = start("").await;
    let sid = sign_in(&gw, "ops").await;
    let before = agreement_file(&gw);
    let page = text(
        &console(
            &gw,
            "GET",
            "/console/perjanjian/pks-test/ubah",
            Some(&sid),
            None,
        )
        .await,
    );
    for name in [
        "title",
        "legal_basis",
        "consumers",
        "methods",
        "endpoints",
        "purposes",
        "valid_from",
        "valid_until",
        "max_classification",
        "rate_limit",
        "quota",
        "fields",
    ] {
        assert!(page.contains(&format!(r#"id="field-{name}""#)), "{name}");
        assert!(page.contains(&format!(r#"<label for="{name}""#)), "{name}");
    }
    let csrf = hidden(&page, "csrf");
    let path = "/console/perjanjian/pks-test/ubah";
    let nik_path = "/dukcapil/penduduk/penduduk/3603015505900001";
    let purpose = "X-Gerbang-Purpose: pelayanan-kesehatan\r\n";
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, purpose)).await.status,
        200
    );

    // No CSRF token, a wrong one: 403, nothing written.
    let change = [("purposes", "penagihan-pajak")];
    for csrf in [None, Some("0".repeat(64).as_str())] {
        let r = console(
            &gw,
            "POST",
            path,
            Some(&sid),
            Some(&edit_form(&page, "simpan", csrf, &change)),
        )
        .await;
        assert_eq!(r.status, 403, "{}", text(&r));
        assert!(text(&r).contains("CSRF"));
        assert_eq!(agreement_file(&gw), before);
    }

    // An invalid value: shown beside its field, nothing written.
    let r = console(
        &gw,
        "POST",
        path,
        Some(&sid),
        Some(&edit_form(
            &page,
            "simpan",
            Some(&csrf),
            &[("max_classification", "sangat-bogus")],
        )),
    )
    .await;
    assert_eq!(r.status, 422, "{}", text(&r));
    let html = text(&r);
    assert!(
        html.contains(r#"<p class="field-error" id="error-max_classification">"#),
        "{html}"
    );
    assert!(html.contains(r#"id="errors""#));
    assert_eq!(agreement_file(&gw), before);
    // TOML that does not parse: beside its field too.
    let r = console(
        &gw,
        "POST",
        path,
        Some(&sid),
        Some(&edit_form(
            &page,
            "simpan",
            Some(&csrf),
            &[("quota", "{ limit = ")],
        )),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(text(&r).contains(r#"id="error-quota""#));
    assert_eq!(agreement_file(&gw), before);

    // A preview: the diff, nothing written.
    let r = console(
        &gw,
        "POST",
        path,
        Some(&sid),
        Some(&edit_form(&page, "pratinjau", Some(&csrf), &change)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let html = text(&r);
    assert!(html.contains(r#"id="diff""#), "{html}");
    assert!(
        html.contains("+purposes = [&#34;penagihan-pajak&#34;]")
            || html.contains("+purposes = [&quot;penagihan-pajak&quot;]"),
        "{html}"
    );
    // Only what the form changed: no `status` line the file did not have, and the file named
    // as admins know it, not by this process's path.
    assert!(!html.contains("+status"), "{html}");
    assert!(html.contains("+++ agreements/"), "{html}");
    assert_eq!(agreement_file(&gw), before);

    // Save: written, enforced at once, audited with the person's token name.
    let r = console(
        &gw,
        "POST",
        path,
        Some(&sid),
        Some(&edit_form(&page, "simpan", Some(&csrf), &change)),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(
        r.header("location"),
        Some("/console/perjanjian/pks-test?disimpan=1")
    );
    assert!(agreement_file(&gw).contains("penagihan-pajak"));
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, purpose)).await.status,
        403
    );
    let audit = std::fs::read_dir(gw.dir.path().join("data/audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(
        audit.lines().any(|l| l.contains("\"kind\":\"admin\"")
            && l.contains("\"admin\":\"ops\"")
            && l.contains("PUT /admin/agreements/pks-test")),
        "{audit}"
    );

    // The form read before that save is stale now: the conflict is explained, nothing written.
    let after = agreement_file(&gw);
    let r = console(
        &gw,
        "POST",
        path,
        Some(&sid),
        Some(&edit_form(
            &page,
            "simpan",
            Some(&csrf),
            &[("title", "lain")],
        )),
    )
    .await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains(r#"id="conflict""#));
    assert_eq!(agreement_file(&gw), after);

    // A viewer can read it but change nothing, in the console as in the API.
    let vid = sign_in(&gw, "vie").await;
    assert_eq!(
        console(&gw, "GET", "/console/perjanjian/pks-test", Some(&vid), None)
            .await
            .status,
        200
    );
    let vpage = text(&console(&gw, "GET", "/console/", Some(&vid), None).await);
    assert!(!vpage.contains("muat-ulang"));
    let vcsrf = hidden(&vpage, "csrf");
    let r = console(&gw, "GET", path, Some(&vid), None).await;
    assert_eq!(r.status, 403);
    assert!(text(&r).contains("admin"));
    let r = console(
        &gw,
        "POST",
        path,
        Some(&vid),
        Some(&edit_form(
            &page,
            "simpan",
            Some(&vcsrf),
            &[("title", "lain")],
        )),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(agreement_file(&gw), after);
    assert_eq!(
        console(&gw, "GET", "/console/audit", Some(&vid), None)
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited_per_client() {
    let (gw, _up) = start("").await;
    for _ in 0..5 {
        let r = post_sign_in(&gw, "wrong").await;
        assert_eq!(r.status, 401);
    }
    // Locked out for the minute, even with the right token.
    let r = post_sign_in(&gw, &token_of("ops")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert!(set_cookie(&r, "gerbang_console").is_none());
}

#[tokio::test]
async fn sessions_expire_when_idle_and_end_with_their_token() {
    let (gw, _up) = start("console_idle_timeout = \"1s\"\n").await;
    let sid = sign_in(&gw, "aud").await;
    assert_eq!(
        console(&gw, "GET", "/console/perjanjian", Some(&sid), None)
            .await
            .status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = console(&gw, "GET", "/console/perjanjian", Some(&sid), None).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/console/masuk"));

    // A token removed from the configuration ends its sessions at the next request.
    let sid = sign_in(&gw, "vie").await;
    assert_eq!(
        console(&gw, "GET", "/console/perjanjian", Some(&sid), None)
            .await
            .status,
        200
    );
    let main = gw.dir.path().join("gerbang.toml");
    let text_before = std::fs::read_to_string(&main).unwrap();
    let without = text_before.replace(&tokens_toml(&ROLES), &tokens_toml(&[("ops", "admin")]));
    assert_ne!(without, text_before);
    std::fs::write(&main, without).unwrap();
    let r = admin_call(&gw, "ops", "POST", "/admin/reload", &Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        console(&gw, "GET", "/console/perjanjian", Some(&sid), None)
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn an_auditor_finds_calls_by_nik_which_never_appears_in_clear() {
    let logs = captured_logs();
    let (gw, _up) = start("").await;
    let nik = "3603015505900777";
    let r = raw_request(
        gw.addr,
        &get(
            &format!("/dukcapil/penduduk/penduduk/{nik}"),
            "X-Gerbang-Purpose: pelayanan-kesehatan\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let sid = sign_in(&gw, "aud").await;
    let page = text(&console(&gw, "GET", "/console/audit", Some(&sid), None).await);
    assert!(
        page.contains(r#"<ul class="plain" id="verify"><li class="verify-ok"><strong>"#)
            && page.contains("</strong>: Log audit utuh"),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");
    let r = console(
        &gw,
        "POST",
        "/console/audit",
        Some(&sid),
        Some(&form(&[("csrf", &csrf), ("nik", nik)])),
    )
    .await;
    assert_eq!(r.status, 200);
    let html = text(&r);
    assert!(!html.contains(nik), "the NIK in clear in the page");
    assert!(html.contains("36************77"), "{html}");
    let table = &html[html.find(r#"id="results""#).unwrap()..];
    let rows = table.matches("<tr><td>").count();
    assert_eq!(rows, 1, "{table}");
    assert!(
        table.contains("test/client") && table.contains("pks-test") && table.contains(" WIB<"),
        "{table}"
    );
    // Another NIK finds nothing.
    let r = console(
        &gw,
        "POST",
        "/console/audit",
        Some(&sid),
        Some(&form(&[("csrf", &csrf), ("nik", "3603015505900778")])),
    )
    .await;
    let html = text(&r);
    let table = &html[html.find(r#"id="results""#).unwrap()..];
    assert_eq!(table.matches("<tr><td>").count(), 0);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!logged.contains(nik), "the NIK in clear in the log");
    // Without the CSRF token the search is refused.
    let r = console(
        &gw,
        "POST",
        "/console/audit",
        Some(&sid),
        Some(&form(&[("nik", nik)])),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!text(&r).contains(nik));
}

#[tokio::test]
async fn overview_counts_calls_services_edit_instances_and_a_rotated_secret_is_shown_once() {
    let (gw, up) = start("").await;
    let nik_path = "/dukcapil/penduduk/penduduk/3603015505900001";
    let purpose = "X-Gerbang-Purpose: pelayanan-kesehatan\r\n";
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, purpose)).await.status,
        200
    );
    assert_eq!(raw_request(gw.addr, &get(nik_path, "")).await.status, 403);
    let sid = sign_in(&gw, "ops").await;
    let html = text(&console(&gw, "GET", "/console/", Some(&sid), None).await);
    let traffic = &html[html.find(r#"id="traffic""#).expect(&html)..];
    assert!(
        traffic.contains("<td>test</td><td>dukcapil/penduduk</td><td>2</td>"),
        "{traffic}"
    );
    let denials = &html[html.find(r#"id="denials""#).unwrap()..];
    assert!(
        denials.contains("<td>purpose_missing</td><td>1</td>"),
        "{denials}"
    );
    assert!(
        html.contains(r#"id="config-hash""#) && html.contains(" WIB</dd>"),
        "{html}"
    );

    // Instances: a bad URL is refused with nothing written; a good one is applied.
    let registry_file = gw.dir.path().join("registry/a0.toml");
    let before = std::fs::read_to_string(&registry_file).unwrap();
    let page = text(
        &console(
            &gw,
            "GET",
            "/console/layanan/dukcapil/penduduk",
            Some(&sid),
            None,
        )
        .await,
    );
    let csrf = hidden(&page, "csrf");
    let etag = hidden(&page, "etag");
    let bad = form(&[
        ("csrf", &csrf),
        ("etag", &etag),
        (
            "instances",
            r#"[{ "name": "p-1", "url": "ftp://nowhere" }]"#,
        ),
    ]);
    let r = console(
        &gw,
        "POST",
        "/console/layanan/dukcapil/penduduk",
        Some(&sid),
        Some(&bad),
    )
    .await;
    assert!(text(&r).contains(r#"id="errors""#), "{}", text(&r));
    assert_eq!(std::fs::read_to_string(&registry_file).unwrap(), before);
    let good_list = format!(r#"[{{ "name": "p-baru", "url": "{}" }}]"#, up.url());
    let good = form(&[("csrf", &csrf), ("etag", &etag), ("instances", &good_list)]);
    let r = console(
        &gw,
        "POST",
        "/console/layanan/dukcapil/penduduk",
        Some(&sid),
        Some(&good),
    )
    .await;
    assert!(text(&r).contains(r#"id="notice""#), "{}", text(&r));
    assert!(std::fs::read_to_string(&registry_file)
        .unwrap()
        .contains("p-baru"));
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, purpose)).await.status,
        200
    );

    // A rotated secret: shown on its result page once, only its hash in the file.
    let page = text(&console(&gw, "GET", "/console/aplikasi", Some(&sid), None).await);
    let csrf = hidden(&page, "csrf");
    let r = console(
        &gw,
        "POST",
        "/console/aplikasi/test/client/ganti-secret",
        Some(&sid),
        Some(&form(&[("csrf", &csrf)])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let html = text(&r);
    let secret = {
        let marker = r#"id="secret" type="text" readonly value=""#;
        let start = html.find(marker).expect(&html) + marker.len();
        html[start..start + html[start..].find('"').unwrap()].to_owned()
    };
    assert!(secret.len() >= 32, "{secret}");
    let files: String = std::fs::read_dir(gw.dir.path().join("registry"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!files.contains(&secret));
    let again = text(&console(&gw, "GET", "/console/aplikasi", Some(&sid), None).await);
    assert!(!again.contains(&secret));
    // An operator may look but not rotate.
    let oid = sign_in(&gw, "opr").await;
    let page = text(&console(&gw, "GET", "/console/aplikasi", Some(&oid), None).await);
    assert!(!page.contains("ganti-secret"));
    let r = console(
        &gw,
        "POST",
        "/console/aplikasi/test/client/ganti-secret",
        Some(&oid),
        Some(&form(&[("csrf", &hidden(&page, "csrf"))])),
    )
    .await;
    assert_eq!(r.status, 403);
}

/// Every `*.jsonl`-or-other file under `dir`, as text (the audit log's segments).
fn all_text_under(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&all_text_under(&p));
        } else if let Ok(t) = std::fs::read_to_string(&p) {
            out.push_str(&t);
        }
    }
    out
}

/// The textarea `record` of an editor page, unescaped.
fn record_of(html: &str) -> String {
    let start = html.find(r#"name="record""#).expect(html);
    let start = start + html[start..].find('>').unwrap() + 1;
    let end = start + html[start..].find("</textarea>").unwrap();
    html[start..end]
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn the_record_editor_creates_previews_saves_and_deletes_every_kind_through_the_api_rules() {
    let (gw, up) = start("").await;
    let nik_path = "/dukcapil/penduduk/penduduk/3603015505900001";
    let purpose = "X-Gerbang-Purpose: pelayanan-kesehatan\r\n";
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, purpose)).await.status,
        200
    );
    let registry_file = gw.dir.path().join("registry/a0.toml");
    let sid = sign_in(&gw, "ops").await;
    let edit = "/console/sunting/layanan/dukcapil/penduduk";
    let page = text(&console(&gw, "GET", edit, Some(&sid), None).await);
    let record = record_of(&page);
    assert!(
        record.contains("[[instance]]") && record.contains("/penduduk/{nik}"),
        "{record}"
    );
    let (csrf, etag) = (hidden(&page, "csrf"), hidden(&page, "etag"));
    let post = |record: String, action: &'static str, etag: String| {
        form(&[
            ("csrf", &csrf),
            ("etag", &etag),
            ("record", &record),
            ("aksi", action),
        ])
    };

    // Invalid: the agreement names the endpoint `GET /penduduk/{nik}`; renaming it is refused
    // with the problem shown, the file unchanged.
    let before = std::fs::read_to_string(&registry_file).unwrap();
    let renamed = record.replace("/penduduk/{nik}", "/warga/{nik}");
    let r = console(
        &gw,
        "POST",
        edit,
        Some(&sid),
        Some(&post(renamed, "simpan", etag.clone())),
    )
    .await;
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(
        text(&r).contains(r#"id="errors""#) && text(&r).contains("pks-test"),
        "{}",
        text(&r)
    );
    assert_eq!(std::fs::read_to_string(&registry_file).unwrap(), before);
    // Not TOML: the parse error with its place, nothing written.
    let r = console(
        &gw,
        "POST",
        edit,
        Some(&sid),
        Some(&post("name = ".into(), "simpan", etag.clone())),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(text(&r).contains("TOML"), "{}", text(&r));
    assert_eq!(std::fs::read_to_string(&registry_file).unwrap(), before);

    // Preview: the diff, nothing written. Then save: the data plane follows at once (the only
    // instance now points at a closed port).
    let dead = "http://127.0.0.1:9";
    let moved = record.replace(&up.url(), dead);
    assert_ne!(moved, record);
    let r = console(
        &gw,
        "POST",
        edit,
        Some(&sid),
        Some(&post(moved.clone(), "pratinjau", etag.clone())),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let html = text(&r);
    assert!(html.contains(r#"id="preview-ok""#), "{html}");
    assert!(
        html.replace("&quot;", "\"")
            .contains(&format!("+url = \"{dead}\"")),
        "{html}"
    );
    assert_eq!(std::fs::read_to_string(&registry_file).unwrap(), before);
    let r = console(
        &gw,
        "POST",
        edit,
        Some(&sid),
        Some(&post(moved.clone(), "simpan", etag.clone())),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert!(std::fs::read_to_string(&registry_file)
        .unwrap()
        .contains(dead));
    let status = raw_request(gw.addr, &get(nik_path, purpose)).await.status;
    assert!(status == 502 || status == 503, "{status}");
    // The old ETag is stale now: a second save with it is a conflict, explained.
    let r = console(
        &gw,
        "POST",
        edit,
        Some(&sid),
        Some(&post(record.clone(), "simpan", etag)),
    )
    .await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains(r#"id="conflict""#));
    // Read again, put the upstream back.
    let page = text(&console(&gw, "GET", edit, Some(&sid), None).await);
    let r = console(
        &gw,
        "POST",
        edit,
        Some(&sid),
        Some(&post(record.clone(), "simpan", hidden(&page, "etag"))),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, purpose)).await.status,
        200
    );

    // A new agreement, created from the form; the same id again does not overwrite it.
    let page = text(&console(&gw, "GET", "/console/baru/perjanjian", Some(&sid), None).await);
    assert!(page.contains(r#"id="record-id""#), "{page}");
    let new_agreement = "title = \"Baru\"\nlegal_basis = \"x\"\nservice = \"dukcapil/penduduk\"\n\
        consumers = [\"test/client\"]\nendpoints = [\"GET /penduduk/{nik}\"]\n\
        purposes = [\"statistik\"]\nmax_classification = \"rahasia\"\n";
    let create = form(&[
        ("csrf", &csrf),
        ("id", "pks-baru"),
        ("record", new_agreement),
        ("aksi", "simpan"),
    ]);
    let r = console(
        &gw,
        "POST",
        "/console/baru/perjanjian",
        Some(&sid),
        Some(&create),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert!(
        agreement_file(&gw).contains("pks-baru")
            || all_text_under(&gw.dir.path().join("agreements")).contains("pks-baru")
    );
    let again = form(&[
        ("csrf", &csrf),
        ("id", "pks-baru"),
        ("record", &new_agreement.replace("Baru", "Timpa")),
        ("aksi", "simpan"),
    ]);
    let r = console(
        &gw,
        "POST",
        "/console/baru/perjanjian",
        Some(&sid),
        Some(&again),
    )
    .await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(!all_text_under(&gw.dir.path().join("agreements")).contains("Timpa"));
    // The new purpose is in force at once.
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, "X-Gerbang-Purpose: statistik\r\n"))
            .await
            .status,
        200
    );

    // Delete: refused without the confirmation, done with it; the purpose is gone again.
    let edit_new = "/console/sunting/perjanjian/pks-baru";
    let page = text(&console(&gw, "GET", edit_new, Some(&sid), None).await);
    let del = |confirm: bool| {
        let mut f = vec![("csrf", csrf.as_str()), ("aksi", "hapus")];
        if confirm {
            f.push(("konfirmasi", "ya"));
        }
        form(&f)
    };
    let r = console(&gw, "POST", edit_new, Some(&sid), Some(&del(false))).await;
    assert_eq!(r.status, 422);
    assert!(all_text_under(&gw.dir.path().join("agreements")).contains("pks-baru"));
    assert!(page.contains(r#"id="hapus""#));
    let r = console(&gw, "POST", edit_new, Some(&sid), Some(&del(true))).await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert!(!all_text_under(&gw.dir.path().join("agreements")).contains("pks-baru"));
    assert_eq!(
        raw_request(gw.addr, &get(nik_path, "X-Gerbang-Purpose: statistik\r\n"))
            .await
            .status,
        403
    );

    // Every console change is an admin audit record naming the person and the console.
    let audit = all_text_under(&gw.dir.path().join("data"));
    assert!(
        audit.matches(r#""via":"console""#).count() >= 4 && audit.contains(r#""admin":"ops""#),
        "{audit}"
    );

    // The files in force, downloaded (what `gerbang admin export` writes).
    let r = console(
        &gw,
        "GET",
        "/console/riwayat/terkini/unduh",
        Some(&sid),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        v.to_string().contains("pks-test") && v.to_string().contains("[[service.instance]]"),
        "{v}"
    );

    // The API: If-None-Match: * creates only.
    let body = json!({ "name": "Dukcapil lagi" });
    let req = format!(
        "PUT /admin/agencies/dukcapil HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nIf-None-Match: *\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token_of("ops"),
        body.to_string().len()
    );
    let r = raw_request_as_is(gw.admin, req.as_bytes()).await;
    assert_eq!(r.status, 412);
    assert!(String::from_utf8_lossy(&r.body).contains("already_exists"));

    // Viewers and operators cannot open the editor, nor post to it.
    for who in ["vie", "opr", "aud"] {
        let s = sign_in(&gw, who).await;
        let r = console(&gw, "GET", edit, Some(&s), None).await;
        assert_eq!(r.status, 403, "{who}");
        let page = text(&console(&gw, "GET", "/console/layanan", Some(&s), None).await);
        assert!(!page.contains("/console/sunting/"), "{who}: {page}");
    }
}

/// Follows the console's sign-in through `idp` up to the return: (the return's response,
/// the authorization URL the console sent the browser to).
async fn sso_round(
    gw: &TestGateway,
    idp: &MockOidc,
    state_override: Option<&str>,
) -> (RawResponse, String) {
    let r = console(gw, "GET", "/console/sso/0/mulai", None, None).await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let to = r.header("location").unwrap().to_owned();
    let pending = set_cookie(&r, "gerbang_sso").expect("the pending sign-in cookie");
    assert!(
        pending.contains("HttpOnly")
            && pending.contains("SameSite=Lax")
            && pending.contains("Path=/console/sso"),
        "{pending}"
    );
    let pending = pending.split(';').next().unwrap().to_owned();
    // The browser at the issuer: it signs the person in and redirects back with a code.
    let path = to.strip_prefix(&idp.issuer).expect(&to);
    let at_idp = raw_request_as_is(
        idp.issuer.strip_prefix("http://").unwrap().parse().unwrap(),
        format!("GET {path} HTTP/1.1\r\nHost: idp\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(at_idp.status, 302);
    let back = at_idp.header("location").unwrap().to_owned();
    let mut q = query_pairs(back.split_once('?').unwrap().1);
    if let Some(s) = state_override {
        q.insert("state".into(), s.into());
    }
    let ret = format!(
        "/console/sso/kembali?code={}&state={}",
        q["code"], q["state"]
    );
    let r = console_cookies(
        gw,
        "GET",
        &ret,
        Some(&format!("gerbang_sso={pending}")),
        None,
    )
    .await;
    (r, to)
}

#[tokio::test]
async fn admins_sign_in_through_the_external_issuer_with_pkce_and_a_claim_maps_their_role() {
    let idp =
        MockOidc::start(json!({ "preferred_username": "budi", "groups": ["gerbang-admin"] })).await;
    let roles = r#"{ admin = ["gerbang-admin"], auditor = ["inspektorat"] }"#;
    let (gw, _up) = start(&format!(
        "\n{}",
        idp.config("http://127.0.0.1:1/console/sso/kembali", roles)
    ))
    .await;
    // The sign-in page offers the issuer.
    let page = text(&console(&gw, "GET", "/console/masuk", None, None).await);
    assert!(
        page.contains(r#"href="/console/sso/0/mulai""#) && page.contains("SSO Pemda"),
        "{page}"
    );

    // A full sign-in: PKCE S256, state and nonce; the verifier only in the token request.
    let (r, to) = sso_round(&gw, &idp, None).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let q = query_pairs(to.split_once('?').unwrap().1);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], "gerbang-console");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32);
    let token_request = query_pairs(idp.token_requests().last().unwrap());
    assert_eq!(token_request["grant_type"], "authorization_code");
    assert!(!to.contains(&token_request["code_verifier"]));
    let session = set_cookie(&r, "gerbang_console").expect("a session");
    assert!(
        session.contains("SameSite=Strict") && session.contains("HttpOnly"),
        "{session}"
    );
    // The pending sign-in is spent.
    let cleared = set_cookie(&r, "gerbang_sso").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The page moves on to the console with a same-site navigation.
    assert!(
        text(&r).contains(r#"http-equiv="refresh" content="0;url=/console/""#),
        "{}",
        text(&r)
    );
    let sid = session.split(';').next().unwrap().to_owned();
    let home = text(&console(&gw, "GET", "/console/", Some(&sid), None).await);
    assert!(
        home.contains("sso:budi") && home.contains("admin"),
        "{home}"
    );

    // What the person changes is recorded under their name.
    let page = text(
        &console(
            &gw,
            "GET",
            "/console/sunting/instansi/dukcapil",
            Some(&sid),
            None,
        )
        .await,
    );
    let change = form(&[
        ("csrf", &hidden(&page, "csrf")),
        ("etag", &hidden(&page, "etag")),
        (
            "record",
            &record_of(&page).replace("name = ", "name = \"Disdukcapil\"\n#"),
        ),
        ("aksi", "simpan"),
    ]);
    let r = console(
        &gw,
        "POST",
        "/console/sunting/instansi/dukcapil",
        Some(&sid),
        Some(&change),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let audit = all_text_under(&gw.dir.path().join("data"));
    assert!(audit.contains(r#""admin":"sso:budi""#), "{audit}");

    // A claim mapped to a lesser role gives that role; an auditor lands on the audit page.
    idp.set_claims(json!({ "preferred_username": "siti", "groups": ["inspektorat", "pegawai"] }));
    let (r, _) = sso_round(&gw, &idp, None).await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("url=/console/audit"));
    let sid = set_cookie(&r, "gerbang_console")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        console(
            &gw,
            "GET",
            "/console/sunting/instansi/dukcapil",
            Some(&sid),
            None
        )
        .await
        .status,
        403
    );

    // Refused, with no session: no mapped value; a wrong state; an ID token for another
    // nonce; a return without the pending cookie.
    idp.set_claims(json!({ "preferred_username": "andi", "groups": ["pegawai"] }));
    let (r, _) = sso_round(&gw, &idp, None).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(set_cookie(&r, "gerbang_console").is_none());
    idp.set_claims(json!({ "preferred_username": "budi", "groups": ["gerbang-admin"] }));
    let (r, _) = sso_round(&gw, &idp, Some("forged-state")).await;
    assert_eq!(r.status, 401);
    assert!(set_cookie(&r, "gerbang_console").is_none());
    idp.force_nonce(Some("another-nonce"));
    let (r, _) = sso_round(&gw, &idp, None).await;
    assert_eq!(r.status, 401);
    assert!(set_cookie(&r, "gerbang_console").is_none());
    idp.force_nonce(None);
    let r = console(
        &gw,
        "GET",
        "/console/sso/kembali?code=code-0&state=x",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(set_cookie(&r, "gerbang_console").is_none());
}
