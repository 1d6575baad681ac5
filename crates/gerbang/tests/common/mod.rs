//! Support for the cluster tests: a real `redis-server` on a free port, N `gerbang serve`
//! processes sharing one keys directory, one registry and one agreement directory (each with
//! its own data directory and replica id), an echo upstream and a small HTTP/1.1 client.
//!
//! Tests that need Redis are `#[ignore = "needs redis-server"]`; [`RedisServer::start`] fails
//! them with a clear message when `redis-server` is missing, so that `--include-ignored` never
//! passes silently without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The gateway binary under test.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gerbang"));
    c.env_remove("RUST_LOG");
    c
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it holds or `patience` runs out; returns whether it held.
pub fn eventually(patience: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- redis

/// A `redis-server` of this test on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    /// `redis://127.0.0.1:PORT/0`
    pub url: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// Where Debian puts `redis-server`, or the one on `PATH`.
fn redis_server_path() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("redis-server");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "this test needs redis-server (Debian: apt-get install -y redis-server; .ci/run installs \
         it): it was not found in /usr/bin, /usr/local/bin or PATH"
    );
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            url: String::new(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.url = format!("redis://127.0.0.1:{}/0", r.port);
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_path())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        assert!(
            eventually(Duration::from_secs(10), || redis_ping(port)),
            "redis-server did not answer PING on port {port}"
        );
    }

    /// Kills the server (SIGKILL): clients see their connections drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it kept nothing).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends one command (inline form) and returns the raw reply.
    pub fn command(&self, cmd: &str) -> String {
        redis_command(self.port, cmd).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 65536];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn redis_ping(port: u16) -> bool {
    redis_command(port, "PING").is_some_and(|r| r.starts_with("+PONG"))
}

// ---------------------------------------------------------------- echo upstream

/// An HTTP/1.1 upstream answering every request `200 {"ok":true,"path":…}` (keep-alive).
pub struct Echo {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl Echo {
    pub fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let count = Arc::clone(&count);
                std::thread::spawn(move || serve_echo(conn, &count));
            }
        });
        Echo { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve_echo(conn: TcpStream, count: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if l.starts_with("connection:") && l.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::Relaxed);
        let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
        let text = serde_json::json!({ "ok": true, "path": path }).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if conn.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

// ---------------------------------------------------------------- HTTP client

/// Sends `request` as given over a fresh connection; returns (status, lower-cased head, body).
/// Status 0: no answer within 10 s, or the connection failed.
pub fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(request.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    let mut text = String::new();
    if s.read_to_string(&mut text).is_err() {
        return (0, String::new(), text);
    }
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// `GET path` with a bearer token (empty: none); returns (status, lower-cased head, body).
pub fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, String, String) {
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"),
    )
}

