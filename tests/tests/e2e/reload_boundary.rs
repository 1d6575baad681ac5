//! One reload boundary: every key of the configuration reference (`config/README.md`, the
//! table of `gerbang.toml`) is changed on a running gateway, one at a time; the reload must
//! either apply it (checked where the gateway shows it) or name it in `restart_needed`. A key
//! the reference gains without being classified here fails the test.

use std::path::Path;

use gerbang::demo::Kind;
use gerbang_e2e::*;

/// What a reload must do with a changed key.
enum Expect {
    /// Applied: the reload reports nothing and the check sees the new value.
    Applied(fn(&TestGateway) -> bool),
    /// Applied, with nothing the test can read back (named here so that it is a decision).
    AppliedUnseen,
    /// Not applied: `restart_needed` names this.
    Restart(&'static str),
}

/// The keys of the main file's reference table, in order.
fn reference_keys() -> Vec<String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/README.md"))
            .unwrap();
    let mut keys = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("| key |") || line.starts_with("| Key |") {
            in_table = true;
            continue;
        }
        if in_table && !line.starts_with('|') {
            break;
        }
        if in_table && line.starts_with("| `") {
            let cell = line.split('|').nth(1).unwrap_or("");
            for part in cell.split(',') {
                let k = part.trim().trim_matches('`');
                if !k.is_empty() {
                    keys.push(k.to_owned());
                }
            }
        }
    }
    keys
}

