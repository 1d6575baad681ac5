//! The admin API on the admin listener (loopback by default). Every `/admin/*` call needs an
//! admin bearer token (`[admin] tokens`: name and SHA-256 digest). Resources are the
//! configuration's own: agencies, applications, services (with instances and endpoints) and
//! agreements. A change is validated against every other file first (the running configuration
//! is untouched when it is refused), written atomically to the files, applied live, and
//! recorded in the audit log with who made it and digests of before and after. `ETag` and
//! `If-Match` turn a lost update into 412.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use gerbang_proxy::response_body::{self, ResponseBody};
use gerbang_proxy::server::Handler;
use gerbang_proxy::{Admin, ConnInfo, Gateway};

use crate::store::{self, EditFile, Store, StoreError};
use crate::Reload;
use gerbang_config::{AdminRole, Overlay, Problem};

/// Every route of the admin API: path template and methods. `GET /admin/openapi.json`
/// documents exactly these (a test compares them).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/admin/openapi.json", &["GET"]),
    ("/admin/reload", &["POST"]),
    ("/admin/validate", &["POST"]),
    ("/admin/explain", &["POST"]),
    ("/admin/agencies", &["GET"]),
    ("/admin/agencies/{agency}", &["GET", "PUT", "DELETE"]),
    ("/admin/applications", &["GET"]),
    (
        "/admin/applications/{agency}/{application}",
        &["GET", "PUT", "DELETE"],
    ),
    (
        "/admin/applications/{agency}/{application}/rotate-secret",
        &["POST"],
    ),
    ("/admin/services", &["GET"]),
    (
        "/admin/services/{agency}/{service}",
        &["GET", "PUT", "DELETE"],
    ),
    ("/admin/agreements", &["GET"]),
    ("/admin/agreements/{agreement}", &["GET", "PUT", "DELETE"]),
    ("/admin/revisions", &["GET"]),
    ("/admin/revisions/{revision}", &["GET"]),
    ("/admin/revisions/{revision}/restore", &["POST"]),
];

/// The OpenAPI 3 document of the admin API.
pub const OPENAPI: &str = include_str!("admin_openapi.json");

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// The admin listener's handler: the built-in probes and metrics, and the admin API.
pub struct AdminApi<R> {
    builtin: Admin,
    pub(crate) reloader: Arc<R>,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) store: Store,
    console: crate::console::Console,
}

/// An answer of the admin API (the console renders the same answers as pages).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    pub(crate) etag: Option<String>,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            etag: None,
        }
    }

    fn error(status: StatusCode, code: &str, message: &str) -> Self {
        Self {
            status,
            body: json!({ "error": { "code": code, "message": message } }),
            etag: None,
        }
    }

    fn problems(problems: &[Problem]) -> Self {
        let list: Vec<Value> = problems
            .iter()
            .map(|p| json!({ "file": p.file.display().to_string(), "key": p.key, "message": p.message }))
            .collect();
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "error": {
                "code": "invalid_config",
                "message": "the change is refused: the configuration would have problems; nothing was written",
                "problems": list,
            } }),
            etag: None,
        }
    }
}

impl From<StoreError> for Answer {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Answer::error(StatusCode::NOT_FOUND, "not_found", &m),
            StoreError::Invalid(m) => invalid(&m),
            StoreError::Conflict(m) => Answer::error(StatusCode::CONFLICT, "conflict", &m),
            StoreError::Io(m) => {
                tracing::error!(error = %m, "admin API: file operation failed");
                Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the configuration files could not be read or written; see the log",
                )
            }
        }
    }
}

/// Who calls, from where, with which preconditions.
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) client: IpAddr,
    pub(crate) if_match: Option<String>,
    /// `?dry_run=true`: validate the change against every other file, write nothing.
    pub(crate) dry_run: bool,
    /// `If-None-Match: *`: create only; a resource that exists is not replaced (412).
    pub(crate) create_only: bool,
    /// Where the change came from (`api` or `console`), kept in the admin audit record.
    pub(crate) via: &'static str,
}

impl<R: Reload> AdminApi<R> {
    pub fn new(builtin: Admin, reloader: Arc<R>, gateway: Arc<Gateway>) -> Self {
        let store = Store {
            registry_dir: reloader.registry_dir().to_path_buf(),
            agreements_dir: reloader.agreements_dir().to_path_buf(),
        };
        Self {
            builtin,
            reloader,
            gateway,
            store,
            console: crate::console::Console::new(crate::console::ConsoleSettings::default()),
        }
    }

