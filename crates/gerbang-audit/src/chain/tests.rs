#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::keys::SubjectKey;
use crate::query::{query, Filter};

struct Log {
    dir: tempfile::TempDir,
    der: Vec<u8>,
    public: Vec<u8>,
}

fn settings(dir: &Path, max_file_bytes: u64, seal_every: u64) -> WriterSettings {
    WriterSettings {
        dir: dir.to_path_buf(),
        max_file_bytes,
        fsync: Fsync::Always,
        seal_every,
        replica: None,
    }
}

fn call(i: u64, subject: &SubjectKey) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "consumer".into(),
        Value::from(if i.is_multiple_of(2) {
            "dinkes/simpus"
        } else {
            "bapenda/esppt"
        }),
    );
    m.insert("service".into(), Value::from("dukcapil/penduduk"));
    m.insert("status".into(), Value::from(200));
    m.insert(
        "subject_hmac".into(),
        Value::from(subject.hash(&format!("36030155059{i:05}"))),
    );
    m
}

/// `n` call records, seal every 5, files of about 1 KiB: several files.
fn log(n: u64) -> (Log, SubjectKey) {
    let dir = tempfile::tempdir().unwrap();
    let der = SealKey::generate_pkcs8().unwrap();
    let key = SealKey::from_pkcs8(&der).unwrap();
    let public = key.public_key();
    let subject = SubjectKey::from_hex(&SubjectKey::generate_hex().unwrap()).unwrap();
    let mut w = Writer::open(settings(dir.path(), 1024, 5), key).unwrap();
    for i in 0..n {
        w.append("call", call(i, &subject)).unwrap();
    }
    w.close().unwrap();
    (Log { dir, der, public }, subject)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    audit_files(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(
        p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

#[test]
fn an_untouched_log_verifies_across_files_and_seals() {
    let (l, _) = log(40);
    let v = verify(l.dir.path(), &l.public).unwrap();
    assert!(v.files >= 3, "{v:?}");
    // 40 calls, a seal after every 5 records (seals count as records too), one at close.
    assert_eq!(v.records, 40 + v.seals);
    assert!(v.seals >= 8);
    assert_eq!(v.unsealed, 0);
    assert_eq!(v.torn_tail, None);
    // Every file but the first starts where the previous one ended.
    for f in files(l.dir.path()).iter().skip(1) {
        let first: Value = serde_json::from_str(&lines(f)[0]).unwrap();
        assert_ne!(first["prev"], GENESIS);
    }
}

#[test]
fn every_kind_of_tampering_is_named() {
    // Edit, delete, insert, reorder, remove a file, forge a seal, the wrong key.
    type Tamper = fn(&Path);
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "edit a field",
            |d| {
                let f = &files(d)[1];
                let mut ls = lines(f);
                let i = ls.iter().position(|l| l.contains("\"consumer\"")).unwrap();
                ls[i] = ls[i]
                    .replace("dinkes/simpus", "dinkes/simpuz")
                    .replace("bapenda/esppt", "bapenda/espPt");
                write_lines(f, &ls);
            },
            "was changed",
        ),
        (
            "delete a record",
            |d| {
                let f = &files(d)[0];
                let mut ls = lines(f);
                ls.remove(2);
                write_lines(f, &ls);
            },
            "sequence",
        ),
        (
            "swap two records",
            |d| {
                let f = &files(d)[0];
                let mut ls = lines(f);
                ls.swap(1, 2);
                write_lines(f, &ls);
            },
            "sequence",
        ),
        (
            "insert a record",
            |d| {
                let f = &files(d)[0];
                let mut ls = lines(f);
                let copy = ls[1].clone();
                ls.insert(2, copy);
                write_lines(f, &ls);
            },
            "sequence",
        ),
        (
            "remove a middle file",
            |d| {
                std::fs::remove_file(&files(d)[1]).unwrap();
            },
            "is missing",
        ),
        (
            "remove the first file",
            |d| {
                std::fs::remove_file(&files(d)[0]).unwrap();
            },
            "is missing",
        ),
        (
            "cut a middle file short",
            |d| {
                let f = &files(d)[1];
                let text = std::fs::read(f).unwrap();
                std::fs::write(f, &text[..text.len() - 10]).unwrap();
            },
            "without its end",
        ),
        (
            "edit the last record (the final seal)",
            |d| {
                let all = files(d);
                let f = all.last().unwrap();
                let mut ls = lines(f);
                let last = ls.len() - 1;
                let mut v: Value = serde_json::from_str(&ls[last]).unwrap();
                v["sig"] = Value::from(base64::engine::general_purpose::STANDARD.encode([7u8; 64]));
                ls[last] = serde_json::to_string(&v).unwrap();
                write_lines(f, &ls);
            },
            "seal",
        ),
    ];
    for (name, tamper, want) in cases {
        let (l, _) = log(40);
        tamper(l.dir.path());
        let e = verify(l.dir.path(), &l.public).expect_err(name);
        assert!(e.what.contains(want), "{name}: {e}");
        assert!(e.file.contains("audit-") || e.line == 0, "{name}: {e}");
    }
    // A correct log checked with another key: the seals fail.
    let (l, _) = log(10);
    let other = SealKey::from_pkcs8(&SealKey::generate_pkcs8().unwrap())
        .unwrap()
        .public_key();
    let e = verify(l.dir.path(), &other).unwrap_err();
    assert!(e.what.contains("seal"), "{e}");
    let _ = l.der;
}

#[test]
fn an_edited_record_is_named_by_file_and_line() {
    let (l, _) = log(40);
    let f = files(l.dir.path())[0].clone();
    let mut ls = lines(&f);
    ls[2] = ls[2].replace("\"status\":200", "\"status\":201");
    write_lines(&f, &ls);
    let e = verify(l.dir.path(), &l.public).unwrap_err();
    assert!(
        e.file.ends_with(f.file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
    assert_eq!(e.line, 3, "the changed record itself: {e}");
}

#[test]
fn a_torn_last_line_is_a_crash_and_the_writer_recovers() {
    let (l, subject) = log(12);
    let last = files(l.dir.path()).last().unwrap().clone();
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(br#"{"seq":999,"prev":"ab"#).unwrap();
    drop(f);
    let v = verify(l.dir.path(), &l.public).unwrap();
    assert_eq!(
        v.torn_tail.as_ref().map(|t| t.0.clone()),
        Some(last.clone())
    );
    // Reopening cuts the torn bytes, notes them, and continues the chain.
    let key = SealKey::from_pkcs8(&l.der).unwrap();
    let mut w = Writer::open(settings(l.dir.path(), 1024, 5), key).unwrap();
    w.append("call", call(99, &subject)).unwrap();
    w.close().unwrap();
    let v = verify(l.dir.path(), &l.public).unwrap();
    assert_eq!(v.torn_tail, None);
    let mut recovery = None;
    for_each_record(l.dir.path(), |r| {
        if r["kind"] == "recovery" {
            recovery = Some(r);
        }
    })
    .unwrap();
    let r = recovery.expect("a recovery record");
    assert_eq!(r["torn_bytes"], 21);
}

#[test]
fn queries_find_a_subject_by_its_keyed_hash() {
    let (l, subject) = log(20);
    let hits = query(
        l.dir.path(),
        &Filter {
            subject: Some("3603015505900007".into()),
            ..Filter::default()
        },
        &subject,
    )
    .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["consumer"], "bapenda/esppt");
    let text = std::fs::read_to_string(&files(l.dir.path())[0]).unwrap();
    assert!(
        !text.contains("3603015505900007"),
        "the log never holds the id"
    );
    let by_consumer = query(
        l.dir.path(),
        &Filter {
            consumer: Some("dinkes/simpus".into()),
            ..Filter::default()
        },
        &subject,
    )
    .unwrap();
    assert_eq!(by_consumer.len(), 10);
    let none = query(
        l.dir.path(),
        &Filter {
            since: Some("2999-01-01T00:00:00Z".into()),
            ..Filter::default()
        },
        &subject,
    )
    .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123)),
        "2026-11-18T11:06:40.123Z"
    );
}

