//! The admin API: authentication, routing (405 with Allow, the OpenAPI document lists every
//! route), changes validated, persisted, applied live and audited, 412 on a stale If-Match,
//! secret rotation, explain; and reloads under load that fail no request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gerbang::demo::Kind;
use gerbang_e2e::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-for-tests-0123456789";

fn admin_extra() -> String {
    format!(
        "tokens = [{{ name = \"ops-test\", digest = \"{}\" }}]\n",
        gerbang_auth::apikey::digest_of(TOKEN)
    )
}

/// An admin call: (status, headers, JSON body).
async fn admin(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<&Value>,
    extra_headers: &str,
) -> RawResponse {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n{extra_headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_request_as_is(gw.admin, req.as_bytes()).await
}

#[tokio::test]
async fn the_admin_api_needs_a_token_answers_405_with_allow_and_documents_every_route() {
    let up = backend(Kind::Echo, "e").await;
    let gw = TestGateway::start(&[&agency("a", "s", &[up.url()], "")], "", &admin_extra()).await;
    // No token, a wrong one: 401 with the JSON error shape and WWW-Authenticate.
    for auth in ["", "Authorization: Bearer not-the-token\r\n"] {
        let r = raw_request_as_is(gw.admin, &get("/admin/agencies", auth)).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.error_code(), "unauthenticated");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    let r = admin(&gw, "GET", "/admin/agencies", None, "").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    let ids: Vec<&str> = body["agencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"a") && ids.contains(&"test"), "{ids:?}");
    let r = admin(&gw, "DELETE", "/admin/reload", None, "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.error_code(), "method_not_allowed");
    let r = admin(&gw, "GET", "/admin/nothing-here", None, "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    // The probes stay open without a token.
    assert_eq!(
        raw_request_as_is(gw.admin, &get("/health/live", ""))
            .await
            .status,
        200
    );

    // The OpenAPI document lists exactly the routes the router serves.
    let doc = admin(&gw, "GET", "/admin/openapi.json", None, "")
        .await
        .json();
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "put", "post", "delete", "patch"] {
            if item.get(m).is_some() {
                documented.push((path.clone(), m.to_uppercase()));
            }
        }
    }
    let mut served: Vec<(String, String)> = gerbang::admin_api::ROUTES
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(move |m| ((*p).to_owned(), (*m).to_owned())))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

#[tokio::test]
async fn changes_are_validated_persisted_applied_live_and_audited() {
    let up = backend(Kind::Echo, "e").await;
    let mut gw =
        TestGateway::start(&[&agency("a", "s", &[up.url()], "")], "", &admin_extra()).await;
    // A new service: no agreement covers it yet.
    let service = json!({
        "name": "Layanan baru",
        "instance": [{ "name": "n-1", "url": up.url() }],
    });
    // A dry run checks the change against every other file and writes nothing.
    let r = admin(
        &gw,
        "PUT",
        "/admin/services/a/baru?dry_run=true",
        Some(&service),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["dry_run"], true);
    assert_eq!(
        raw_request(gw.addr, &get("/a/baru/x", "")).await.status,
        404
    );
    let r = admin(&gw, "PUT", "/admin/services/a/baru", Some(&service), "").await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let etag1 = r.header("etag").unwrap().to_owned();
    assert_eq!(
        raw_request(gw.addr, &get("/a/baru/x", "")).await.status,
        403
    );
    let agreement = json!({
        "title": "Uji", "legal_basis": "PKS uji", "service": "a/baru", "consumers": ["test/client"],
        "valid_from": "2026-01-01",
    });
    let r = admin(
        &gw,
        "PUT",
        "/admin/agreements/pks-uji-1",
        Some(&agreement),
        "",
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let r = raw_request(gw.addr, &get("/a/baru/x", "")).await;
    assert_eq!(r.status, 200, "applied live");

    // An invalid change is refused whole, with file and key, and nothing is written.
    let registry_file = gw.dir.path().join("registry/a0.toml");
    let before = std::fs::read_to_string(&registry_file).unwrap();
    let bad =
        json!({ "name": "Rusak", "instance": [{ "name": "r-1", "url": "ftp://127.0.0.1:1" }] });
    let r = admin(
        &gw,
        "PUT",
        "/admin/services/a/rusak?dry_run=true",
        Some(&bad),
        "",
    )
    .await;
    assert_eq!(r.status, 422, "a dry run finds the same problems");
    let r = admin(&gw, "PUT", "/admin/services/a/rusak", Some(&bad), "").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.error_code(), "invalid_config");
    let problem = &r.json()["error"]["problems"][0];
    assert!(
        problem["file"].as_str().unwrap().ends_with("a0.toml"),
        "{problem}"
    );
    assert_eq!(problem["key"], "service[2].instance[0].url");
    assert_eq!(std::fs::read_to_string(&registry_file).unwrap(), before);
    // Comments and the other entries of the file survive an API change.
    assert!(before.contains("[[service]]\nid = \"s\""));

    // If-Match: the current ETag passes, a stale one is 412.
    let mut renamed = service.clone();
    renamed["name"] = "Layanan baru (v2)".into();
    let r = admin(
        &gw,
        "PUT",
        "/admin/services/a/baru",
        Some(&renamed),
        &format!("If-Match: {etag1}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let r = admin(
        &gw,
        "PUT",
        "/admin/services/a/baru",
        Some(&service),
        &format!("If-Match: {etag1}\r\n"),
    )
    .await;
    assert_eq!(r.status, 412);
    assert_eq!(r.error_code(), "precondition_failed");
    let got = admin(&gw, "GET", "/admin/services/a/baru", None, "").await;
    assert_eq!(
        got.json()["name"],
        "Layanan baru (v2)",
        "the stale write lost"
    );

    // A new client secret: shown once, works at the token endpoint at once.
    let r = admin(
        &gw,
        "POST",
        "/admin/applications/test/client/rotate-secret",
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let secret = r.json()["client_secret"].as_str().unwrap().to_owned();
    let app = admin(&gw, "GET", "/admin/applications/test/client", None, "").await;
    assert_eq!(app.json()["client_secret_count"], 1);
    assert!(
        !String::from_utf8_lossy(&app.body).contains("argon2"),
        "hashes are not shown"
    );
    let form =
        format!("grant_type=client_credentials&client_id=test%2Fclient&client_secret={secret}");
    let tok = raw_request_as_is(
        gw.addr,
        format!(
            "POST /oauth/token HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(tok.status, 200, "{:?}", String::from_utf8_lossy(&tok.body));

    // Explain.
    let e = admin(
        &gw,
        "POST",
        "/admin/explain",
        Some(&json!({ "consumer": "test/client", "method": "GET", "path": "/a/baru/x" })),
        "",
    )
    .await
    .json();
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["agreement"], "pks-uji-1");
    // An application the registry does not know is refused at authentication, whatever the
    // agreements say.
    let e = admin(
        &gw,
        "POST",
        "/admin/explain",
        Some(&json!({ "consumer": "test/nosuch", "method": "GET", "path": "/a/baru/x" })),
        "",
    )
    .await
    .json();
    assert_eq!(e["decision"], "deny", "{e}");
    assert_eq!(e["reason"], "unknown_application", "{e}");
    assert_eq!(e["stage"], "authenticate", "{e}");

    // Every change is in the audit log, with who made it.
    let audit_dir = gw.dir.path().join("data/audit");
    let mut admin_records = 0;
    for f in std::fs::read_dir(&audit_dir).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        admin_records += text
            .lines()
            .filter(|l| l.contains("\"kind\":\"admin\"") && l.contains("\"admin\":\"ops-test\""))
            .count();
    }
    assert_eq!(
        admin_records, 4,
        "2 PUTs, 1 update, 1 rotation (refused ones are not changes)"
    );

    // Each change was applied once: the file watcher, woken by the writes, finds the files
    // already in force.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let metrics =
        String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body).unwrap();
    assert!(
        metrics.contains("gerbang_config_reloads_total{result=\"success\"} 4\n"),
        "{metrics}"
    );

    // Persisted: a new gateway on the same files serves the new service.
    gw.shutdown().await;
    let cfg = gerbang::load(
        &gw.dir.path().join("gerbang.toml"),
        &gerbang::Overrides::default(),
    )
    .unwrap();
    let again = gerbang::start(cfg).await.unwrap();
    let r = raw_request(again.data_addr, &get("/a/baru/x", "")).await;
    assert_eq!(r.status, 200);
    again.shutdown().await;
}

/// Percentile `p` (0–100) of `v` (sorted here).
fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i]
}

/// Continuous load on a service while `f` runs; returns (sent, failed, latencies).
async fn under_load<F, Fut>(gw: &Arc<TestGateway>, f: F) -> (usize, usize, Vec<Duration>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, stop, sent, failed, lat) = (
            Arc::clone(gw),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&lat),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = raw_request(gw.addr, &get("/a/s/x", "")).await;
                lat.lock().unwrap().push(t.elapsed());
                sent.fetch_add(1, Ordering::SeqCst);
                if r.status != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed: {} {}", r.status, String::from_utf8_lossy(&r.body));
                }
            }
        }));
    }
    f().await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let l = std::mem::take(&mut *lat.lock().unwrap());
    (
        sent.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        l,
    )
}

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request() {
    let up1 = backend(Kind::Echo, "e1").await;
    let up2 = backend(Kind::Echo, "e2").await;
    let gw = Arc::new(
        TestGateway::start(&[&agency("a", "s", &[up1.url()], "")], "", &admin_extra()).await,
    );
    let file = gw.dir.path().join("registry/a0.toml");
    let one = agency("a", "s", &[up1.url()], "");
    let two = agency("a", "s", &[up1.url(), up2.url()], "");

    // Baseline latency without reloads.
    let (base_sent, base_failed, mut base_lat) = under_load(&gw, || async {
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    assert_eq!(base_failed, 0);

    // The backends' URLs (the backends themselves must outlive the load: a closure that took
    // them would stop them when it ends, while calls are still in flight).
    let (url1, url2) = (up1.url(), up2.url());
    let (sent, failed, mut lat) = under_load(&gw, || {
        let gw = Arc::clone(&gw);
        async move {
            for i in 0..20 {
                match i % 5 {
                    // A file edit (the watcher reloads), alternating one and two instances.
                    0 => {
                        std::fs::write(&file, if i % 2 == 0 { &two } else { &one }).unwrap();
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    // An invalid edit: refused, the running configuration stays; then repaired.
                    1 => {
                        std::fs::write(&file, "[agency]\nid = \"a\"\nname = ").unwrap();
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        std::fs::write(&file, &two).unwrap();
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    // POST /admin/reload (SIGHUP is the same `Reloader::reload`; a signal
                    // would reach every gateway of this test binary, so the binary's own test
                    // `sighup_reloads_only_the_process_that_receives_it` sends it to a child).
                    2 | 3 => {
                        let r = admin(&gw, "POST", "/admin/reload", None, "").await;
                        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    }
                    // An admin API change, and an invalid one (refused with 422).
                    _ => {
                        let svc = json!({ "name": format!("s v{i}"), "instance": [{ "name": "i0", "url": url1 }, { "name": "i1", "url": url2 }] });
                        let r = admin(&gw, "PUT", "/admin/services/a/s", Some(&svc), "").await;
                        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                        let bad = json!({ "name": "x", "instance": [] });
                        let r = admin(&gw, "PUT", "/admin/services/a/s", Some(&bad), "").await;
                        assert_eq!(r.status, 422);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    let p99 = percentile(&mut lat, 99.0);
    let base_p99 = percentile(&mut base_lat, 99.0);
    eprintln!(
        "reloads under load: sent {sent}, failed {failed}; p99 {:.2} ms (without reloads: {:.2} ms over {base_sent} calls)",
        p99.as_secs_f64() * 1000.0,
        base_p99.as_secs_f64() * 1000.0
    );
    assert!(sent > 200, "load ran: {sent}");
    assert_eq!(failed, 0, "of {sent} calls");
    // The final configuration is in force: two instances.
    let ready = raw_request_as_is(gw.admin, &get("/health/ready", ""))
        .await
        .json();
    let svc = ready["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "a/s")
        .unwrap()
        .clone();
    assert_eq!(svc["instances"].as_array().unwrap().len(), 2);
    let metrics =
        String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body).unwrap();
    let count = |result: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "gerbang_config_reloads_total{{result=\"{result}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // 12 applied for certain (API reloads, API changes; file edits add more); refused:
    // the 4 invalid API changes, and the invalid file edits the watcher saw before the repair.
    assert!(count("success") >= 12.0, "{metrics}");
    assert!(count("failure") >= 4.0, "{metrics}");
    drop((up1, up2));
}

#[tokio::test]
async fn the_catalogue_lists_services_and_what_the_caller_may_use() {
    let up = backend(Kind::Penduduk, "p").await;
    let registry = format!(
        "{}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\nclassification = \"rahasia\"\nsubject = \"nik\"\n\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/statistik\"\nclassification = \"terbuka\"\n",
        agency("dukcapil", "penduduk", &[up.url()], "")
    );
    let agreements = "[[agreement]]\nid = \"pks-1\"\ntitle = \"Statistik\"\nlegal_basis = \"PKS 1\"\n\
        service = \"dukcapil/penduduk\"\nconsumers = [\"test\"]\nmax_classification = \"terbatas\"\n\
        purposes = [\"statistik\"]\nquota = { limit = 100, per = \"day\" }\n\
        [agreement.fields]\nmask = [{ path = \"nik\", keep_first = 6, keep_last = 4 }]\n\n\
        [[agreement]]\nid = \"pks-2\"\ntitle = \"Lain\"\nlegal_basis = \"PKS 2\"\n\
        service = \"dukcapil/penduduk\"\nconsumers = [\"dukcapil\"]\n";
    let gw = TestGateway::start_with_agreements(&[&registry], Some(agreements), "", "").await;
    // Authenticated like any call.
    let r = raw_request_as_is(gw.addr, &get("/catalog/services", "")).await;
    assert_eq!(r.status, 401);
    let s = raw_request(gw.addr, &get("/catalog/services", "")).await;
    assert_eq!(s.status, 200);
    let v = s.json();
    let svc = &v["services"][0];
    assert_eq!(svc["service"], "dukcapil/penduduk");
    assert_eq!(svc["agency"]["id"], "dukcapil");
    assert_eq!(svc["health"]["available"], true);
    assert_eq!(svc["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(svc["endpoints"][0]["personal_data"], true);
    let a = raw_request(gw.addr, &get("/catalog/allowed", "")).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["application"], "test/client");
    let list = v["agreements"].as_array().unwrap();
    assert_eq!(
        list.len(),
        1,
        "only the agreement that names the caller: {v}"
    );
    assert_eq!(list[0]["agreement"], "pks-1");
    assert_eq!(list[0]["matched_by"], "agency");
    assert_eq!(list[0]["state"], "active");
    assert_eq!(list[0]["purposes"][0], "statistik");
    assert_eq!(list[0]["quota"]["per"], "day");
    assert_eq!(list[0]["fields"]["mask"][0], "nik");
    // Above the agreement's classification: the rahasia endpoint is not offered.
    let eps = list[0]["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0]["id"], "GET /statistik");
    let r = raw_request(
        gw.addr,
        b"POST /catalog/services HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn a_reload_brings_a_rotated_signing_key_into_use() {
    let up = backend(Kind::Echo, "e").await;
    let gw = TestGateway::start(&[&agency("a", "s", &[up.url()], "")], "", "").await;
    let kids = || async {
        let v = raw_request_as_is(gw.addr, &get("/.well-known/jwks.json", ""))
            .await
            .json();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let before = kids().await;
    assert_eq!(before.len(), 1);
    // Key names sort by creation time (to the second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gerbang::config::create_signing_key(&gw.dir.path().join("data/keys")).unwrap();
    gw.running
        .as_ref()
        .unwrap()
        .reloader
        .reload("test")
        .await
        .unwrap();
    let after = kids().await;
    assert_eq!(after.len(), 2, "the old key stays published: {after:?}");
    assert!(after.contains(&before[0]));
}

/// Kubernetes changes a ConfigMap volume by swapping its `..data` link to a new directory; the
/// files themselves are links through it. The watcher must see that and reload.
#[cfg(unix)]
#[tokio::test]
async fn a_configmap_style_link_swap_is_applied_live() {
    use std::os::unix::fs::symlink;
    let up = backend(Kind::Echo, "e").await;
    let gw = TestGateway::start(&[&agency("a", "s", &[up.url()], "")], "", "").await;
    let reg = gw.dir.path().join("registry");
    // Turn a0.toml into a ConfigMap-like layout: a0.toml -> ..data/a0.toml, ..data -> ..v1.
    std::fs::create_dir(reg.join("..v1")).unwrap();
    std::fs::rename(reg.join("a0.toml"), reg.join("..v1/a0.toml")).unwrap();
    symlink("..v1", reg.join("..data")).unwrap();
    symlink("..data/a0.toml", reg.join("a0.toml")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(raw_request(gw.addr, &get("/a/s/x", "")).await.status, 200);
    assert_eq!(raw_request(gw.addr, &get("/a/t/x", "")).await.status, 404);
    // The new version adds service `t`; the swap is one rename of `..data`.
    std::fs::create_dir(reg.join("..v2")).unwrap();
    let v2 = format!(
        "{}\n[[service]]\nid = \"t\"\nname = \"t\"\n\n[[service.instance]]\nname = \"t0\"\nurl = \"{}\"\n",
        agency("a", "s", &[up.url()], ""),
        up.url()
    );
    std::fs::write(reg.join("..v2/a0.toml"), v2).unwrap();
    symlink("..v2", reg.join("..data_tmp")).unwrap();
    std::fs::rename(reg.join("..data_tmp"), reg.join("..data")).unwrap();
    let mut routed = false;
    for _ in 0..100 {
        // Known now (403: no agreement names the new service yet), no longer 404.
        if raw_request(gw.addr, &get("/a/t/x", "")).await.status == 403 {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(routed, "the swapped ConfigMap was not applied");
}

#[tokio::test]
async fn a_reload_revokes_a_removed_admin_token_and_secrets_stay_hidden() {
    let up = backend(Kind::Echo, "e").await;
    let gw = TestGateway::start(&[&agency("a", "s", &[up.url()], "")], "", &admin_extra()).await;
    // Rotation keeps at most the newest previous secret.
    for _ in 0..3 {
        let r = admin(
            &gw,
            "POST",
            "/admin/applications/test/client/rotate-secret",
            Some(&json!({ "keep_previous": true })),
            "",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let app = admin(&gw, "GET", "/admin/applications/test/client", None, "").await;
    assert_eq!(app.json()["client_secret_count"], 2);
    // A dry run shows the resource, without the hashes.
    let mut body = app.json();
    body["name"] = "Klien uji".into();
    let r = admin(
        &gw,
        "PUT",
        "/admin/applications/test/client?dry_run=true",
        Some(&body),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!String::from_utf8_lossy(&r.body).contains("argon2"));
    assert_eq!(r.json()["resource"]["client_secret_count"], 2);
    // The token is removed from the file; the reload revokes it at once.
    let main = gw.dir.path().join("gerbang.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("tokens = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&main, without).unwrap();
    let r = admin(&gw, "POST", "/admin/reload", None, "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = admin(&gw, "GET", "/admin/agencies", None, "").await;
    assert_eq!(r.status, 401, "the removed token no longer works");
}
