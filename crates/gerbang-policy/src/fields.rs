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
//!
//! Two implementations of the same rules: [`FieldRules::apply`] on a parsed document (the
//! reference), and [`FieldRules::filter_json`] on the JSON text, which the gateway uses: it
//! parses only the objects and arrays that some rule reaches and copies everything else as the
//! provider wrote it. A differential property test holds the two to the same result.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;

use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
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

impl FieldRules {
    /// Applies the rules to the JSON text `input`, appending the result to `out`; the same
    /// result as [`FieldRules::apply`] on the parsed document (compared as JSON values).
    ///
    /// Only the objects and arrays that a rule reaches are parsed; every other value is copied
    /// as the provider wrote it (its numbers exactly, its whitespace and escapes as they were,
    /// its object keys in their order). The whole input is still checked to be one JSON value:
    /// an error means it is not, and nothing of `out` may be used. Unlike parsing into a
    /// [`Value`], a value no rule reaches is not checked for number range or nesting depth
    /// (nor reduced to the last value of a repeated key). An object that a rule reaches and
    /// that repeats a key is filtered as the reference does it, on the parsed document (with
    /// the last value of the key).
    pub fn filter_json(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let text = std::str::from_utf8(input)
            .map_err(|e| <serde_json::Error as de::Error>::custom(format!("not UTF-8: {e}")))?;
        let here = Here {
            allow: (!self.allow.is_empty())
                .then(|| self.allow.iter().map(|p| p.steps.as_slice()).collect()),
            deny: self.deny.iter().map(|p| p.steps.as_slice()).collect(),
            mask: self
                .mask
                .iter()
                .map(|m| (m.path.steps.as_slice(), m.keep_first, m.keep_last))
                .collect(),
        };
        let start = out.len();
        let repeated = Cell::new(false);
        match filter_text(text, &here, out, &repeated) {
            // An object that a rule reaches repeats a key. A parser keeps one of its values
            // (serde_json the last, others the first), so the document is filtered as the
            // reference does: parsed, with the last value of each key.
            Err(_) if repeated.get() => {
                out.truncate(start);
                let mut doc: Value = serde_json::from_str(text)?;
                self.apply(&mut doc);
                serde_json::to_writer(&mut *out, &doc)
            }
            result => result,
        }
    }
}

/// The rules that reach one place of a document, as the rest of each path from there.
struct Here<'r> {
    /// `None`: no allow-list applies here (there is none, or an allowed path ended above).
    allow: Option<Vec<&'r [Step]>>,
    deny: Vec<&'r [Step]>,
    mask: Vec<(&'r [Step], usize, usize)>,
}

/// What becomes of an object's member or an array's elements.
enum Child<'r> {
    Drop,
    /// Masked by these rules in order; `restricted`: an allow-list continues below it, so the
    /// reference turns it into `null` or filters it as structure first, and the mask drops it.
    Masked {
        masks: Vec<(usize, usize)>,
        restricted: bool,
    },
    Nested(Here<'r>),
}

impl<'r> Here<'r> {
    fn passes(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty() && self.mask.is_empty()
    }

    /// The rules below the step `step` matches (a key, or any element of an array).
    fn child(&self, step: impl Fn(&Step) -> bool) -> Child<'r> {
        let below = |paths: &[&'r [Step]]| -> Vec<&'r [Step]> {
            paths
                .iter()
                .filter_map(|&p: &&'r [Step]| match p.split_first() {
                    Some((first, rest)) if step(first) => Some(rest),
                    _ => None,
                })
                .collect()
        };
        let allow = match &self.allow {
            None => None,
            Some(paths) => {
                let next = below(paths);
                if next.is_empty() {
                    return Child::Drop;
                }
                // A path that ends here keeps the whole value.
                (!next.iter().any(|p| p.is_empty())).then_some(next)
            }
        };
        let deny = below(&self.deny);
        if deny.iter().any(|p| p.is_empty()) {
            return Child::Drop;
        }
        let mut masks = Vec::new();
        let mut mask = Vec::new();
        for &(p, first, last) in &self.mask {
            match p.split_first() {
                Some((s, rest)) if step(s) => {
                    if rest.is_empty() {
                        masks.push((first, last));
                    } else {
                        mask.push((rest, first, last));
                    }
                }
                _ => {}
            }
        }
        if !masks.is_empty() {
            return Child::Masked {
                masks,
                restricted: allow.is_some(),
            };
        }
        Child::Nested(Here { allow, deny, mask })
    }
}