#[test]
fn raw_records_chain_verify_and_answer_queries_like_map_records() {
    let dir = tempfile::tempdir().unwrap();
    let der = SealKey::generate_pkcs8().unwrap();
    let key = SealKey::from_pkcs8(&der).unwrap();
    let public = key.public_key();
    let subject = SubjectKey::from_hex(&SubjectKey::generate_hex().unwrap()).unwrap();
    let mut w = Writer::open(settings(dir.path(), 1024, 3), key).unwrap();
    for i in 0..20u64 {
        let fields = serde_json::to_vec(&Value::Object(call(i, &subject))).unwrap();
        if i % 3 == 0 {
            w.append("call", call(i, &subject)).unwrap();
        } else {
            w.append_raw_buffered("call", &fields).unwrap();
            w.finish_batch().unwrap();
        }
    }
    w.append_raw_buffered("empty", b"{}").unwrap();
    assert!(
        w.append_raw_buffered("call", b"[1]").is_err(),
        "not an object"
    );
    w.close().unwrap();
    let v = verify(dir.path(), &public).unwrap();
    assert!(v.records >= 21, "{v:?}");
    let filter = Filter {
        subject: Some("3603015505900004".into()),
        ..Filter::default()
    };
    let found = query(dir.path(), &filter, &subject).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["consumer"], "dinkes/simpus");
    assert_eq!(found[0]["kind"], "call");
    assert!(found[0]["time"].is_string());
}

