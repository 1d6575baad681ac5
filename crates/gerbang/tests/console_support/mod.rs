//! Support for the console's real-browser tests: a `gerbang serve` process with an admin token
//! for each role, a NIK-subject service and agreements; Debian's Chromium driven through
//! `chromedriver` (WebDriver, the `thirtyfour` crate); axe-core injected into each page.
//!
//! The tests are `#[ignore = "needs chromium"]`; [`Browser::start`] and [`axe_source`] fail them
//! with a clear message when Chromium, chromedriver or axe-core is missing, so that
//! `--include-ignored` never passes without them (`.ci/run` installs all three).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thirtyfour::prelude::*;
use thirtyfour::ChromiumLikeCapabilities;

use crate::common::{self, Echo, Replica};

/// The mock OpenID Connect provider the e2e tests use too.
#[path = "../../../../tests/src/mock_oidc.rs"]
pub mod mock_oidc;

// ---------------------------------------------------------------- the gateway

/// The admin tokens of the test gateway: (name, role, token). The name is what the console
/// shows and what admin audit records carry.
pub const PEOPLE: [(&str, &str, &str); 4] = [
    (
        "ani-admin",
        "admin",
        "gat_konsol_uji_admin_0123456789abcdef",
    ),
    (
        "budi-operator",
        "operator",
        "gat_konsol_uji_operator_0123456789abcdef",
    ),
    (
        "citra-auditor",
        "auditor",
        "gat_konsol_uji_auditor_0123456789abcdef",
    ),
    (
        "dedi-viewer",
        "viewer",
        "gat_konsol_uji_viewer_0123456789abcdef",
    ),
];

/// The token of the person with `role`.
pub fn token_of(role: &str) -> &'static str {
    PEOPLE
        .iter()
        .find(|p| p.1 == role)
        .map(|p| p.2)
        .unwrap_or_else(|| panic!("no test token for role {role}"))
}

/// The name of the person with `role`.
pub fn name_of(role: &str) -> &'static str {
    PEOPLE
        .iter()
        .find(|p| p.1 == role)
        .map(|p| p.0)
        .unwrap_or_else(|| panic!("no test token for role {role}"))
}

/// The agreement the tests edit: `klien/app` may read `GET /penduduk/{nik}` of
/// `dukcapil/penduduk` (classified `rahasia`) for the purpose `verifikasi-identitas`.
pub const AGREEMENT: &str = "pks-dukcapil-klien-2026-001";
/// The purpose that agreement allows.
pub const PURPOSE: &str = "verifikasi-identitas";
/// A NIK (fictitious) as a data subject.
pub const NIK: &str = "3201010101900001";
/// Another NIK nobody asked about.
pub const OTHER_NIK: &str = "3201010101900002";

/// The data-plane path of the NIK endpoint for `nik`.
pub fn nik_path(nik: &str) -> String {
    format!("/dukcapil/penduduk/penduduk/{nik}")
}

/// The agreement file as the tests write it.
pub fn agreement_file() -> String {
    format!(
        "# Agreements of Disdukcapil (test).\n\n\
         [[agreement]]\n\
         id = \"{AGREEMENT}\"\n\
         title = \"Verifikasi identitas pemohon\"\n\
         legal_basis = \"PKS 470/001/DISDUKCAPIL-KLIEN/2026 (uji)\"\n\
         service = \"dukcapil/penduduk\"\n\
         consumers = [\"klien/app\"]\n\
         endpoints = [\"GET /penduduk/{{nik}}\"]\n\
         purposes = [\"{PURPOSE}\"]\n\
         valid_from = 2026-01-01\n\
         valid_until = 2030-12-31\n\
         max_classification = \"rahasia\"\n"
    )
}

/// One `gerbang serve` process with the console's test configuration.
pub struct Gateway {
    pub root: tempfile::TempDir,
    pub echo: Echo,
    pub replica: Replica,
}

