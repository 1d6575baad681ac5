//! The response field filter (`gerbang_policy::fields`) on any rules and any JSON, applied as the
//! gateway does (`serde_json::from_slice`, `FieldRules::apply`, `serde_json::to_vec`).
//!
//! Input: rule lines, an empty line, then the JSON document. Rule lines are `a PATH` (allow),
//! `d PATH` (deny) and `m FIRST LAST PATH` (mask, keeping FIRST and LAST characters).
//!
//! Invariants, checked on the output document with an independent path walker:
//! - nothing is left at a denied path;
//! - everything at a masked path is a string whose hidden characters are all `*` (a string
//!   too short to hide anything is all `*`): a masked original never shows;
//! - with an allow-list, every scalar left (other than the `null` that replaces a scalar where
//!   the list expects structure) lies on or under an allowed path;
//! - a scalar under an allowed path, and under no denied or masked path, keeps its value;
//! - filtering is idempotent, and the output serialises and parses back to the same document;
//! - the gateway's filter on the text (`FieldRules::filter_json`) gives the same document as
//!   `apply` on the parsed one, and refuses what does not parse, but for what it need not
//!   parse (a number out of range, nesting deeper than serde_json's limit, where no rule
//!   reaches);
//! - `FieldPath::parse` accepts exactly the paths of the documented syntax.
#![no_main]

use gerbang_policy::fields::{FieldPath, FieldRules, Mask};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Any,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The documented syntax: keys (no `.`, `[`, `]`, not empty) joined by `.`, `[*]` after a key
/// or at the start, any number of times.
fn reference_parse(text: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut rest = text;
    let mut need_key = false; // after a '.'
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[*]") {
            if need_key {
                return None;
            }
            steps.push(Step::Any);
            rest = r;
            continue;
        }
        if !steps.is_empty() && !need_key {
            // Between steps only '.' (before a key) or '[*]'.
            rest = rest.strip_prefix('.')?;
            need_key = true;
            continue;
        }
        let end = rest.find(['.', '[', ']']).unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        steps.push(Step::Key(rest[..end].to_owned()));
        rest = &rest[end..];
        need_key = false;
    }
    if need_key || steps.is_empty() {
        return None;
    }
    Some(steps)
}

/// Concrete paths and values in `v` that `steps` selects.
fn select<'a>(v: &'a Value, steps: &[Step], at: Vec<Seg>, out: &mut Vec<(Vec<Seg>, &'a Value)>) {
    let Some((first, rest)) = steps.split_first() else {
        out.push((at, v));
        return;
    };
    match (first, v) {
        (Step::Key(k), Value::Object(m)) => {
            if let Some(child) = m.get(k) {
                let mut p = at.clone();
                p.push(Seg::Key(k.clone()));
                select(child, rest, p, out);
            }
        }
        (Step::Any, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = at.clone();
                p.push(Seg::Index(i));
                select(item, rest, p, out);
            }
        }
        _ => {}
    }
}

/// Whether `steps` matches the start of `path` (`steps` no longer than `path`).
fn covers(steps: &[Step], path: &[Seg]) -> bool {
    steps.len() <= path.len()
        && steps.iter().zip(path).all(|(s, p)| match (s, p) {
            (Step::Key(a), Seg::Key(b)) => a == b,
            (Step::Any, Seg::Index(_)) => true,
            _ => false,
        })
}

/// Whether `path` matches the start of `steps` (the path lies on the way to what it selects).
fn on_the_way(path: &[Seg], steps: &[Step]) -> bool {
    path.len() < steps.len() && covers(&steps[..path.len()], path)
}

/// Every leaf (scalar, or empty array or object) with its concrete path.
fn leaves<'a>(v: &'a Value, at: Vec<Seg>, out: &mut Vec<(Vec<Seg>, &'a Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = at.clone();
                p.push(Seg::Key(k.clone()));
                leaves(child, p, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, child) in items.iter().enumerate() {
                let mut p = at.clone();
                p.push(Seg::Index(i));
                leaves(child, p, out);
            }
        }
        _ => out.push((at, v)),
    }
}

fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, s| match (s, v) {
        (Seg::Key(k), Value::Object(m)) => m.get(k),
        (Seg::Index(i), Value::Array(a)) => a.get(*i),
        _ => None,
    })
}

