//! Cluster identity (issue 13): replicas that share one keys directory sign with and publish
//! the same keys, rotate without refusing a token, and keep each its own audit chain and seal
//! key, which `gerbang audit verify` / `query` read together. No Redis is needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use common::{
    bin, console, console_sign_in, eventually, get, Cluster, ClusterOptions, Echo, RedisServer,
    ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET, ECHO,
};

/// A token of the cluster's client from the token endpoint at `addr`, or why not.
fn try_token(addr: SocketAddr) -> Result<String, String> {
    common::try_token(addr, CLIENT_ID, CLIENT_SECRET)
}

/// Part `i` of a JWT (0 header, 1 claims) as JSON.
fn jwt_part(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The `kid` of a JWT's header.
fn kid_of(token: &str) -> String {
    jwt_part(token, 0)["kid"].as_str().unwrap().to_owned()
}

/// A JWT's `iat` (Unix seconds).
fn iat_of(token: &str) -> u64 {
    jwt_part(token, 1)["iat"].as_u64().unwrap()
}

/// The kids a replica publishes.
fn published(addr: SocketAddr) -> Vec<String> {
    let (status, _, body) = get(addr, "/.well-known/jwks.json", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut kids: Vec<String> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

/// Token endpoint limits high enough for a test that takes many tokens at once from one
/// address; a short activation delay and poll interval.
fn options(extra_registry: Vec<(String, String)>, agreements: String) -> ClusterOptions {
    ClusterOptions {
        auth_extra: "key_activation_delay = \"5s\"\nkeys_poll_interval = \"300ms\"\n\
                     token_endpoint_concurrency = 16\ntoken_endpoint_concurrency_per_source = 16\n"
            .into(),
        registry: extra_registry,
        agreements,
        ..ClusterOptions::default()
    }
}

fn rotate(keys_dir: &std::path::Path) -> String {
    let out = bin()
        .args(["rotate-key", "--keys-dir"])
        .arg(keys_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sign with it from "), "{err}");
    let path = String::from_utf8(out.stdout).unwrap();
    std::path::Path::new(path.trim())
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// When a kid made by `create_signing_key` starts signing under the 5 s delay of [`options`].
fn activation_of(kid: &str) -> SystemTime {
    gerbang::config::key_creation_time(kid, None).unwrap() + Duration::from_secs(5)
}

#[test]
fn key_rotation_under_load_across_replicas_fails_no_call() {
    let mut cluster = Cluster::start(3, options(Vec::new(), String::new()));
    let addrs: Vec<SocketAddr> = cluster.replicas.iter().map(|r| r.data_addr).collect();
    let first = published(addrs[0]);
    assert_eq!(first.len(), 1);
    for a in &addrs {
        assert_eq!(published(*a), first, "one key set everywhere");
    }

    // Load: fresh tokens from random replicas, each used on all three.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // (the token's `iat`, its kid)
    let issued = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (stop, calls, failures, issued) = (
                Arc::clone(&stop),
                Arc::clone(&calls),
                Arc::clone(&failures),
                Arc::clone(&issued),
            );
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let from = addrs[(x % 3) as usize];
                    let token = match try_token(from) {
                        Ok(t) => t,
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            continue;
                        }
                    };
                    issued
                        .lock()
                        .unwrap()
                        .push((iat_of(&token), kid_of(&token)));
                    for to in &addrs {
                        let (status, _, body) = get(*to, &format!("{ECHO}/x"), &token);
                        calls.fetch_add(1, Ordering::Relaxed);
                        if status != 200 {
                            failures.lock().unwrap().push(format!(
                                "token of {from} ({}) at {to}: {status} {body}",
                                kid_of(&token)
                            ));
                        }
                    }
                }
            })
        })
        .collect();

    // Two rotations, one after the other has begun signing.
    std::thread::sleep(Duration::from_secs(1));
    let second = rotate(&cluster.keys_dir());
    let second_at = activation_of(&second);
    // Every replica publishes it well before it signs.
    let seen = common::eventually(Duration::from_secs(3), || {
        addrs.iter().all(|a| published(*a).contains(&second))
    });
    assert!(seen, "the new key was not published by every replica");
    assert!(
        SystemTime::now() < second_at,
        "published only after its activation"
    );
    while SystemTime::now() < second_at + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let third = rotate(&cluster.keys_dir());
    let third_at = activation_of(&third);
    while SystemTime::now() < third_at + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    let calls = calls.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(calls > 30, "the load ran: {calls} calls");
    let issued = issued.lock().unwrap();
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let (second_at, third_at) = (secs(second_at), secs(third_at));
    for (iat, kid) in issued.iter() {
        // No replica signed with a key before its activation (a whole second: the kid's time
        // plus the delay), and every replica switched when it came, without a reload. In the
        // second of an activation either key may sign (the key is chosen a moment before `iat`
        // is taken).
        let allowed: &[&String] = if *iat < second_at {
            &[&first[0]]
        } else if *iat == second_at {
            &[&first[0], &second]
        } else if *iat < third_at {
            &[&second]
        } else if *iat == third_at {
            &[&second, &third]
        } else {
            &[&third]
        };
        assert!(
            allowed.contains(&kid),
            "token issued at {iat} signed by {kid}"
        );
    }
    // Each key signed in its time: the first before the second's activation, and so on.
    let used = |kid: &str| issued.iter().any(|(_, k)| k == kid);
    assert!(
        used(&first[0]) && used(&second) && used(&third),
        "{issued:?}"
    );
    let last = &issued.last().unwrap().1;
    assert_eq!(last, &third, "the newest key signs in the end");
    for a in &addrs {
        let kids = published(*a);
        assert!(kids.contains(&second) && kids.contains(&third), "{kids:?}");
    }
    for r in &mut cluster.replicas {
        assert!(r.stop(), "graceful stop:\n{}", r.log_text());
    }
}

