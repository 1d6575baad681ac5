use super::*;

#[test]
fn masks_a_nik() {
    assert_eq!(mask("3201010101010001"), "32************01");
    assert_eq!(mask("123"), "***");
}

#[test]
fn problems_map_to_fields() {
    assert_eq!(
        problem_field("line 12: agreement pks-1: valid_until"),
        Some("valid_until")
    );
    assert_eq!(
        problem_field("agreement[0].rate_limit.per"),
        Some("rate_limit")
    );
    assert_eq!(problem_field("line 3"), None);
    assert_eq!(problem_field("service"), None);
}

#[test]
fn toml_fields() {
    assert_eq!(
        toml_value(r#"{ limit = 10, per = "second" }"#).unwrap(),
        json!({ "limit": 10, "per": "second" })
    );
    assert_eq!(
        toml_value("deny = [\"a\"]\nmask = []").unwrap(),
        json!({ "deny": ["a"], "mask": [] })
    );
    assert!(toml_value("{ limit = ").is_err());
    let v = json!({ "limit": 10, "per": "second" });
    assert_eq!(toml_value(&json_to_toml_inline(&v)).unwrap(), v);
}

#[test]
fn the_form_replaces_the_fields() {
    let current = json!({ "id": "a", "service": "x/y", "title": "T", "purposes": ["p"] });
    let mut values: BTreeMap<String, String> = AGREEMENT_FIELDS
        .iter()
        .map(|d| (d.name.to_owned(), String::new()))
        .collect();
    values.insert("title".into(), "New".into());
    values.insert("consumers".into(), "a/b\nc, d".into());
    values.insert("quota".into(), "{ limit = ".into());
    let errs = agreement_from_form(&current, &values).unwrap_err();
    assert_eq!(errs[0].0, "quota");
    values.insert("quota".into(), "{ limit = 5, per = \"day\" }".into());
    let v = agreement_from_form(&current, &values).unwrap();
    assert_eq!(v["title"], "New");
    assert_eq!(v["consumers"], json!(["a/b", "c", "d"]));
    assert_eq!(v["service"], "x/y");
    assert!(v.get("purposes").is_none());
}

#[test]
fn every_template_parses() {
    let mut env = minijinja::Environment::new();
    for (name, text) in TEMPLATES {
        env.add_template(name, text)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    let t = env.get_template("masuk.html").unwrap();
    t.render(minijinja::Value::from_serialize(
        json!({ "t": Lang::Id.words(), "lang": "id", "title": "x" }),
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
}
