//! Response field rules of an agreement, applied to a JSON document:
//!
//! - **allow-list**: when not empty, only these paths (and everything below them) are kept;
//! - **deny-list**: these paths are dropped;
//! - **mask**: strings at these paths keep their first `keep_first` and last `keep_last`
//!   characters, every other character becomes `*`; numbers are masked as their decimal text;
//!   a value too short to hide anything is masked whole; an object, array, boolean or null at
//!   a masked path is dropped (nothing of it can be shown safely).
//!
//! Paths are dotted keys with array wildcards: `nik`, `alamat.rt`, `data[*].nik`, `[*].nama`
//! (an array at the top). Order: allow-list, then deny, then mask — a field that is both
//! allowed and denied is dropped.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    AnyIndex,
}

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    steps: Vec<Step>,
    text: String,
}

/// Why a field path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a field path (keys joined by '.', `[*]` for every array element)")]
pub struct FieldPathError(pub String);

impl FieldPath {
    pub fn parse(text: &str) -> Result<Self, FieldPathError> {
        let err = || FieldPathError(text.to_owned());
        let mut steps = Vec::new();
        let mut rest = text;
        if rest.is_empty() {
            return Err(err());
        }
        loop {
            if let Some(r) = rest.strip_prefix("[*]") {
                steps.push(Step::AnyIndex);
                rest = r;
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                let key = &rest[..end];
                if key.is_empty() || key.contains(']') {
                    return Err(err());
                }
                steps.push(Step::Key(key.to_owned()));
                rest = &rest[end..];
            }
            if rest.is_empty() {
                break;
            }
            if let Some(r) = rest.strip_prefix('.') {
                if r.is_empty() || r.starts_with('[') {
                    return Err(err());
                }
                rest = r;
            } else if !rest.starts_with("[*]") {
                return Err(err());
            }
        }
        Ok(Self {
            steps,
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A masking rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub path: FieldPath,
    pub keep_first: usize,
    pub keep_last: usize,
}

/// The field rules of one agreement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldRules {
    pub allow: Vec<FieldPath>,
    pub deny: Vec<FieldPath>,
    pub mask: Vec<Mask>,
}

impl FieldRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.mask.is_empty()
    }

    /// Applies the rules to `doc` in place.
    pub fn apply(&self, doc: &mut Value) {
        if !self.allow.is_empty() {
            let paths: Vec<&[Step]> = self.allow.iter().map(|p| p.steps.as_slice()).collect();
            keep_only(doc, &paths);
        }
        for p in &self.deny {
            drop_path(doc, &p.steps);
        }
        for m in &self.mask {
            mask_path(doc, &m.path.steps, m.keep_first, m.keep_last);
        }
    }
}

/// Keeps only what lies on or under one of `paths`. An object keeps the keys that some path
/// continues through; an array applies the paths that continue with `[*]` to each element.
fn keep_only(v: &mut Value, paths: &[&[Step]]) {
    // A path that ends here keeps the whole value.
    if paths.iter().any(|p| p.is_empty()) {
        return;
    }
    match v {
        Value::Object(map) => {
            let old = std::mem::take(map);
            let mut kept = Map::new();
            for (k, mut child) in old {
                let next: Vec<&[Step]> = paths
                    .iter()
                    .filter_map(|p| match p.split_first() {
                        Some((Step::Key(key), rest)) if *key == k => Some(rest),
                        _ => None,
                    })
                    .collect();
                if next.is_empty() {
                    continue;
                }
                keep_only(&mut child, &next);
                kept.insert(k, child);
            }
            *map = kept;
        }
        Value::Array(items) => {
            let next: Vec<&[Step]> = paths
                .iter()
                .filter_map(|p| match p.split_first() {
                    Some((Step::AnyIndex, rest)) => Some(rest),
                    _ => None,
                })
                .collect();
            if next.is_empty() {
                items.clear();
                return;
            }
            for item in items.iter_mut() {
                keep_only(item, &next);
            }
        }
        // A scalar where the allow-list expects more structure: not allowed.
        other => *other = Value::Null,
    }
}

fn drop_path(v: &mut Value, steps: &[Step]) {
    let Some((first, rest)) = steps.split_first() else {
        return;
    };
    match (first, v) {
        (Step::Key(k), Value::Object(map)) => {
            if rest.is_empty() {
                map.remove(k);
            } else if let Some(child) = map.get_mut(k) {
                drop_path(child, rest);
            }
        }
        (Step::AnyIndex, Value::Array(items)) => {
            if rest.is_empty() {
                items.clear();
            } else {
                for item in items.iter_mut() {
                    drop_path(item, rest);
                }
            }
        }
        _ => {}
    }
}

