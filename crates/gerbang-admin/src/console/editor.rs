//! The console's record editor: any agency, application, service or agreement as the TOML an
//! admin would write in its file, created, changed (with a dry-run diff first) or deleted
//! through the admin API's own handler, so every rule, precondition and audit record of the API
//! holds here too. It is what `gerbang admin get … > f; edit f; gerbang admin put … --file f`
//! does on the command line.

use std::collections::HashMap;

use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use gerbang_proxy::response_body::ResponseBody;

use super::{problems_list, redirect, Console, ConsoleError, Ctx};
use crate::api::{AdminApi, Answer, Caller};
use crate::Reload;

/// A kind of record the editor handles.
pub(super) struct RecordKind {
    /// The URL segment (`/console/sunting/<slug>/…`).
    pub slug: &'static str,
    /// The admin API route.
    template: &'static str,
    /// How many path segments name one record (`agency/service`: 2).
    pub parts: usize,
    /// The word key of its list page, and that page.
    pub title: &'static str,
    list: &'static str,
    /// A starting point for a new record.
    example: &'static str,
}

pub(super) const KINDS: &[RecordKind] = &[
    RecordKind {
        slug: "instansi",
        template: "/admin/agencies/{agency}",
        parts: 1,
        title: "agencies",
        list: "/console/layanan",
        example: "name = \"Dinas …\"\n",
    },
    RecordKind {
        slug: "aplikasi",
        template: "/admin/applications/{agency}/{application}",
        parts: 2,
        title: "applications",
        list: "/console/aplikasi",
        example: "name = \"…\"\nauth_methods = [\"client_secret\"]\nclient_secret_hashes = []\n",
    },
    RecordKind {
        slug: "layanan",
        template: "/admin/services/{agency}/{service}",
        parts: 2,
        title: "services",
        list: "/console/layanan",
        example: "name = \"…\"\n\n[[instance]]\nname = \"a-1\"\nurl = \"http://10.0.0.1:8080\"\n\n[[endpoint]]\nmethod = \"GET\"\npath = \"/data/{id}\"\nclassification = \"terbatas\"\n",
    },
    RecordKind {
        slug: "perjanjian",
        template: "/admin/agreements/{agreement}",
        parts: 1,
        title: "agreements",
        list: "/console/perjanjian",
        example: "title = \"…\"\nlegal_basis = \"…\"\nservice = \"agency/service\"\nconsumers = [\"agency/application\"]\nendpoints = [\"GET /data/{id}\"]\nmax_classification = \"terbatas\"\n",
    },
];

pub(super) fn kind(slug: &str) -> Option<&'static RecordKind> {
    KINDS.iter().find(|k| k.slug == slug)
}

