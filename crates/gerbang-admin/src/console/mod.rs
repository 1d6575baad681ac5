//! Konsol Gerbang: the web console on the admin listener at `/console/`.
//!
//! Server-rendered pages (minijinja, auto-escaped, templates embedded with `include_str!`: the
//! binary carries everything and needs no build step), one embedded stylesheet and no script,
//! so the Content-Security-Policy forbids every inline script and style. Sign-in with an
//! admin token gives a session cookie (`session`); each page and form checks the session's
//! role ([`crate::roles`]) and each state-changing form its CSRF token. Every change goes
//! through [`AdminApi::dispatch`], the admin API's own path: the same validation, files, reload
//! and `admin` audit record (with the person's token name).

pub mod audit_search;
mod editor;
mod i18n;
pub mod session;
mod sso;
mod time;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use gerbang_config::AdminRole;
use gerbang_proxy::response_body::{self, ResponseBody};
use gerbang_proxy::ConnInfo;

use crate::api::{AdminApi, Answer, Caller};
use crate::roles::{console_roles, ConsoleAction};
use crate::Reload;
use i18n::Lang;
pub use session::{Clock, Session, Sessions};
pub use sso::SsoProvider;

/// The session cookie's name.
pub const COOKIE: &str = "gerbang_console";
/// The sign-in form's cookie (its token, also in the form).
pub const SIGN_IN_COOKIE: &str = "gerbang_masuk";
/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Largest form accepted.
const MAX_FORM: usize = 256 * 1024;
/// Overview snapshots kept: one a minute for an hour.
const RING: usize = 61;

const CSS: &str = include_str!("assets/console.css");

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("masuk.html", include_str!("templates/masuk.html")),
    ("galat.html", include_str!("templates/galat.html")),
    ("ringkasan.html", include_str!("templates/ringkasan.html")),
    ("layanan.html", include_str!("templates/layanan.html")),
    (
        "layanan_satu.html",
        include_str!("templates/layanan_satu.html"),
    ),
    ("aplikasi.html", include_str!("templates/aplikasi.html")),
    ("rahasia.html", include_str!("templates/rahasia.html")),
    ("perjanjian.html", include_str!("templates/perjanjian.html")),
    (
        "perjanjian_satu.html",
        include_str!("templates/perjanjian_satu.html"),
    ),
    (
        "perjanjian_ubah.html",
        include_str!("templates/perjanjian_ubah.html"),
    ),
    ("uji_akses.html", include_str!("templates/uji_akses.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("riwayat.html", include_str!("templates/riwayat.html")),
    ("sunting.html", include_str!("templates/sunting.html")),
    ("sso_lanjut.html", include_str!("templates/sso_lanjut.html")),
];

/// How the console runs.
pub struct ConsoleSettings {
    /// This replica's audit log directory (`None`: no audit log).
    pub audit_dir: Option<PathBuf>,
    /// The seal public key (hex) that verifies it.
    pub seal_public_key: Option<PathBuf>,
    /// The gateway's counters, for the overview.
    pub metrics: Option<Arc<gerbang_proxy::metrics::Metrics>>,
    /// Mark the session cookie `Secure` (the admin listener speaks TLS).
    pub secure_cookie: bool,
    /// A session ends after this long without a request.
    pub idle: Duration,
    /// A session ends this long after sign-in.
    pub absolute: Duration,
    /// The sessions' clock (tests move it).
    pub clock: Option<Clock>,
    /// Cluster mode: sessions kept in the store every replica reads.
    pub shared_sessions: Option<Arc<dyn session::SharedSessions>>,
    /// The `[[auth.external]]` issuers admins may sign in through.
    pub sso: Vec<SsoProvider>,
    /// This replica's name (cluster `replica_id`).
    pub replica: String,
    /// Cluster mode: the audit search put to every replica.
    pub audit_fanout: Option<Arc<dyn audit_search::AuditFanout>>,
    /// Replicas the cluster is expected to have (cluster `expected_replicas`).
    pub expected_replicas: usize,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            audit_dir: None,
            seal_public_key: None,
            metrics: None,
            secure_cookie: false,
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(8 * 3600),
            clock: None,
            shared_sessions: None,
            sso: Vec::new(),
            replica: String::new(),
            audit_fanout: None,
            expected_replicas: 1,
        }
    }
}

/// What a console page failed with.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
    #[error(transparent)]
    Session(#[from] session::SessionError),
}

/// Counters at one moment, for the overview's differences.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Option<SystemTime>,
    traffic: BTreeMap<(String, String), u64>,
    denials: BTreeMap<String, u64>,
}

/// The console: templates, sessions, the overview's ring of samples.
pub struct Console {
    env: minijinja::Environment<'static>,
    sessions: Sessions,
    settings: ConsoleSettings,
    ring: Mutex<VecDeque<Sample>>,
}

/// Who is asking, in which language.
struct Ctx {
    lang: Lang,
    session: Option<(String, Session)>,
    client: IpAddr,
    /// Set `lang` cookie.
    set_lang: bool,
}

