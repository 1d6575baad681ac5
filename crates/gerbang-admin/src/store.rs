//! The admin API's view of the configuration files: resources read from and written to the
//! registry and agreement files with `toml_edit`, so that an API change keeps every comment and
//! every other entry of the file as the admins wrote it. Writes go to a temporary file, are
//! synced, then renamed over the original (then the directory is synced): a crash leaves the
//! old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Io(String),
}

/// A file read for editing.
pub struct EditFile {
    pub path: PathBuf,
    pub doc: DocumentMut,
}

/// The registry and agreement files.
pub struct Store {
    pub registry_dir: PathBuf,
    pub agreements_dir: PathBuf,
}

impl Store {
    fn read_dir(dir: &Path) -> Result<Vec<EditFile>, StoreError> {
        let files = gerbang_config::toml_files(dir, &gerbang_config::Overlay::new())
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        let mut out = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
            // A broken file is the server's problem, not the caller's: logged, 500.
            let doc = text
                .parse::<DocumentMut>()
                .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
            out.push(EditFile { path, doc });
        }
        Ok(out)
    }

    pub fn registry_files(&self) -> Result<Vec<EditFile>, StoreError> {
        Self::read_dir(&self.registry_dir)
    }

    pub fn agreement_files(&self) -> Result<Vec<EditFile>, StoreError> {
        Self::read_dir(&self.agreements_dir)
    }

    /// The registry file that defines agency `id`.
    pub fn agency_file(&self, id: &str) -> Result<Option<EditFile>, StoreError> {
        Ok(self
            .registry_files()?
            .into_iter()
            .find(|f| agency_id(&f.doc).as_deref() == Some(id)))
    }

    /// The agreement file holding agreement `id`.
    pub fn agreement_file(&self, id: &str) -> Result<Option<EditFile>, StoreError> {
        Ok(self
            .agreement_files()?
            .into_iter()
            .find(|f| find_in(&f.doc, "agreement", id).is_some()))
    }
}

/// `[agency] id` of a registry document.
pub fn agency_id(doc: &DocumentMut) -> Option<String> {
    doc.get("agency")?.get("id")?.as_str().map(str::to_owned)
}

/// The position of the `[[array]]` entry whose `id` is `id`.
pub fn find_in(doc: &DocumentMut, array: &str, id: &str) -> Option<usize> {
    doc.get(array)?
        .as_array_of_tables()?
        .iter()
        .position(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
}

/// Every entry of `[[array]]` as JSON.
pub fn entries(doc: &DocumentMut, array: &str) -> Vec<Value> {
    doc.get(array)
        .and_then(Item::as_array_of_tables)
        .map(|a| a.iter().map(table_to_json).collect())
        .unwrap_or_default()
}

/// The entry `id` of `[[array]]` as JSON.
pub fn entry(doc: &DocumentMut, array: &str, id: &str) -> Option<Value> {
    let i = find_in(doc, array, id)?;
    doc.get(array)?
        .as_array_of_tables()?
        .get(i)
        .map(table_to_json)
}

/// Replaces (or appends) the entry `id` of `[[array]]` with `value`.
pub fn put_entry(
    doc: &mut DocumentMut,
    array: &str,
    id: &str,
    value: &Value,
) -> Result<(), StoreError> {
    let table = json_to_table(value)?;
    match find_in(doc, array, id) {
        Some(i) => {
            let arr = doc
                .get_mut(array)
                .and_then(Item::as_array_of_tables_mut)
                .ok_or_else(|| {
                    StoreError::Invalid(format!("`{array}` is not an array of tables"))
                })?;
            if let Some(slot) = arr.get_mut(i) {
                merge_table(slot, table);
            }
        }
        None => {
            if doc.get(array).is_none() {
                doc.insert(array, Item::ArrayOfTables(ArrayOfTables::new()));
            }
            let arr = doc
                .get_mut(array)
                .and_then(Item::as_array_of_tables_mut)
                .ok_or_else(|| {
                    StoreError::Invalid(format!("`{array}` is not an array of tables"))
                })?;
            arr.push(table);
        }
    }
    Ok(())
}

/// Makes `old` hold what `new` holds while keeping what can be kept of `old`'s layout: the
/// comments and formatting of keys whose values stay, the position of sub-tables, and the
/// order of keys. Keys that `new` lacks are removed.
fn merge_table(old: &mut Table, new: Table) {
    let gone: Vec<String> = old
        .iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| !new.contains_key(k))
        .collect();
    for k in gone {
        old.remove(&k);
    }
    for (k, item) in new {
        match (old.get_mut(&k), item) {
            (Some(Item::Value(ov)), Item::Value(mut nv)) => {
                // Same key: the new value with the old one's comments and spacing.
                if ov.to_string().trim() != nv.to_string().trim() {
                    *nv.decor_mut() = ov.decor().clone();
                    *ov = nv;
                }
            }
            (Some(Item::Table(ot)), Item::Table(nt)) => merge_table(ot, nt),
            (Some(Item::ArrayOfTables(oa)), Item::ArrayOfTables(na)) if oa.len() == na.len() => {
                for (ot, nt) in oa.iter_mut().zip(na) {
                    merge_table(ot, nt);
                }
            }
            (_, item) => {
                old.insert(&k, item);
            }
        }
    }
}