    /// The console at `/console/` with `settings` (audit log, counters, cookie and sessions).
    pub fn with_console(mut self, settings: crate::console::ConsoleSettings) -> Self {
        self.console = crate::console::Console::new(settings);
        self
    }

    /// Samples the gateway's counters for the console's overview (call once a minute).
    pub fn sample(&self) {
        self.console.sample();
    }

    /// The admin token's name and role, or `None`.
    fn authenticate(&self, req: &Request<Incoming>) -> Option<(String, AdminRole)> {
        let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ")?.trim();
        self.token_owner(token)
    }

    /// The name and role of the admin token in force whose digest is `token`'s.
    pub(crate) fn token_owner(&self, token: &str) -> Option<(String, AdminRole)> {
        if token.is_empty() {
            return None;
        }
        let digest = gerbang_auth::apikey::digest_of(token);
        let mut found = None;
        // The tokens in force: a reload that removed one revokes it at once.
        for t in self.reloader.admin_tokens().iter() {
            // Compare every digest in full: the time does not tell which one nearly matched.
            let same = t.digest.len() == digest.len()
                && t.digest
                    .bytes()
                    .zip(digest.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                found = Some((t.name.clone(), t.role));
            }
        }
        found
    }

    async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ResponseBody> {
        let path = req.uri().path().to_owned();
        if path == "/console" || path.starts_with("/console/") {
            return self.console.handle(self, req, conn).await;
        }
        if path != "/admin" && !path.starts_with("/admin/") {
            return self.builtin.respond(&req);
        }
        let rid = gerbang_proxy::ids::new_request_id();
        let mut res = self.route_and_answer(req, conn, &path, &rid).await;
        res.headers_mut()
            .insert(gerbang_proxy::headers::X_REQUEST_ID.clone(), rid);
        res
    }