impl Console {
    pub fn new(settings: ConsoleSettings) -> Self {
        let mut env = minijinja::Environment::new();
        // `.html` names: every value is HTML-escaped unless marked safe (nothing is).
        for (name, text) in TEMPLATES {
            if let Err(e) = env.add_template(name, text) {
                tracing::error!(template = name, error = %e, "console template does not parse");
            }
        }
        let clock = settings
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(Instant::now));
        let sessions = Sessions::new(settings.idle, settings.absolute, clock)
            .with_shared(settings.shared_sessions.clone());
        let console = Self {
            env,
            sessions,
            settings,
            ring: Mutex::new(VecDeque::new()),
        };
        console.sample();
        console
    }

    /// Takes a snapshot of the gateway's counters (the binary calls this every minute).
    pub fn sample(&self) {
        let s = self.snapshot();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.push_back(s);
        while ring.len() > RING {
            ring.pop_front();
        }
    }

    fn snapshot(&self) -> Sample {
        use prometheus::core::Collector;
        let mut s = Sample {
            at: Some(SystemTime::now()),
            ..Sample::default()
        };
        let Some(m) = &self.settings.metrics else {
            return s;
        };
        for family in m.requests.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                let n = metric.get_counter().get_value() as u64;
                if n > 0 {
                    *s.traffic
                        .entry((label("consumer_agency"), label("service")))
                        .or_default() += n;
                }
            }
        }
        for family in m.policy_decisions.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                let n = metric.get_counter().get_value() as u64;
                if n > 0 && label("decision") == "deny" {
                    *s.denials.entry(label("reason")).or_default() += n;
                }
            }
        }
        s
    }

    /// Answers a request under `/console`.
    pub(crate) async fn handle<R: Reload>(
        &self,
        api: &AdminApi<R>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ResponseBody> {
        let path = req.uri().path().to_owned();
        let query = parse_form(req.uri().query().unwrap_or("").as_bytes());
        let cookies = cookies(req.headers());
        let mut ctx = Ctx {
            lang: Lang::Id,
            session: None,
            client: conn.remote.ip(),
            set_lang: false,
        };
        if let Some(l) = query.get("lang").and_then(|l| Lang::parse(l)) {
            ctx.lang = l;
            ctx.set_lang = true;
        } else if let Some(l) = cookies.get("lang").and_then(|l| Lang::parse(l)) {
            ctx.lang = l;
        }
        let lang = ctx.lang;
        let mut res = match self.route(api, req, &path, query, &cookies, ctx).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "console page failed");
                // The error page in the layout (without the menu), or plain text.
                let ctx = Ctx {
                    lang,
                    session: None,
                    client: conn.remote.ip(),
                    set_lang: false,
                };
                self.error_page(&ctx, StatusCode::INTERNAL_SERVER_ERROR, "internal")
                    .unwrap_or_else(|_| {
                        let mut r = Response::new(response_body::full(Bytes::from_static(
                            b"internal error; see the gateway's log",
                        )));
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    })
            }
        };
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        res
    }

    async fn route<R: Reload>(
        &self,
        api: &AdminApi<R>,
        req: Request<Incoming>,
        path: &str,
        query: HashMap<String, String>,
        cookies: &HashMap<String, String>,
        mut ctx: Ctx,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let method = req.method().clone();
        if path == "/console/static/console.css" {
            let mut r = Response::new(response_body::full(Bytes::from_static(CSS.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            return Ok(r);
        }
        if path == "/console/masuk" {
            return match method {
                Method::POST => self.sign_in(api, req, cookies, &ctx).await,
                _ => self.sign_in_form(&ctx, StatusCode::OK, None),
            };
        }
        if method == Method::GET {
            if path == "/console/sso/kembali" {
                return self.sso_return(&ctx, &query, cookies).await;
            }
            if let Some(n) = path
                .strip_prefix("/console/sso/")
                .and_then(|p| p.strip_suffix("/mulai"))
            {
                return self.sso_start(&ctx, n);
            }
        }
        // The session, if it is alive and its token is still in force (by digest and name).
        if let Some(id) = cookies.get(COOKIE) {
            let tokens = api.reloader.admin_tokens();
            ctx.session = self
                .sessions
                .get_async(id, |s| {
                    if s.digest.starts_with("sso:") {
                        // Signed in through an issuer: the role it was given, while the
                        // issuer is offered.
                        return self.sso_session_valid(&s.digest).then_some(s.role);
                    }
                    tokens
                        .iter()
                        .find(|t| t.name == s.name && session::same_secret(&t.digest, &s.digest))
                        .map(|t| t.role)
                })
                .await
                .map(|s| (id.clone(), s));
        }
        let Some((sid, session)) = ctx.session.clone() else {
            return Ok(redirect("/console/masuk", None));
        };
        let form = if method == Method::POST {
            let Some(form) = read_form(req).await else {
                return self.error_page(&ctx, StatusCode::PAYLOAD_TOO_LARGE, "internal");
            };
            // Every state-changing form carries the session's CSRF token.
            let good = form
                .get("csrf")
                .is_some_and(|c| session::same_secret(c, &session.csrf));
            if !good {
                tracing::warn!(admin = %session.name, path, "console form without the session's CSRF token refused");
                return self.error_page(&ctx, StatusCode::FORBIDDEN, "csrf");
            }
            Some(form)
        } else {
            None
        };
        let segs: Vec<&str> = path
            .trim_start_matches("/console")
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let caller = |dry_run: bool, if_match: Option<String>| Caller {
            name: session.name.clone(),
            client: ctx.client,
            if_match,
            dry_run,
            create_only: false,
            via: "console",
        };
        let need = |action: ConsoleAction| -> Option<&'static [AdminRole]> {
            let roles = console_roles(action);
            (!roles.contains(&session.role)).then_some(roles)
        };
        macro_rules! require {
            ($action:expr) => {
                if let Some(roles) = need($action) {
                    return self.forbidden(&ctx, roles);
                }
            };
        }
        match (&method, segs.as_slice()) {
            (&Method::POST, ["keluar"]) => {
                self.sessions.remove_async(&sid).await;
                tracing::info!(admin = %session.name, "console sign-out");
                let mut r = redirect("/console/masuk", None);
                r.headers_mut().append(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "gerbang_console=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict",
                    ),
                );
                Ok(r)
            }
            (&Method::GET, []) => {
                require!(ConsoleAction::ReadRegistry);
                let notice = query.get("muat").map(|_| "reloaded").unwrap_or("");
                self.overview(api, &ctx, notice).await
            }
            (&Method::POST, ["muat-ulang"]) => {
                require!(ConsoleAction::Operate);
                let a = api
                    .dispatch(
                        "/admin/reload",
                        &Method::POST,
                        &[],
                        &Value::Null,
                        &caller(false, None),
                    )
                    .await;
                if a.status == StatusCode::OK {
                    Ok(redirect("/console/?muat=1", None))
                } else {
                    let errors = problems_list(&a);
                    self.render(
                        &ctx,
                        "galat.html",
                        "error",
                        "",
                        json!({ "message": errors.join("; ") }),
                    )
                }
            }
            (&Method::GET, ["layanan"]) => {
                require!(ConsoleAction::ReadRegistry);
                let services = self.services(api, &caller(false, None)).await;
                let agencies = api
                    .dispatch(
                        "/admin/agencies",
                        &Method::GET,
                        &[],
                        &Value::Null,
                        &caller(false, None),
                    )
                    .await
                    .body["agencies"]
                    .clone();
                self.render(
                    &ctx,
                    "layanan.html",
                    "services",
                    "",
                    json!({ "services": services, "agencies": agencies, "notice": deleted_notice(&query) }),
                )
            }
            (m, ["layanan", agency, service]) if *m == Method::GET || *m == Method::POST => {
                require!(ConsoleAction::ReadRegistry);
                let mut errors = Vec::new();
                let mut notice = "";
                if let Some(form) = &form {
                    require!(ConsoleAction::Edit);
                    match self
                        .edit_instances(api, agency, service, form, &caller)
                        .await
                    {
                        Ok(()) => notice = "saved",
                        Err(e) => errors = e,
                    }
                }
                self.service_page(api, &ctx, agency, service, errors, notice, &caller)
                    .await
            }
            (&Method::GET, ["aplikasi"]) => {
                require!(ConsoleAction::ReadRegistry);
                let a = api
                    .dispatch(
                        "/admin/applications",
                        &Method::GET,
                        &[],
                        &Value::Null,
                        &caller(false, None),
                    )
                    .await;
                let apps: Vec<Value> = a.body["applications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut app| {
                        let keys: Vec<Value> = app["api_keys"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|k| {
                                let digest = k["digest"].as_str().unwrap_or("");
                                let short = digest.get(..15).unwrap_or(digest);
                                let expiry = k["expires"]
                                    .as_str()
                                    .map(time::wib_of_text)
                                    .unwrap_or_else(|| "-".into());
                                Value::from(format!("{short}…: {expiry}"))
                            })
                            .collect();
                        app["api_keys"] = Value::Array(keys);
                        app
                    })
                    .collect();
                let can_edit = need(ConsoleAction::Edit).is_none();
                self.render(
                    &ctx,
                    "aplikasi.html",
                    "applications",
                    "",
                    json!({ "apps": apps, "can_edit": can_edit, "notice": deleted_notice(&query) }),
                )
            }
            (&Method::POST, ["aplikasi", agency, app, "ganti-secret"]) => {
                require!(ConsoleAction::Edit);
                let a = api
                    .dispatch(
                        "/admin/applications/{agency}/{application}/rotate-secret",
                        &Method::POST,
                        &[(*agency).to_owned(), (*app).to_owned()],
                        &json!({}),
                        &caller(false, None),
                    )
                    .await;
                match a.body["client_secret"].as_str() {
                    Some(secret) if a.status == StatusCode::OK => self.render(
                        &ctx,
                        "rahasia.html",
                        "new_secret",
                        "",
                        json!({ "secret": secret, "application": format!("{agency}/{app}") }),
                    ),
                    _ => self.answer_error(&ctx, &a),
                }
            }
            (&Method::GET, ["perjanjian"]) => {
                require!(ConsoleAction::ReadAgreements);
                self.agreements_page(api, &ctx, &caller(false, None), deleted_notice(&query))
                    .await
            }
            (&Method::GET, ["perjanjian", id]) => {
                require!(ConsoleAction::ReadAgreements);
                let notice = query.get("disimpan").map(|_| "saved").unwrap_or("");
                self.agreement_page(api, &ctx, id, notice, &caller(false, None))
                    .await
            }
            (&Method::GET, ["perjanjian", id, "ubah"]) => {
                require!(ConsoleAction::Edit);
                self.agreement_edit(api, &ctx, id, None, &caller).await
            }
            (&Method::POST, ["perjanjian", id, "ubah"]) => {
                require!(ConsoleAction::Edit);
                self.agreement_edit(api, &ctx, id, form.as_ref(), &caller)
                    .await
            }
            (m, ["uji-akses"]) if *m == Method::GET || *m == Method::POST => {
                require!(ConsoleAction::ReadAgreements);
                // A POST keeps the path (which may hold a NIK) out of URLs and history.
                // A GET with the fields in the query answers too (a link to a decision).
                let fields = form.unwrap_or_else(|| query.clone());
                self.explain_page(api, &ctx, &fields, &caller(false, None))
                    .await
            }
            (m, ["audit"]) if *m == Method::GET || *m == Method::POST => {
                require!(ConsoleAction::Audit);
                self.audit_page(api, &ctx, form.as_ref()).await
            }
            (&Method::GET, ["riwayat"]) => {
                require!(ConsoleAction::ReadAgreements);
                self.history_page(api, &ctx, &query).await
            }
            (&Method::GET, ["riwayat", id, "unduh"]) => {
                // The revision's files as JSON (`gerbang admin export` in the browser; `terkini`:
                // the files in force).
                require!(ConsoleAction::ReadAgreements);
                let which = match *id {
                    "terkini" => Ok(None),
                    n => n.parse::<u64>().map(Some),
                };
                let Ok(which) = which else {
                    return self.error_page(&ctx, StatusCode::NOT_FOUND, "not_found");
                };
                match api.reloader.revision(which).await {
                    Ok(v) => {
                        let body = serde_json::to_vec_pretty(&v).unwrap_or_default();
                        let mut r = Response::new(response_body::full(Bytes::from(body)));
                        let h = r.headers_mut();
                        h.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        if let Ok(v) = HeaderValue::from_str(&format!(
                            "attachment; filename=\"gerbang-revisi-{id}.json\""
                        )) {
                            h.insert(header::CONTENT_DISPOSITION, v);
                        }
                        Ok(r)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "console: revision download failed");
                        self.error_page(&ctx, StatusCode::NOT_FOUND, "not_found")
                    }
                }
            }
            (&Method::POST, ["riwayat", id, "pulihkan"]) => {
                require!(ConsoleAction::Edit);
                let a = api
                    .dispatch(
                        "/admin/revisions/{revision}/restore",
                        &Method::POST,
                        &[(*id).to_owned()],
                        &Value::Null,
                        &caller(false, None),
                    )
                    .await;
                if a.status.is_success() {
                    Ok(redirect("/console/riwayat?dipulihkan=1", None))
                } else {
                    self.answer_error(&ctx, &a)
                }
            }
            (m, ["sunting", slug, rest @ ..]) if *m == Method::GET || *m == Method::POST => {
                require!(ConsoleAction::Edit);
                match editor::kind(slug) {
                    Some(k) if rest.len() == k.parts => {
                        let params = rest.iter().map(|p| (*p).to_owned()).collect();
                        let notice = if query.contains_key("disimpan") {
                            "saved"
                        } else {
                            ""
                        };
                        self.record_editor(
                            api,
                            &ctx,
                            k,
                            Some(params),
                            form.as_ref(),
                            &caller,
                            notice,
                        )
                        .await
                    }
                    _ => self.error_page(&ctx, StatusCode::NOT_FOUND, "not_found"),
                }
            }
            (m, ["baru", slug]) if *m == Method::GET || *m == Method::POST => {
                require!(ConsoleAction::Edit);
                match editor::kind(slug) {
                    Some(k) => {
                        self.record_editor(api, &ctx, k, None, form.as_ref(), &caller, "")
                            .await
                    }
                    None => self.error_page(&ctx, StatusCode::NOT_FOUND, "not_found"),
                }
            }
            _ => self.error_page(&ctx, StatusCode::NOT_FOUND, "not_found"),
        }
    }

    // ------------------------------------------------------------------ rendering

    /// Renders `template` with the layout's values; `title` is a word key (or, when `raw` is
    /// given, `raw` itself).
    fn render(
        &self,
        ctx: &Ctx,
        template: &str,
        title: &str,
        raw: &str,
        extra: Value,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        self.render_status(ctx, StatusCode::OK, template, title, raw, extra)
    }

    fn render_status(
        &self,
        ctx: &Ctx,
        status: StatusCode,
        template: &str,
        title: &str,
        raw: &str,
        mut extra: Value,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let words = ctx.lang.words();
        let title_text = if raw.is_empty() {
            words.get(title).copied().unwrap_or(title).to_owned()
        } else {
            raw.to_owned()
        };
        let notice = extra
            .get("notice")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(|n| words.get(n).copied().unwrap_or(n).to_owned());
        let mut nav = Vec::new();
        let mut user = Value::Null;
        let mut csrf = String::new();
        let mut can_edit = false;
        if let Some((_, s)) = &ctx.session {
            for (href, key, action) in [
                ("/console/", "overview", ConsoleAction::ReadRegistry),
                ("/console/layanan", "services", ConsoleAction::ReadRegistry),
                (
                    "/console/aplikasi",
                    "applications",
                    ConsoleAction::ReadRegistry,
                ),
                (
                    "/console/perjanjian",
                    "agreements",
                    ConsoleAction::ReadAgreements,
                ),
                (
                    "/console/uji-akses",
                    "explain",
                    ConsoleAction::ReadAgreements,
                ),
                ("/console/audit", "audit", ConsoleAction::Audit),
                ("/console/riwayat", "history", ConsoleAction::ReadAgreements),
            ] {
                if console_roles(action).contains(&s.role) {
                    nav.push(json!({
                        "href": href,
                        "label": words.get(key).copied().unwrap_or(key),
                        "current": key == title,
                    }));
                }
            }
            user = json!({ "name": s.name, "role": s.role.as_str() });
            csrf = s.csrf.clone();
            can_edit = console_roles(ConsoleAction::Edit).contains(&s.role);
        }
        if let Some(m) = extra.as_object_mut() {
            m.insert("t".into(), json!(words));
            m.insert("lang".into(), Value::from(ctx.lang.code()));
            m.insert("title".into(), Value::from(title_text));
            m.insert("nav".into(), Value::from(nav));
            m.insert("user".into(), user);
            m.insert("csrf".into(), Value::from(csrf));
            m.entry("can_edit").or_insert(Value::from(can_edit));
            m.insert("notice".into(), notice.map_or(Value::Null, Value::from));
        }
        let html = self
            .env
            .get_template(template)?
            .render(minijinja::Value::from_serialize(&extra))?;
        let mut r = Response::new(response_body::full(Bytes::from(html)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if ctx.set_lang {
            r.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_static(if ctx.lang == Lang::En {
                    "lang=en; Path=/console; Max-Age=31536000; SameSite=Strict"
                } else {
                    "lang=id; Path=/console; Max-Age=31536000; SameSite=Strict"
                }),
            );
        }
        Ok(r)
    }

    fn error_page(
        &self,
        ctx: &Ctx,
        status: StatusCode,
        message: &str,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let words = ctx.lang.words();
        let text = words.get(message).copied().unwrap_or(message);
        let title = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "error"
        };
        self.render_status(
            ctx,
            status,
            "galat.html",
            title,
            "",
            json!({ "message": text }),
        )
    }

    /// 403: the session's role may not do this; names the roles that may.
    fn forbidden(
        &self,
        ctx: &Ctx,
        roles: &[AdminRole],
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let words = ctx.lang.words();
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let message = format!(
            "{} {}.",
            words.get("needs_role").copied().unwrap_or(""),
            names.join(" / ")
        );
        self.render_status(
            ctx,
            StatusCode::FORBIDDEN,
            "galat.html",
            "forbidden",
            "",
            json!({ "message": message }),
        )
    }

    /// An admin API answer that is not a success, as a page.
    fn answer_error(&self, ctx: &Ctx, a: &Answer) -> Result<Response<ResponseBody>, ConsoleError> {
        let errors = problems_list(a);
        self.render_status(
            ctx,
            if a.status.is_success() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                a.status
            },
            "galat.html",
            "error",
            "",
            json!({ "message": errors.join("; ") }),
        )
    }

    // ------------------------------------------------------------------ sign-in

    /// The sign-in page, with a fresh sign-in form token (`gerbang_masuk` cookie and the
    /// form's hidden field: a sign-in that another site's form posts is refused, so nobody can
    /// be signed in as someone else without knowing).
    fn sign_in_form(
        &self,
        ctx: &Ctx,
        status: StatusCode,
        error: Option<&str>,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let token = session::random_hex()?;
        let mut r = self.render_status(
            ctx,
            status,
            "masuk.html",
            "sign_in_title",
            "",
            json!({ "error": error, "masuk_csrf": token, "sso": self.sso_choices() }),
        )?;
        let secure = if self.settings.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{SIGN_IN_COOKIE}={token}; Path=/console/masuk; Max-Age=3600; HttpOnly; SameSite=Strict{secure}"
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        Ok(r)
    }

    /// The session cookie for session `id`.
    fn session_cookie(&self, id: &str) -> String {
        let secure = if self.settings.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict{secure}")
    }

    async fn sign_in<R: Reload>(
        &self,
        api: &AdminApi<R>,
        req: Request<Incoming>,
        cookies: &HashMap<String, String>,
        ctx: &Ctx,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let words = ctx.lang.words();
        if self.sessions.locked_out(ctx.client).await {
            let mut r = self.sign_in_form(
                ctx,
                StatusCode::TOO_MANY_REQUESTS,
                words.get("too_many").copied(),
            )?;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return Ok(r);
        }
        let form = read_form(req).await.unwrap_or_default();
        // The form's token must be the one this browser was given with the form.
        let same_form = match (form.get("masuk_csrf"), cookies.get(SIGN_IN_COOKIE)) {
            (Some(f), Some(c)) => !f.is_empty() && session::same_secret(f, c),
            _ => false,
        };
        if !same_form {
            tracing::warn!(client = %ctx.client, "console sign-in without the sign-in form's token refused");
            return self.sign_in_form(
                ctx,
                StatusCode::FORBIDDEN,
                words.get("form_expired").copied(),
            );
        }
        let token = form.get("token").map(String::as_str).unwrap_or("").trim();
        let Some((name, role)) = api.token_owner(token) else {
            self.sessions.failed(ctx.client).await;
            tracing::warn!(client = %ctx.client, "console sign-in with an unknown token");
            return self.sign_in_form(
                ctx,
                StatusCode::UNAUTHORIZED,
                words.get("bad_token").copied(),
            );
        };
        let digest = gerbang_auth::apikey::digest_of(token);
        let id = self.sessions.create_async(&name, role, &digest).await?;
        tracing::info!(admin = %name, role = %role, client = %ctx.client, "console sign-in");
        let mut r = redirect(
            landing(role),
            HeaderValue::from_str(&self.session_cookie(&id)).ok(),
        );
        r.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "gerbang_masuk=; Path=/console/masuk; Max-Age=0; HttpOnly; SameSite=Strict",
            ),
        );
        Ok(r)
    }

    // ------------------------------------------------------------------ pages

    async fn overview<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        notice: &str,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let now = self.snapshot();
        let base = self
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .cloned()
            .unwrap_or_default();
        let traffic: Vec<Value> = now
            .traffic
            .iter()
            .filter_map(|(k, n)| {
                let d = n.saturating_sub(base.traffic.get(k).copied().unwrap_or(0));
                (d > 0).then(|| json!({ "consumer_agency": k.0, "service": k.1, "calls": d }))
            })
            .collect();
        let denials: Vec<Value> = now
            .denials
            .iter()
            .filter_map(|(k, n)| {
                let d = n.saturating_sub(base.denials.get(k).copied().unwrap_or(0));
                (d > 0).then(|| json!({ "reason": k, "count": d }))
            })
            .collect();
        let registry = api.gateway.registry();
        let mut health = Vec::new();
        for svc in registry.services() {
            for (i, st) in svc.instance_states() {
                health.push(json!({
                    "service": svc.full_id(),
                    "instance": i.name,
                    "state": st.as_str(),
                }));
            }
        }
        let (hash, last_reload) = self.config_state(api).await;
        let session_role = ctx.session.as_ref().map(|(_, s)| s.role);
        let can_operate =
            session_role.is_some_and(|r| console_roles(ConsoleAction::Operate).contains(&r));
        self.render(
            ctx,
            "ringkasan.html",
            "overview",
            "",
            json!({
                "since": base.at.map(time::wib).unwrap_or_default(),
                "traffic": traffic,
                "denials": denials,
                "health": health,
                "config_hash": hash,
                "last_reload": last_reload,
                "can_operate": can_operate,
                "notice": notice,
            }),
        )
    }

    /// The configuration's hash and the time of the last successful load (WIB).
    async fn config_state<R: Reload>(&self, api: &AdminApi<R>) -> (String, String) {
        use prometheus::core::Collector;
        if let Some(m) = &self.settings.metrics {
            let mut hash = String::new();
            for family in m.config_info.collect() {
                for metric in family.get_metric() {
                    if metric.get_gauge().get_value() > 0.0 {
                        if let Some(l) = metric.get_label().first() {
                            hash = l.value().to_owned();
                        }
                    }
                }
            }
            let secs = m.config_last_reload_success_time.get();
            let last = if secs > 0.0 {
                time::wib(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
            } else {
                "-".into()
            };
            if !hash.is_empty() {
                return (hash, last);
            }
        }
        (api.reloader.lock().await.clone(), "-".into())
    }

    /// The services with their instances' live states.
    async fn services<R: Reload>(&self, api: &AdminApi<R>, caller: &Caller) -> Vec<Value> {
        let a = api
            .dispatch("/admin/services", &Method::GET, &[], &Value::Null, caller)
            .await;
        a.body["services"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| service_view(&s, &s["health"]))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn service_page<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        agency: &str,
        service: &str,
        errors: Vec<String>,
        notice: &str,
        caller: &(dyn Fn(bool, Option<String>) -> Caller + Sync),
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let params = [agency.to_owned(), service.to_owned()];
        let a = api
            .dispatch(
                "/admin/services/{agency}/{service}",
                &Method::GET,
                &params,
                &Value::Null,
                &caller(false, None),
            )
            .await;
        if a.status != StatusCode::OK {
            return self.error_page(ctx, StatusCode::NOT_FOUND, "not_found");
        }
        let mut health = serde_json::Map::new();
        if let Ok(svc) = api.gateway.registry().lookup(agency, service) {
            for (i, st) in svc.instance_states() {
                health.insert(i.name.clone(), Value::from(st.as_str()));
            }
        }
        let mut entry = a.body.clone();
        entry["agency"] = Value::from(agency);
        let view = service_view(&entry, &Value::Object(health));
        let instances_json =
            serde_json::to_string_pretty(&entry["instance"]).unwrap_or_else(|_| "[]".into());
        let can_edit = ctx
            .session
            .as_ref()
            .is_some_and(|(_, s)| console_roles(ConsoleAction::Edit).contains(&s.role));
        self.render(
            ctx,
            "layanan_satu.html",
            "services",
            &format!("{agency}/{service}"),
            json!({
                "s": view,
                "etag": a.etag.unwrap_or_default(),
                "instances_json": instances_json,
                "can_edit": can_edit,
                "errors": errors,
                "notice": notice,
            }),
        )
    }

    async fn edit_instances<R: Reload>(
        &self,
        api: &AdminApi<R>,
        agency: &str,
        service: &str,
        form: &HashMap<String, String>,
        caller: &(dyn Fn(bool, Option<String>) -> Caller + Sync),
    ) -> Result<(), Vec<String>> {
        let params = [agency.to_owned(), service.to_owned()];
        let instances: Value = serde_json::from_str(form.get("instances").map_or("", |s| s))
            .map_err(|e| vec![format!("instances: {e}")])?;
        if !instances.is_array() {
            return Err(vec!["instances: a JSON array of { name, url }".into()]);
        }
        let current = api
            .dispatch(
                "/admin/services/{agency}/{service}",
                &Method::GET,
                &params,
                &Value::Null,
                &caller(false, None),
            )
            .await;
        if current.status != StatusCode::OK {
            return Err(problems_list(&current));
        }
        let mut body = current.body.clone();
        body["instance"] = instances;
        let etag = form.get("etag").filter(|e| !e.is_empty()).cloned();
        let a = api
            .dispatch(
                "/admin/services/{agency}/{service}",
                &Method::PUT,
                &params,
                &body,
                &caller(false, etag),
            )
            .await;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(problems_list(&a))
        }
    }

    async fn agreements_page<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        caller: &Caller,
        notice: &str,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let a = api
            .dispatch("/admin/agreements", &Method::GET, &[], &Value::Null, caller)
            .await;
        let words = ctx.lang.words();
        let policy = api.gateway.policy();
        let list: Vec<Value> = a.body["agreements"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut ag| {
                let state = agreement_state(&policy, ag["id"].as_str().unwrap_or(""));
                ag["state"] = Value::from(state);
                ag["state_label"] = Value::from(state_label(&words, state));
                ag
            })
            .collect();
        self.render(
            ctx,
            "perjanjian.html",
            "agreements",
            "",
            json!({ "agreements": list, "notice": notice }),
        )
    }

    async fn agreement_page<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        id: &str,
        notice: &str,
        caller: &Caller,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let a = api
            .dispatch(
                "/admin/agreements/{agreement}",
                &Method::GET,
                &[id.to_owned()],
                &Value::Null,
                caller,
            )
            .await;
        if a.status != StatusCode::OK {
            return self.error_page(ctx, StatusCode::NOT_FOUND, "not_found");
        }
        let words = ctx.lang.words();
        let state = agreement_state(&api.gateway.policy(), id);
        let fields: Vec<Value> = std::iter::once(("service", "service"))
            .chain(AGREEMENT_FIELDS.iter().map(|f| (f.name, f.name)))
            .map(|(name, key)| {
                json!({
                    "name": name,
                    "label": words.get(key).copied().unwrap_or(key),
                    "value": field_text(&a.body, name, false),
                })
            })
            .collect();
        let can_edit = ctx
            .session
            .as_ref()
            .is_some_and(|(_, s)| console_roles(ConsoleAction::Edit).contains(&s.role));
        self.render(
            ctx,
            "perjanjian_satu.html",
            "agreements",
            id,
            json!({
                "id": id,
                "state": state,
                "state_label": state_label(&words, state),
                "fields": fields,
                "can_edit": can_edit,
                "notice": notice,
            }),
        )
    }

    /// The edit form; with `form`, a preview (dry run with the file's diff) or a save.
    async fn agreement_edit<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        id: &str,
        form: Option<&HashMap<String, String>>,
        caller: &(dyn Fn(bool, Option<String>) -> Caller + Sync),
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let params = [id.to_owned()];
        let current = api
            .dispatch(
                "/admin/agreements/{agreement}",
                &Method::GET,
                &params,
                &Value::Null,
                &caller(false, None),
            )
            .await;
        if current.status != StatusCode::OK {
            return self.error_page(ctx, StatusCode::NOT_FOUND, "not_found");
        }
        let words = ctx.lang.words();
        let mut field_errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut errors: Vec<String> = Vec::new();
        let mut diff: Option<String> = None;
        let mut conflict = false;
        let mut etag = current.etag.clone().unwrap_or_default();
        // The values shown: the form's when one was sent, else the agreement's.
        let values: BTreeMap<String, String> = match form {
            Some(f) => AGREEMENT_FIELDS
                .iter()
                .map(|d| {
                    (
                        d.name.to_owned(),
                        f.get(d.name).cloned().unwrap_or_default(),
                    )
                })
                .collect(),
            None => AGREEMENT_FIELDS
                .iter()
                .map(|d| (d.name.to_owned(), field_text(&current.body, d.name, true)))
                .collect(),
        };
        if let Some(f) = form {
            etag = f.get("etag").cloned().unwrap_or_default();
            let preview = f.get("aksi").map(String::as_str) == Some("pratinjau");
            match agreement_from_form(&current.body, &values) {
                Err(errs) => {
                    for (field, message) in errs {
                        field_errors.entry(field).or_default().push(message);
                    }
                }
                Ok(body) => {
                    let if_match = Some(etag.clone()).filter(|e| !e.is_empty());
                    let a = api
                        .dispatch(
                            "/admin/agreements/{agreement}",
                            &Method::PUT,
                            &params,
                            &body,
                            &caller(preview, if_match),
                        )
                        .await;
                    if a.status == StatusCode::PRECONDITION_FAILED {
                        conflict = true;
                    } else if a.status == StatusCode::UNPROCESSABLE_ENTITY {
                        for p in a.body["error"]["problems"].as_array().into_iter().flatten() {
                            let key = p["key"].as_str().unwrap_or("");
                            let message = p["message"].as_str().unwrap_or("").to_owned();
                            match problem_field(key) {
                                Some(field) => {
                                    field_errors.entry(field.into()).or_default().push(message)
                                }
                                None => errors.push(format!(
                                    "{} {key}: {message}",
                                    p["file"].as_str().unwrap_or("")
                                )),
                            }
                        }
                    } else if !a.status.is_success() {
                        let message = a.body["error"]["message"].as_str().unwrap_or("").to_owned();
                        errors.push(message);
                    } else if preview {
                        diff = Some(api.agreement_diff(id, &body).unwrap_or_default());
                    } else {
                        return Ok(redirect(
                            &format!("/console/perjanjian/{id}?disimpan=1"),
                            None,
                        ));
                    }
                }
            }
        }
        let fields: Vec<Value> = AGREEMENT_FIELDS
            .iter()
            .map(|d| {
                let hint = match d.kind {
                    Kind::List => words.get("list_hint").copied(),
                    _ => None,
                };
                json!({
                    "name": d.name,
                    "label": words.get(d.name).copied().unwrap_or(d.name),
                    "hint": hint,
                    "kind": match d.kind { Kind::List | Kind::Toml => "textarea", Kind::Select(_) => "select", Kind::Text => "text" },
                    "rows": match d.kind { Kind::Toml => 5, _ => 3 },
                    "options": match d.kind { Kind::Select(o) => o.to_vec(), _ => Vec::new() },
                    "value": values.get(d.name).cloned().unwrap_or_default(),
                })
            })
            .collect();
        let status = if errors.is_empty() && field_errors.is_empty() && !conflict {
            StatusCode::OK
        } else if conflict {
            StatusCode::CONFLICT
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let title = format!("{}: {id}", words.get("edit").copied().unwrap_or("edit"));
        self.render_status(
            ctx,
            status,
            "perjanjian_ubah.html",
            "agreements",
            &title,
            json!({
                "id": id,
                "etag": etag,
                "fields": fields,
                "field_errors": field_errors,
                "errors": errors,
                "diff": diff,
                "conflict": conflict,
            }),
        )
    }

    async fn explain_page<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        query: &HashMap<String, String>,
        caller: &Caller,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let get = |k: &str| {
            query
                .get(k)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let form = json!({
            "consumer": get("consumer"),
            "method": if get("method").is_empty() { "GET".to_owned() } else { get("method") },
            "path": get("path"),
            "purpose": get("purpose"),
        });
        let mut result = Value::Null;
        let mut error = Value::Null;
        if !get("consumer").is_empty() || !get("path").is_empty() {
            let mut body = form.clone();
            if get("purpose").is_empty() {
                body["purpose"] = Value::Null;
            }
            let a = api
                .dispatch("/admin/explain", &Method::POST, &[], &body, caller)
                .await;
            if a.status == StatusCode::OK {
                result = a.body;
            } else {
                error = Value::from(problems_list(&a).join("; "));
            }
        }
        self.render(
            ctx,
            "uji_akses.html",
            "explain",
            "",
            json!({
                "form": form,
                "methods": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                "result": result,
                "error": error,
            }),
        )
    }

    async fn audit_page<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        form: Option<&HashMap<String, String>>,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        use audit_search::{AuditQuery, Verified};
        let words = ctx.lang.words();
        let w = |k: &str| words.get(k).copied().unwrap_or("").to_owned();
        let get = |k: &str| {
            form.and_then(|f| f.get(k))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let mut extra = json!({
            "form": {
                "consumer": get("consumer"),
                "service": get("service"),
                "since": get("since"),
                "until": get("until"),
            },
            "searched": false,
        });
        let Some(log) = self.local_log() else {
            extra["verify"] =
                json!([{ "replica": self.settings.replica, "text": w("no_audit"), "ok": "fail" }]);
            if form.is_some() {
                extra["error"] = Value::from(w("no_audit"));
            }
            return self.render(ctx, "audit.html", "audit", "", extra);
        };
        let mut query = AuditQuery::default();
        if form.is_some() {
            let nik = get("nik");
            // Hashed at once with the subject key; the clear NIK goes no further than here.
            if !nik.is_empty() {
                match api.gateway.audit() {
                    Some(sink) => query.subject_hmac = Some(sink.subject_hash(&nik)),
                    None => {
                        extra["error"] = Value::from(w("no_audit"));
                        return self.render(ctx, "audit.html", "audit", "", extra);
                    }
                }
            }
            let opt = |s: String| Some(s).filter(|s| !s.is_empty());
            query.consumer = opt(get("consumer"));
            query.service = opt(get("service"));
            query.since = opt(get("since")).and_then(|d| time::wib_day_start(&d, 0));
            query.until = opt(get("until")).and_then(|d| time::wib_day_start(&d, 1));
            extra["masked"] = Value::from(mask(&nik));
        }
        // Every replica's answer (cluster mode), or this replica's.
        let (asked, mut answers) = match &self.settings.audit_fanout {
            Some(f) => match f.search(&query).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "console: the audit search could not reach the other replicas");
                    extra["partial"] = Value::from(w("audit_store_down"));
                    (1, vec![self.answer_here(&log, &query).await])
                }
            },
            None => (1, vec![self.answer_here(&log, &query).await]),
        };
        answers.sort_by(|a, b| a.replica.cmp(&b.replica));
        let expected = if self.settings.audit_fanout.is_some() {
            self.settings.expected_replicas.max(asked)
        } else {
            1
        };
        if answers.len() < expected && extra.get("partial").is_none() {
            extra["partial"] = Value::from(
                w("audit_partial")
                    .replace("{answered}", &answers.len().to_string())
                    .replace("{expected}", &expected.to_string()),
            );
        }
        let verify: Vec<Value> = answers
            .iter()
            .map(|a| {
                let (text, ok) = match &a.verified {
                    Verified::Intact {
                        files,
                        records,
                        seals,
                        unsealed,
                    } => (
                        w("verify_ok")
                            .replace("{files}", &files.to_string())
                            .replace("{records}", &records.to_string())
                            .replace("{seals}", &seals.to_string())
                            .replace("{unsealed}", &unsealed.to_string()),
                        true,
                    ),
                    Verified::Broken(e) => (format!("{} {e}", w("verify_broken")), false),
                    Verified::NoKey => (w("verify_no_key"), false),
                    Verified::NoLog => (w("no_audit"), false),
                };
                json!({ "replica": a.replica, "text": text, "ok": if ok { "ok" } else { "fail" } })
            })
            .collect();
        extra["verify"] = Value::from(verify);
        if form.is_some() {
            let s = |v: &Value, k: &str| match &v[k] {
                Value::Null => "-".to_owned(),
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            let mut records: Vec<&Value> = answers.iter().flat_map(|a| a.records.iter()).collect();
            // Newest first across replicas (RFC 3339 UTC times sort as text).
            records.sort_by(|a, b| b["time"].as_str().cmp(&a["time"].as_str()));
            let rows: Vec<Value> = records
                .iter()
                .map(|r| {
                    let decision = match (&r["decision"], &r["status"]) {
                        (Value::String(d), Value::Number(n)) => format!("{d} {n}"),
                        _ => s(r, "decision"),
                    };
                    json!({
                        "time": time::wib_of_text(r["time"].as_str().unwrap_or("")),
                        "consumer": s(r, "consumer"),
                        "service": s(r, "service"),
                        "endpoint": s(r, "endpoint"),
                        "purpose": s(r, "purpose"),
                        "agreement": s(r, "agreement"),
                        "decision": decision,
                        "replica": s(r, "replica"),
                    })
                })
                .collect();
            let replicas: Vec<Value> = answers
                .iter()
                .map(|a| {
                    json!({
                        "replica": a.replica,
                        "count": a.records.len(),
                        "truncated": a.truncated,
                        "error": a.error,
                    })
                })
                .collect();
            extra["searched"] = Value::Bool(true);
            extra["records"] = Value::from(rows);
            extra["replicas"] = Value::from(replicas);
        }
        self.render(ctx, "audit.html", "audit", "", extra)
    }

    /// This replica's log, when there is one.
    fn local_log(&self) -> Option<audit_search::LocalLog> {
        Some(audit_search::LocalLog {
            dir: self.settings.audit_dir.clone()?,
            seal_public_key: self.settings.seal_public_key.clone(),
            replica: self.settings.replica.clone(),
        })
    }

    /// [`audit_search::answer`] off the async workers.
    async fn answer_here(
        &self,
        log: &audit_search::LocalLog,
        query: &audit_search::AuditQuery,
    ) -> audit_search::AuditAnswer {
        let (log, q) = (log.clone(), query.clone());
        match tokio::task::spawn_blocking(move || audit_search::answer(&log, &q)).await {
            Ok(a) => a,
            Err(e) => audit_search::AuditAnswer {
                replica: self.settings.replica.clone(),
                records: Vec::new(),
                truncated: false,
                verified: audit_search::Verified::NoLog,
                error: Some(e.to_string()),
            },
        }
    }

    async fn history_page<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        query: &HashMap<String, String>,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let revisions: Vec<Value> = match api.reloader.revisions(100).await {
            Ok(v) => v["revisions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    json!({
                        "id": r["id"],
                        "who": r["author"],
                        "when": r["at"].as_i64().map(|t| time::wib(SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))).unwrap_or_default(),
                        "why": r["reason"],
                    })
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "console: revisions unavailable");
                Vec::new()
            }
        };
        let mut diff = Value::Null;
        let mut shown = Value::Null;
        if let Some(id) = query.get("revisi").and_then(|r| r.parse::<u64>().ok()) {
            if let Ok(v) = api.reloader.revision(Some(id)).await {
                diff = v["diff"].clone();
                shown = Value::from(id);
            }
        }
        let notice = if query.contains_key("dipulihkan") {
            "restored"
        } else {
            ""
        };
        let mut records = Vec::new();
        if let Some(dir) = &self.settings.audit_dir {
            match gerbang_audit::query::admin_records(dir) {
                Ok(list) => {
                    for v in list {
                        records.push(json!({
                            "when": time::wib_of_text(v["time"].as_str().unwrap_or("")),
                            "who": v["admin"],
                            "action": v["action"],
                        }));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "console: the audit log cannot be read"),
            }
        }
        records.reverse();
        records.truncate(500);
        self.render(
            ctx,
            "riwayat.html",
            "history",
            "",
            json!({ "revisions": revisions, "diff": diff, "shown": shown, "records": records, "notice": notice }),
        )
    }
}

