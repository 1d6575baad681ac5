//! The `gerbang` binary as users run it: validate, serve (refusal, readiness, SIGTERM), demo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gerbang"));
    c.env_remove("RUST_LOG");
    c
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/gerbang.toml")
}

/// `GET path` over a fresh connection; returns (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_full(addr, path);
    (status, body)
}

/// `GET path` over a fresh connection; returns (status, lower-cased head, body).
fn http_get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads lines from `r` on a thread; returns the first for which `pick` gives a value.
fn wait_for_line<R: Read + Send + 'static, T: Send + 'static>(
    r: R,
    pick: impl Fn(&str) -> Option<T> + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(v) = pick(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("expected output line")
}

#[test]
fn validate_accepts_the_example_configuration() {
    let out = bin()
        .args(["validate", "--config"])
        .arg(repo_config())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("configuration is valid (4 agencies, 4 applications, 4 services)"),
        "{stdout}"
    );
}

fn broken_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[server]\nlisten = \"127.0.0.1:99999\"\n[upstream]\nrequest_timeout = \"0s\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("registry")).unwrap();
    std::fs::write(
        dir.path().join("registry/x.toml"),
        "[agency]\nid = \"x\"\nname = \"X\"\n[[service]]\nid = \"s\"\nname = \"S\"\n",
    )
    .unwrap();
    dir
}

#[test]
fn validate_lists_every_problem_and_fails() {
    let dir = broken_config();
    let out = bin()
        .args(["validate", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 configuration problem(s)"), "{err}");
    assert!(err.contains("gerbang.toml: server.listen:"), "{err}");
    assert!(
        err.contains("gerbang.toml: upstream.request_timeout: must be greater than zero"),
        "{err}"
    );
    assert!(
        err.contains("x.toml: service[0].instance: a service needs at least one instance"),
        "{err}"
    );
}

#[test]
fn serve_refuses_invalid_configuration_with_the_same_messages() {
    let dir = broken_config();
    let out = bin()
        .args(["serve", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("refusing to start: 3 configuration problem(s)"),
        "{err}"
    );
    assert!(err.contains("x.toml: service[0].instance:"), "{err}");
}

#[test]
fn serve_becomes_ready_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[log]\nformat = \"human\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("registry")).unwrap();
    std::fs::write(
        dir.path().join("registry/x.toml"),
        "[agency]\nid = \"x\"\nname = \"X\"\n[[service]]\nid = \"s\"\nname = \"S\"\n[[service.instance]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        // The environment overrides the file: JSON logs make the addresses easy to read.
        .env("GERBANG__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (data, admin) = wait_for_line(stderr, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "gateway ready" {
            return None;
        }
        let d: SocketAddr = v["data_addr"].as_str()?.parse().ok()?;
        let a: SocketAddr = v["admin_addr"].as_str()?.parse().ok()?;
        Some((d, a))
    });
    assert_eq!(http_get(admin, "/health/ready").0, 200);
    let (status, body) = http_get(data, "/x/nope/");
    assert_eq!(status, 404);
    assert!(body.contains("\"unknown_service\""), "{body}");
    let st = terminate(&mut child);
    assert_eq!(st.code(), Some(0), "graceful exit");
}

#[test]
fn demo_serves_the_agencies_and_keeps_the_repository_config_untouched() {
    let before = std::fs::read(repo_config()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let gw: SocketAddr = wait_for_line(stdout, |line| {
        line.trim()
            .strip_prefix("data plane")
            .and_then(|r| r.trim().strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
    });
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (status, head, body) =
            http_get_full(gw, "/dukcapil/penduduk/penduduk/3603015505900001");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["nik"], "3603015505900001");
        assert!(v["keterangan"].as_str().unwrap().contains("FIKTIF"));
        let inst = head
            .lines()
            .find_map(|l| l.strip_prefix("x-demo-instance: "))
            .unwrap()
            .to_owned();
        instances.push(inst);
    }
    instances.sort();
    assert_eq!(
        instances,
        ["penduduk-1", "penduduk-2"],
        "both instances serve"
    );
    let (status, body) = http_get(gw, "/dinkes/faskes/faskes");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_get(gw, "/bapenda/pbb/pbb/360301000100200300");
    assert_eq!(status, 200);
    let (status, body) = http_get(gw, "/diskominfo/echo/apa?x=1");
    assert_eq!(status, 200);
    assert!(body.contains("\"query\":\"x=1\""), "{body}");
    let (status, _) = http_get(gw, "/dukcapil/penduduk/penduduk/123");
    assert_eq!(status, 404, "the backend's own 404 for a malformed NIK");

    assert!(data.path().join("gerbang.toml").exists());
    assert!(data.path().join("registry/dukcapil.toml").exists());
    assert_eq!(terminate(&mut child).code(), Some(0));
    assert_eq!(std::fs::read(repo_config()).unwrap(), before);
}

#[test]
fn environment_overrides_reach_validation_lists_included() {
    let out = bin()
        .args(["validate", "--config"])
        .arg(repo_config())
        .env("GERBANG__UPSTREAM__CA_FILES", "/nope/a.pem,/nope/b.pem")
        .env("GERBANG__LIMITS__MAX_URI_BYTES", "10")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.ca_files[0]: cannot read /nope/a.pem"),
        "{err}"
    );
    assert!(
        err.contains("upstream.ca_files[1]: cannot read /nope/b.pem"),
        "{err}"
    );
    assert!(
        err.contains("limits.max_uri_bytes: must be between 256 and 65536"),
        "{err}"
    );
}

#[test]
fn hash_secret_reads_stdin_and_prints_an_argon2id_hash() {
    let mut child = bin()
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"demo-secret-simpus\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("demo-secret-simpus"));
    assert!(gerbang_auth::secret::verify_secret(
        hash,
        "demo-secret-simpus"
    ));

    let mut short = bin()
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    short.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let out = short.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}