const SUBJECT: &str = "3603015505900007";

#[test]
#[ignore = "needs redis-server"]
fn tokens_cross_replicas_and_audit_is_queried_and_verified_across_them() {
    // A service whose endpoint names a data subject: its calls carry the subject's keyed hash.
    let upstream = Echo::start();
    let registry = format!(
        "[agency]\nid = \"dukcapil\"\nname = \"Dukcapil\"\n\n[[service]]\nid = \"penduduk\"\n\
         name = \"Penduduk\"\n[[service.instance]]\nname = \"p-1\"\nurl = \"{}\"\n\
         [[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\n\
         classification = \"terbatas\"\nsubject = \"nik\"\n",
        upstream.url()
    );
    let agreements = "[[agreement]]\nid = \"uji-echo\"\ntitle = \"Echo\"\nlegal_basis = \"test\"\n\
        service = \"uji/echo\"\nconsumers = [\"*\"]\nmax_classification = \"terbatas\"\n\n\
        [[agreement]]\nid = \"penduduk\"\ntitle = \"Penduduk\"\nlegal_basis = \"test\"\n\
        service = \"dukcapil/penduduk\"\nconsumers = [\"klien/app\"]\n\
        endpoints = [\"GET /penduduk/{nik}\"]\nmax_classification = \"terbatas\"\n"
        .to_owned();
    // Redis: the console's audit search is put to every replica through it.
    let redis = RedisServer::start();
    let mut cluster = Cluster::start(
        3,
        ClusterOptions {
            redis_url: Some(redis.url.clone()),
            cluster_extra: "expected_replicas = 3\n".into(),
            ..options(vec![("dukcapil.toml".into(), registry)], agreements)
        },
    );
    let addrs: Vec<SocketAddr> = cluster.replicas.iter().map(|r| r.data_addr).collect();

    // A token of any replica is accepted by every replica.
    for (i, from) in addrs.iter().enumerate() {
        let token = try_token(*from).unwrap();
        for (j, to) in addrs.iter().enumerate() {
            let (status, _, body) = get(*to, &format!("{ECHO}/from-{i}-to-{j}"), &token);
            assert_eq!(status, 200, "token of replica {i} at replica {j}: {body}");
        }
        // The subject's data, asked of replica i.
        let (status, _, body) = get(
            *from,
            &format!("/dukcapil/penduduk/penduduk/{SUBJECT}"),
            &token,
        );
        assert_eq!(status, 200, "{body}");
    }

    // Scaling out is starting one more process: a fourth replica on an empty data directory
    // with the shared keys makes its own chain and seal key and serves as one with the others.
    let root = cluster
        .data_dir(0)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let extra_dir = root.join("replica-3");
    std::fs::create_dir_all(extra_dir.join("data")).unwrap();
    let main = std::fs::read_to_string(root.join("replica-2/gerbang.toml"))
        .unwrap()
        .replace("replica-2", "replica-3")
        .replace("replica_id = \"r2\"", "replica_id = \"r3\"");
    std::fs::write(extra_dir.join("gerbang.toml"), main).unwrap();
    let mut extra = common::Replica::start(extra_dir.join("gerbang.toml"), Vec::new());
    let token = try_token(extra.data_addr).unwrap();
    for to in &addrs {
        let (status, _, body) = get(*to, &format!("{ECHO}/from-3"), &token);
        assert_eq!(status, 200, "token of the new replica at {to}: {body}");
    }
    let token = try_token(addrs[0]).unwrap();
    let (status, _, body) = get(extra.data_addr, &format!("{ECHO}/to-3"), &token);
    assert_eq!(status, 200, "{body}");
    assert!(extra.stop(), "graceful stop:\n{}", extra.log_text());
    assert!(extra_dir.join("data/keys/audit-seal.pk8").is_file());
    let out = bin()
        .args(["audit", "verify", "--data-dir"])
        .arg(extra_dir.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        gerbang_audit::replica_of(&extra_dir.join("data/audit"))
            .unwrap()
            .as_deref(),
        Some("r3")
    );

    // The console's audit search on one replica finds the subject's calls on all three (each
    // replica answers from its own log over Redis), with every replica's verify result.
    let admin0 = cluster.replicas[0].admin_addr;
    let (status, cookie, body) = console_sign_in(admin0, ADMIN_TOKEN);
    assert_eq!(status, 303, "{body}");
    let cookie = cookie.unwrap();
    let search = |cookie: &str| {
        let (_, _, page) = console(admin0, "GET", "/console/audit", cookie, "");
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        let (status, _, page) = console(
            admin0,
            "POST",
            "/console/audit",
            cookie,
            &format!("csrf={csrf}&nik={SUBJECT}"),
        );
        assert_eq!(status, 200, "{page}");
        page
    };
    let mut page = String::new();
    let all_found = eventually(Duration::from_secs(10), || {
        page = search(&cookie);
        ["r0", "r1", "r2"]
            .iter()
            .all(|r| page.contains(&format!("<td>{r}</td>")))
    });
    assert!(all_found, "{page}");
    assert!(
        !page.contains(SUBJECT),
        "the NIK never appears in clear: {page}"
    );
    for r in ["r0", "r1", "r2"] {
        assert!(
            page.contains(&format!("<li class=\"verify-ok\"><strong>{r}</strong>")),
            "{page}"
        );
    }
    assert!(!page.contains("id=\"partial\""), "{page}");
    // One replica down: the page says the answer is incomplete instead of looking complete.
    assert!(cluster.replicas[2].stop());
    let page = search(&cookie);
    assert!(page.contains("id=\"partial\""), "{page}");
    assert!(page.contains("2") && page.contains("3"), "{page}");
    assert!(!page.contains("<td>r2</td>"), "{page}");

    for r in &mut cluster.replicas[..2] {
        assert!(r.stop(), "graceful stop:\n{}", r.log_text());
    }

    // Each replica made its own seal key in its data directory; the shared directory has none.
    let keys = cluster.keys_dir();
    assert!(keys.join("audit-subject.key").is_file());
    assert!(!keys.join("audit-seal.pk8").exists());
    let publics: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(cluster.data_dir(i).join("keys/audit-seal.pub")).unwrap())
        .collect();
    assert!(publics[0] != publics[1] && publics[1] != publics[2] && publics[0] != publics[2]);

    let data_dirs: Vec<std::path::PathBuf> = (0..3).map(|i| cluster.data_dir(i)).collect();
    let audit = |args: &[&str]| {
        let mut c = bin();
        c.arg("audit").args(args);
        for d in &data_dirs {
            c.arg("--data-dir").arg(d);
        }
        c.arg("--keys-dir").arg(&keys);
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Every chain verifies on its own, named by its replica.
    let (code, out, err) = audit(&["verify"]);
    assert_eq!(code, Some(0), "{out}{err}");
    for r in ["r0", "r1", "r2"] {
        assert!(out.contains(&format!("replica {r} (")), "{out}");
    }
    assert!(out.contains("3 of 3 replica log(s) intact"), "{out}");

    // Who saw this citizen's data: one query over the three replicas, by time.
    let (code, out, err) = audit(&["query", "--json", "--subject", SUBJECT]);
    assert_eq!(code, Some(0), "{out}{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let replicas: Vec<&str> = records
        .iter()
        .map(|r| r["replica"].as_str().unwrap())
        .collect();
    assert_eq!(replicas, ["r0", "r1", "r2"], "{out}");
    assert!(records.iter().all(|r| r["consumer"] == CLIENT_ID), "{out}");

    // Every call of the application, from the three logs; then a tampered chain fails alone.
    let (code, out, _) = audit(&["query", "--json", "--consumer", CLIENT_ID]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.lines().count(),
        15,
        "9 echo calls, 3 subject calls and the new replica's token at the 3: {out}"
    );
    let file = std::fs::read_dir(data_dirs[1].join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"status\":200", "\"status\":201", 1)).unwrap();
    let (code, out, _) = audit(&["verify"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("replica r1 (") && out.contains("NOT intact"),
        "{out}"
    );
    assert!(out.contains("2 of 3 replica log(s) intact"), "{out}");
}

#[test]
fn a_directory_of_replica_data_directories_is_read_as_one_cluster() {
    // Replicas' data directories collected side by side (e.g. copied off their volumes).
    let root = tempfile::tempdir().unwrap();
    let keys = root.path().join("shared-keys");
    let out = bin()
        .args(["rotate-key", "--keys-dir"])
        .arg(&keys)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("it signs at once"), "{err}");
    let subject = gerbang_audit::SubjectKey::from_hex(
        &std::fs::read_to_string(keys.join("audit-subject.key")).unwrap(),
    )
    .unwrap();
    let collected = root.path().join("collected");
    for r in ["gw-a", "gw-b"] {
        let data = collected.join(r);
        let (seal, _) = gerbang::config::ensure_seal_key(&data.join("keys")).unwrap();
        let mut w = gerbang_audit::Writer::open(
            gerbang_audit::WriterSettings {
                dir: data.join("audit"),
                max_file_bytes: 1 << 20,
                fsync: gerbang_audit::chain::Fsync::Always,
                seal_every: 10,
                replica: Some(r.to_owned()),
            },
            seal,
        )
        .unwrap();
        let mut m = serde_json::Map::new();
        m.insert("consumer".into(), "a/b".into());
        m.insert("subject_hmac".into(), subject.hash(SUBJECT).into());
        w.append("call", m).unwrap();
        w.close().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let run = |args: &[&str]| {
        let out = bin()
            .arg("audit")
            .args(args)
            .arg("--data-dir")
            .arg(&collected)
            .arg("--keys-dir")
            .arg(&keys)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["verify"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("replica gw-a (") && out.contains("replica gw-b ("),
        "{out}"
    );
    let (code, out, err) = run(&["query", "--subject", SUBJECT]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("2 record(s) from 2 replica log(s)"), "{out}");
    let a = out.find("gw-a").unwrap();
    let b = out.find("gw-b").unwrap();
    assert!(a < b, "merged by time: {out}");
    // One chain's anchor at a time.
    let (code, _, err) = run(&["anchor"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("one replica's log at a time"), "{err}");
}

#[test]
fn a_shared_keys_directory_without_the_subject_key_names_the_command_that_makes_it() {
    let root = tempfile::tempdir().unwrap();
    let keys = root.path().join("secret");
    // A Secret with a signing key only.
    gerbang::config::create_signing_key(&keys).unwrap();
    std::fs::create_dir_all(root.path().join("registry")).unwrap();
    std::fs::create_dir_all(root.path().join("agreements")).unwrap();
    std::fs::write(
        root.path().join("gerbang.toml"),
        format!(
            "[paths]\ndata_dir = \"{}\"\n\n[auth]\nkeys_dir = \"{}\"\n",
            root.path().join("data").display(),
            keys.display()
        ),
    )
    .unwrap();
    std::fs::write(
        root.path().join("registry/a.toml"),
        "[agency]\nid = \"a\"\nname = \"A\"\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = bin()
        .args(["validate", "--config"])
        .arg(root.path().join("gerbang.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("audit-subject.key"), "{err}");
    assert!(err.contains("gerbang rotate-key --keys-dir DIR"), "{err}");
    assert!(err.contains("1 configuration problem(s)"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