    async fn route_and_answer(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        path: &str,
        rid: &HeaderValue,
    ) -> Response<ResponseBody> {
        let respond = |a: Answer| respond(a, rid.to_str().unwrap_or(""));
        let Some((name, role)) = self.authenticate(&req) else {
            let mut res = respond(Answer::error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the admin API needs an admin bearer token (Authorization: Bearer …)",
            ));
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="gerbang-admin""#),
            );
            return res;
        };
        let Some((template, methods, params)) = route(path) else {
            return respond(Answer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin resource; see GET /admin/openapi.json",
            ));
        };
        let method = req.method().clone();
        if !methods.contains(&method.as_str()) {
            let mut res = respond(Answer::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not serve this method; see the Allow header",
            ));
            if let Ok(v) = HeaderValue::from_str(&methods.join(", ")) {
                res.headers_mut().insert(header::ALLOW, v);
            }
            return res;
        }
        if !crate::roles::api_allows(role, template, &method) {
            return respond(forbidden_role(role, template, &method));
        }
        let caller = Caller {
            name,
            client: conn.remote.ip(),
            if_match: req
                .headers()
                .get(header::IF_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            dry_run: req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "dry_run=true" || p == "dry_run")),
            create_only: req
                .headers()
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes().trim_ascii() == b"*"),
            via: "api",
        };
        let body = match read_json(req).await {
            Ok(b) => b,
            Err(a) => return respond(a),
        };
        if template == "/admin/openapi.json" {
            let mut res =
                Response::new(response_body::full(Bytes::from_static(OPENAPI.as_bytes())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return res;
        }
        let answer = self
            .dispatch(template, &method, &params, &body, &caller)
            .await;
        respond(answer)
    }

    /// The answer of an authenticated, authorised call (the console calls this too, so that a
    /// change made in the browser takes exactly the API's path).
    pub(crate) async fn dispatch(
        &self,
        template: &str,
        method: &Method,
        params: &[String],
        body: &Value,
        caller: &Caller,
    ) -> Answer {
        let p = |i: usize| params.get(i).map(String::as_str).unwrap_or("");
        let (body, caller, method) = (body, caller, method.clone());
        match (template, &method) {
            ("/admin/reload", _) => match self.reloader.reload("admin api").await {
                Ok(applied) => Answer::ok(json!({ "reloaded": true, "config": applied })),
                Err(problems) => Answer::problems(&problems),
            },
            ("/admin/validate", _) => match self.reloader.validate().await {
                Ok(c) => Answer::ok(json!({
                    "valid": true,
                    "hash": c.fingerprint,
                    "warnings": c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
                Err(problems) => Answer::problems(&problems),
            },
            ("/admin/explain", _) => self.explain(body),
            ("/admin/agencies", _) => self.list_agencies(),
            ("/admin/agencies/{agency}", &Method::GET) => self.get_agency(p(0)),
            ("/admin/agencies/{agency}", _) => {
                self.change_agency(&method, p(0), body, caller).await
            }
            ("/admin/applications", _) => self.list_in_registry("application"),
            ("/admin/applications/{agency}/{application}", &Method::GET) => {
                self.get_in_registry("application", p(0), p(1))
            }
            ("/admin/applications/{agency}/{application}", _) => {
                self.change_in_registry("application", &method, p(0), p(1), body, caller)
                    .await
            }
            ("/admin/applications/{agency}/{application}/rotate-secret", _) => {
                self.rotate_secret(p(0), p(1), body, caller).await
            }
            ("/admin/services", _) => self.list_services(),
            ("/admin/services/{agency}/{service}", &Method::GET) => {
                self.get_in_registry("service", p(0), p(1))
            }
            ("/admin/services/{agency}/{service}", _) => {
                self.change_in_registry("service", &method, p(0), p(1), body, caller)
                    .await
            }
            ("/admin/agreements", _) => self.list_agreements(),
            ("/admin/agreements/{agreement}", &Method::GET) => self.get_agreement(p(0)),
            ("/admin/agreements/{agreement}", _) => {
                self.change_agreement(&method, p(0), body, caller).await
            }
            ("/admin/revisions", _) => revisions_answer(self.reloader.revisions(200).await),
            ("/admin/revisions/{revision}", _) => match revision_id(p(0)) {
                Ok(id) => revisions_answer(self.reloader.revision(id).await),
                Err(a) => a,
            },
            ("/admin/revisions/{revision}/restore", _) => match revision_id(p(0)) {
                Ok(Some(id)) => {
                    let answer = revisions_answer(self.reloader.restore(id, &caller.name).await);
                    if answer.status == StatusCode::OK {
                        tracing::info!(admin = %caller.name, revision = id, "configuration revision restored");
                        let record = json!({
                            "admin": caller.name,
                            "action": format!("POST /admin/revisions/{id}/restore"),
                            "client": caller.client.to_string(),
                        });
                        if let Some(sink) = self.gateway.audit() {
                            let _ = sink
                                .record_kind(
                                    "admin",
                                    serde_json::to_vec(&record).unwrap_or_default(),
                                )
                                .await;
                        }
                    }
                    answer
                }
                Ok(None) => Answer::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_revision",
                    "restore names a revision by its number",
                ),
                Err(a) => a,
            },
            _ => Answer::error(StatusCode::NOT_FOUND, "not_found", "no such admin resource"),
        }
    }

    // ------------------------------------------------------------------ read

    fn list_agencies(&self) -> Answer {
        let files = match self.store.registry_files() {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let list: Vec<Value> = files
            .iter()
            .filter_map(|f| {
                let id = store::agency_id(&f.doc)?;
                Some(json!({
                    "id": id,
                    "name": f.doc.get("agency").and_then(|a| a.get("name")).and_then(|n| n.as_str()),
                    "applications": store::entries(&f.doc, "application").iter().map(|a| a["id"].clone()).collect::<Vec<_>>(),
                    "services": store::entries(&f.doc, "service").iter().map(|s| s["id"].clone()).collect::<Vec<_>>(),
                }))
            })
            .collect();
        Answer::ok(json!({ "agencies": list }))
    }

    fn agency_view(f: &EditFile) -> Value {
        let agency = f
            .doc
            .get("agency")
            .and_then(|a| a.as_table())
            .map(store::table_to_json)
            .unwrap_or(Value::Null);
        agency
    }

    fn get_agency(&self, id: &str) -> Answer {
        match self.store.agency_file(id) {
            Ok(Some(f)) => with_etag(Self::agency_view(&f)),
            Ok(None) => Answer::error(StatusCode::NOT_FOUND, "not_found", "no such agency"),
            Err(e) => e.into(),
        }
    }

    fn list_in_registry(&self, array: &str) -> Answer {
        let files = match self.store.registry_files() {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let mut list = Vec::new();
        for f in &files {
            let agency = store::agency_id(&f.doc).unwrap_or_default();
            for mut e in store::entries(&f.doc, array) {
                redact(array, &mut e);
                e["agency"] = Value::from(agency.clone());
                list.push(e);
            }
        }
        Answer::ok(json!({ format!("{array}s"): list }))
    }

    fn list_services(&self) -> Answer {
        let mut answer = self.list_in_registry("service");
        // With the live state of every instance.
        let registry = self.gateway.registry();
        if let Some(list) = answer.body["services"].as_array_mut() {
            for s in list {
                let (agency, id) = (
                    s["agency"].as_str().unwrap_or("").to_owned(),
                    s["id"].as_str().unwrap_or("").to_owned(),
                );
                if let Ok(svc) = registry.lookup(&agency, &id) {
                    s["health"] = svc
                        .instance_states()
                        .map(|(i, st)| (i.name.clone(), Value::from(st.as_str())))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
            }
        }
        answer
    }

    fn get_in_registry(&self, array: &str, agency: &str, id: &str) -> Answer {
        let f = match self.store.agency_file(agency) {
            Ok(Some(f)) => f,
            Ok(None) => return Answer::error(StatusCode::NOT_FOUND, "not_found", "no such agency"),
            Err(e) => return e.into(),
        };
        match store::entry(&f.doc, array, id) {
            Some(mut v) => {
                let tag = store::etag(&v);
                redact(array, &mut v);
                Answer {
                    etag: Some(tag),
                    ..Answer::ok(v)
                }
            }
            None => Answer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no such {array}"),
            ),
        }
    }

    fn list_agreements(&self) -> Answer {
        let files = match self.store.agreement_files() {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let list: Vec<Value> = files
            .iter()
            .flat_map(|f| store::entries(&f.doc, "agreement"))
            .collect();
        Answer::ok(json!({ "agreements": list }))
    }

    fn get_agreement(&self, id: &str) -> Answer {
        match self.store.agreement_file(id) {
            Ok(Some(f)) => store::entry(&f.doc, "agreement", id)
                .map(with_etag)
                .unwrap_or_else(|| {
                    Answer::error(StatusCode::NOT_FOUND, "not_found", "no such agreement")
                }),
            Ok(None) => Answer::error(StatusCode::NOT_FOUND, "not_found", "no such agreement"),
            Err(e) => e.into(),
        }
    }

    fn explain(&self, body: &Value) -> Answer {
        let field = |k: &str| body.get(k).and_then(Value::as_str);
        let (Some(consumer), Some(method), Some(path)) =
            (field("consumer"), field("method"), field("path"))
        else {
            return invalid("give consumer (agency/app), method and path (and purpose when the agreement asks for one)",
            );
        };
        let Some((agency, app)) = consumer.split_once('/') else {
            return invalid("consumer must be agency/app");
        };
        // Authentication comes before routing and policy: no agreement speaks for an
        // application the registry does not know.
        if self.gateway.registry().application(agency, app).is_none() {
            return Answer::ok(json!({
                "decision": "deny",
                "reason": "unknown_application",
                "stage": "authenticate",
            }));
        }
        let normalized =
            match gerbang_proxy::path::normalize(path.split('?').next().unwrap_or(path)) {
                Ok(n) => n,
                Err(e) => {
                    return Answer::ok(
                        json!({ "decision": "deny", "reason": e.code(), "stage": "path" }),
                    )
                }
            };
        let Some((prov, service, rest)) = normalized.route_parts() else {
            return Answer::ok(
                json!({ "decision": "deny", "reason": "route_not_found", "stage": "route" }),
            );
        };
        let service_id = format!("{prov}/{service}");
        if self.gateway.registry().lookup(prov, service).is_err() {
            return Answer::ok(
                json!({ "decision": "deny", "reason": "unknown_service", "stage": "route", "service": service_id }),
            );
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let policy = self.gateway.policy();
        let req = gerbang_policy::Request {
            application: consumer,
            agency,
            service: &service_id,
            method,
            path: if rest.is_empty() { "/" } else { rest },
            query: path.split_once('?').map(|(_, q)| q),
            purpose: field("purpose"),
            now,
        };
        let e = policy.explain(&req);
        let considered: Vec<Value> = e
            .considered
            .iter()
            .map(|(id, matched, result)| {
                json!({ "agreement": id, "matched_by": matched, "result": result.map_or("passes", |r| r.as_str()) })
            })
            .collect();
        let endpoint = e.decision.endpoint.map(|ep| ep.id.to_string());
        let (decision, reason, agreement) = match e.decision.outcome {
            gerbang_policy::Outcome::Allow { agreement } => (
                "allow",
                None,
                policy.agreement(agreement).map(|a| a.id.clone()),
            ),
            gerbang_policy::Outcome::Deny { reason, agreement } => (
                "deny",
                Some(reason.as_str()),
                agreement
                    .and_then(|i| policy.agreement(i))
                    .map(|a| a.id.clone()),
            ),
        };
        Answer::ok(json!({
            "decision": decision,
            "reason": reason,
            "agreement": agreement,
            "service": service_id,
            "endpoint": endpoint,
            "considered": considered,
        }))
    }

    // ------------------------------------------------------------------ change

    /// Validates `overlay` with every other file, writes it, applies it, audits it. `Err` is the
    /// answer to give instead: the problems, or (for a dry run) the 200 saying the change is
    /// valid and was not written.
    async fn apply(
        &self,
        current: &mut String,
        overlay: Overlay,
        caller: &Caller,
        action: String,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Result<(), Answer> {
        if let Err(problems) = self.reloader.validate_with(overlay.clone()).await {
            if !caller.dry_run {
                self.reloader
                    .refused(&format!("admin api ({})", caller.name), &problems);
            }
            return Err(Answer::problems(&problems));
        }
        if caller.dry_run {
            // Checked with every other file; nothing written, nothing applied.
            let mut resource = after.cloned().unwrap_or(Value::Null);
            redact("application", &mut resource);
            return Err(Answer::ok(json!({
                "dry_run": true,
                "valid": true,
                "action": action,
                "resource": resource,
            })));
        }
        // What the files held, to put back if the change cannot be applied after all.
        let previous: Vec<(std::path::PathBuf, Option<String>)> = overlay
            .keys()
            .map(|p| (p.clone(), std::fs::read_to_string(p).ok()))
            .collect();
        for (path, text) in &overlay {
            store::persist(path, text.as_deref()).map_err(Answer::from)?;
        }
        // The trigger names the admin and the action (cluster mode: the revision's author
        // and reason).
        let trigger = format!("admin api ({}): {action}", caller.name);
        if let Err(problems) = self.reloader.reload_locked(current, &trigger).await {
            // Validated a moment ago: only a concurrent hand edit can get here. Put the files
            // back so that disk and the running configuration agree.
            for (path, text) in &previous {
                if let Err(e) = store::persist(path, text.as_deref()) {
                    tracing::error!(path = %path.display(), error = %e, "could not restore a file after a refused change");
                }
            }
            return Err(Answer::problems(&problems));
        }
        let digest = |v: Option<&Value>| v.map(store::etag);
        let record = json!({
            "admin": caller.name,
            "via": caller.via,
            "action": action,
            "client": caller.client.to_string(),
            "before": digest(before),
            "after": digest(after),
        });
        tracing::info!(admin = %caller.name, action, "admin change applied");
        if let Some(sink) = self.gateway.audit() {
            if !sink
                .record_kind("admin", serde_json::to_vec(&record).unwrap_or_default())
                .await
            {
                tracing::error!(admin = %caller.name, action, "the admin change could not be recorded in the audit log");
            }
        }
        Ok(())
    }

    async fn change_agency(
        &self,
        method: &Method,
        id: &str,
        body: &Value,
        caller: &Caller,
    ) -> Answer {
        let mut current = self.reloader.lock().await;
        let existing = match self.store.agency_file(id) {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let before = existing.as_ref().map(Self::agency_view);
        if let Err(a) = precondition(caller, before.as_ref()) {
            return a;
        }
        let action = format!("{method} /admin/agencies/{id}");
        if *method == Method::DELETE {
            let Some(f) = existing else {
                return Answer::error(StatusCode::NOT_FOUND, "not_found", "no such agency");
            };
            // Anything besides `[agency]` (services, applications, in any TOML form).
            if f.doc.iter().any(|(k, _)| k != "agency") {
                return StoreError::Conflict(
                    "the agency still has services or applications; delete them first".into(),
                )
                .into();
            }
            let overlay = Overlay::from([(f.path.clone(), None)]);
            return self
                .apply(&mut current, overlay, caller, action, before.as_ref(), None)
                .await
                .map_or_else(|a| a, |()| deleted());
        }
        let Some(name) = body.get("name").and_then(Value::as_str) else {
            return invalid("give the agency's name");
        };
        if let Err(a) = resource_body(body, id) {
            return a;
        }
        let (path, mut doc) = match existing {
            Some(f) => (f.path, f.doc),
            None => {
                if !gerbang_config::is_slug(id) {
                    return invalid("an agency id is a slug (a-z, 0-9, '-')");
                }
                let path = self.store.registry_dir.join(format!("{id}.toml"));
                if path.exists() {
                    return StoreError::Conflict(format!(
                        "{} exists but defines another agency",
                        path.display()
                    ))
                    .into();
                }
                (path, toml_edit::DocumentMut::new())
            }
        };
        let mut agency = toml_edit::Table::new();
        agency.insert("id", toml_edit::value(id));
        agency.insert("name", toml_edit::value(name));
        match doc.get_mut("agency").and_then(|a| a.as_table_mut()) {
            Some(t) => {
                t.insert("name", toml_edit::value(name));
            }
            None => {
                doc.insert("agency", toml_edit::Item::Table(agency));
            }
        }
        let after = doc
            .get("agency")
            .and_then(|a| a.as_table())
            .map(store::table_to_json)
            .unwrap_or(Value::Null);
        let overlay = Overlay::from([(path, Some(doc.to_string()))]);
        match self
            .apply(
                &mut current,
                overlay,
                caller,
                action,
                before.as_ref(),
                Some(&after),
            )
            .await
        {
            Ok(()) => with_etag(after),
            Err(a) => a,
        }
    }

    async fn change_in_registry(
        &self,
        array: &'static str,
        method: &Method,
        agency: &str,
        id: &str,
        body: &Value,
        caller: &Caller,
    ) -> Answer {
        let mut current = self.reloader.lock().await;
        let mut f = match self.store.agency_file(agency) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Answer::error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such agency (create it with PUT /admin/agencies/{agency})",
                )
            }
            Err(e) => return e.into(),
        };
        let before = store::entry(&f.doc, array, id);
        if let Err(a) = precondition(caller, before.as_ref()) {
            return a;
        }
        let action = format!("{method} /admin/{array}s/{agency}/{id}");
        if *method == Method::DELETE {
            if !store::remove_entry(&mut f.doc, array, id) {
                return Answer::error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no such {array}"),
                );
            }
            let overlay = Overlay::from([(f.path.clone(), Some(f.doc.to_string()))]);
            return self
                .apply(&mut current, overlay, caller, action, before.as_ref(), None)
                .await
                .map_or_else(|a| a, |()| deleted());
        }
        let obj = match resource_body(body, id) {
            Ok(o) => o,
            Err(a) => return a,
        };
        if obj.contains_key("agency") && obj.get("agency").and_then(Value::as_str) != Some(agency) {
            return invalid("the body's agency differs from the path's");
        }
        let mut new = Value::Object(obj.clone());
        if let Some(m) = new.as_object_mut() {
            m.remove("agency");
            m.remove("health");
            m.insert("id".into(), Value::from(id));
            // Secret hashes are never shown; an application sent back without them keeps its own.
            if array == "application" {
                m.remove("client_secret_count");
                if !m.contains_key("client_secret_hashes") {
                    if let Some(h) = before.as_ref().and_then(|b| b.get("client_secret_hashes")) {
                        m.insert("client_secret_hashes".into(), h.clone());
                    }
                }
            }
        }
        if let Err(e) = store::put_entry(&mut f.doc, array, id, &new) {
            return e.into();
        }
        // The ETag and the answer describe what the file now holds (the same as a GET).
        let mut new = store::entry(&f.doc, array, id).unwrap_or(new);
        let overlay = Overlay::from([(f.path.clone(), Some(f.doc.to_string()))]);
        match self
            .apply(
                &mut current,
                overlay,
                caller,
                action,
                before.as_ref(),
                Some(&new),
            )
            .await
        {
            Ok(()) => {
                let tag = store::etag(&new);
                redact(array, &mut new);
                Answer {
                    status: if before.is_some() {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    },
                    etag: Some(tag),
                    body: new,
                }
            }
            Err(a) => a,
        }
    }

    async fn rotate_secret(&self, agency: &str, id: &str, body: &Value, caller: &Caller) -> Answer {
        let mut current = self.reloader.lock().await;
        let mut f = match self.store.agency_file(agency) {
            Ok(Some(f)) => f,
            Ok(None) => return Answer::error(StatusCode::NOT_FOUND, "not_found", "no such agency"),
            Err(e) => return e.into(),
        };
        let Some(before) = store::entry(&f.doc, "application", id) else {
            return Answer::error(StatusCode::NOT_FOUND, "not_found", "no such application");
        };
        if let Err(a) = precondition(caller, Some(&before)) {
            return a;
        }
        let keep_previous = body
            .get("keep_previous")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // 256 random bits from the operating system, as for API keys.
        let Some((secret, _)) = gerbang_auth::apikey::generate() else {
            return Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "no randomness",
            );
        };
        let hash = match tokio::task::spawn_blocking({
            let s = secret.clone();
            move || gerbang_auth::secret::hash_secret(&s)
        })
        .await
        {
            Ok(Ok(h)) => h,
            _ => {
                return Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "hashing failed",
                )
            }
        };
        let mut after = before.clone();
        let mut hashes = vec![Value::from(hash)];
        if keep_previous {
            // The newest previous secret only: every kept hash costs an argon2 check on each
            // wrong secret.
            if let Some(old) = before
                .get("client_secret_hashes")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                hashes.push(old.clone());
            }
        }
        after["client_secret_hashes"] = Value::Array(hashes);
        let mut methods: Vec<Value> = after["auth_methods"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !methods.iter().any(|m| m == "client_secret") {
            methods.push(Value::from("client_secret"));
        }
        after["auth_methods"] = Value::Array(methods);
        if let Err(e) = store::put_entry(&mut f.doc, "application", id, &after) {
            return e.into();
        }
        let overlay = Overlay::from([(f.path.clone(), Some(f.doc.to_string()))]);
        let action = format!("POST /admin/applications/{agency}/{id}/rotate-secret");
        match self
            .apply(
                &mut current,
                overlay,
                caller,
                action,
                Some(&before),
                Some(&after),
            )
            .await
        {
            Ok(()) => Answer {
                etag: Some(store::etag(&after)),
                ..Answer::ok(json!({
                    "application": format!("{agency}/{id}"),
                    "client_secret": secret,
                    "previous_secrets_kept": keep_previous,
                    "note": "shown once: only its hash is stored",
                }))
            },
            Err(a) => a,
        }
    }

    async fn change_agreement(
        &self,
        method: &Method,
        id: &str,
        body: &Value,
        caller: &Caller,
    ) -> Answer {
        let mut current = self.reloader.lock().await;
        let existing = match self.store.agreement_file(id) {
            Ok(f) => f,
            Err(e) => return e.into(),
        };
        let before = existing
            .as_ref()
            .and_then(|f| store::entry(&f.doc, "agreement", id));
        if let Err(a) = precondition(caller, before.as_ref()) {
            return a;
        }
        let action = format!("{method} /admin/agreements/{id}");
        if *method == Method::DELETE {
            let Some(mut f) = existing else {
                return Answer::error(StatusCode::NOT_FOUND, "not_found", "no such agreement");
            };
            store::remove_entry(&mut f.doc, "agreement", id);
            let overlay = Overlay::from([(f.path.clone(), Some(f.doc.to_string()))]);
            return self
                .apply(&mut current, overlay, caller, action, before.as_ref(), None)
                .await
                .map_or_else(|a| a, |()| deleted());
        }
        let obj = match resource_body(body, id) {
            Ok(o) => o,
            Err(a) => return a,
        };
        let mut new = Value::Object(obj.clone());
        new["id"] = Value::from(id);
        let (path, mut doc) = match existing {
            Some(f) => (f.path, f.doc),
            None => {
                // A new agreement goes to the provider agency's file.
                let Some(provider) = obj
                    .get("service")
                    .and_then(Value::as_str)
                    .and_then(|s| s.split_once('/'))
                    .map(|(a, _)| a.to_owned())
                    .filter(|a| gerbang_config::is_slug(a))
                else {
                    return invalid("give the service, agency/service");
                };
                let path = self.store.agreements_dir.join(format!("{provider}.toml"));
                let doc = match std::fs::read_to_string(&path) {
                    Ok(t) => match t.parse::<toml_edit::DocumentMut>() {
                        Ok(d) => d,
                        Err(e) => return StoreError::Io(format!("{}: {e}", path.display())).into(),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        toml_edit::DocumentMut::new()
                    }
                    // Any other failure must not become "start from an empty file".
                    Err(e) => return StoreError::Io(format!("{}: {e}", path.display())).into(),
                };
                (path, doc)
            }
        };
        if let Err(e) = store::put_entry(&mut doc, "agreement", id, &new) {
            return e.into();
        }
        let new = store::entry(&doc, "agreement", id).unwrap_or(new);
        let overlay = Overlay::from([(path, Some(doc.to_string()))]);
        match self
            .apply(
                &mut current,
                overlay,
                caller,
                action,
                before.as_ref(),
                Some(&new),
            )
            .await
        {
            Ok(()) => Answer {
                status: if before.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                etag: Some(store::etag(&new)),
                body: new,
            },
            Err(a) => a,
        }
    }
}

/// An application's secret hashes are not shown, only how many there are.
fn redact(array: &str, v: &mut Value) {
    if array == "application" {
        if let Some(m) = v.as_object_mut() {
            if let Some(h) = m.remove("client_secret_hashes") {
                m.insert(
                    "client_secret_count".into(),
                    Value::from(h.as_array().map_or(0, Vec::len)),
                );
            }
        }
    }
}

/// 403 `forbidden_role`: the token's role may not do this; names the roles that may.
fn forbidden_role(role: AdminRole, template: &str, method: &Method) -> Answer {
    let needed = crate::roles::api_roles(template, method);
    let names: Vec<&str> = needed.iter().map(|r| r.as_str()).collect();
    let mut a = Answer::error(
        StatusCode::FORBIDDEN,
        "forbidden_role",
        &format!(
            "the role {role} may not do this; it needs the role {}",
            names.join(" or ")
        ),
    );
    a.body["error"]["role"] = Value::from(role.as_str());
    a.body["error"]["needed"] = Value::from(names);
    a
}

/// 400 `invalid_request` with `message`.
fn invalid(message: &str) -> Answer {
    Answer::error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// The request body as the JSON object of resource `id` (an `id` in it must be the path's).
fn resource_body<'a>(
    body: &'a Value,
    id: &str,
) -> Result<&'a serde_json::Map<String, Value>, Answer> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("the body must be a JSON object"))?;
    if obj.get("id").is_some_and(|v| v.as_str() != Some(id)) {
        return Err(invalid("the body's id differs from the path's"));
    }
    Ok(obj)
}

fn with_etag(v: Value) -> Answer {
    Answer {
        etag: Some(store::etag(&v)),
        ..Answer::ok(v)
    }
}

fn deleted() -> Answer {
    Answer {
        status: StatusCode::OK,
        body: json!({ "deleted": true }),
        etag: None,
    }
}

/// `If-Match` against the resource's current representation: 412 when it names another
/// version (or any version of a resource that does not exist).
fn precondition(caller: &Caller, current: Option<&Value>) -> Result<(), Answer> {
    if caller.create_only && current.is_some() {
        return Err(Answer::error(
            StatusCode::PRECONDITION_FAILED,
            "already_exists",
            "a resource with this id exists already (If-None-Match: *); read it and change it instead",
        ));
    }
    let Some(want) = caller.if_match.as_deref() else {
        return Ok(());
    };
    let ok = match current {
        Some(v) => {
            let tag = store::etag(v);
            want.trim() == "*" || want.split(',').any(|t| t.trim() == tag)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Answer::error(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the resource changed since you read it (If-Match does not match its ETag); read it again",
        ))
    }
}

/// `current` or a revision number.
fn revision_id(text: &str) -> Result<Option<u64>, Answer> {
    if text == "current" {
        return Ok(None);
    }
    text.parse::<u64>().map(Some).map_err(|_| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            "invalid_revision",
            "a revision is `current` or its number",
        )
    })
}