/// A record (as the admin API gives it) as TOML text.
pub(super) fn record_text(v: &Value) -> String {
    let mut v = v.clone();
    strip_nulls(&mut v);
    match crate::store::json_to_table(&v) {
        Ok(t) => {
            let mut doc = toml_edit::DocumentMut::new();
            *doc.as_table_mut() = t;
            doc.to_string()
        }
        Err(_) => serde_json::to_string_pretty(&v).unwrap_or_default(),
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// TOML text (a record's keys, as in its file) as the admin API's JSON.
fn parse_record(text: &str) -> Result<Value, String> {
    let doc = text
        .parse::<toml_edit::DocumentMut>()
        .map_err(|e| format!("TOML: {}", e.to_string().trim()))?;
    Ok(crate::store::table_to_json(doc.as_table()))
}

/// The path segments of a record id typed in the form (`dukcapil/penduduk`).
fn id_parts(k: &RecordKind, id: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = id.trim().split('/').map(str::to_owned).collect();
    (parts.len() == k.parts && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

fn word(ctx: &Ctx, key: &str) -> String {
    ctx.lang.words().get(key).copied().unwrap_or(key).to_owned()
}

impl Console {
    /// `GET|POST /console/sunting/<kind>/<id…>` (an existing record) and
    /// `GET|POST /console/baru/<kind>` (`params` empty: a new one, its id typed in the form).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_editor<R: Reload>(
        &self,
        api: &AdminApi<R>,
        ctx: &Ctx,
        k: &'static RecordKind,
        params: Option<Vec<String>>,
        form: Option<&HashMap<String, String>>,
        caller: &(dyn Fn(bool, Option<String>) -> Caller + Sync),
        notice: &str,
    ) -> Result<Response<ResponseBody>, ConsoleError> {
        let is_new = params.is_none();
        let mut errors: Vec<String> = Vec::new();
        let mut diff: Option<String> = None;
        let mut conflict = false;
        let id_text = match (&params, form) {
            (Some(p), _) => p.join("/"),
            (None, Some(f)) => f.get("id").cloned().unwrap_or_default(),
            (None, None) => String::new(),
        };
        // What the record is now (nothing for a new one).
        let current = match &params {
            Some(p) => {
                let a = api
                    .dispatch(
                        k.template,
                        &Method::GET,
                        p,
                        &Value::Null,
                        &caller(false, None),
                    )
                    .await;
                if a.status != StatusCode::OK {
                    return self.answer_error(ctx, &a);
                }
                Some(a)
            }
            None => None,
        };
        let current_text = current.as_ref().map(|a| record_text(&a.body));
        let mut text = current_text.clone().unwrap_or_else(|| k.example.to_owned());
        let mut etag = current
            .as_ref()
            .and_then(|a| a.etag.clone())
            .unwrap_or_default();
        if let Some(form) = form {
            if let Some(r) = form.get("record") {
                text = r.clone();
            }
            etag = form.get("etag").cloned().unwrap_or_default();
            let action = form.get("aksi").map_or("simpan", String::as_str);
            let target = match &params {
                Some(p) => Some(p.clone()),
                None => id_parts(k, &id_text),
            };
            match (action, target) {
                (_, None) => errors.push(if k.parts == 2 {
                    "id: agency/id (e.g. dukcapil/penduduk)".to_owned()
                } else {
                    "id: required".to_owned()
                }),
                ("hapus", Some(p)) => {
                    if form.get("konfirmasi").map(String::as_str) != Some("ya") {
                        errors.push(word(ctx, "confirm_delete"));
                    } else {
                        let a = api
                            .dispatch(
                                k.template,
                                &Method::DELETE,
                                &p,
                                &Value::Null,
                                &caller(false, Some(etag.clone()).filter(|e| !e.is_empty())),
                            )
                            .await;
                        if a.status.is_success() {
                            return Ok(redirect(&format!("{}?dihapus=1", k.list), None));
                        }
                        conflict = a.status == StatusCode::PRECONDITION_FAILED;
                        errors = problems_list(&a);
                    }
                }
                (action, Some(p)) => match parse_record(&text) {
                    Err(e) => errors.push(e),
                    Ok(body) => {
                        let dry_run = action == "pratinjau";
                        let mut c = caller(dry_run, Some(etag.clone()).filter(|e| !e.is_empty()));
                        c.create_only = is_new;
                        let a: Answer = api.dispatch(k.template, &Method::PUT, &p, &body, &c).await;
                        if a.status.is_success() && !dry_run {
                            let to =
                                format!("/console/sunting/{}/{}?disimpan=1", k.slug, p.join("/"));
                            return Ok(redirect(&to, None));
                        }
                        if a.status.is_success() {
                            // The change as the file will hold it, against the record now.
                            let after = record_text(&a.body["resource"]);
                            let before = current_text.clone().unwrap_or_default();
                            let name = format!("{}/{}", k.slug, p.join("/"));
                            diff = Some(
                                similar::TextDiff::from_lines(&before, &after)
                                    .unified_diff()
                                    .header(&name, &name)
                                    .to_string(),
                            );
                        } else {
                            conflict = a.status == StatusCode::PRECONDITION_FAILED;
                            errors = problems_list(&a);
                        }
                    }
                },
            }
        }
        let title = if is_new {
            format!("{} ({})", word(ctx, k.title), word(ctx, "new"))
        } else {
            format!("{} {id_text}", word(ctx, k.title))
        };
        let status = if errors.is_empty() {
            StatusCode::OK
        } else if conflict {
            StatusCode::CONFLICT
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let action = if is_new {
            format!("/console/baru/{}", k.slug)
        } else {
            format!("/console/sunting/{}/{id_text}", k.slug)
        };
        self.render_status(
            ctx,
            status,
            "sunting.html",
            k.title,
            &title,
            json!({
                "action": action,
                "is_new": is_new,
                "two_part": k.parts == 2,
                "id": id_text,
                "record": text,
                "etag": etag,
                "errors": errors,
                "conflict": conflict,
                "diff": diff,
                "notice": if form.is_none() { notice } else { "" },
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_its_toml_text() {
        let v = json!({
            "id": "penduduk",
            "name": "Data penduduk",
            "retries": null,
            "instance": [{ "name": "a", "url": "http://127.0.0.1:1" }],
            "endpoint": [{ "id": "nik", "path": "/penduduk/{nik}", "methods": ["GET"] }],
            "health_check": { "path": "/health", "interval": "5s" },
        });
        let text = record_text(&v);
        assert!(text.contains("[[instance]]"), "{text}");
        assert!(!text.contains("retries"), "{text}");
        let mut want = v.clone();
        strip_nulls(&mut want);
        assert_eq!(parse_record(&text).ok(), Some(want));
    }

    #[test]
    fn bad_toml_is_an_error_with_the_place() {
        let e = parse_record("name = \"x\"\ninstance = [")
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("TOML:") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn ids_need_as_many_parts_as_the_kind() {
        let svc = kind("layanan").map(|k| id_parts(k, "dukcapil/penduduk"));
        assert_eq!(svc.flatten().map(|p| p.len()), Some(2));
        assert!(kind("layanan")
            .and_then(|k| id_parts(k, "dukcapil"))
            .is_none());
        assert!(kind("layanan").and_then(|k| id_parts(k, "a//")).is_none());
        assert!(kind("perjanjian")
            .and_then(|k| id_parts(k, "pks-1"))
            .is_some());
    }
}