fn is_masked(s: &str, first: usize, last: usize) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    if n == 0 {
        return false; // an empty string masks as "*"
    }
    if n <= first + last {
        return chars.iter().all(|&c| c == '*');
    }
    chars[first..n - last].iter().all(|&c| c == '*')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rule_text, json) = text.split_once("\n\n").unwrap_or(("", text));
    let mut rules = FieldRules::default();
    // (kind, reference steps, first, last)
    let mut model: Vec<(char, Vec<Step>, usize, usize)> = Vec::new();
    for line in rule_text.lines().take(16) {
        let (kind, rest) = match line.get(..2) {
            Some(k) => (k, &line[2..]),
            None => continue,
        };
        let (kind, first, last, path_text) = match kind {
            "a " => ('a', 0, 0, rest),
            "d " => ('d', 0, 0, rest),
            "m " => {
                let mut it = rest.splitn(3, ' ');
                let (Some(f), Some(l), Some(p)) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                let (Ok(f), Ok(l)) = (f.parse::<u8>(), l.parse::<u8>()) else {
                    continue;
                };
                ('m', usize::from(f), usize::from(l), p)
            }
            _ => continue,
        };
        let parsed = FieldPath::parse(path_text);
        let reference = reference_parse(path_text);
        assert_eq!(
            parsed.is_ok(),
            reference.is_some(),
            "FieldPath::parse({path_text:?}) = {parsed:?}"
        );
        let (Ok(path), Some(steps)) = (parsed, reference) else {
            continue;
        };
        assert_eq!(path.as_str(), path_text);
        match kind {
            'a' => rules.allow.push(path),
            'd' => rules.deny.push(path),
            _ => rules.mask.push(Mask {
                path,
                keep_first: first,
                keep_last: last,
            }),
        }
        model.push((kind, steps, first, last));
    }
    let mut text_out = Vec::new();
    let text_filtered = rules.filter_json(json.as_bytes(), &mut text_out);
    let input = match serde_json::from_slice::<Value>(json.as_bytes()) {
        Ok(v) => v,
        Err(e) => {
            let why = e.to_string();
            assert!(
                text_filtered.is_err()
                    || why.contains("out of range")
                    || why.contains("recursion limit"),
                "filter_json accepted what does not parse ({why})"
            );
            return;
        }
    };
    assert!(
        text_filtered.is_ok(),
        "filter_json refused JSON: {text_filtered:?}"
    );
    let mut doc = input.clone();
    rules.apply(&mut doc);
    let from_text: Value = serde_json::from_slice(&text_out).expect("filter_json wrote JSON");
    assert_eq!(from_text, doc, "filter_json differs from apply");
    let bytes = serde_json::to_vec(&doc).unwrap();
    let reparsed: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(reparsed, doc, "the output does not parse back to itself");

    for (kind, steps, first, last) in &model {
        let mut found = Vec::new();
        select(&doc, steps, Vec::new(), &mut found);
        match kind {
            'd' => assert!(found.is_empty(), "denied {steps:?} still in {doc}"),
            'm' => {
                for (p, v) in found {
                    match v {
                        Value::String(s) => assert!(
                            is_masked(s, *first, *last),
                            "{p:?} = {s:?} not masked ({first}, {last}) in {doc}"
                        ),
                        other => panic!("masked {p:?} is {other} in {doc}"),
                    }
                }
            }
            _ => {}
        }
    }

    let allows: Vec<&Vec<Step>> = model.iter().filter(|r| r.0 == 'a').map(|r| &r.1).collect();
    let mut out_leaves = Vec::new();
    leaves(&doc, Vec::new(), &mut out_leaves);
    if !allows.is_empty() {
        for (p, v) in &out_leaves {
            let under = allows.iter().any(|a| covers(a, p));
            let placeholder = matches!(v, Value::Null)
                || v.as_array().is_some_and(|a| a.is_empty())
                || v.as_object().is_some_and(|o| o.is_empty());
            let way = allows.iter().any(|a| on_the_way(p, a));
            assert!(
                under || (placeholder && way),
                "{p:?} = {v} is outside the allow-list in {doc}"
            );
        }
    }

    let mut in_leaves = Vec::new();
    leaves(&input, Vec::new(), &mut in_leaves);
    for (p, v) in &in_leaves {
        let allowed = allows.is_empty() || allows.iter().any(|a| covers(a, p));
        let touched = model
            .iter()
            .any(|(k, steps, _, _)| *k != 'a' && covers(steps, p));
        if allowed && !touched {
            assert_eq!(get(&doc, p), Some(*v), "{p:?} lost or changed in {doc}");
        }
    }

    let mut twice = doc.clone();
    rules.apply(&mut twice);
    assert_eq!(twice, doc, "filtering is not idempotent");
});