/// `GET path` with the API key of [`CLIENT_ID`].
pub fn get_with_api_key(addr: SocketAddr, path: &str) -> (u16, String, String) {
    exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {API_KEY}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// An admin API call with [`ADMIN_TOKEN`]: `method path` with an optional JSON body and extra
/// header lines. Returns (status, lower-cased head, body).
pub fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &str,
) -> (u16, String, String) {
    let body = body.unwrap_or("");
    exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// An access token for `client_id` from the token endpoint at `addr`.
pub fn token(addr: SocketAddr, client_id: &str, secret: &str) -> String {
    try_token(addr, client_id, secret).unwrap_or_else(|e| panic!("{e}"))
}

/// [`token`], or why not (for tests that count failures instead of stopping at one).
pub fn try_token(addr: SocketAddr, client_id: &str, secret: &str) -> Result<String, String> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{secret}", client_id.replace('/', "%2F")));
    let body = "grant_type=client_credentials";
    let (status, _, text) = exchange(
        addr,
        &format!(
            "POST /oauth/token HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {basic}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    if status != 200 {
        return Err(format!("token from {addr}: {status} {text}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no access_token: {text}"))
}

/// The value of the first series of `/metrics` whose line starts with `prefix` (name and labels).
pub fn metric(admin_addr: SocketAddr, prefix: &str) -> Option<f64> {
    let (status, _, body) = get(admin_addr, "/metrics", "");
    if status != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The configuration hash `gerbang_config_info{hash=…}` shows.
pub fn config_hash(admin_addr: SocketAddr) -> Option<String> {
    let (status, _, body) = get(admin_addr, "/metrics", "");
    if status != 200 {
        return None;
    }
    let line = body
        .lines()
        .find(|l| l.starts_with("gerbang_config_info{"))?;
    let start = line.find("hash=\"")? + 6;
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

// ---------------------------------------------------------------- the cluster

/// The calling application every cluster registers.
pub const CLIENT_ID: &str = "klien/app";
pub const CLIENT_SECRET: &str = "klien-secret-0123456789abcdef";
pub const API_KEY: &str = "gk_c1a5000000000000000000000000000000000000000000000000000000000001";
/// The admin API token every replica accepts (name `ops`).
pub const ADMIN_TOKEN: &str = "gat_cluster_test_admin_token_0123456789";
/// The echo service's path prefix: `/uji/echo/...`.
pub const ECHO: &str = "/uji/echo";

/// How to start a cluster.
#[derive(Default, Clone)]
pub struct ClusterOptions {
    /// `[cluster] redis_url`; `None`: no Redis.
    pub redis_url: Option<String>,
    /// TOML appended to every replica's `gerbang.toml` (other sections than `[cluster]`,
    /// `[paths]`, `[admin]`; `[cluster]` keys go to `cluster_extra`).
    pub main_extra: String,
    /// Lines added to the `[cluster]` section.
    pub cluster_extra: String,
    /// Lines added to the `[auth]` section (beside `keys_dir`).
    pub auth_extra: String,
    /// Extra registry files (name, TOML).
    pub registry: Vec<(String, String)>,
    /// The agreement file's TOML; empty: one agreement `uji-echo` for every application on
    /// `uji/echo`, without limits.
    pub agreements: String,
    /// Extra environment variables for every replica.
    pub env: Vec<(String, String)>,
}

/// N gateways over one shared configuration and keys directory.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub echo: Echo,
    pub replicas: Vec<Replica>,
}

impl Cluster {
    /// Writes the configuration, creates the first signing key, and starts `n` replicas (the
    /// first alone, so that it creates the shared keys; then the others).
    pub fn start(n: usize, opts: ClusterOptions) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let echo = Echo::start();
        let r = root.path();
        std::fs::create_dir_all(r.join("config/registry")).unwrap();
        std::fs::create_dir_all(r.join("config/agreements")).unwrap();
        let hash = {
            let mut c = bin()
                .arg("hash-secret")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin
                .take()
                .unwrap()
                .write_all(CLIENT_SECRET.as_bytes())
                .unwrap();
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let api_digest = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, API_KEY.as_bytes());
            format!("sha256:{}", hex::encode(d.as_ref()))
        };
        std::fs::write(
            r.join("config/registry/uji.toml"),
            format!(
                "[agency]\nid = \"uji\"\nname = \"Uji\"\n\n[[service]]\nid = \"echo\"\nname = \"Echo\"\n\
                 [[service.instance]]\nname = \"echo-1\"\nurl = \"{}\"\n",
                echo.url()
            ),
        )
        .unwrap();
        std::fs::write(
            r.join("config/registry/klien.toml"),
            format!(
                "[agency]\nid = \"klien\"\nname = \"Klien\"\n\n[[application]]\nid = \"app\"\n\
                 name = \"App\"\nauth_methods = [\"client_secret\", \"api_key\"]\n\
                 client_secret_hashes = [\"{hash}\"]\napi_keys = [{{ digest = \"{api_digest}\" }}]\n"
            ),
        )
        .unwrap();
        for (name, text) in &opts.registry {
            std::fs::write(r.join("config/registry").join(name), text).unwrap();
        }
        let agreements = if opts.agreements.is_empty() {
            "[[agreement]]\nid = \"uji-echo\"\ntitle = \"Echo\"\nlegal_basis = \"test\"\n\
             service = \"uji/echo\"\nconsumers = [\"*\"]\nmax_classification = \"terbatas\"\n"
                .to_owned()
        } else {
            opts.agreements.clone()
        };
        std::fs::write(r.join("config/agreements/uji.toml"), agreements).unwrap();
        let admin_digest = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ADMIN_TOKEN.as_bytes());
            format!("sha256:{}", hex::encode(d.as_ref()))
        };
        let mut replicas = Vec::new();
        for i in 0..n {
            let dir = r.join(format!("replica-{i}"));
            std::fs::create_dir_all(dir.join("data")).unwrap();
            let redis = opts
                .redis_url
                .as_ref()
                .map(|u| format!("redis_url = \"{u}\"\n"))
                .unwrap_or_default();
            let main = format!(
                "[server]\nworker_threads = 2\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n\
                 [admin]\ntokens = [{{ name = \"ops\", digest = \"{admin_digest}\" }}]\n\
                 watch_files = false\n\n\
                 [paths]\ndata_dir = \"{data}\"\nregistry_dir = \"{reg}\"\nagreements_dir = \"{agr}\"\n\n\
                 [auth]\nkeys_dir = \"{keys}\"\nissuer = \"http://gerbang.test\"\n{auth_extra}\n\
                 [cluster]\nreplica_id = \"r{i}\"\n{redis}{cluster_extra}\n{main_extra}\n",
                data = dir.join("data").display(),
                reg = r.join("config/registry").display(),
                agr = r.join("config/agreements").display(),
                keys = r.join("keys").display(),
                auth_extra = opts.auth_extra,
                cluster_extra = opts.cluster_extra,
                main_extra = opts.main_extra,
            );
            std::fs::write(dir.join("gerbang.toml"), main).unwrap();
            if i == 0 {
                let out = bin()
                    .args(["rotate-key", "--config"])
                    .arg(dir.join("gerbang.toml"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "rotate-key: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let replica = Replica::start(dir.join("gerbang.toml"), opts.env.clone());
            replicas.push(replica);
        }
        Cluster {
            root,
            echo,
            replicas,
        }
    }

    /// The shared keys directory.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.path().join("keys")
    }

    /// The shared registry directory.
    pub fn registry_dir(&self) -> PathBuf {
        self.root.path().join("config/registry")
    }

    /// The shared agreements directory.
    pub fn agreements_dir(&self) -> PathBuf {
        self.root.path().join("config/agreements")
    }

    /// Replica `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("replica-{i}/data"))
    }
}