impl<R: Reload> AdminApi<R> {
    /// The unified diff of agreement `id`'s file were `body` put in it (nothing written).
    fn agreement_diff(&self, id: &str, body: &Value) -> Option<String> {
        let f = self.store.agreement_file(id).ok()??;
        let before = f.doc.to_string();
        let mut doc = f.doc.clone();
        let mut new = body.clone();
        new["id"] = Value::from(id);
        crate::store::put_entry(&mut doc, "agreement", id, &new).ok()?;
        let after = doc.to_string();
        // The file as admins know it (`agreements/x.toml`), not where this process keeps it.
        let name = format!(
            "agreements/{}",
            f.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        Some(
            similar::TextDiff::from_lines(&before, &after)
                .unified_diff()
                .header(&name, &name)
                .to_string(),
        )
    }
}

/// How a form field of an agreement is edited.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    /// One item per line (commas also separate).
    List,
    /// A TOML value (inline table or table body).
    Toml,
    Select(&'static [&'static str]),
}

struct FieldDef {
    name: &'static str,
    kind: Kind,
}

const AGREEMENT_FIELDS: &[FieldDef] = &[
    FieldDef {
        name: "title",
        kind: Kind::Text,
    },
    FieldDef {
        name: "legal_basis",
        kind: Kind::Text,
    },
    FieldDef {
        name: "consumers",
        kind: Kind::List,
    },
    FieldDef {
        name: "methods",
        kind: Kind::List,
    },
    FieldDef {
        name: "endpoints",
        kind: Kind::List,
    },
    FieldDef {
        name: "purposes",
        kind: Kind::List,
    },
    FieldDef {
        name: "valid_from",
        kind: Kind::Text,
    },
    FieldDef {
        name: "valid_until",
        kind: Kind::Text,
    },
    FieldDef {
        name: "status",
        kind: Kind::Select(&["active", "suspended"]),
    },
    FieldDef {
        name: "max_classification",
        kind: Kind::Text,
    },
    FieldDef {
        name: "rate_limit",
        kind: Kind::Toml,
    },
    FieldDef {
        name: "quota",
        kind: Kind::Toml,
    },
    FieldDef {
        name: "fields",
        kind: Kind::Toml,
    },
];