/// Removes the entry `id` of `[[array]]`; false when there is none.
pub fn remove_entry(doc: &mut DocumentMut, array: &str, id: &str) -> bool {
    let Some(i) = find_in(doc, array, id) else {
        return false;
    };
    if let Some(arr) = doc.get_mut(array).and_then(Item::as_array_of_tables_mut) {
        arr.remove(i);
        if arr.is_empty() {
            doc.remove(array);
        }
    }
    true
}

/// A table as JSON; TOML dates become their RFC 3339 text.
pub fn table_to_json(t: &Table) -> Value {
    Value::Object(
        t.iter()
            .map(|(k, item)| (k.to_owned(), item_to_json(item)))
            .collect::<Map<String, Value>>(),
    )
}

fn item_to_json(item: &Item) -> Value {
    match item {
        Item::None => Value::Null,
        Item::Value(v) => value_to_json(v),
        Item::Table(t) => table_to_json(t),
        Item::ArrayOfTables(a) => Value::Array(a.iter().map(table_to_json).collect()),
    }
}

fn value_to_json(v: &toml_edit::Value) -> Value {
    use toml_edit::Value as V;
    match v {
        V::String(s) => Value::from(s.value().as_str()),
        V::Integer(i) => Value::from(*i.value()),
        V::Float(f) => Value::from(*f.value()),
        V::Boolean(b) => Value::from(*b.value()),
        V::Datetime(d) => Value::from(d.value().to_string()),
        V::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        V::InlineTable(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_owned(), value_to_json(v)))
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// Keys whose string values are TOML dates or datetimes in the configuration.
const DATE_KEYS: [&str; 3] = ["valid_from", "valid_until", "expires"];

/// Arrays of objects written as `[[parent.key]]` tables (the rest stay inline).
const TABLE_ARRAYS: [&str; 2] = ["instance", "endpoint"];

pub(crate) fn json_to_value(key: &str, v: &Value) -> Result<toml_edit::Value, StoreError> {
    use toml_edit::Value as V;
    Ok(match v {
        Value::Null => {
            return Err(StoreError::Invalid(format!(
                "`{key}`: null is not a value; leave the key out"
            )))
        }
        Value::Bool(b) => V::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => V::from(i),
            None => V::from(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) if DATE_KEYS.contains(&key) => match s.parse::<toml_edit::Datetime>() {
            Ok(d) => V::from(d),
            Err(_) => {
                return Err(StoreError::Invalid(format!(
                    "`{key}`: `{s}` is not a date such as 2026-12-31 or 2026-12-31T23:59:59+07:00"
                )))
            }
        },
        Value::String(s) => V::from(s.as_str()),
        Value::Array(a) => {
            let mut arr = toml_edit::Array::new();
            for x in a {
                arr.push(json_to_value(key, x)?);
            }
            V::Array(arr)
        }
        Value::Object(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, x) in o {
                t.insert(k, json_to_value(k, x)?);
            }
            V::InlineTable(t)
        }
    })
}