#[test]
fn an_anchor_kept_elsewhere_exposes_a_rewritten_or_shortened_log() {
    let dir = tempfile::tempdir().unwrap();
    let der = SealKey::generate_pkcs8().unwrap();
    let public = SealKey::from_pkcs8(&der).unwrap().public_key();
    let subject = SubjectKey::from_hex(&SubjectKey::generate_hex().unwrap()).unwrap();
    let write = |consumer: &str, n: u64| {
        let _ = std::fs::remove_dir_all(dir.path());
        std::fs::create_dir_all(dir.path()).unwrap();
        let mut w = Writer::open(
            settings(dir.path(), 1 << 20, 5),
            SealKey::from_pkcs8(&der).unwrap(),
        )
        .unwrap();
        for i in 0..n {
            let mut m = call(i, &subject);
            m.insert("consumer".into(), Value::from(consumer));
            w.append("call", m).unwrap();
        }
        w.close().unwrap();
    };
    write("dinkes/simpus", 12);
    let v = verify(dir.path(), &public).unwrap();
    let anchor = v.last_seal.clone().expect("a seal");
    assert!(anchor.seq >= 5 && !anchor.sig.is_empty() && !anchor.time.is_empty());
    assert!(verify_with_anchors(dir.path(), &public, std::slice::from_ref(&anchor)).is_ok());
    // Someone with the host (and its seal key) writes a different history: it verifies on its
    // own, but not through the anchor.
    write("bapenda/esppt", 12);
    assert!(verify(dir.path(), &public).is_ok());
    let e = verify_with_anchors(dir.path(), &public, std::slice::from_ref(&anchor)).unwrap_err();
    assert!(e.what.contains("the log was rewritten"), "{e}");
    // A log cut short before the anchor.
    write("dinkes/simpus", 3);
    let e = verify_with_anchors(dir.path(), &public, &[anchor]).unwrap_err();
    assert!(e.what.contains("records were removed"), "{e}");
}

#[test]
fn each_replica_names_itself_in_its_seals_and_queries_merge_replicas_by_time() {
    let subject = SubjectKey::from_hex(&SubjectKey::generate_hex().unwrap()).unwrap();
    let mut logs = Vec::new();
    let mut publics = Vec::new();
    let root = tempfile::tempdir().unwrap();
    for r in ["r0", "r1"] {
        let dir = root.path().join(r);
        // Each replica its own seal key.
        let key = SealKey::from_pkcs8(&SealKey::generate_pkcs8().unwrap()).unwrap();
        publics.push(key.public_key());
        let mut s = settings(&dir, 1 << 20, 3);
        s.replica = Some(r.to_owned());
        let mut w = Writer::open(s, key).unwrap();
        for i in 0..4u64 {
            w.append("call", call(i, &subject)).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        w.close().unwrap();
        logs.push(crate::query::ReplicaLog {
            replica: crate::chain::replica_of(&dir).unwrap().unwrap(),
            dir,
        });
    }
    assert_eq!(logs[0].replica, "r0");
    assert_eq!(logs[1].replica, "r1");
    for (i, log) in logs.iter().enumerate() {
        let v = verify(&log.dir, &publics[i]).unwrap();
        assert_eq!(v.replicas, vec![log.replica.clone()]);
        // The other replica's key does not verify this chain.
        assert!(verify(&log.dir, &publics[1 - i]).is_err());
    }
    let hits = crate::query::query_many(
        &logs,
        &Filter {
            subject: Some("3603015505900002".into()),
            ..Filter::default()
        },
        &subject,
    )
    .unwrap();
    let replicas: Vec<&str> = hits
        .iter()
        .map(|h| h["replica"].as_str().unwrap())
        .collect();
    assert_eq!(replicas, ["r0", "r1"], "r0 wrote first: {hits:?}");
    let all = crate::query::query_many(&logs, &Filter::default(), &subject).unwrap();
    assert_eq!(all.len(), 8);
    assert!(all
        .windows(2)
        .all(|w| w[0]["time"].as_str() <= w[1]["time"].as_str()));
    // A log of an earlier version (no replica in its seals) names none.
    let (old, _) = log(3);
    assert_eq!(crate::chain::replica_of(old.dir.path()).unwrap(), None);
    assert!(verify(old.dir.path(), &old.public)
        .unwrap()
        .replicas
        .is_empty());
}