/// A field of an agreement as the form shows it.
fn field_text(v: &Value, name: &str, for_form: bool) -> String {
    match &v[name] {
        Value::Null => {
            if name == "status" && for_form {
                "active".into()
            } else {
                String::new()
            }
        }
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(if for_form { "\n" } else { ", " }),
        other => json_to_toml_inline(other),
    }
}

/// A JSON value as a TOML inline value.
fn json_to_toml_inline(v: &Value) -> String {
    crate::store::json_to_value("", v)
        .map(|t| t.to_string().trim().to_owned())
        .unwrap_or_else(|_| v.to_string())
}

/// The agreement a form describes: the current one with the form's fields replacing its own;
/// `Err`: (field, message) of every field that does not parse.
fn agreement_from_form(
    current: &Value,
    values: &BTreeMap<String, String>,
) -> Result<Value, Vec<(String, String)>> {
    let mut out = current.clone();
    let mut errors = Vec::new();
    for d in AGREEMENT_FIELDS {
        let text = values.get(d.name).map(|s| s.trim()).unwrap_or("");
        let value = match d.kind {
            _ if text.is_empty() => Value::Null,
            Kind::Text | Kind::Select(_) => Value::from(text),
            Kind::List => Value::from(
                text.split(['\n', ','])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Value::from)
                    .collect::<Vec<_>>(),
            ),
            Kind::Toml => match toml_value(text) {
                Ok(v) => v,
                Err(e) => {
                    errors.push((d.name.to_owned(), e));
                    continue;
                }
            },
        };
        // `status = "active"` is the default: the form shows it for an agreement without the
        // key, and saving must not add a line the admins did not write.
        let value = if d.name == "status" && current.get("status").is_none() && text == "active" {
            Value::Null
        } else {
            value
        };
        match (&mut out, value) {
            (Value::Object(m), Value::Null) => {
                m.remove(d.name);
            }
            (Value::Object(m), v) => {
                m.insert(d.name.to_owned(), v);
            }
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A TOML value (`{ limit = 10, per = "second" }`) or table body (`deny = ["x"]`) as JSON.
fn toml_value(text: &str) -> Result<Value, String> {
    let as_value = format!("x = {text}");
    if let Ok(doc) = as_value.parse::<toml_edit::DocumentMut>() {
        if let Some(item) = doc.get("x") {
            let mut t = toml_edit::Table::new();
            t.insert("x", item.clone());
            return Ok(crate::store::table_to_json(&t)["x"].clone());
        }
    }
    match text.parse::<toml_edit::DocumentMut>() {
        Ok(doc) => Ok(crate::store::table_to_json(doc.as_table())),
        Err(e) => Err(format!("not TOML: {}", e.message())),
    }
}

/// The form field a problem's key names (`line 12: agreement x: valid_until`,
/// `agreement[0].rate_limit.per`), if any.
fn problem_field(key: &str) -> Option<&'static str> {
    let last = key.rsplit(": ").next().unwrap_or(key);
    let tail = last.rsplit_once("].").map_or(last, |(_, t)| t);
    let first = tail.split(['.', '[']).next().unwrap_or("");
    AGREEMENT_FIELDS
        .iter()
        .map(|d| d.name)
        .find(|n| *n == first)
}

/// `aktif`, `kedaluwarsa`, `ditangguhkan` or `belum` (not yet valid).
fn agreement_state(policy: &gerbang_policy::PolicySet, id: &str) -> &'static str {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let Some(a) = policy.agreements().iter().find(|a| a.id == id) else {
        return "aktif";
    };
    if a.suspended {
        "ditangguhkan"
    } else if a.valid_from.is_some_and(|f| now < f) {
        "belum"
    } else if a.valid_until.is_some_and(|u| now > u) {
        "kedaluwarsa"
    } else {
        "aktif"
    }
}