impl Gateway {
    /// Writes the configuration (registry: `uji/echo`, `dukcapil/penduduk` with a NIK-subject
    /// endpoint, the application `klien/app` with an API key; agreements for both services;
    /// admin tokens for the four roles; audit records on disk before each answer) and starts the
    /// gateway. `admin_extra`: lines added to `[admin]` (e.g. a session lifetime).
    pub fn start(admin_extra: &str) -> Gateway {
        let root = tempfile::tempdir().unwrap();
        let echo = Echo::start();
        let r = root.path();
        std::fs::create_dir_all(r.join("registry")).unwrap();
        std::fs::create_dir_all(r.join("agreements")).unwrap();
        std::fs::create_dir_all(r.join("data")).unwrap();
        let api_digest = digest(common::API_KEY);
        std::fs::write(
            r.join("registry/uji.toml"),
            format!(
                "[agency]\nid = \"uji\"\nname = \"Dinas Uji\"\n\n[[service]]\nid = \"echo\"\n\
                 name = \"Echo\"\n[[service.instance]]\nname = \"echo-1\"\nurl = \"{}\"\n",
                echo.url()
            ),
        )
        .unwrap();
        std::fs::write(
            r.join("registry/dukcapil.toml"),
            format!(
                "[agency]\nid = \"dukcapil\"\nname = \"Dinas Kependudukan dan Pencatatan Sipil\"\n\n\
                 [[service]]\nid = \"penduduk\"\nname = \"Data kependudukan\"\n\
                 [[service.instance]]\nname = \"penduduk-1\"\nurl = \"{}\"\n\n\
                 [[service.endpoint]]\nmethod = \"GET\"\npath = \"/penduduk/{{nik}}\"\n\
                 classification = \"rahasia\"\nsubject = \"nik\"\n",
                echo.url()
            ),
        )
        .unwrap();
        std::fs::write(
            r.join("registry/klien.toml"),
            format!(
                "[agency]\nid = \"klien\"\nname = \"Dinas Klien\"\n\n[[application]]\nid = \"app\"\n\
                 name = \"Aplikasi Klien\"\nauth_methods = [\"api_key\"]\n\
                 api_keys = [{{ digest = \"{api_digest}\" }}]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            r.join("agreements/uji.toml"),
            "[[agreement]]\nid = \"uji-echo\"\ntitle = \"Echo\"\nlegal_basis = \"uji\"\n\
             service = \"uji/echo\"\nconsumers = [\"*\"]\nmax_classification = \"terbatas\"\n",
        )
        .unwrap();
        std::fs::write(r.join("agreements/dukcapil.toml"), agreement_file()).unwrap();
        let tokens: Vec<String> = PEOPLE
            .iter()
            .map(|(name, role, token)| {
                format!(
                    "  {{ name = \"{name}\", digest = \"{}\", role = \"{role}\" }},\n",
                    digest(token)
                )
            })
            .collect();
        let main = format!(
            "[server]\nworker_threads = 2\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n\
             [admin]\nwatch_files = false\ntokens = [\n{tokens}]\n{admin_extra}\n\n\
             [paths]\ndata_dir = \"{data}\"\nregistry_dir = \"{reg}\"\nagreements_dir = \"{agr}\"\n\n\
             [auth]\nissuer = \"http://gerbang.test\"\n\n\
             [audit]\nfsync = \"always\"\n",
            tokens = tokens.concat(),
            data = r.join("data").display(),
            reg = r.join("registry").display(),
            agr = r.join("agreements").display(),
        );
        let config = r.join("gerbang.toml");
        std::fs::write(&config, main).unwrap();
        let out = common::bin()
            .args(["rotate-key", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rotate-key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let replica = Replica::start(config, Vec::new());
        Gateway {
            root,
            echo,
            replica,
        }
    }

    /// `http://127.0.0.1:PORT` of the admin listener (the console's origin).
    pub fn admin_origin(&self) -> String {
        format!("http://{}", self.replica.admin_addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.replica.admin_addr
    }

    /// The agreement file the tests edit.
    pub fn agreement_path(&self) -> PathBuf {
        self.root.path().join("agreements/dukcapil.toml")
    }

    /// Its bytes now.
    pub fn agreement_text(&self) -> String {
        std::fs::read_to_string(self.agreement_path()).unwrap()
    }

    /// A call through the data plane as `klien/app` (API key) with an optional purpose;
    /// returns (status, body).
    pub fn call(&self, path: &str, purpose: Option<&str>) -> (u16, String) {
        let purpose = purpose
            .map(|p| format!("X-Gerbang-Purpose: {p}\r\n"))
            .unwrap_or_default();
        let (status, _, body) = common::exchange(
            self.replica.data_addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {}\r\n{purpose}Connection: close\r\n\r\n",
                common::API_KEY
            ),
        );
        (status, body)
    }

    /// An admin API call with `token`; returns (status, body).
    pub fn api(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
        let (status, _, text) = common::exchange(
            self.admin_addr(),
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        (status, text)
    }

    /// A console request outside the browser: `method path` with the cookie header `cookie`
    /// (empty: none) and, for a POST, the form `fields` (urlencoded). Returns (status, lower-cased
    /// head, body).
    pub fn console_request(
        &self,
        method: &str,
        path: &str,
        cookie: &str,
        fields: &[(String, String)],
    ) -> (u16, String, String) {
        let body = form_encode(fields);
        let cookie = if cookie.is_empty() {
            String::new()
        } else {
            format!("Cookie: {cookie}\r\n")
        };
        let origin = self.admin_origin();
        common::exchange(
            self.admin_addr(),
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n{cookie}\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len(),
                host = self.admin_addr(),
            ),
        )
    }
}

/// `sha256:` + hex of `token`, as `[admin] tokens` and API keys take it.
pub fn digest(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    format!("sha256:{}", hex::encode(d.as_ref()))
}

/// `application/x-www-form-urlencoded` of `fields`.
pub fn form_encode(fields: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

// ---------------------------------------------------------------- the components

/// The first of `candidates` that exists, or the file named `name` on `PATH`; `env` overrides.
fn find_program(env: &str, candidates: &[&str], name: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        if !p.is_empty() {
            return Some(PathBuf::from(p)).filter(|p| p.exists());
        }
    }
    for c in candidates {
        if Path::new(c).exists() {
            return Some(PathBuf::from(c));
        }
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// Chromium's binary (Debian: the program behind the `/usr/bin/chromium` wrapper script).
pub fn chromium_path() -> PathBuf {
    find_program(
        "CHROMIUM",
        &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
        "chromium",
    )
    .unwrap_or_else(|| {
        panic!(
            "this test needs Chromium (Debian: apt-get install -y chromium chromium-driver; \
             .ci/run installs them): not found in /usr/lib/chromium, /usr/bin or PATH \
             (or set CHROMIUM)"
        )
    })
}

/// chromedriver's binary.
pub fn chromedriver_path() -> PathBuf {
    find_program("CHROMEDRIVER", &["/usr/bin/chromedriver"], "chromedriver").unwrap_or_else(|| {
        panic!(
            "this test needs chromedriver (Debian: apt-get install -y chromium-driver; .ci/run \
             installs it): not found in /usr/bin or PATH (or set CHROMEDRIVER)"
        )
    })
}

/// The workspace's root directory.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// axe-core's `axe.min.js`: `AXE_CORE_JS`, or where `.ci/run` installs it
/// (`target/axe-core/node_modules/axe-core/axe.min.js`).
pub fn axe_source() -> String {
    let path = std::env::var("AXE_CORE_JS")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_dir().join("target/axe-core/node_modules/axe-core/axe.min.js")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "this test needs axe-core at {} ({e}): `npm install --prefix target/axe-core \
             axe-core@4` (.ci/run does it), or set AXE_CORE_JS to an axe.min.js",
            path.display()
        )
    });
    assert!(
        text.contains("axe"),
        "{} does not look like axe-core",
        path.display()
    );
    text
}

/// Where screenshots go: always `target/console-screenshots/`; also `docs/console/` when
/// `GERBANG_UPDATE_SCREENSHOTS=1` (so that an ordinary test run leaves the work tree as it was).
pub fn screenshot_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![workspace_dir().join("target/console-screenshots")];
    if std::env::var("GERBANG_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        dirs.push(workspace_dir().join("docs/console"));
    }
    dirs
}

// ---------------------------------------------------------------- the browser

/// A `chromedriver` of this test on a free port with one headless Chromium session; the session
/// is closed and chromedriver killed on drop (also when the test panics).
pub struct Browser {
    pub driver: Option<WebDriver>,
    chromedriver: Child,
    port: u16,
    profile: tempfile::TempDir,
    /// The console's origin, `http://127.0.0.1:PORT`.
    pub origin: String,
    /// The gateway's log lines, for failure messages.
    gateway_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// What the data plane needs to work without the internet: no background connections.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--lang=id",
    "--window-size=1366,768",
];

impl Browser {
    /// Starts chromedriver and a Chromium session for the console of `gw`.
    pub async fn start(gw: &Gateway) -> Browser {
        let origin = gw.admin_origin();
        let chromium = chromium_path();
        let chromedriver = chromedriver_path();
        let profile = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            // Chromium's user interface language and locale (date fields) on Linux.
            .env("LANGUAGE", "id")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let mut browser = Browser {
            driver: None,
            chromedriver: child,
            port,
            profile,
            origin: origin.trim_end_matches('/').to_owned(),
            gateway_log: std::sync::Arc::clone(&gw.replica.log),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = common::eventually(Duration::from_secs(20), || {
            // It listens once it is ready for sessions (WebDriver::new asks it for one).
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(
            ready,
            "chromedriver did not become ready on port {port}: {}",
            browser.driver_log()
        );
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(&chromium.display().to_string()).unwrap();
        for a in CHROMIUM_ARGS {
            caps.add_arg(a).unwrap();
        }
        caps.add_arg(&format!(
            "--user-data-dir={}",
            browser.profile.path().join("profile").display()
        ))
        .unwrap();
        let driver = match WebDriver::new(format!("http://127.0.0.1:{port}"), caps).await {
            Ok(d) => d,
            Err(e) => panic!(
                "no Chromium session ({}): {e}\n{}",
                chromium.display(),
                browser.driver_log()
            ),
        };
        driver
            .set_script_timeout(Duration::from_secs(60))
            .await
            .unwrap();
        driver
            .set_page_load_timeout(Duration::from_secs(30))
            .await
            .unwrap();
        browser.driver = Some(driver);
        browser.laptop().await;
        browser
    }

    /// The WebDriver session.
    pub fn d(&self) -> &WebDriver {
        self.driver.as_ref().unwrap()
    }

    /// The last lines of chromedriver's log, for failure messages.
    fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Opens `path` of the console (or a full URL).
    pub async fn go(&self, path: &str) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.origin)
        };
        self.d()
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The current URL's path (and query).
    pub async fn path(&self) -> String {
        let u = self.d().current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    /// The page's HTML (at most 4000 characters) and the gateway's last warnings and errors,
    /// for failure messages.
    pub async fn source_excerpt(&self) -> String {
        let s = self.d().source().await.unwrap_or_default();
        let page: String = s.chars().take(4000).collect();
        let log = self.gateway_log.lock().unwrap();
        let problems: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
            .collect();
        let tail: Vec<&str> = problems[problems.len().saturating_sub(10)..]
            .iter()
            .map(|l| l.as_str())
            .collect();
        format!(
            "{page}\n-- gateway warnings and errors:\n{}",
            tail.join("\n")
        )
    }

    /// The visible text of the page body.
    pub async fn body_text(&self) -> String {
        self.d()
            .find(By::Tag("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The element `css` selects, waiting up to 10 s for it; fails with the page's URL and HTML.
    pub async fn find(&self, css: &str) -> WebElement {
        let found = self
            .d()
            .query(By::Css(css))
            .wait(Duration::from_secs(10), Duration::from_millis(100))
            .first()
            .await;
        match found {
            Ok(e) => e,
            Err(e) => panic!(
                "no element {css} on {} ({e}); page:\n{}",
                self.path().await,
                self.source_excerpt().await
            ),
        }
    }

    /// Every element `css` selects now (no wait).
    pub async fn all(&self, css: &str) -> Vec<WebElement> {
        self.d().find_all(By::Css(css)).await.unwrap()
    }

    /// The button (or submit input) whose text is `label`, waiting up to 10 s.
    pub async fn button(&self, label: &str) -> WebElement {
        let xpath = format!(
            "//button[normalize-space()='{label}'] | //input[(@type='submit' or @type='button') and @value='{label}']"
        );
        let found = self
            .d()
            .query(By::XPath(&xpath))
            .wait(Duration::from_secs(10), Duration::from_millis(100))
            .first()
            .await;
        match found {
            Ok(e) => e,
            Err(e) => panic!(
                "no button '{label}' on {} ({e}); page:\n{}",
                self.path().await,
                self.source_excerpt().await
            ),
        }
    }

    /// Waits up to 10 s until the URL's path is `path`; fails with the page otherwise.
    pub async fn wait_path(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.d().current_url().await.unwrap();
            if now.path() == path {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected to be on {path}, still on {now}; page:\n{}",
                    self.source_excerpt().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's `<h1>` text.
    pub async fn h1(&self) -> String {
        self.find("h1").await.text().await.unwrap()
    }

    /// Signs in with `token` on `/console/masuk` and waits for the overview.
    pub async fn sign_in(&self, token: &str) {
        self.go("/console/masuk").await;
        let input = self.find("input#token").await;
        assert_eq!(
            input.attr("type").await.unwrap().as_deref(),
            Some("password"),
            "the token field hides what is typed"
        );
        input.send_keys(token).await.unwrap();
        self.find("#masuk").await.click().await.unwrap();
        self.wait_landed().await;
    }

    /// Signs in with the keyboard only: Tab from the top of the page to the token field (the
    /// skip link and language links come first), type, Enter.
    pub async fn sign_in_with_keyboard(&self, token: &str) {
        self.go("/console/masuk").await;
        self.find("input#token").await;
        let mut reached = false;
        for _ in 0..10 {
            self.d()
                .active_element()
                .await
                .unwrap()
                .send_keys(Key::Tab)
                .await
                .unwrap();
            let id = self.d().active_element().await.unwrap().id().await.unwrap();
            if id.as_deref() == Some("token") {
                reached = true;
                break;
            }
        }
        assert!(reached, "Tab never reached the token field");
        self.d()
            .active_element()
            .await
            .unwrap()
            .send_keys(token + Key::Enter)
            .await
            .unwrap();
        self.wait_landed().await;
    }

    /// Waits for the page a sign-in lands on: the overview, or the audit page (an auditor).
    pub async fn wait_landed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.d().current_url().await.unwrap();
            if now.path() == "/console/" || now.path() == "/console/audit" {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "a sign-in did not land on /console/ or /console/audit, still on {now}; page:\n{}",
                    self.source_excerpt().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Signs out with the page's sign-out form (a POST to `/console/keluar`).
    pub async fn sign_out(&self) {
        let form = self.find("form[action$='/console/keluar']").await;
        let button = form
            .find(By::Css("button, input[type='submit']"))
            .await
            .unwrap_or_else(|e| panic!("the sign-out form has no button: {e}"));
        button.click().await.unwrap();
        self.wait_path("/console/masuk").await;
    }

    /// The value of the session cookie `gerbang_console` as `name=value`, or empty.
    pub async fn session_cookie(&self) -> String {
        match self.d().get_named_cookie("gerbang_console").await {
            Ok(c) => format!("{}={}", c.name, c.value),
            Err(_) => String::new(),
        }
    }

    /// The session cookie as the browser holds it (flags included).
    pub async fn session_cookie_full(&self) -> Option<Cookie> {
        self.d().get_named_cookie("gerbang_console").await.ok()
    }

    /// Sets the control inside `#field-{name}` to `value` (see [`Self::fill`]).
    pub async fn set_field(&self, name: &str, value: &str) {
        let wrapper = self.find(&format!("#field-{name}")).await;
        let control = wrapper
            .find(By::Css("input:not([type='hidden']), select, textarea"))
            .await
            .unwrap_or_else(|e| panic!("#field-{name} has no control: {e}"));
        self.fill_control(&control, value).await;
    }

    /// Sets the control `css` selects to `value` (see [`Self::fill_control`]).
    pub async fn fill(&self, css: &str, value: &str) {
        let control = self.find(css).await;
        self.fill_control(&control, value).await;
    }

    /// Types `value` into an input or text area (replacing what it held); chooses the option of
    /// a select (adding one when `value` is not among them: the server must refuse what a
    /// tampered form sends, not only what its options offer).
    pub async fn fill_control(&self, control: &WebElement, value: &str) {
        let tag = control.tag_name().await.unwrap().to_ascii_lowercase();
        if tag == "select" {
            self.d()
                .execute(
                    "const [el, v] = arguments;
                     if (![...el.options].some(o => o.value === v)) {
                       const o = document.createElement('option'); o.value = v; o.text = v; el.add(o);
                     }
                     el.value = v;
                     el.dispatchEvent(new Event('change', { bubbles: true }));",
                    vec![control.to_json().unwrap(), json!(value)],
                )
                .await
                .unwrap();
        } else {
            control.clear().await.unwrap();
            self.d()
                .execute(
                    "arguments[0].value = ''; arguments[0].dispatchEvent(new Event('input', { bubbles: true }));",
                    vec![control.to_json().unwrap()],
                )
                .await
                .unwrap();
            control.send_keys(value).await.unwrap();
        }
    }

    /// The current value of the control inside `#field-{name}`.
    pub async fn field_value(&self, name: &str) -> String {
        let wrapper = self.find(&format!("#field-{name}")).await;
        let control = wrapper
            .find(By::Css("input:not([type='hidden']), select, textarea"))
            .await
            .unwrap_or_else(|e| panic!("#field-{name} has no control: {e}"));
        control.prop("value").await.unwrap().unwrap_or_default()
    }

    /// The fields the form around `button` would send when that button submits it, and the
    /// form's action: (action path, fields).
    pub async fn form_fields(&self, button: &WebElement) -> (String, Vec<(String, String)>) {
        let v = self
            .d()
            .execute(
                "const b = arguments[0]; const f = b.form;
                 const data = new FormData(f, b);
                 return { action: new URL(f.action, location.href).pathname,
                          fields: [...data.entries()].map(([k, v]) => [k, String(v)]) };",
                vec![button.to_json().unwrap()],
            )
            .await
            .unwrap();
        let v = v.json().clone();
        let action = v["action"].as_str().unwrap_or_default().to_owned();
        let fields = v["fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or_default().to_owned(),
                            p[1].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        (action, fields)
    }

    /// The value of the first hidden `csrf` input on the page.
    pub async fn csrf(&self) -> String {
        self.find("input[type='hidden'][name='csrf']")
            .await
            .attr("value")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// Runs axe-core on the page; returns its violations (id, impact, help, up to 5 targets).
    pub async fn axe(&self, source: &str) -> Vec<Value> {
        let loaded = self
            .d()
            .execute(&format!("{source}\n;return typeof window.axe;"), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("inject axe-core: {e}"));
        assert_eq!(
            loaded.json(),
            &json!("object"),
            "axe-core did not load into the page"
        );
        let ret = self
            .d()
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 window.axe.run(document, { resultTypes: ['violations'] })
                   .then(r => done({ violations: r.violations.map(v => ({
                       id: v.id, impact: v.impact, help: v.help,
                       nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ')) })) }))
                   .catch(e => done({ error: String(e) }));",
                Vec::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("axe.run: {e}"));
        let v = ret.json();
        assert!(v.get("error").is_none(), "axe.run failed: {}", v["error"]);
        v["violations"].as_array().cloned().unwrap_or_default()
    }

    /// Saves a PNG of the viewport as `<name>.png` in every [`screenshot_dirs`] directory;
    /// returns its size in bytes.
    pub async fn screenshot(&self, name: &str) -> usize {
        let png = self.d().screenshot_as_png().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        for dir in screenshot_dirs() {
            std::fs::create_dir_all(&dir).unwrap();
            let mut f = std::fs::File::create(dir.join(format!("{name}.png"))).unwrap();
            f.write_all(&png).unwrap();
        }
        png.len()
    }

    /// Makes the viewport `width`×`height` CSS pixels (a phone: `mobile`), whatever the
    /// window's size (headless Chromium's window includes room for its toolbars).
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.d()
            .cdp()
            .send_raw(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
            )
            .await
            .unwrap_or_else(|e| panic!("viewport {width}x{height}: {e}"));
    }

    /// Scrolls the element `css` selects to the top of the viewport (for a screenshot of a
    /// result below the form).
    pub async fn scroll_to(&self, css: &str) {
        let el = self.find(css).await;
        self.d()
            .execute(
                "arguments[0].scrollIntoView({ block: 'start' });",
                vec![el.to_json().unwrap()],
            )
            .await
            .unwrap();
    }

    /// The laptop viewport the screenshots use: 1366×768.
    pub async fn laptop(&self) {
        self.set_viewport(1366, 768, false).await;
    }

    /// The viewport's size in CSS pixels.
    pub async fn viewport(&self) -> (u64, u64) {
        let v = self
            .d()
            .execute(
                "return [window.innerWidth, window.innerHeight];",
                Vec::new(),
            )
            .await
            .unwrap();
        let v = v.json();
        (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0))
    }

    /// A `fetch` from the page (same origin, its cookies): `method path` with a urlencoded form
    /// body; returns the status (redirects not followed: 0 for an opaque redirect).
    pub async fn fetch_form(&self, method: &str, path: &str, fields: &[(String, String)]) -> u16 {
        let ret = self
            .d()
            .execute_async(
                "const [m, p, body, done] = arguments;
                 fetch(p, { method: m, body, redirect: 'manual', credentials: 'same-origin',
                            headers: { 'Content-Type': 'application/x-www-form-urlencoded' } })
                   .then(r => done(r.status)).catch(e => done(-1));",
                vec![json!(method), json!(path), json!(form_encode(fields))],
            )
            .await
            .unwrap();
        ret.json().as_u64().unwrap_or(0) as u16
    }
}

impl Browser {
    /// Closes the session and stops chromedriver.
    pub async fn quit(mut self) {
        if let Some(d) = self.driver.take() {
            let _ = d.quit().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Without `quit` (a failed test): the driver closes its session synchronously when
        // dropped, so that Chromium exits with it; then chromedriver goes.
        drop(self.driver.take());
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
    }
}

/// The violations that fail a page: impact `critical` or `serious`.
pub fn serious(violations: &[Value]) -> Vec<&Value> {
    violations
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("critical" | "serious")))
        .collect()
}