fn revisions_answer(r: Result<Value, crate::RevisionsError>) -> Answer {
    use crate::RevisionsError as E;
    match r {
        Ok(v) => Answer::ok(v),
        Err(E::NotFound(m)) => Answer::error(StatusCode::NOT_FOUND, "revision_not_found", &m),
        Err(E::NotClustered(m)) => Answer::error(StatusCode::CONFLICT, "not_in_cluster_mode", &m),
        Err(E::Unavailable(m)) => Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "config_store_unavailable",
            &m,
        ),
        Err(E::Invalid(problems)) => Answer::problems(&problems),
    }
}

/// The template, methods and parameters of the route `path` matches.
pub fn route(path: &str) -> Option<(&'static str, &'static [&'static str], Vec<String>)> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    for (template, methods) in ROUTES {
        let tsegs: Vec<&str> = template.split('/').collect();
        if tsegs.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let matched = tsegs.iter().zip(&segs).all(|(t, s)| {
            if t.starts_with('{') {
                if s.is_empty() {
                    return false;
                }
                params.push((*s).to_owned());
                true
            } else {
                t == s
            }
        });
        if matched {
            return Some((template, methods, params));
        }
    }
    None
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Answer> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than 1 MiB or broke off",
            )
        })?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("the body is not JSON: {e}"),
        )
    })
}

fn respond(mut a: Answer, request_id: &str) -> Response<ResponseBody> {
    if let Some(e) = a.body.get_mut("error").and_then(Value::as_object_mut) {
        e.insert("request_id".into(), Value::from(request_id));
    }
    let text = serde_json::to_vec(&a.body).unwrap_or_default();
    let mut res = Response::new(response_body::full(Bytes::from(text)));
    *res.status_mut() = a.status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(tag) = a.etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        res.headers_mut().insert(header::ETAG, tag);
    }
    res
}

impl<R: Reload> Handler for AdminApi<R> {
    async fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ResponseBody> {
        self.handle(req, conn).await
    }
}