/// The change made for `key`: (dotted key, TOML value) pairs set in the main file, and what the
/// reload must do. `dir` is the gateway's directory (for files a value names).
fn change(key: &str, dir: &Path) -> Option<(Vec<(&'static str, String)>, Expect)> {
    let q = |s: &str| format!("{s:?}");
    let p = |name: &str| q(&dir.join(name).display().to_string());
    let tls = || {
        vec![
            ("server.tls.cert_file", p("tls/cert.pem")),
            ("server.tls.key_file", p("tls/key.pem")),
        ]
    };
    let with = |mut v: Vec<(&'static str, String)>, k: &'static str, val: String| {
        v.push((k, val));
        v
    };
    let one = |k: &'static str, v: &str| vec![(k, v.to_owned())];
    // A [cluster] setting other than the URL only matters with Redis.
    let redis = |k: &'static str, v: &str| {
        vec![
            ("cluster.redis_url", "\"redis://127.0.0.1:1/0\"".to_owned()),
            // Cluster mode needs one issuer for all replicas.
            ("auth.issuer", "\"http://gerbang.test\"".to_owned()),
            (k, v.to_owned()),
        ]
    };
    use Expect::*;
    Some(match key {
        "server.listen" => (one("server.listen", "\"127.0.0.1:1\""), Restart("server.listen")),
        "server.worker_threads" => (one("server.worker_threads", "1"), Restart("server.worker_threads")),
        "server.shutdown_grace" => (one("server.shutdown_grace", "\"5s\""), Restart("server.shutdown_grace")),
        "server.header_read_timeout" => (
            one("server.header_read_timeout", "\"5s\""),
            Restart("server.header_read_timeout"),
        ),
        "server.max_connections" => (one("server.max_connections", "500"), Restart("server.max_connections")),
        "server.tls.cert_file" | "server.tls.key_file" => (tls(), Restart("server.tls")),
        "server.tls.client_auth" | "server.tls.client_ca_files" => (
            with(
                with(tls(), "server.tls.client_auth", q("optional")),
                "server.tls.client_ca_files",
                format!("[{}]", p("tls/cert.pem")),
            ),
            Restart("server.tls"),
        ),
        "admin.listen" => (one("admin.listen", "\"127.0.0.1:2\""), Restart("admin.listen")),
        "admin.tokens" => (
            one(
                "admin.tokens",
                &format!(
                    "[{{ name = \"ops\", digest = \"{}\" }}]",
                    gerbang_auth::apikey::digest_of("reload-boundary-admin-token-000001")
                ),
            ),
            Applied(|gw| gw.running.as_ref().unwrap().reloader.admin_tokens().len() == 1),
        ),
        "admin.watch_files" => (one("admin.watch_files", "false"), Restart("admin.watch_files")),
        "admin.console_idle_timeout" => (
            one("admin.console_idle_timeout", "\"5m\""),
            Restart("admin.console_sessions"),
        ),
        "admin.console_max_session" => (
            one("admin.console_max_session", "\"1h\""),
            Restart("admin.console_sessions"),
        ),
        "limits.max_uri_bytes" => (
            one("limits.max_uri_bytes", "300"),
            Applied(|gw| gateway(gw).settings().limits.max_uri_bytes == 300),
        ),
        "limits.max_header_bytes" => (
            one("limits.max_header_bytes", "2048"),
            Applied(|gw| gateway(gw).settings().limits.max_header_bytes == 2048),
        ),
        "limits.max_filtered_response_bytes" => (
            one("limits.max_filtered_response_bytes", "2048"),
            Applied(|gw| gateway(gw).settings().limits.max_filtered_response_bytes == 2048),
        ),
        "upstream.connect_timeout" => (
            one("upstream.connect_timeout", "\"1s\""),
            Applied(|gw| {
                gateway(gw).registry().services()[0].limits.connect_timeout.as_secs() == 1
            }),
        ),
        "upstream.request_timeout" => (
            one("upstream.request_timeout", "\"7s\""),
            Applied(|gw| {
                gateway(gw).registry().services()[0].limits.request_timeout.as_secs() == 7
            }),
        ),
        "upstream.system_roots" => (one("upstream.system_roots", "false"), Restart("upstream.system_roots")),
        "upstream.ca_files" => (
            one("upstream.ca_files", &format!("[{}]", p("tls/cert.pem"))),
            Restart("upstream.ca_files"),
        ),
        "upstream.pool_idle_timeout" => (
            one("upstream.pool_idle_timeout", "\"10s\""),
            Restart("upstream.pool_idle_timeout"),
        ),
        "upstream.pool_max_idle_per_host" => (
            one("upstream.pool_max_idle_per_host", "3"),
            Restart("upstream.pool_max_idle_per_host"),
        ),
        "paths.registry_dir" => (one("paths.registry_dir", &p("registry2")), Restart("paths.registry_dir")),
        "paths.agreements_dir" => (
            one("paths.agreements_dir", &p("agreements2")),
            Restart("paths.agreements_dir"),
        ),
        "paths.data_dir" => (one("paths.data_dir", &p("data2")), Restart("paths.data_dir")),
        "log.format" => (one("log.format", "\"json\""), Restart("log")),
        "log.level" => (one("log.level", "\"debug\""), Restart("log")),
        // A build without the `otlp` feature refuses an endpoint (tests/otlp.rs covers the
        // build with it); the name of the spans is compared as written.
        "tracing.otlp_endpoint" => return None,
        "tracing.service_name" => (one("tracing.service_name", "\"gw-2\""), Restart("tracing.service_name")),
        "auth.issuer" => (one("auth.issuer", "\"https://gw.example\""), Restart("auth.issuer")),
        "auth.audience" => (
            one("auth.audience", "\"gerbang-2\""),
            Applied(|gw| gateway(gw).authenticator().issuer().audience == "gerbang-2"),
        ),
        "auth.token_ttl" => (
            one("auth.token_ttl", "\"10m\""),
            Applied(|gw| gateway(gw).authenticator().issuer().ttl.as_secs() == 600),
        ),
        "auth.leeway" => (
            one("auth.leeway", "\"10s\""),
            Applied(|gw| gateway(gw).authenticator().issuer().leeway.as_secs() == 10),
        ),
        "auth.keys_dir" => (one("auth.keys_dir", &p("keys2")), Restart("auth.keys_dir")),
        "auth.token_cache_size" => (one("auth.token_cache_size", "10"), Restart("auth.token_cache_size")),
        "auth.assertion" => (
            one("auth.assertion", "false"),
            Applied(|gw| gateway(gw).settings().assertion_ttl.is_none()),
        ),
        // Read by the credential-expiry metric at each reload.
        "auth.signing_key_max_age" => (one("auth.signing_key_max_age", "\"30d\""), AppliedUnseen),
        // The new key ring's activation times (its one key signs at once either way).
        "auth.key_activation_delay" => (one("auth.key_activation_delay", "\"10m\""), AppliedUnseen),
        "auth.keys_poll_interval" => (
            one("auth.keys_poll_interval", "\"2s\""),
            Restart("auth.keys_poll_interval"),
        ),
        "auth.assertion_ttl" => (
            one("auth.assertion_ttl", "\"30s\""),
            Applied(|gw| {
                gateway(gw).settings().assertion_ttl == Some(std::time::Duration::from_secs(30))
            }),
        ),
        "auth.strip_headers" => (
            one("auth.strip_headers", "[\"x-secret\"]"),
            Applied(|gw| gateway(gw).settings().strip_headers.len() == 1),
        ),
        "auth.token_endpoint_concurrency" => (
            one("auth.token_endpoint_concurrency", "3"),
            Restart("auth.token_endpoint"),
        ),
        "auth.token_endpoint_concurrency_per_source" => (
            one("auth.token_endpoint_concurrency_per_source", "2"),
            Restart("auth.token_endpoint"),
        ),
        "auth.token_failures_per_source" => (
            one("auth.token_failures_per_source", "5"),
            Restart("auth.token_endpoint"),
        ),
        "auth.token_failures_per_client" => (
            one("auth.token_failures_per_client", "40"),
            Restart("auth.token_endpoint"),
        ),
        "auth.token_failure_window" => (
            one("auth.token_failure_window", "\"2m\""),
            Restart("auth.token_endpoint"),
        ),
        "[[auth.external]]" => (
            one(
                "auth.external",
                "[{ issuer = \"https://sso.test\", audiences = [\"gerbang\"], algorithms = [\"ES256\"], jwks_url = \"http://127.0.0.1:9/jwks\" }]",
            ),
            Restart("auth.external"),
        ),
        "cluster.replica_id" => (one("cluster.replica_id", "\"gw-other\""), Restart("cluster")),
        "cluster.redis_url" => (redis("cluster.redis_url", "\"redis://127.0.0.1:1/0\""), Restart("cluster")),
        "cluster.on_redis_failure" => (redis("cluster.on_redis_failure", "\"closed\""), Restart("cluster")),
        "cluster.expected_replicas" => (redis("cluster.expected_replicas", "3"), Restart("cluster")),
        "cluster.redis_timeout" => (redis("cluster.redis_timeout", "\"1s\""), Restart("cluster")),
        "cluster.redis_connections" => (redis("cluster.redis_connections", "3"), Restart("cluster")),
        "cluster.revision_poll_interval" => (redis("cluster.revision_poll_interval", "\"2s\""), Restart("cluster")),
        "cluster.revisions_kept" => (redis("cluster.revisions_kept", "20"), Restart("cluster")),
        "audit.enabled" => (one("audit.enabled", "false"), Restart("audit")),
        "audit.dir" => (one("audit.dir", "\"audit2\""), Restart("audit")),
        "audit.fsync" => (one("audit.fsync", "\"always\""), Restart("audit")),
        "audit.fsync_interval" => (one("audit.fsync_interval", "\"2s\""), Restart("audit")),
        "audit.on_failure" => (one("audit.on_failure", "\"open\""), Restart("audit")),
        "audit.max_file_bytes" => (one("audit.max_file_bytes", "8192"), Restart("audit")),
        "audit.seal_every" => (one("audit.seal_every", "10"), Restart("audit")),
        "audit.queue" => (one("audit.queue", "100"), Restart("audit")),
        "audit.ack_timeout" => (one("audit.ack_timeout", "\"3s\""), Restart("audit")),
        "metrics.enabled" => (one("metrics.enabled", "false"), Restart("metrics")),
        "metrics.per_application" => (one("metrics.per_application", "false"), Restart("metrics")),
        other => panic!(
            "`{other}` is in the configuration reference but not classified here: does a reload apply it?"
        ),
    })
}

fn gateway(gw: &TestGateway) -> &gerbang_proxy::Gateway {
    &gw.running.as_ref().unwrap().gateway
}

/// `base` with `key` (dotted) set to the TOML `value`.
fn set(base: &toml::Table, changes: &[(&str, String)]) -> String {
    let mut t = base.clone();
    for (key, value) in changes {
        let parts: Vec<&str> = key.split('.').collect();
        let v: toml::Table = format!("v = {value}").parse().unwrap();
        let mut cur = &mut t;
        for p in &parts[..parts.len() - 1] {
            cur = cur
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        cur.insert(parts[parts.len() - 1].to_owned(), v["v"].clone());
    }
    toml::to_string(&t).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_reload_applies_every_key_or_reports_it() {
    let echo = backend(Kind::Echo, "echo").await;
    let gw = TestGateway::start(&[&agency("a", "s", &[echo.url()], "")], "", "").await;
    let dir = gw.dir.path();
    // Files the changed values name.
    let (cert, key) = self_signed();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("tls/cert.pem"), cert).unwrap();
    std::fs::write(dir.join("tls/key.pem"), key).unwrap();
    copy_dir(&dir.join("registry"), &dir.join("registry2"));
    copy_dir(&dir.join("agreements"), &dir.join("agreements2"));
    copy_dir(&dir.join("data"), &dir.join("data2"));
    copy_dir(&dir.join("data/keys"), &dir.join("keys2"));
    let main = dir.join("gerbang.toml");
    let original = std::fs::read_to_string(&main).unwrap();
    let base: toml::Table = original.parse().unwrap();
    let reloader = &gw.running.as_ref().unwrap().reloader;

    let keys = reference_keys();
    assert!(
        keys.len() > 50,
        "the reference table was not found: {keys:?}"
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for key in &keys {
        let Some((changes, expect)) = change(key, dir) else {
            continue;
        };
        std::fs::write(&main, set(&base, &changes)).unwrap();
        match (reloader.reload("test").await, &expect) {
            (Err(problems), _) => failures.push(format!("{key}: refused: {problems:?}")),
            (Ok(applied), Expect::Restart(name)) => {
                if !applied.restart_needed.iter().any(|r| r == name) {
                    failures.push(format!(
                        "{key}: not applied and not reported (restart_needed {:?})",
                        applied.restart_needed
                    ));
                }
            }
            (Ok(applied), Expect::Applied(_) | Expect::AppliedUnseen) => {
                if !applied.restart_needed.is_empty() {
                    failures.push(format!("{key}: reported {:?}", applied.restart_needed));
                }
                if let Expect::Applied(check) = expect {
                    if !check(&gw) {
                        failures.push(format!("{key}: the reload did not apply it"));
                    }
                }
            }
        }
        // Back to the original: nothing left to report.
        std::fs::write(&main, &original).unwrap();
        match reloader.reload("test").await {
            Ok(a) if a.restart_needed.is_empty() => {}
            other => failures.push(format!("{key}: reverting: {other:?}")),
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 50, "only {checked} keys checked");
}
