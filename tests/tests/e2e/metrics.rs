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
    for _ in 0..3 {
        let r = raw_request(
            gw.addr,
            &get(&path, "X-Gerbang-Purpose: pelayanan-kesehatan\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(raw_request(gw.addr, &get(&path, "")).await.status, 403);
    assert_eq!(
        raw_request_as_is(gw.addr, &get(&path, "")).await.status,
        401
    );
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
