//! A `redis-server` for this crate's tests: a free loopback port, no persistence, killed on
//! drop. Missing `redis-server` fails the test with a clear message (the tests that need it are
//! `#[ignore = "needs redis-server"]`, so `--include-ignored` never passes silently without it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRedis {
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    /// Extra arguments (TLS).
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_path() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("redis-server").exists() {
                return d.join("redis-server");
            }
        }
    }
    panic!(
        "this test needs redis-server (Debian: apt-get install -y redis-server): not found in \
         /usr/bin, /usr/local/bin or PATH"
    );
}

impl TestRedis {
    pub fn start() -> TestRedis {
        let port = free_port();
        let mut r = TestRedis {
            port,
            url: format!("redis://127.0.0.1:{port}/0"),
            child: None,
            extra: Vec::new(),
        };
        r.spawn();
        r
    }

    /// Also listening with TLS (certificate and key PEM files); `url` is the `rediss://` one,
    /// by the name `localhost`. `command` still uses the plain port.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> TestRedis {
        let port = free_port();
        let tls_port = free_port();
        let mut r = TestRedis {
            port,
            url: format!("rediss://localhost:{tls_port}/0"),
            child: None,
            extra: vec![
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new(server_path())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.command("PING").starts_with("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: connections drop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One inline command; the raw reply (empty when there is none).
    pub fn command(&self, cmd: &str) -> String {
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(500),
        ) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