/// One `gerbang serve` process.
pub struct Replica {
    pub config: PathBuf,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Everything it wrote to stderr (JSON log lines), for failure messages.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts `gerbang serve --config config` on free ports and waits until it is ready.
    pub fn start(config: PathBuf, env: Vec<(String, String)>) -> Replica {
        let mut cmd = bin();
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("GERBANG__LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "gateway ready" {
                        let d = v["data_addr"].as_str().and_then(|s| s.parse().ok());
                        let a = v["admin_addr"].as_str().and_then(|s| s.parse().ok());
                        if let (Some(d), Some(a)) = (d, a) {
                            let _ = tx.send((d, a));
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(60));
        let Ok((data_addr, admin_addr)) = ready else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not become ready:\n{}",
                config.display(),
                log.lock().unwrap().join("\n")
            );
        };
        Replica {
            config,
            data_addr,
            admin_addr,
            env,
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, then waits for a graceful exit (15 s at most); returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no graceful shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same configuration again (new ports) after [`Self::stop`] or [`Self::kill`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        let again = Replica::start(self.config.clone(), self.env.clone());
        *self = again;
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Signs in on `addr` with `token` as a browser does (the form, then the post with the form's
/// token): (status, the session cookie `name=value` if one was set, body).
pub fn console_sign_in(addr: std::net::SocketAddr, token: &str) -> (u16, Option<String>, String) {
    let cookie_of = |head: &str, name: &str| {
        head.lines()
            .filter_map(|l| l.strip_prefix("set-cookie: "))
            .find(|c| c.starts_with(&format!("{name}=")))
            .and_then(|c| c.split(';').next())
            .map(str::to_owned)
    };
    let (_, head, _) = console(addr, "GET", "/console/masuk", "", "");
    let form_cookie = cookie_of(&head, "gerbang_masuk").expect("the sign-in form's cookie");
    let value = form_cookie.trim_start_matches("gerbang_masuk=");
    let (status, head, body) = console(
        addr,
        "POST",
        "/console/masuk",
        &form_cookie,
        &format!("masuk_csrf={value}&token={token}"),
    );
    (status, cookie_of(&head, "gerbang_console"), body)
}

/// `method path` on the console with a cookie and a form body; (status, lower-cased head, body).
pub fn console(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    form: &str,
) -> (u16, String, String) {
    let cookie = if cookie.is_empty() {
        String::new()
    } else {
        format!("Cookie: {cookie}\r\n")
    };
    exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
}