fn state_label(words: &BTreeMap<&str, &str>, state: &str) -> String {
    words
        .get(format!("st_{state}").as_str())
        .copied()
        .unwrap_or(state)
        .to_owned()
}

/// A service entry as the pages show it: instances with their state, endpoints.
fn service_view(s: &Value, health: &Value) -> Value {
    let instances: Vec<Value> = s["instance"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let name = i["name"].as_str().unwrap_or("");
            json!({
                "name": name,
                "url": i["url"],
                "state": health.get(name).and_then(Value::as_str).unwrap_or("unknown"),
            })
        })
        .collect();
    let endpoints: Vec<Value> = s["endpoint"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| json!({ "method": e["method"], "path": e["path"], "classification": e["classification"] }))
        .collect();
    json!({
        "agency": s["agency"],
        "id": s["id"],
        "name": s["name"],
        "instances": instances,
        "endpoints": endpoints,
    })
}

/// The messages of an admin API error answer.
fn problems_list(a: &Answer) -> Vec<String> {
    let e = &a.body["error"];
    let mut out: Vec<String> = e["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {}: {}",
                p["file"].as_str().unwrap_or(""),
                p["key"].as_str().unwrap_or(""),
                p["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    if out.is_empty() {
        out.push(e["message"].as_str().unwrap_or("").to_owned());
    }
    out
}

/// A NIK as the page echoes it: the first two and last two digits.
/// The first page `role` may see: the overview, or (an auditor, who does not read the
/// registry) the audit page.
fn landing(role: AdminRole) -> &'static str {
    if console_roles(ConsoleAction::ReadRegistry).contains(&role) {
        "/console/"
    } else {
        "/console/audit"
    }
}

/// The list pages' notice after the editor deleted a record (`?dihapus=1`).
fn deleted_notice(query: &HashMap<String, String>) -> &'static str {
    if query.contains_key("dihapus") {
        "deleted"
    } else {
        ""
    }
}

fn mask(nik: &str) -> String {
    let chars: Vec<char> = nik.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let n = chars.len();
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < 2 || i >= n - 2 { *c } else { '*' })
        .collect()
}

fn redirect(to: &str, cookie: Option<HeaderValue>) -> Response<ResponseBody> {
    let mut r = Response::new(response_body::full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `application/x-www-form-urlencoded` (or a query string); the first value of each name.
fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

async fn read_form(req: Request<Incoming>) -> Option<HashMap<String, String>> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(parse_form(&body))
}

#[cfg(test)]
mod tests;