/// A JSON object as a TOML table for an `[[array]]` entry: nested objects become tables,
/// `instance` and `endpoint` lists become arrays of tables, everything else is a value.
pub fn json_to_table(v: &Value) -> Result<Table, StoreError> {
    let Value::Object(o) = v else {
        return Err(StoreError::Invalid("the body must be a JSON object".into()));
    };
    let mut t = Table::new();
    // Readable order: the id and the name first, then the rest as given.
    let first = ["id", "name", "title"];
    let ordered = first
        .iter()
        .filter_map(|k| o.get_key_value(*k))
        .chain(o.iter().filter(|(k, _)| !first.contains(&k.as_str())));
    for (k, x) in ordered {
        match x {
            Value::Object(_) => {
                t.insert(k, Item::Table(json_to_table(x)?));
            }
            Value::Array(a)
                if TABLE_ARRAYS.contains(&k.as_str()) && a.iter().all(Value::is_object) =>
            {
                let mut arr = ArrayOfTables::new();
                for item in a {
                    arr.push(json_to_table(item)?);
                }
                t.insert(k, Item::ArrayOfTables(arr));
            }
            _ => {
                t.insert(k, Item::Value(json_to_value(k, x)?));
            }
        }
    }
    Ok(t)
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, synced, renamed
/// over `path`, then the directory synced. `None` removes the file.
pub fn persist(path: &Path, text: Option<&str>) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    match text {
        Some(text) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
            {
                let mut f = std::fs::File::create(&tmp).map_err(io)?;
                // The new file keeps the old one's permissions (registry files hold secret
                // hashes; they must not become readable to more than before).
                if let Ok(meta) = std::fs::metadata(path) {
                    f.set_permissions(meta.permissions()).map_err(io)?;
                }
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            std::fs::rename(&tmp, path).map_err(io)?;
        }
        None => match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        },
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The ETag of a resource's JSON: a strong validator over its canonical text.
pub fn etag(v: &Value) -> String {
    let text = serde_json::to_vec(v).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &text);
    format!("\"{}\"", hex::encode(&digest.as_ref()[..12]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FILE: &str = r#"# Dinas Kependudukan (a comment that must survive)
[agency]
id = "dukcapil"
name = "Disdukcapil"

[[service]]
id = "penduduk"
name = "Penduduk"   # trailing comment

[[service.instance]]
name = "p-1"
url = "http://127.0.0.1:1"

[[service]]
id = "kk"
name = "Kartu keluarga"

[[service.instance]]
name = "k-1"
url = "http://127.0.0.1:2"
"#;

    #[test]
    fn entries_round_trip_and_edits_keep_the_rest_of_the_file() {
        let mut doc: DocumentMut = FILE.parse().unwrap();
        let kk = entry(&doc, "service", "kk").unwrap();
        assert_eq!(kk["instance"][0]["url"], "http://127.0.0.1:2");
        let mut changed = kk.clone();
        changed["name"] = "KK".into();
        changed["instance"][0]["weight"] = 3.into();
        put_entry(&mut doc, "service", "kk", &changed).unwrap();
        let text = doc.to_string();
        assert!(text.contains("# Dinas Kependudukan (a comment that must survive)"));
        assert!(text.contains("# trailing comment"));
        // Editing the entry keeps the comment on a key whose value stayed.
        let mut p = entry(&doc, "service", "penduduk").unwrap();
        p["instance"][0]["url"] = "http://127.0.0.1:9".into();
        put_entry(&mut doc, "service", "penduduk", &p).unwrap();
        let text = doc.to_string();
        assert!(
            text.contains("name = \"Penduduk\"   # trailing comment"),
            "{text}"
        );
        assert!(text.contains("url = \"http://127.0.0.1:9\""), "{text}");
        let reparsed: DocumentMut = text.parse().unwrap();
        assert_eq!(entry(&reparsed, "service", "kk").unwrap(), changed);
        assert_eq!(
            entry(&reparsed, "service", "penduduk").unwrap()["instance"][0]["name"],
            "p-1"
        );
        // Append, then remove.
        let mut new = changed.clone();
        new["id"] = "akta".into();
        put_entry(&mut doc, "service", "akta", &new).unwrap();
        assert_eq!(entries(&doc, "service").len(), 3);
        assert!(remove_entry(&mut doc, "service", "akta"));
        assert!(!remove_entry(&mut doc, "service", "akta"));
        assert_eq!(entries(&doc, "service").len(), 2);
    }

    #[test]
    fn dates_stay_dates_and_nulls_are_refused() {
        let v = serde_json::json!({"id": "a", "valid_from": "2026-01-01", "valid_until": "2026-12-31T23:59:59+07:00"});
        let t = json_to_table(&v).unwrap();
        assert!(t.get("valid_from").unwrap().as_datetime().is_some());
        assert_eq!(table_to_json(&t), v);
        assert!(json_to_table(&serde_json::json!({"valid_from": "soon"})).is_err());
        assert!(json_to_table(&serde_json::json!({"name": null})).is_err());
        assert!(json_to_table(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn persist_replaces_atomically_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        persist(&p, Some("x = 1\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            persist(&p, Some("x = 1\n")).unwrap();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "the old file's permissions are kept");
        }
        persist(&p, Some("x = 2\n")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x = 2\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        persist(&p, None).unwrap();
        assert!(!p.exists());
    }
}
