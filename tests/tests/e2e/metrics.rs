//! Prometheus metrics on the admin listener: the right series move, with labels from the
//! registry only (never a path, a token or a NIK), and the text passes promtool when installed.

use gerbang::demo::Kind;
use gerbang_e2e::*;

#[tokio::test]
async fn series_move_for_the_right_labels_and_never_carry_a_subject_id() {
    let up = backend(Kind::Penduduk, "p").await;
    let registry = format!(
        "{}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\nclassification = \"rahasia\"\nsubject = \"nik\"\n",
        agency("dukcapil", "penduduk", &[up.url()], "")
    );
    let agreement = "[[agreement]]\nid = \"pks-m\"\ntitle = \"t\"\nlegal_basis = \"x\"\n\
        service = \"dukcapil/penduduk\"\nconsumers = [\"test/client\"]\npurposes = [\"pelayanan-kesehatan\"]\n\
        max_classification = \"rahasia\"\n";
    let gw = TestGateway::start_with_agreements(&[&registry], Some(agreement), "", "").await;
    let nik = "3603015505900001";
    let path = format!("/dukcapil/penduduk/penduduk/{nik}");
    // Body bytes the clients of this service received, to compare with the counter.
    let mut body_bytes = 0;
    for _ in 0..3 {
        let r = raw_request(
            gw.addr,
            &get(&path, "X-Gerbang-Purpose: pelayanan-kesehatan\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
        body_bytes += r.body.len();
    }
    let denied = raw_request(gw.addr, &get(&path, "")).await;
    assert_eq!(denied.status, 403);
    let unauthenticated = raw_request_as_is(gw.addr, &get(&path, "")).await;
    assert_eq!(unauthenticated.status, 401);
    body_bytes += denied.body.len() + unauthenticated.body.len();
    // The token endpoint: an unknown client and a malformed request.
    let token = |body: &str| {
        format!(
            "POST /oauth/token HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let r = raw_request_as_is(
        gw.addr,
        &token("grant_type=client_credentials&client_id=x%2Fy&client_secret=z"),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = raw_request_as_is(gw.addr, &token("grant_type=password")).await;
    assert_eq!(r.status, 400);
    // A NIK in the service position of an unknown route must not become a label either.
    assert_eq!(
        raw_request(gw.addr, &get(&format!("/dukcapil/{nik}/x"), ""))
            .await
            .status,
        404
    );

    let m = raw_request_as_is(gw.admin, &get("/metrics", "")).await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(m.body).unwrap();
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let allowed = "gerbang_requests_total{consumer=\"test/client\",consumer_agency=\"test\",decision=\"allow\",endpoint=\"GET /penduduk/{nik}\",method=\"GET\",service=\"dukcapil/penduduk\",status_class=\"2xx\"}";
    assert_eq!(value(allowed), Some(3.0), "{text}");
    assert_eq!(
        value("gerbang_policy_decisions_total{decision=\"deny\",reason=\"purpose_missing\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("gerbang_auth_failures_total{reason=\"missing_credentials\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("gerbang_request_duration_seconds_count{service=\"dukcapil/penduduk\"}"),
        Some(5.0)
    );
    assert_eq!(
        value("gerbang_audit_records_total{result=\"written\"}"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(value("gerbang_in_flight_requests"), Some(0.0));
    // Only the three allowed calls reached the upstream.
    assert_eq!(
        value("gerbang_upstream_duration_seconds_count{service=\"dukcapil/penduduk\"}"),
        Some(3.0)
    );
    assert_eq!(
        value("gerbang_sent_bytes_total{service=\"dukcapil/penduduk\"}"),
        Some(body_bytes as f64),
        "{text}"
    );
    assert_eq!(
        value("gerbang_token_requests_total{result=\"invalid_client\"}"),
        Some(1.0)
    );
    // The issuer's endpoints make no data-sharing decision.
    assert_eq!(
        value("gerbang_requests_total{consumer=\"anonymous\",consumer_agency=\"anonymous\",decision=\"none\",endpoint=\"none\",method=\"POST\",service=\"gateway/oauth-token\",status_class=\"4xx\"}"),
        Some(2.0),
        "{text}"
    );
    // Both results exist from the start (at 0); the malformed request counted under one.
    assert_eq!(
        value("gerbang_token_requests_total{result=\"unsupported_grant_type\"}").unwrap_or(0.0)
            + value("gerbang_token_requests_total{result=\"invalid_request\"}").unwrap_or(0.0),
        1.0,
        "{text}"
    );
    // The configuration and the credentials' expiry.
    assert_eq!(value("gerbang_config_last_reload_successful"), Some(1.0));
    let info = text
        .lines()
        .find(|l| l.starts_with("gerbang_config_info{hash=\""))
        .expect("config info series");
    assert!(info.ends_with(" 1"), "{info}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let key_due = text
        .lines()
        .find(|l| l.starts_with("gerbang_credential_expiry_timestamp_seconds{kind=\"signing_key\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("signing key expiry series");
    // A key made just now is due in 90 days (the default rotation age).
    assert!(
        (key_due - (now + 90.0 * 86_400.0)).abs() < 3_600.0,
        "{key_due} vs {now}"
    );
    assert!(!text.contains(nik), "a subject id became a label");
    assert!(!text.contains("/penduduk/36"), "a raw path became a label");

    // promtool, when the machine has it (Debian package `prometheus`).
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A fresh gateway exports the counters whose label values are a fixed set at 0, so that the
/// first reload failure, audit failure or refusal is an `increase()` and not a new series; and
/// no series carries Prometheus' own target label `instance`.
#[tokio::test]
async fn a_fresh_gateway_exports_known_counters_at_zero() {
    let up = backend(Kind::Echo, "e").await;
    let gw = TestGateway::single(&[up.url()], "").await;
    let m = raw_request_as_is(gw.admin, &get("/metrics", "")).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    for series in [
        "gerbang_config_reloads_total{result=\"success\"} 0",
        "gerbang_config_reloads_total{result=\"failure\"} 0",
        "gerbang_audit_records_total{result=\"written\"} 0",
        "gerbang_audit_records_total{result=\"failed\"} 0",
        "gerbang_token_requests_total{result=\"issued\"} 0",
        "gerbang_token_requests_total{result=\"invalid_client\"} 0",
        "gerbang_token_auth_throttled_total{by=\"source\"} 0",
        "gerbang_token_auth_throttled_total{by=\"client\"} 0",
        "gerbang_auth_failures_total{reason=\"missing_credentials\"} 0",
        "gerbang_auth_failures_total{reason=\"expired\"} 0",
        "gerbang_policy_decisions_total{decision=\"deny\",reason=\"quota_exhausted\"} 0",
        "gerbang_policy_decisions_total{decision=\"allow\",reason=\"none\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "`{series}` missing:\n{text}"
        );
    }
    assert!(
        !text.contains("{instance=") && !text.contains(",instance="),
        "{text}"
    );
}

/// Every metric the alert rules and the dashboard query is one the gateway exports (a rule on
/// a misspelt series would never fire), and promtool accepts the rules and their unit tests.
#[tokio::test]
async fn alert_rules_and_dashboard_query_real_series() {
    let up = backend(Kind::Echo, "e").await;
    let gw = TestGateway::single(&[up.url()], "").await;
    for path in ["/a/s/x", "/nope/x/y"] {
        let _ = raw_request(gw.addr, &get(path, "")).await;
    }
    let _ = raw_request_as_is(gw.addr, &get("/a/s/x", "")).await;
    let text =
        String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body).unwrap();
    let mut exported: std::collections::HashSet<String> = text
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .filter_map(|l| l.split(' ').nth(2).map(str::to_owned))
        .collect();
    // Families that have no series until their first event (a rate limit, say).
    exported.extend(
        gerbang_proxy::metrics::Metrics::new(true)
            .unwrap()
            .family_names(),
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let rules = std::fs::read_to_string(root.join("prometheus/gerbang-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("grafana/gerbang-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(d["panels"].as_array().unwrap().len() >= 8);
    let mut referenced = Vec::new();
    for text in [&rules, &dashboard] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("gerbang_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            referenced.push(name);
        }
    }
    assert!(referenced.len() >= 10);
    for name in &referenced {
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            exported.contains(family),
            "`{name}` is not exported: {exported:?}"
        );
    }
    for args in [
        vec!["check", "rules", "prometheus/gerbang-alerts.yml"],
        vec!["check", "config", "prometheus/prometheus.yml"],
        vec!["test", "rules", "prometheus/gerbang-alerts.test.yml"],
    ] {
        match std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&root)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => break, // promtool is not installed on this machine
        }
    }
}

/// Bytes received, upstream connect failures and open connections move with what happens.
#[tokio::test]
async fn bytes_connect_failures_and_connections_are_counted() {
    let up = backend(Kind::Echo, "e").await;
    // A port with nothing listening: bound, then closed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = TestGateway::start(
        &[
            &agency("a", "s", &[up.url()], ""),
            &agency("b", "dead", &[format!("http://{dead}")], ""),
        ],
        "",
        "",
    )
    .await;
    let body = "x".repeat(1000);
    let post = format!(
        "POST /a/s/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw_request(gw.addr, post.as_bytes()).await.status, 200);
    for _ in 0..2 {
        assert_eq!(
            raw_request(gw.addr, &get("/b/dead/x", "")).await.status,
            502
        );
    }
    // A client connection held open shows in the data listener's gauge.
    let held = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let scrape = || async {
        String::from_utf8(raw_request_as_is(gw.admin, &get("/metrics", "")).await.body).unwrap()
    };
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let mut text = scrape().await;
    for _ in 0..50 {
        if value(&text, "gerbang_open_connections{listener=\"data\"}") == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        text = scrape().await;
    }
    assert_eq!(
        value(&text, "gerbang_open_connections{listener=\"data\"}"),
        Some(1.0),
        "{text}"
    );
    // The scrape's own connection.
    assert_eq!(
        value(&text, "gerbang_open_connections{listener=\"admin\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "gerbang_received_bytes_total{service=\"a/s\"}"),
        Some(1000.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gerbang_upstream_connect_failures_total{service=\"b/dead\",upstream_instance=\"i0\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gerbang_upstream_duration_seconds_count{service=\"b/dead\"}"
        ),
        None,
        "a failed connect is not an upstream response time"
    );
    drop(held);
    let mut closed = false;
    for _ in 0..100 {
        if value(
            &scrape().await,
            "gerbang_open_connections{listener=\"data\"}",
        ) == Some(0.0)
        {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(closed, "the gauge comes back to 0 when the client leaves");
}
