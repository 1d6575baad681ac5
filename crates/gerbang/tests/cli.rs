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
    repo_dir().join("gerbang.toml")
}

/// The repository's `config/` directory.
fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

/// `GET path` over a fresh connection; returns (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_full(addr, path);
    (status, body)
}

/// `GET path` over a fresh connection; returns (status, lower-cased head, body).
fn http_get_full(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

/// `GET path` with a bearer token; returns (status, lower-cased head, body).
fn http_get_with_token(addr: SocketAddr, path: &str, token: &str) -> (u16, String, String) {
    http_exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// `GET path` with a bearer token and extra header lines.
fn http_get_with(addr: SocketAddr, path: &str, token: &str, extra: &str) -> (u16, String, String) {
    http_exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
        ),
    )
}

/// An access token for `client_id` from the gateway's token endpoint (client_secret_basic with
/// the form-encoded id, as the README's curl does).
fn token(addr: SocketAddr, client_id: &str, secret: &str) -> String {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{secret}", client_id.replace('/', "%2F")));
    let body = "grant_type=client_credentials";
    let (status, _, text) = http_exchange(
        addr,
        &format!(
            "POST /oauth/token HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {basic}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// Sends `request` as given over a fresh connection; returns (status, lower-cased head, body).
fn http_exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A child process that is killed if the test panics before it ends it.
struct KillOnDrop(Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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

/// A copy of the shipped configuration in a temporary directory.
fn copy_of_repo_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = repo_config();
    let src_dir = src.parent().unwrap();
    std::fs::copy(&src, dir.path().join("gerbang.toml")).unwrap();
    for sub in ["registry", "agreements"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(src_dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn validate_accepts_the_example_configuration_once_it_has_a_signing_key() {
    let dir = copy_of_repo_config();
    let main = dir.path().join("gerbang.toml");
    // Without keys: the signing key and the shared audit subject key, with the command that
    // fixes it (the seal key is each replica's own: `serve` makes it when missing).
    let out = bin()
        .args(["validate", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 configuration problem(s)"), "{err}");
    assert!(
        err.contains("auth.keys_dir:") && err.contains("gerbang rotate-key"),
        "{err}"
    );
    assert!(
        err.contains("audit-subject.key") && err.contains("gerbang rotate-key --keys-dir DIR"),
        "{err}"
    );
    assert!(!err.contains("audit-seal.pk8"), "{err}");
    let out = bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_path = String::from_utf8(out.stdout).unwrap();
    let key_path = Path::new(key_path.trim());
    assert!(
        key_path.starts_with(dir.path().join("data/keys")),
        "{key_path:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by its owner only"
        );
    }
    let out = bin()
        .args(["validate", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "configuration is valid (4 agencies, 4 applications, 4 services, 5 agreements)"
        ),
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
    gerbang::config::create_signing_key(&dir.path().join("data/keys")).unwrap();
    gerbang::config::ensure_audit_keys(&dir.path().join("data/keys")).unwrap();
    std::fs::create_dir(dir.path().join("agreements")).unwrap();
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

/// Every application that allows `external_jwt` names the one configured issuer it trusts and
/// how that issuer's tokens name it; every external issuer checks `aud`. Each problem by file,
/// key and reason.
#[test]
fn validate_binds_external_jwt_applications_to_a_configured_issuer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [auth]\ntoken_failures_per_source = 10\ntoken_failures_per_client = 5\n\
         [[auth.external]]\nissuer = \"https://sso-a.test\"\naudiences = [\"gerbang\"]\n\
         algorithms = [\"ES256\"]\njwks_url = \"https://sso-a.test/jwks\"\n\
         [[auth.external]]\nissuer = \"https://sso-b.test\"\n\
         algorithms = [\"ES256\"]\njwks_url = \"https://sso-b.test/jwks\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("registry")).unwrap();
    let app = |id: &str, extra: &str| {
        format!("[[application]]\nid = \"{id}\"\nname = \"{id}\"\n{extra}\n")
    };
    let registry = [
        "[agency]\nid = \"diskominfo\"\nname = \"Diskominfo\"\n".to_owned(),
        app("bound", "auth_methods = [\"external_jwt\"]\nexternal_issuer = \"https://sso-a.test\"\nexternal_client_ids = [\"portal\"]"),
        app("unbound", "auth_methods = [\"external_jwt\"]\nexternal_client_ids = [\"kiosk\"]"),
        app("unknown-issuer", "auth_methods = [\"external_jwt\"]\nexternal_issuer = \"https://sso-c.test\"\nexternal_client_ids = [\"desk\"]"),
        app("unnamed", "auth_methods = [\"external_jwt\"]\nexternal_issuer = \"https://sso-a.test\""),
        app("opted-in", "auth_methods = [\"external_jwt\"]\nexternal_issuer = \"https://sso-a.test\"\nexternal_client_id_is_registry_id = true"),
        app("no-jwt", "auth_methods = [\"api_key\"]\napi_keys = [{ digest = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\" }]\nexternal_issuer = \"https://sso-a.test\"\nexternal_client_id_is_registry_id = true"),
    ]
    .concat();
    std::fs::write(dir.path().join("registry/diskominfo.toml"), registry).unwrap();
    gerbang::config::create_signing_key(&dir.path().join("data/keys")).unwrap();
    gerbang::config::ensure_audit_keys(&dir.path().join("data/keys")).unwrap();
    std::fs::create_dir(dir.path().join("agreements")).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "gerbang.toml: auth.external[1].audiences: required",
        "gerbang.toml: auth.token_failures_per_client: must be larger than token_failures_per_source (10)",
        "diskominfo.toml: application[1].external_issuer: `external_jwt` is in auth_methods but external_issuer is missing",
        "diskominfo.toml: application[2].external_issuer: `https://sso-c.test` is not the `issuer` of an [[auth.external]] entry (one of https://sso-a.test, https://sso-b.test)",
        "diskominfo.toml: application[3].external_client_ids: `external_jwt` is in auth_methods but external_client_ids is empty",
        "diskominfo.toml: application[5].external_issuer: external_issuer is set but `external_jwt` is not in auth_methods",
        "diskominfo.toml: application[5].external_client_id_is_registry_id: external_client_id_is_registry_id is set but `external_jwt` is not in auth_methods",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    // The two valid applications (a client id, the registry id opt-in) raise nothing.
    assert!(err.contains("7 configuration problem(s)"), "{err}");
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
    let out = bin()
        .args(["rotate-key", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::create_dir(dir.path().join("agreements")).unwrap();
    let mut child = KillOnDrop(
        bin()
            .args(["serve", "--config"])
            .arg(dir.path().join("gerbang.toml"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            // The environment overrides the file: JSON logs make the addresses easy to read.
            .env("GERBANG__LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
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
    assert_eq!(status, 401);
    assert!(body.contains("\"missing_credentials\""), "{body}");
    let st = terminate(&mut child);
    assert_eq!(st.code(), Some(0), "graceful exit");
}

/// `gerbang_config_reloads_total{result}` as the admin listener at `admin` reports it.
fn reload_count(admin: SocketAddr, result: &str) -> Option<u64> {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let prefix = format!("gerbang_config_reloads_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

/// Polls `cond` every 20 ms until it holds or `patience` runs out; whether it held.
fn eventually(patience: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP reloads the gateway process that receives it: a service added to the registry file
/// (not watched) is served after the signal, and the reload is counted once. The signal goes to
/// a child process, never to the test process, whose other tests run gateways of their own.
#[test]
fn sighup_reloads_only_the_process_that_receives_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[admin]\nwatch_files = false\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("registry")).unwrap();
    let service = |id: &str| {
        format!("[[service]]\nid = \"{id}\"\nname = \"S\"\n[[service.instance]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n")
    };
    let agency = "[agency]\nid = \"x\"\nname = \"X\"\n";
    let registry = dir.path().join("registry/x.toml");
    std::fs::write(&registry, format!("{agency}{}", service("s"))).unwrap();
    std::fs::create_dir(dir.path().join("agreements")).unwrap();
    let out = bin()
        .args(["rotate-key", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut child = KillOnDrop(
        bin()
            .args(["serve", "--config"])
            .arg(dir.path().join("gerbang.toml"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("GERBANG__LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let admin = wait_for_line(stderr, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "gateway ready" {
            return None;
        }
        v["admin_addr"].as_str()?.parse::<SocketAddr>().ok()
    });
    let services = |admin: SocketAddr| -> Vec<String> {
        let (_, body) = http_get(admin, "/health/ready");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["service"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(services(admin), ["x/s"]);
    assert_eq!(reload_count(admin, "success"), Some(0));
    std::fs::write(
        &registry,
        format!("{agency}{}{}", service("s"), service("t")),
    )
    .unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(
        eventually(Duration::from_secs(15), || reload_count(admin, "success")
            == Some(1)),
        "no reload counted after SIGHUP"
    );
    let mut now = services(admin);
    now.sort();
    assert_eq!(now, ["x/s", "x/t"]);
    assert_eq!(reload_count(admin, "failure"), Some(0));
    let st = terminate(&mut child);
    assert_eq!(st.code(), Some(0), "graceful exit");
}

/// Writes the demo's example configuration into `dir` (as `gerbang demo` does on first start)
/// with its backends' fixed addresses (127.0.0.1:18101–18105) moved to ports free right now, so
/// that the demo started on `dir` (which keeps an existing configuration) binds no fixed port.
fn demo_config_on_free_ports(dir: &Path) {
    let fixed: Vec<String> = (18101..=18105).map(|p| format!("127.0.0.1:{p}")).collect();
    // Bound together, so the five ports differ; released just before the demo binds them.
    let listeners: Vec<std::net::TcpListener> = fixed
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let free: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let mut moved = 0;
    for (name, text) in gerbang::demo::EXAMPLE_FILES {
        let mut text = (*text).to_owned();
        for (from, to) in fixed.iter().zip(&free) {
            moved += text.matches(from.as_str()).count();
            text = text.replace(from.as_str(), to);
        }
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    assert_eq!(moved, 5, "every demo backend address moved");
    drop(listeners);
}

#[test]
fn demo_serves_the_agencies_and_keeps_the_repository_config_untouched() {
    let before = std::fs::read(repo_config()).unwrap();
    let data = tempfile::tempdir().unwrap();
    demo_config_on_free_ports(data.path());
    let mut child = KillOnDrop(
        bin()
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
            .unwrap(),
    );
    let stdout = child.stdout.take().unwrap();
    let data_plane = std::sync::Mutex::new(None::<SocketAddr>);
    let (gw, admin): (SocketAddr, SocketAddr) = wait_for_line(stdout, move |line| {
        let addr = |prefix: &str| -> Option<SocketAddr> {
            line.trim()
                .strip_prefix(prefix)
                .and_then(|r| r.trim().strip_prefix("http://"))
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
        };
        if let Some(a) = addr("data plane") {
            *data_plane.lock().unwrap() = Some(a);
        }
        let admin = addr("admin")?;
        Some(((*data_plane.lock().unwrap())?, admin))
    });
    // Every demo service requires a token, the public ones too.
    for path in [
        "/dukcapil/penduduk/penduduk/3603015505900001",
        "/dinkes/faskes/faskes",
        "/bapenda/pbb/pbb/360301000100200300",
        "/diskominfo/echo/apa",
    ] {
        let (status, head, body) = http_get_full(gw, path);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
    }
    // The README's flow: a token for each demo application, then calls with it.
    for (app, secret) in [
        ("bapenda/esppt", "demo-secret-esppt"),
        ("dukcapil/siak", "demo-secret-siak"),
        ("diskominfo/portal", "demo-secret-portal"),
    ] {
        let t = token(gw, app, secret);
        let (status, _, body) = http_get_with_token(gw, "/diskominfo/echo/who", &t);
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!("\"x-gerbang-consumer\":\"{app}\"")),
            "{body}"
        );
    }
    let t = token(gw, "dinkes/simpus", "demo-secret-simpus");
    let kes = "X-Gerbang-Purpose: pelayanan-kesehatan\r\n";
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (status, head, body) =
            http_get_with(gw, "/dukcapil/penduduk/penduduk/3603015505900001", &t, kes);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        // The agreement's field rules: NIK masked, marital status dropped.
        assert_eq!(v["nik"], "360301******0001");
        assert!(v.get("status_perkawinan").is_none(), "{v}");
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
    // Without the purpose the agreement does not apply.
    let (status, _, body) =
        http_get_with_token(gw, "/dukcapil/penduduk/penduduk/3603015505900001", &t);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"purpose_missing\""), "{body}");
    // bapenda/esppt sees only nik, nama and alamat, for its own purpose.
    let te = token(gw, "bapenda/esppt", "demo-secret-esppt");
    let (status, _, body) = http_get_with(
        gw,
        "/dukcapil/penduduk/penduduk/3603015505900001",
        &te,
        "X-Gerbang-Purpose: penetapan-pajak\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["alamat", "nama", "nik"]);
    // diskominfo/portal has no agreement for the population registry.
    let tp = token(gw, "diskominfo/portal", "demo-secret-portal");
    let (status, _, body) =
        http_get_with(gw, "/dukcapil/penduduk/penduduk/3603015505900001", &tp, kes);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"no_agreement\""), "{body}");

    let (status, _, body) = http_get_with_token(gw, "/dinkes/faskes/faskes", &t);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http_get_with_token(gw, "/bapenda/pbb/pbb/360301000100200300", &t);
    assert_eq!(status, 403, "only Bapenda's own applications: {body}");
    let (status, head, body) = http_get_with_token(gw, "/diskominfo/echo/apa?x=1", &t);
    assert_eq!(status, 200);
    assert!(body.contains("\"query\":\"x=1\""), "{body}");
    assert!(
        body.contains("\"x-gerbang-consumer\":\"dinkes/simpus\""),
        "{body}"
    );
    assert!(
        body.contains("\"x-gerbang-agreement\":\"open-diskominfo-echo\""),
        "{body}"
    );
    assert!(head.contains("ratelimit-limit: 30"), "{head}");
    let (status, _, _) = http_get_with(gw, "/dukcapil/penduduk/penduduk/123", &t, kes);
    assert_eq!(status, 404, "the backend's own 404 for a malformed NIK");
    // The demo's API key (README) works for bapenda/esppt, on Bapenda's own service too.
    for path in ["/diskominfo/echo/k", "/bapenda/pbb/pbb/360301000100200300"] {
        let (status, _, body) = http_exchange(
            gw,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: gk_cd73e550c08905c7c6a3bccec4bcbb77124a51c8190335384c8a5106f162b3e7\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 200, "{path}: {body}");
    }

    assert!(data.path().join("gerbang.toml").exists());
    assert!(data.path().join("registry/dukcapil.toml").exists());
    let mut keys: Vec<String> = std::fs::read_dir(data.path().join("data/keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".pem"))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["audit-seal.pk8", "audit-seal.pub", "audit-subject.key"],
        "the demo generated its audit keys"
    );
    assert_eq!(
        std::fs::read_dir(data.path().join("data/keys"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pem"))
            .count(),
        1,
        "and its signing key"
    );
    // `gerbang admin` with the demo's admin token: list, change a service, read it back.
    let admin_url = format!("http://{admin}");
    let admin_cmd = |args: &[&str], token: &str| {
        bin()
            .args(["admin", "--url", &admin_url])
            .args(args)
            .env("GERBANG_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = admin_cmd(&["list", "services"], "demo-admin-token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let echo = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agency"] == "diskominfo" && s["id"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["health"]["echo-1"], "healthy");
    let mut changed = echo.clone();
    changed["name"] = "Echo (diubah lewat admin API)".into();
    let file = data.path().join("echo.json");
    std::fs::write(&file, changed.to_string()).unwrap();
    let out = admin_cmd(
        &[
            "put",
            "service",
            "diskominfo/echo",
            "--file",
            file.to_str().unwrap(),
        ],
        "demo-admin-token",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin_cmd(&["get", "service", "diskominfo/echo"], "demo-admin-token");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["name"], "Echo (diubah lewat admin API)");
    // Persisted in the demo's copy of the configuration, not in the repository's.
    let persisted = std::fs::read_to_string(data.path().join("registry/diskominfo.toml")).unwrap();
    assert!(persisted.contains("Echo (diubah lewat admin API)"));
    let out = admin_cmd(&["reload"], "demo-admin-token");
    assert!(out.status.success());
    let out = admin_cmd(&["list", "agencies"], "wrong-token");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));

    assert_eq!(terminate(&mut child).code(), Some(0));
    assert_eq!(std::fs::read(repo_config()).unwrap(), before);
    assert!(
        !std::fs::read_to_string(repo_dir().join("registry/diskominfo.toml"))
            .unwrap()
            .contains("diubah")
    );

    // The demo's audit log, in its data directory: intact, and it answers who saw this NIK.
    let state = data.path().join("data");
    let out = bin()
        .args(["audit", "verify", "--data-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("audit log intact:"), "{text}");
    assert!(
        text.contains("0 record(s) after the last seal"),
        "sealed on shutdown: {text}"
    );
    // An anchor to keep off the host, and a verify through it; a forged anchor fails.
    let out = bin()
        .args(["audit", "anchor", "--data-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let anchor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(anchor["seq"].as_u64().unwrap() > 0);
    let anchors = data.path().join("anchors.jsonl");
    std::fs::write(&anchors, &out.stdout).unwrap();
    let out = bin()
        .args(["audit", "verify", "--data-dir"])
        .arg(&state)
        .arg("--anchors")
        .arg(&anchors)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("passes through all 1 anchor(s)"), "{text}");
    let mut forged = anchor.clone();
    forged["hash"] = "00".repeat(32).into();
    std::fs::write(&anchors, forged.to_string()).unwrap();
    let out = bin()
        .args(["audit", "verify", "--data-dir"])
        .arg(&state)
        .arg("--anchors")
        .arg(&anchors)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the log was rewritten"));
    let out = bin()
        .args([
            "audit",
            "query",
            "--json",
            "--subject",
            "3603015505900001",
            "--data-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r["consumer"] == "dinkes/simpus" && r["decision"] == "allow"),
        "{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r["consumer"] == "diskominfo/portal" && r["reason"] == "no_agreement"),
        "{text}"
    );
    assert!(
        rows.iter().all(|r| r["service"] == "dukcapil/penduduk"),
        "{text}"
    );
    let out = bin()
        .args([
            "audit",
            "query",
            "--consumer",
            "bapenda/esppt",
            "--data-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("time"), "{table}");
    assert!(table.contains("penetapan-pajak"), "{table}");
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

#[test]
fn rotate_key_writes_where_serve_reads_environment_overrides_included() {
    let dir = copy_of_repo_config();
    let state = tempfile::tempdir().unwrap();
    let main = dir.path().join("gerbang.toml");
    let out = bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .env("GERBANG__PATHS__DATA_DIR", state.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    assert!(
        Path::new(path.trim()).starts_with(state.path().join("keys")),
        "{path}"
    );
    // validate with the same override finds it; without, the key is missing.
    let ok = bin()
        .args(["validate", "--config"])
        .arg(&main)
        .env("GERBANG__PATHS__DATA_DIR", state.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let missing = bin()
        .args(["validate", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    // A second key sorts after the first and becomes the active one.
    let out = bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .env("GERBANG__PATHS__DATA_DIR", state.path())
        .output()
        .unwrap();
    let second = String::from_utf8(out.stdout).unwrap();
    let kid = |p: &str| {
        Path::new(p.trim())
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert!(kid(&second) > kid(&path), "{second} after {path}");
}

#[test]
fn explain_prints_the_decision_the_agreement_and_every_candidate() {
    let dir = copy_of_repo_config();
    let main = dir.path().join("gerbang.toml");
    assert!(bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .output()
        .unwrap()
        .status
        .success());
    let explain = |args: &[&str]| {
        let out = bin()
            .args(["explain", "--config"])
            .arg(&main)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let nik = "/dukcapil/penduduk/penduduk/3603015505900001";
    let (code, out) = explain(&[
        "--consumer",
        "dinkes/simpus",
        "--purpose",
        "pelayanan-kesehatan",
        "GET",
        nik,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("decision: ALLOW by agreement `pks-dukcapil-dinkes-2026-001`"),
        "{out}"
    );
    assert!(out.contains("mask nik (keep first 6, last 4)"), "{out}");
    assert!(
        out.contains("endpoint: GET /penduduk/{nik} (rahasia), data subject `nik`"),
        "{out}"
    );

    let (code, out) = explain(&["--consumer", "dinkes/simpus", "GET", nik]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with(
            "decision: DENY purpose_missing (agreement `pks-dukcapil-dinkes-2026-001`)"
        ),
        "{out}"
    );
    assert!(
        out.contains("pks-dukcapil-dinkes-2026-001     via application fails: purpose_missing"),
        "{out}"
    );

    let (code, out) = explain(&["--consumer", "diskominfo/portal", "GET", nik]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.starts_with("decision: DENY no_agreement"), "{out}");

    let (code, out) = explain(&[
        "--consumer",
        "dukcapil/siak",
        "POST",
        "/dinkes/faskes/faskes",
    ]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("decision: DENY method_not_allowed"),
        "{out}"
    );

    let (code, out) = explain(&[
        "--consumer",
        "dukcapil/siak",
        "GET",
        "/dukcapil/penduduk/../x",
    ]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("path_traversal"), "{out}");
}

/// With `audit.fsync = "always"`, no 2xx reaches a client without its record on disk: kill the
/// gateway with SIGKILL under load, then every request id a client saw succeed is in the log,
/// and the log verifies (a torn last line is allowed: it is the crash). SIGKILL keeps the page
/// cache, so this checks the ordering (record before response); only a power loss would show
/// what fsync adds.
#[test]
fn sigkill_under_load_loses_no_acknowledged_record() {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let up_addr = free_port();
    let mut upstream = bin()
        .args(["bench-upstream", "--listen", &up_addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = format!("gk_{}", "ab".repeat(32));
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[log]\nformat = \"json\"\n[audit]\nfsync = \"always\"\nseal_every = 50\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("registry")).unwrap();
    std::fs::write(
        dir.path().join("registry/t.toml"),
        format!(
            "[agency]\nid = \"t\"\nname = \"T\"\n[[application]]\nid = \"client\"\nname = \"C\"\n\
             auth_methods = [\"api_key\"]\napi_keys = [{{ digest = \"{}\" }}]\n\
             [[service]]\nid = \"up\"\nname = \"U\"\n[[service.instance]]\nname = \"u\"\nurl = \"http://{up_addr}\"\n",
            gerbang_auth::apikey::digest_of(&key)
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("agreements")).unwrap();
    std::fs::write(
        dir.path().join("agreements/t.toml"),
        "[[agreement]]\nid = \"a\"\ntitle = \"t\"\nlegal_basis = \"x\"\nservice = \"t/up\"\nconsumers = [\"*\"]\n",
    )
    .unwrap();
    gerbang::config::create_signing_key(&dir.path().join("data/keys")).unwrap();
    gerbang::config::ensure_audit_keys(&dir.path().join("data/keys")).unwrap();
    let mut child = KillOnDrop(
        bin()
            .args(["serve", "--config"])
            .arg(dir.path().join("gerbang.toml"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let gw: SocketAddr = wait_for_line(stderr, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["message"] == "gateway ready").then_some(())?;
        v["data_addr"].as_str()?.parse().ok()
    });
    // Four clients, each on its own keep-alive connection, until the gateway dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Calls acknowledged so far, by all clients: the kill comes once enough were.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let stop = std::sync::Arc::clone(&stop);
            let acked = std::sync::Arc::clone(&acked);
            let key = key.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                let Ok(mut s) = TcpStream::connect(gw) else {
                    return acknowledged;
                };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let id = format!("kill-{c}-{n}");
                    let req = format!(
                        "GET /t/up/x HTTP/1.1\r\nHost: g\r\nX-API-Key: {key}\r\nX-Request-Id: {id}\r\n\r\n"
                    );
                    if s.write_all(req.as_bytes()).is_err() {
                        break;
                    }
                    // Status line, headers, then a Content-Length body.
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let ok = line.starts_with("HTTP/1.1 200");
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return acknowledged;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        break;
                    }
                    if ok {
                        acknowledged.push(id);
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Killed in the middle of the load: after a good number of acknowledged calls, while the
    // clients keep sending.
    assert!(
        eventually(Duration::from_secs(30), || acked
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 50),
        "the load never got going"
    );
    let ok = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let _ = child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged: Vec<String> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let _ = upstream.kill();
    let _ = upstream.wait();
    assert!(acknowledged.len() > 20, "load ran: {}", acknowledged.len());

    let state = dir.path().join("data");
    let out = bin()
        .args(["audit", "verify", "--data-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let out = bin()
        .args(["audit", "query", "--json", "--data-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let recorded: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged calls have no record: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}

/// A literal endpoint that a `{param}` endpoint of a lower classification takes case variants
/// of is refused until the service says how its provider matches paths; with
/// `case_insensitive`, explain judges `/laporan/REKAP-NIK` as the literal.
#[test]
fn validate_refuses_a_shadowed_literal_until_path_matching_is_declared() {
    let dir = copy_of_repo_config();
    let main = dir.path().join("gerbang.toml");
    assert!(bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .output()
        .unwrap()
        .status
        .success());
    let write = |path_matching: &str| {
        std::fs::write(
            dir.path().join("registry/bappeda.toml"),
            format!(
                "[agency]\nid = \"bappeda\"\nname = \"Bappeda\"\n\n[[service]]\nid = \"laporan\"\n\
                 name = \"Laporan\"\n{path_matching}\n\n[[service.instance]]\nname = \"l-1\"\n\
                 url = \"http://127.0.0.1:18199\"\n\n[[service.endpoint]]\nmethod = \"GET\"\n\
                 path = \"/laporan/{{id}}\"\nclassification = \"terbuka\"\n\n[[service.endpoint]]\n\
                 method = \"GET\"\npath = \"/laporan/rekap-nik\"\nclassification = \"rahasia\"\n"
            ),
        )
        .unwrap();
    };
    let validate = || {
        let out = bin()
            .args(["validate", "--config"])
            .arg(&main)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    write("");
    let (code, out) = validate();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("1 configuration problem(s)"), "{out}");
    assert!(
        out.contains(
            "bappeda.toml: service[0].endpoint[0].path: `GET /laporan/{id}` (terbuka) also takes \
             `/laporan/REKAP-NIK`, which a provider that ignores case or trailing dots serves as \
             `GET /laporan/rekap-nik` (rahasia); declare how the provider matches paths with the \
             service's path_matching: \"case_insensitive\""
        ),
        "{out}"
    );
    assert!(out.contains("or \"exact\""), "{out}");

    write("path_matching = \"exact\"");
    let (code, out) = validate();
    assert_eq!(code, Some(0), "{out}");

    write("path_matching = \"case_insensitive\"");
    let (code, out) = validate();
    assert_eq!(code, Some(0), "{out}");
    let out = bin()
        .args(["explain", "--config"])
        .arg(&main)
        .args([
            "--consumer",
            "dinkes/simpus",
            "GET",
            "/bappeda/laporan/laporan/REKAP-NIK",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("endpoint: GET /laporan/rekap-nik (rahasia)"),
        "{out}"
    );
}

/// `gerbang explain` checks the query like the gateway: a NIK in the query of an endpoint whose
/// subject is in the path is refused.
#[test]
fn explain_takes_a_path_with_a_query() {
    let dir = copy_of_repo_config();
    let main = dir.path().join("gerbang.toml");
    assert!(bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .output()
        .unwrap()
        .status
        .success());
    let explain = |path: &str| {
        let out = bin()
            .args(["explain", "--config"])
            .arg(&main)
            .args([
                "--consumer",
                "dinkes/simpus",
                "--purpose",
                "pelayanan-kesehatan",
                "GET",
                path,
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let nik = "/dukcapil/penduduk/penduduk/3603015505900001";
    let (code, out) = explain(&format!("{nik}?nik=3603015505900002"));
    assert_eq!(code, Some(3), "{out}");
    assert!(out.starts_with("decision: DENY query_not_allowed"), "{out}");
    let (code, out) = explain(&format!("{nik}?"));
    assert_eq!(code, Some(0), "{out}");
}

/// One `validate` reports the problems of all three stages: a typo in the main file does not
/// hide the registry's problems (read from the directory the main file declares), and those do
/// not hide the agreements' (named by id, with file and line).
#[test]
fn validate_reports_the_main_file_registry_and_agreements_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 1\n\
         [paths]\nregistry_dir = \"reg\"\nagreements_dir = \"pks\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("reg")).unwrap();
    std::fs::write(
        dir.path().join("reg/x.toml"),
        "[agency]\nid = \"x\"\nname = \"X\"\n[[service]]\nid = \"s\"\nname = \"S\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("pks")).unwrap();
    std::fs::write(
        dir.path().join("pks/x.toml"),
        "# Agreements of X.\n\n[[agreement]]\nid = \"pks-x-2026-001\"\ntitle = \"t\"\n\
         legal_basis = \"-\"\nservice = \"x/nope\"\nconsumers = [\"*\"]\n",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 configuration problem(s)"), "{err}");
    assert!(
        err.contains("gerbang.toml: ") && err.contains("listen_port"),
        "{err}"
    );
    assert!(
        err.contains("reg/x.toml: service[0].instance: a service needs at least one instance"),
        "{err}"
    );
    assert!(
        err.contains(
            "pks/x.toml:7: agreement pks-x-2026-001: service: `x/nope` is not a registered service"
        ),
        "{err}"
    );
}

/// An agreement's problem names the agreement by its id, with the file and the line of the
/// field.
#[test]
fn validate_names_an_agreement_by_id_and_line() {
    let dir = copy_of_repo_config();
    let main = dir.path().join("gerbang.toml");
    assert!(bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .output()
        .unwrap()
        .status
        .success());
    let file = dir.path().join("agreements/dukcapil.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    let at = text.lines().count();
    text.push_str(
        "\n[[agreement]]\nid = \"pks-dukcapil-uji-2026-009\"\ntitle = \"Uji\"\n\
         legal_basis = \"-\"\nservice = \"dukcapil/penduduk\"\n\
         consumers = [\"dinkes/simpus\",\n  \"dinkes/nosuch\"]\n",
    );
    std::fs::write(&file, text).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&main)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 configuration problem(s)"), "{err}");
    // Blank line, header, id, title, legal_basis, service, consumers, the second consumer.
    let want = format!(
        "agreements/dukcapil.toml:{}: agreement pks-dukcapil-uji-2026-009: consumers[1]: \
         `dinkes/nosuch` is not a registered application or agency",
        at + 8
    );
    assert!(err.contains(&want), "missing `{want}` in:\n{err}");
}

/// An application that authenticates by client certificate on a gateway that asks for none is
/// refused, with what to add.
#[test]
fn validate_refuses_mtls_applications_without_server_tls() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gerbang.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("registry")).unwrap();
    std::fs::write(
        dir.path().join("registry/dinkes.toml"),
        "[agency]\nid = \"dinkes\"\nname = \"Dinkes\"\n[[application]]\nid = \"simpus\"\n\
         name = \"SIMPUS\"\nauth_methods = [\"mtls\"]\ncert_names = [\"simpus.dinkes.test\"]\n",
    )
    .unwrap();
    gerbang::config::create_signing_key(&dir.path().join("data/keys")).unwrap();
    gerbang::config::ensure_audit_keys(&dir.path().join("data/keys")).unwrap();
    std::fs::create_dir(dir.path().join("agreements")).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(dir.path().join("gerbang.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("1 configuration problem(s)"), "{err}");
    assert!(
        err.contains(
            "dinkes.toml: application[0].auth_methods: `mtls` is in auth_methods but \
             gerbang.toml has no [server.tls]: add [server.tls] with cert_file, key_file, \
             client_auth = \"optional\" (or \"required\") and client_ca_files"
        ),
        "{err}"
    );
}

/// `explain` for an application the registry does not know: denied at authentication, exit 3,
/// even where an agreement for `*` would allow any registered one.
#[test]
fn explain_denies_an_unknown_application_with_exit_3() {
    let dir = copy_of_repo_config();
    let main = dir.path().join("gerbang.toml");
    assert!(bin()
        .args(["rotate-key", "--config"])
        .arg(&main)
        .output()
        .unwrap()
        .status
        .success());
    let explain = |consumer: &str| {
        let out = bin()
            .args(["explain", "--config"])
            .arg(&main)
            .args(["--consumer", consumer, "GET", "/diskominfo/echo/x"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = explain("diskominfo/portal");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("decision: ALLOW by agreement `open-diskominfo-echo`"),
        "{out}"
    );
    let (code, out) = explain("uji/nosuch");
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("decision: DENY (unknown application)\n"),
        "{out}"
    );
    assert!(
        out.contains("`uji/nosuch` is not a registered application"),
        "{out}"
    );
}

/// The audit commands find the log from the configuration as `serve` does; given the demo's
/// directory instead of the gateway's data directory, they say where they looked and which
/// directory was meant; the commands the demo prints work as printed.
#[test]
fn audit_commands_take_the_configuration_and_name_what_a_directory_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let main = gerbang::demo::prepare_data_dir(dir.path(), false).unwrap();
    // A log to check: the gateway on the demo's configuration, started and stopped (it seals
    // on shutdown).
    let mut child = KillOnDrop(
        bin()
            .args(["serve", "--config"])
            .arg(&main)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("GERBANG__LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let data: SocketAddr = wait_for_line(stderr, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "gateway ready" {
            return None;
        }
        v["data_addr"].as_str()?.parse().ok()
    });
    // One call, refused and recorded.
    assert_eq!(http_get(data, "/diskominfo/echo/x").0, 401);
    assert_eq!(terminate(&mut child).code(), Some(0));

    let audit = |args: &[&str], place: &[&std::ffi::OsStr]| {
        let out = bin().arg("audit").args(args).args(place).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The demo's directory is not the gateway's data directory: said so, with the one meant.
    let demo_dir = dir.path().as_os_str();
    for command in ["verify", "anchor", "query"] {
        let (code, _, err) = audit(&[command], &["--data-dir".as_ref(), demo_dir]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(
            err.contains(&format!(
                "{} has no audit log: looked for the directory {}, which is missing; \
                 did you mean --data-dir {}?",
                dir.path().display(),
                dir.path().join("audit").display(),
                dir.path().join("data").display()
            )),
            "{command}: {err}"
        );
        assert!(
            err.contains(&format!("--config {}", main.display())),
            "{command}: {err}"
        );
        assert!(!err.contains("seal public key"), "{command}: {err}");
    }
    // A directory with nothing at all.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = audit(
        &["verify"],
        &["--data-dir".as_ref(), empty.path().as_os_str()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("has no audit log"), "{err}");
    assert!(!err.contains("did you mean"), "{err}");

    // By configuration file.
    let by_config = ["--config".as_ref(), main.as_os_str()];
    let (code, out, err) = audit(&["verify"], &by_config);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("audit log intact:"), "{out}");
    let (code, out, err) = audit(&["anchor"], &by_config);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["seq"].as_u64() > Some(0)
    );
    let (code, out, err) = audit(&["query", "--json"], &by_config);
    assert_eq!(code, Some(0), "{out}{err}");
    // Neither or both: a usage error.
    let (code, _, _) = audit(&["verify"], &[]);
    assert_eq!(code, Some(2));

    // What the demo prints for its own directory works as printed.
    let cfg = gerbang::load(&main, &gerbang::Overrides::default()).unwrap();
    let commands = gerbang::demo::audit_commands(&cfg);
    assert!(commands.len() >= 3, "{commands:?}");
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with(&format!("gerbang audit verify --config {}", main.display()))),
        "{commands:?}"
    );
    for c in &commands {
        let words: Vec<&str> = c.split('#').next().unwrap().split_whitespace().collect();
        assert_eq!(words[0], "gerbang");
        let out = bin().args(&words[1..]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{c}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