/// Filters the one JSON value in `text` (whitespace around it allowed) by `here` into `out`.
/// `repeated` is set when an object that a rule reaches repeats a key (the error is then not
/// about the text being JSON).
fn filter_text(
    text: &str,
    here: &Here<'_>,
    out: &mut Vec<u8>,
    repeated: &Cell<bool>,
) -> Result<(), serde_json::Error> {
    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let mut de = serde_json::Deserializer::from_str(text);
    let walk = Walk {
        here,
        out,
        repeated,
    };
    match first {
        Some(b'{') if !here.passes() => de.deserialize_map(walk)?,
        Some(b'[') if !here.passes() => de.deserialize_seq(walk)?,
        _ => {
            let raw: &RawValue = serde::Deserialize::deserialize(&mut de)?;
            filter_raw(raw, here, walk.out, repeated)?;
        }
    }
    de.end()
}

/// Filters a value already read (and so already known to be JSON) by `here`: parsed again
/// only when it is an object or array that a rule reaches.
fn filter_raw(
    raw: &RawValue,
    here: &Here<'_>,
    out: &mut Vec<u8>,
    repeated: &Cell<bool>,
) -> Result<(), serde_json::Error> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{' | b'[') if !here.passes() => return filter_text(text, here, out, repeated),
        Some(b'{' | b'[') => {}
        // A scalar where the allow-list expects more structure: not allowed.
        _ if here.allow.is_some() => {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        _ => {}
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// The masked text of a string or number, `None` for any other value (dropped).
fn masked(raw: &RawValue, masks: &[(usize, usize)]) -> Result<Option<String>, serde_json::Error> {
    let text = raw.get();
    let mut s = match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text)?,
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<serde_json::Number>(text)?.to_string(),
        _ => return Ok(None),
    };
    for &(first, last) in masks {
        s = mask_text(&s, first, last);
    }
    Ok(Some(s))
}

fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, s)
}

/// The comma before every member or element but the first.
fn separator(out: &mut Vec<u8>, any: &mut bool) {
    if std::mem::replace(any, true) {
        out.push(b',');
    }
}

/// Starts an object member: the separator, the key and the colon. `had_escapes`: the key was
/// decoded from escape sequences; one that had none holds nothing that needs escaping (a JSON
/// string cannot), so it is written as it was read.
fn member(
    out: &mut Vec<u8>,
    any: &mut bool,
    key: &str,
    had_escapes: bool,
) -> Result<(), serde_json::Error> {
    separator(out, any);
    if had_escapes {
        write_str(out, key)?;
    } else {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.push(b'"');
    }
    out.push(b':');
    Ok(())
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(Key)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The keys of one object seen so far: a short list, a set once the object is large.
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> SeenKeys<'de> {
    /// Whether `key` was seen before; remembers it.
    fn repeats(&mut self, key: Cow<'de, str>) -> bool {
        const FEW: usize = 32;
        if self.many.is_empty() {
            if self.few.contains(&key) {
                return true;
            }
            self.few.push(key);
            if self.few.len() > FEW {
                self.many.extend(self.few.drain(..));
            }
            false
        } else {
            !self.many.insert(key)
        }
    }
}

/// Walks an object or array that a rule reaches, writing what the rules leave of it.
struct Walk<'a, 'r> {
    here: &'a Here<'r>,
    out: &'a mut Vec<u8>,
    repeated: &'a Cell<bool>,
}

impl Walk<'_, '_> {
    /// What becomes of one member or element: nothing, its masked text, or it filtered
    /// further. `start` writes what comes before it (separator, key) when something is kept.
    fn child(
        &mut self,
        child: &Child<'_>,
        raw: &RawValue,
        start: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
    ) -> Result<(), serde_json::Error> {
        match child {
            Child::Drop
            | Child::Masked {
                restricted: true, ..
            } => {}
            Child::Masked { masks, .. } => {
                if let Some(m) = masked(raw, masks)? {
                    start(self.out)?;
                    write_str(self.out, &m)?;
                }
            }
            Child::Nested(below) => {
                start(self.out)?;
                filter_raw(raw, below, self.out, self.repeated)?;
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object or array")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut any = false;
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            if seen.repeats(key.clone()) {
                self.repeated.set(true);
                return Err(de::Error::custom("an object repeats a key"));
            }
            let raw: &'de RawValue = map.next_value()?;
            let child = self.here.child(|s| matches!(s, Step::Key(k) if *k == key));
            self.child(&child, raw, |out| {
                member(out, &mut any, &key, matches!(key, Cow::Owned(_)))
            })
            .map_err(de::Error::custom)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let child = self.here.child(|s| matches!(s, Step::AnyIndex));
        self.out.push(b'[');
        let mut any = false;
        // Every element is read, also those dropped: the rest of the input must be JSON too.
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            self.child(&child, raw, |out| {
                separator(out, &mut any);
                Ok(())
            })
            .map_err(de::Error::custom)?;
        }
        self.out.push(b']');
        Ok(())
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