fn mask_path(v: &mut Value, steps: &[Step], first: usize, last: usize) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    match (step, v) {
        (Step::Key(k), Value::Object(map)) => {
            if rest.is_empty() {
                let replace = match map.get(k) {
                    None => return,
                    Some(Value::String(s)) => Some(mask_text(s, first, last)),
                    Some(Value::Number(n)) => Some(mask_text(&n.to_string(), first, last)),
                    Some(_) => None,
                };
                match replace {
                    Some(masked) => {
                        map.insert(k.clone(), Value::String(masked));
                    }
                    None => {
                        map.remove(k);
                    }
                }
            } else if let Some(child) = map.get_mut(k) {
                mask_path(child, rest, first, last);
            }
        }
        (Step::AnyIndex, Value::Array(items)) => {
            if rest.is_empty() {
                let old = std::mem::take(items);
                for item in old {
                    match item {
                        Value::String(s) => items.push(Value::String(mask_text(&s, first, last))),
                        Value::Number(n) => {
                            items.push(Value::String(mask_text(&n.to_string(), first, last)))
                        }
                        _ => {}
                    }
                }
            } else {
                for item in items.iter_mut() {
                    mask_path(item, rest, first, last);
                }
            }
        }
        _ => {}
    }
}

/// `s` with all but its first `first` and last `last` characters replaced by `*`; a string of
/// `first + last` characters or fewer is masked whole (showing it would show everything).
pub fn mask_text(s: &str, first: usize, last: usize) -> String {
    let n = s.chars().count();
    if n <= first + last {
        return "*".repeat(n.max(1));
    }
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < first || i >= n - last { c } else { '*' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(allow: &[&str], deny: &[&str], mask: &[(&str, usize, usize)]) -> FieldRules {
        FieldRules {
            allow: allow.iter().map(|p| FieldPath::parse(p).unwrap()).collect(),
            deny: deny.iter().map(|p| FieldPath::parse(p).unwrap()).collect(),
            mask: mask
                .iter()
                .map(|(p, f, l)| Mask {
                    path: FieldPath::parse(p).unwrap(),
                    keep_first: *f,
                    keep_last: *l,
                })
                .collect(),
        }
    }

    #[test]
    fn demo_rules() {
        let mut doc = json!({
            "nik": "3603015505900001", "nama": "Siti", "status_perkawinan": "KAWIN",
            "alamat": {"jalan": "Jl. Melati", "rt": "001"}
        });
        rules(&[], &["status_perkawinan"], &[("nik", 6, 4)]).apply(&mut doc);
        assert_eq!(
            doc,
            json!({"nik": "360301******0001", "nama": "Siti", "alamat": {"jalan": "Jl. Melati", "rt": "001"}})
        );
        let mut doc =
            json!({"nik": "1", "nama": "A", "alamat": {"rt": "1"}, "agama": "x", "data": [1]});
        rules(&["nik", "nama", "alamat"], &[], &[]).apply(&mut doc);
        assert_eq!(doc, json!({"nik": "1", "nama": "A", "alamat": {"rt": "1"}}));
    }

    /// Found by fuzz/field_filter: without serde_json's `float_roundtrip`, this decimal was
    /// parsed one unit in the last place off, so a filtered response carried another number
    /// than the provider sent (and the gateway's output did not parse back to what it wrote).
    #[test]
    fn numbers_survive_filtering_exactly() {
        for text in [
            "949.999999998999998",
            "0.30000000000000004",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "-0.0",
            "18446744073709551615",
            "-9223372036854775808",
        ] {
            let doc: Value = serde_json::from_str(&format!("{{\"a\": {text}, \"b\": 1}}")).unwrap();
            let mut filtered = doc.clone();
            rules(&[], &["b"], &[]).apply(&mut filtered);
            let out = serde_json::to_vec(&filtered).unwrap();
            let back: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(back["a"], doc["a"], "{text}");
            let exact: f64 = text.parse().unwrap();
            assert_eq!(back["a"].as_f64(), Some(exact), "{text}");
        }
    }

    #[test]
    fn arrays_nesting_and_odd_values() {
        let mut doc = json!({"data": [
            {"nik": "3603015505900001", "x": {"nik": "keep"}},
            {"nik": 3603015505900002u64},
            {"nik": {"nested": "secret"}},
            {"other": 1}
        ]});
        rules(&[], &[], &[("data[*].nik", 2, 2)]).apply(&mut doc);
        assert_eq!(
            doc,
            json!({"data": [
                {"nik": "36************01", "x": {"nik": "keep"}},
                {"nik": "36************02"},
                {},
                {"other": 1}
            ]})
        );
        let mut doc = json!([{"nama": "A", "nik": "1"}, {"nama": "B"}]);
        rules(&["[*].nama"], &[], &[]).apply(&mut doc);
        assert_eq!(doc, json!([{"nama": "A"}, {"nama": "B"}]));
        // Allowed and denied: dropped.
        let mut doc = json!({"a": 1, "b": 2});
        rules(&["a", "b"], &["b"], &[]).apply(&mut doc);
        assert_eq!(doc, json!({"a": 1}));
        // An allow-list path through a scalar does not leak the scalar.
        let mut doc = json!({"a": "secret"});
        rules(&["a.b"], &[], &[]).apply(&mut doc);
        assert_eq!(doc, json!({"a": null}));
        assert_eq!(mask_text("abc", 2, 2), "***");
        assert_eq!(mask_text("", 0, 0), "*");
        assert_eq!(mask_text("ÀÉÎÕÜxyz", 1, 1), "À******z");
    }

    #[test]
    fn path_syntax() {
        for ok in ["nik", "a.b.c", "data[*].nik", "[*].x", "a[*][*].b", "[*]"] {
            assert!(FieldPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a[0]", "a[*]b", "a.[*]", "a]"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }
}
