//! The audit log through the real gateway: records of allowed and denied calls, no subject id
//! in the log, verify on the untouched log and after tampering, subject query, and the
//! fail-closed / fail-open choice when the log cannot be written.

use gerbang::demo::Kind;
use gerbang_e2e::*;
use serde_json::Value;

fn registry(penduduk: &Upstream) -> String {
    format!(
        "{}\n[[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\nclassification = \"rahasia\"\nsubject = \"nik\"\n",
        agency("dukcapil", "penduduk", &[penduduk.url()], "")
    )
}

const AGREEMENT: &str = "[[agreement]]\nid = \"pks-test\"\ntitle = \"t\"\nlegal_basis = \"x\"\n\
    service = \"dukcapil/penduduk\"\nconsumers = [\"test/client\"]\nendpoints = [\"GET /penduduk/{nik}\"]\n\
    purposes = [\"pelayanan-kesehatan\"]\nmax_classification = \"rahasia\"\n";

fn records(gw: &TestGateway) -> Vec<Value> {
    let dir = gw.dir.path().join("data/audit");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn public_key(gw: &TestGateway) -> Vec<u8> {
    hex::decode(
        std::fs::read_to_string(gw.dir.path().join("data/keys/audit-seal.pub"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

#[tokio::test]
async fn calls_are_recorded_verifiable_and_findable_by_subject_never_by_id() {
    let _ = captured_logs();
    let up = backend(Kind::Penduduk, "p").await;
    let mut gw = TestGateway::start_with_agreements(
        &[&registry(&up)],
        Some(AGREEMENT),
        "",
        "[audit]\nfsync = \"always\"\nseal_every = 3\n",
    )
    .await;
    let nik = "3603015505900001";
    let path = format!("/dukcapil/penduduk/penduduk/{nik}");
    let ok = raw_request(
        gw.addr,
        &get(
            &path,
            "X-Gerbang-Purpose: pelayanan-kesehatan\r\n\
             traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
        ),
    )
    .await;
    assert_eq!(ok.status, 200);
    let denied = raw_request(gw.addr, &get(&path, "")).await;
    assert_eq!(denied.status, 403);
    let unauth = raw_request_as_is(gw.addr, &get(&path, "")).await;
    assert_eq!(unauth.status, 401);

    // fsync = always: the records are on disk when the responses arrive.
    let calls: Vec<Value> = records(&gw)
        .into_iter()
        .filter(|r| r["kind"] == "call")
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let (a, d, u) = (&calls[0], &calls[1], &calls[2]);
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["consumer"], "test/client");
    assert_eq!(a["consumer_agency"], "test");
    assert_eq!(a["service"], "dukcapil/penduduk");
    assert_eq!(a["endpoint"], "GET /penduduk/{nik}");
    assert_eq!(a["agreement"], "pks-test");
    assert_eq!(a["purpose"], "pelayanan-kesehatan");
    assert_eq!(a["status"], 200);
    assert_eq!(a["client"], "127.0.0.1");
    assert_eq!(a["request_id"], ok.header("x-request-id").unwrap());
    // The record's size is the response's `Content-Length`, as the client got it.
    let length: u64 = ok
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length on the answer");
    assert_eq!(a["bytes_out"], length, "{a}");
    assert_eq!(length, ok.body.len() as u64);
    assert_eq!(a["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(a["subject_hmac"]
        .as_str()
        .unwrap()
        .starts_with("hmac-sha256:"));
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["reason"], "purpose_missing");
    assert_eq!(d["status"], 403);
    assert_eq!(
        d["subject_hmac"], a["subject_hmac"],
        "same citizen, same hash"
    );
    assert_eq!(u["decision"], "deny");
    assert_eq!(u["reason"], "missing_credentials");
    assert!(u["consumer"].is_null());

    // The NIK is nowhere in the log, nor in any log line.
    let dir = gw.dir.path().join("data/audit");
    for f in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains(nik), "the subject id reached the audit log");
    }
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(!logs.contains(nik), "the subject id reached a log line");

    // Query by subject finds both of this citizen's records.
    let key = gerbang_audit::SubjectKey::from_hex(
        &std::fs::read_to_string(gw.dir.path().join("data/keys/audit-subject.key")).unwrap(),
    )
    .unwrap();
    let hits = gerbang_audit::query(
        &dir,
        &gerbang_audit::Filter {
            subject: Some(nik.into()),
            ..Default::default()
        },
        &key,
    )
    .unwrap();
    assert_eq!(hits.len(), 2);

    // Shut down (seals), then verify; then tamper and verify again.
    gw.shutdown().await;
    let v = gerbang_audit::verify(&dir, &public_key(&gw)).unwrap();
    assert_eq!(v.unsealed, 0);
    assert!(v.seals >= 1);
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"status\":403", "\"status\":200", 1)).unwrap();
    let e = gerbang_audit::verify(&dir, &public_key(&gw)).unwrap_err();
    assert_eq!(e.line, 2, "the edited record is named: {e}");
}

#[tokio::test]
async fn a_log_that_cannot_be_written_refuses_calls_when_fail_closed_and_counts_them_when_fail_open(
) {
    let up = backend(Kind::Penduduk, "p").await;
    for (mode, want_status) in [("closed", 503), ("open", 200)] {
        let gw = TestGateway::start_with_agreements(
            &[&registry(&up)],
            Some(AGREEMENT),
            "",
            &format!(
                "[audit]\nfsync = \"always\"\non_failure = \"{mode}\"\nack_timeout = \"500ms\"\n"
            ),
        )
        .await;
        let path = "/dukcapil/penduduk/penduduk/3603015505900001";
        let purpose = "X-Gerbang-Purpose: pelayanan-kesehatan\r\n";
        assert_eq!(raw_request(gw.addr, &get(path, purpose)).await.status, 200);
        // The log stops accepting records (its writer is gone, as after a disk failure that
        // killed it). Permissions cannot simulate this here: the tests may run as root.
        let sink = gw
            .running
            .as_ref()
            .unwrap()
            .gateway
            .audit()
            .unwrap()
            .clone();
        tokio::task::spawn_blocking(move || sink.close())
            .await
            .unwrap();
        let r = raw_request(gw.addr, &get(path, purpose)).await;
        assert_eq!(r.status, want_status, "{mode}");
        let stats = &gw.running.as_ref().unwrap().gateway.audit().unwrap().stats;
        if mode == "closed" {
            assert_eq!(r.error_code(), "audit_unavailable");
        } else {
            assert_eq!(
                stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
                1,
                "fail-open counts the lost record"
            );
        }
    }
}
