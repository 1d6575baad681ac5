#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::limits::{period_of, LimitOutcome, Limits, MemoryQuotaStore};
use crate::*;

const NOW: i64 = 1_795_000_000; // 2026-11-18T11:06:40Z
const DAY: i64 = 86_400;

fn ep(method: &str, t: &str, c: Classification, subject: Option<&str>) -> Endpoint {
    Endpoint::new(
        method,
        PathTemplate::parse(t).unwrap(),
        c,
        subject.map(str::to_owned),
    )
}

fn agreement(id: &str, service: &str, consumers: &[&str]) -> Agreement {
    Agreement {
        id: id.into(),
        title: id.into(),
        legal_basis: format!("PKS/{id}"),
        service: service.into(),
        consumers: consumers.iter().map(|c| Consumer::parse(c)).collect(),
        endpoints: vec![],
        methods: vec![],
        purposes: vec![],
        valid_from: None,
        valid_until: None,
        suspended: false,
        max_classification: Classification::Rahasia,
        rate: None,
        quota: None,
        fields: FieldRules::default(),
    }
}

fn fixture() -> PolicySet {
    use Classification::*;
    let mut services = HashMap::new();
    services.insert(
        "dukcapil/penduduk".to_owned(),
        ServicePolicy {
            endpoints: vec![
                ep("GET", "/penduduk/{nik}", Rahasia, Some("nik")),
                ep("GET", "/penduduk/{nik}/keluarga", Rahasia, Some("nik")),
                ep("POST", "/penduduk", Rahasia, None),
                ep("GET", "/penduduk/baru", Terbatas, None),
                ep("GET", "/statistik", Terbuka, None),
            ],
            classification: Rahasia,
            path_matching: PathMatching::Exact,
        },
    );
    services.insert(
        "dinkes/faskes".to_owned(),
        ServicePolicy {
            endpoints: vec![
                ep("GET", "/faskes", Terbuka, None),
                ep("GET", "/faskes/{id}", Terbuka, None),
            ],
            classification: Terbuka,
            path_matching: PathMatching::Exact,
        },
    );
    services.insert(
        "diskominfo/echo".to_owned(),
        ServicePolicy {
            endpoints: vec![],
            classification: Terbuka,
            path_matching: PathMatching::Exact,
        },
    );
    services.insert(
        "bapenda/pbb".to_owned(),
        ServicePolicy {
            endpoints: vec![ep("GET", "/pbb/{nop}", Terbatas, None)],
            classification: Terbatas,
            path_matching: PathMatching::Exact,
        },
    );
    let penduduk = "dukcapil/penduduk";
    let nik_ep = "GET /penduduk/{nik}".to_owned();
    let agreements = vec![
        Agreement {
            endpoints: vec![nik_ep.clone()],
            purposes: vec!["pelayanan-kesehatan".into()],
            ..agreement("pks-simpus", penduduk, &["dinkes/simpus"])
        },
        Agreement {
            endpoints: vec![nik_ep.clone()],
            purposes: vec!["penetapan-pajak".into()],
            ..agreement("pks-esppt", penduduk, &["bapenda/esppt"])
        },
        Agreement {
            methods: vec!["GET".into()],
            max_classification: Classification::Terbuka,
            ..agreement("public-faskes", "dinkes/faskes", &["*"])
        },
        Agreement {
            rate: Some(RateSpec {
                limit: 10,
                per: RatePeriod::Second,
                burst: 30,
            }),
            ..agreement("echo-all", "diskominfo/echo", &["*"])
        },
        Agreement {
            endpoints: vec!["GET /statistik".into()],
            max_classification: Classification::Terbuka,
            ..agreement("pks-dinkes-stat", penduduk, &["dinkes"])
        },
        Agreement {
            suspended: true,
            ..agreement("pks-siak-pbb", "bapenda/pbb", &["dukcapil/siak"])
        },
        Agreement {
            valid_from: Some(NOW + DAY),
            ..agreement("pks-simpus-pbb", "bapenda/pbb", &["dinkes/simpus"])
        },
        Agreement {
            valid_until: Some(NOW - DAY),
            ..agreement("pks-esppt-pbb", "bapenda/pbb", &["bapenda/esppt"])
        },
        Agreement {
            max_classification: Classification::Terbatas,
            endpoints: vec![nik_ep.clone()],
            ..agreement("pks-portal", penduduk, &["diskominfo/portal"])
        },
        Agreement {
            endpoints: vec!["GET /penduduk/{nik}/keluarga".into()],
            ..agreement("pks-siak-keluarga", penduduk, &["dukcapil/siak"])
        },
        Agreement {
            methods: vec!["HEAD".into()],
            ..agreement("pks-dinkes-pbb", "bapenda/pbb", &["dinkes"])
        },
        Agreement {
            quota: Some(QuotaSpec {
                limit: 2,
                per: QuotaPeriod::Day,
            }),
            ..agreement("pks-lab-faskes", "dinkes/faskes", &["dinkes/lab"])
        },
        // Names both the application and its agency: tried once.
        Agreement {
            endpoints: vec!["GET /penduduk/baru".into()],
            max_classification: Classification::Terbatas,
            ..agreement("pks-both", penduduk, &["dinkes/lab", "dinkes"])
        },
    ];
    PolicySet::new(services, agreements)
}

struct Case {
    app: &'static str,
    service: &'static str,
    method: &'static str,
    path: &'static str,
    purpose: Option<&'static str>,
    now: i64,
    want: Result<&'static str, (Reason, Option<&'static str>)>,
}

fn c(
    app: &'static str,
    service: &'static str,
    method: &'static str,
    path: &'static str,
    purpose: Option<&'static str>,
    want: Result<&'static str, (Reason, Option<&'static str>)>,
) -> Case {
    Case {
        app,
        service,
        method,
        path,
        purpose,
        now: NOW,
        want,
    }
}

#[test]
fn decision_table() {
    use Reason::*;
    let set = fixture();
    let pen = "dukcapil/penduduk";
    let nik = "/penduduk/3603015505900001";
    let kes = Some("pelayanan-kesehatan");
    let pajak = Some("penetapan-pajak");
    let cases = vec![
        // The demo agreements.
        c("dinkes/simpus", pen, "GET", nik, kes, Ok("pks-simpus")),
        // Methods are case-sensitive (RFC 9110): `get` is not `GET`.
        c(
            "dinkes/simpus",
            pen,
            "get",
            nik,
            kes,
            Err((MethodNotAllowed, None)),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            nik,
            None,
            Err((PurposeMissing, Some("pks-simpus"))),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            nik,
            pajak,
            Err((PurposeNotAllowed, Some("pks-simpus"))),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            nik,
            Some("Pelayanan-Kesehatan"),
            Err((PurposeNotAllowed, Some("pks-simpus"))),
        ),
        c("bapenda/esppt", pen, "GET", nik, pajak, Ok("pks-esppt")),
        c(
            "bapenda/esppt",
            pen,
            "GET",
            nik,
            kes,
            Err((PurposeNotAllowed, Some("pks-esppt"))),
        ),
        c(
            "diskominfo/portal",
            pen,
            "GET",
            nik,
            None,
            Err((ClassificationExceeded, Some("pks-portal"))),
        ),
        c(
            "diskominfo/portal",
            pen,
            "GET",
            "/statistik",
            None,
            Err((EndpointNotCovered, Some("pks-portal"))),
        ),
        c(
            "dukcapil/siak",
            "dinkes/faskes",
            "GET",
            "/faskes",
            None,
            Ok("public-faskes"),
        ),
        c(
            "dinkes/simpus",
            "dinkes/faskes",
            "GET",
            "/faskes/12",
            None,
            Ok("public-faskes"),
        ),
        c(
            "dinkes/simpus",
            "dinkes/faskes",
            "POST",
            "/faskes",
            None,
            Err((MethodNotAllowed, None)),
        ),
        c(
            "dinkes/simpus",
            "dinkes/faskes",
            "GET",
            "/faskes/12/x",
            None,
            Err((EndpointNotDeclared, None)),
        ),
        c(
            "dinkes/simpus",
            "diskominfo/echo",
            "DELETE",
            "/apa/saja",
            None,
            Ok("echo-all"),
        ),
        c("x/y", "diskominfo/echo", "GET", "/", None, Ok("echo-all")),
        // Endpoint matching.
        c(
            "dinkes/simpus",
            pen,
            "GET",
            "/penduduk",
            kes,
            Err((MethodNotAllowed, None)),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            "/penduduk/",
            kes,
            Err((EndpointNotDeclared, None)),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            "/Penduduk/3603015505900001",
            kes,
            Err((EndpointNotDeclared, None)),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            "/penduduk/3603015505900001/x",
            kes,
            Err((EndpointNotDeclared, None)),
        ),
        c(
            "dinkes/simpus",
            pen,
            "DELETE",
            nik,
            kes,
            Err((MethodNotAllowed, None)),
        ),
        c(
            "dinkes/simpus",
            pen,
            "POST",
            "/penduduk",
            kes,
            Err((EndpointNotCovered, Some("pks-simpus"))),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            "/penduduk/3603015505900001/keluarga",
            kes,
            Err((EndpointNotCovered, Some("pks-simpus"))),
        ),
        // The most specific template wins: /penduduk/baru is its own endpoint.
        c(
            "dinkes/lab",
            pen,
            "GET",
            "/penduduk/baru",
            None,
            Ok("pks-both"),
        ),
        c(
            "dinkes/simpus",
            pen,
            "GET",
            "/penduduk/baru",
            kes,
            Ok("pks-both"),
        ),
        // Agency tier.
        c(
            "dinkes/simpus",
            pen,
            "GET",
            "/statistik",
            None,
            Ok("pks-dinkes-stat"),
        ),
        c(
            "dinkes/lab",
            pen,
            "GET",
            "/statistik",
            None,
            Ok("pks-dinkes-stat"),
        ),
        c(
            "dinkes/lab",
            pen,
            "GET",
            nik,
            kes,
            Err((EndpointNotCovered, Some("pks-both"))),
        ),
        c(
            "bapenda/esppt",
            pen,
            "GET",
            "/statistik",
            None,
            Err((EndpointNotCovered, Some("pks-esppt"))),
        ),
        // Default deny.
        c(
            "diskominfo/portal",
            "bapenda/pbb",
            "GET",
            "/pbb/1",
            None,
            Err((NoAgreement, None)),
        ),
        c(
            "dukcapil/siak",
            pen,
            "GET",
            nik,
            None,
            Err((EndpointNotCovered, Some("pks-siak-keluarga"))),
        ),
        c(
            "dukcapil/siak",
            pen,
            "GET",
            "/penduduk/3603015505900001/keluarga",
            None,
            Ok("pks-siak-keluarga"),
        ),
        c("x/y", pen, "GET", nik, None, Err((NoAgreement, None))),
        c(
            "x/y",
            "no/such-service",
            "GET",
            "/",
            None,
            Err((NoAgreement, None)),
        ),
        // Status and validity.
        c(
            "dukcapil/siak",
            "bapenda/pbb",
            "GET",
            "/pbb/1",
            None,
            Err((AgreementSuspended, Some("pks-siak-pbb"))),
        ),
        c(
            "dinkes/simpus",
            "bapenda/pbb",
            "GET",
            "/pbb/1",
            None,
            Err((AgreementNotYetValid, Some("pks-simpus-pbb"))),
        ),
        Case {
            now: NOW + DAY,
            ..c(
                "dinkes/simpus",
                "bapenda/pbb",
                "GET",
                "/pbb/1",
                None,
                Ok("pks-simpus-pbb"),
            )
        },
        c(
            "bapenda/esppt",
            "bapenda/pbb",
            "GET",
            "/pbb/1",
            None,
            Err((AgreementExpired, Some("pks-esppt-pbb"))),
        ),
        Case {
            now: NOW - 2 * DAY,
            ..c(
                "bapenda/esppt",
                "bapenda/pbb",
                "GET",
                "/pbb/1",
                None,
                Ok("pks-esppt-pbb"),
            )
        },
        Case {
            now: NOW - DAY,
            ..c(
                "bapenda/esppt",
                "bapenda/pbb",
                "GET",
                "/pbb/1",
                None,
                Ok("pks-esppt-pbb"),
            )
        },
        Case {
            now: NOW - DAY + 1,
            ..c(
                "bapenda/esppt",
                "bapenda/pbb",
                "GET",
                "/pbb/1",
                None,
                Err((AgreementExpired, Some("pks-esppt-pbb"))),
            )
        },
        // Agreement-level method restriction (agency tier, another application).
        c(
            "dinkes/lab",
            "bapenda/pbb",
            "GET",
            "/pbb/1",
            None,
            Err((MethodNotAllowed, Some("pks-dinkes-pbb"))),
        ),
        // The application tier's failure is reported before the agency tier's.
        c(
            "dinkes/simpus",
            "bapenda/pbb",
            "HEAD",
            "/pbb/1",
            None,
            Err((MethodNotAllowed, None)),
        ),
        // An application-specific agreement wins over the public one.
        c(
            "dinkes/lab",
            "dinkes/faskes",
            "GET",
            "/faskes",
            None,
            Ok("pks-lab-faskes"),
        ),
    ];
    assert!(cases.len() >= 40, "{}", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let agency = case.app.split('/').next().unwrap();
        let req = Request {
            application: case.app,
            agency,
            service: case.service,
            method: case.method,
            path: case.path,
            query: None,
            purpose: case.purpose,
            now: case.now,
        };
        let d = set.decide(&req);
        let got = match d.outcome {
            Outcome::Allow { agreement } => Ok(set.agreement(agreement).unwrap().id.as_str()),
            Outcome::Deny { reason, agreement } => Err((
                reason,
                agreement.map(|a| set.agreement(a).unwrap().id.as_str()),
            )),
        };
        assert_eq!(
            got, case.want,
            "case {i}: {} {} {} {}",
            case.app, case.method, case.service, case.path
        );
        // explain() agrees with decide().
        let e = set.explain(&req);
        assert_eq!(e.decision.outcome, d.outcome, "case {i}: explain differs");
    }
}

#[test]
fn subject_and_endpoint_are_reported() {
    let set = fixture();
    let req = Request {
        application: "dinkes/simpus",
        agency: "dinkes",
        service: "dukcapil/penduduk",
        method: "GET",
        path: "/penduduk/3603015505900001",
        query: None,
        purpose: Some("pelayanan-kesehatan"),
        now: NOW,
    };
    let d = set.decide(&req);
    assert_eq!(&*d.endpoint.unwrap().id, "GET /penduduk/{nik}");
    assert_eq!(d.subject, Some("3603015505900001"));
    let e = set.explain(&Request {
        application: "dinkes/lab",
        agency: "dinkes",
        path: "/statistik",
        purpose: None,
        ..req
    });
    // Every candidate with its tier, in the order tried.
    assert_eq!(
        e.considered,
        vec![
            ("pks-both", "application", Some(Reason::EndpointNotCovered)),
            ("pks-dinkes-stat", "agency", None),
        ]
    );
}

#[test]
fn rate_limit_per_application_with_burst() {
    let set = fixture();
    let limits = Limits::new(&set, Arc::new(MemoryQuotaStore::default()));
    let echo = set
        .agreements()
        .iter()
        .position(|a| a.id == "echo-all")
        .unwrap();
    for i in 0..30 {
        match limits.check(&set, echo, "dinkes/simpus", NOW) {
            LimitOutcome::Pass { rate: Some(r) } => {
                assert_eq!(r.limit, 30);
                assert_eq!(r.remaining, 29 - i);
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    match limits.check(&set, echo, "dinkes/simpus", NOW) {
        LimitOutcome::Limited {
            reason: Reason::RateLimited,
            retry_after_secs,
            rate: Some(r),
        } => {
            assert_eq!(retry_after_secs, 1);
            assert_eq!(r.remaining, 0);
        }
        other => panic!("31st: {other:?}"),
    }
    // Another application has its own budget.
    assert!(matches!(
        limits.check(&set, echo, "bapenda/esppt", NOW),
        LimitOutcome::Pass { .. }
    ));
}

#[test]
fn a_reload_keeps_rate_limit_state_unless_the_rate_changed() {
    let set = fixture();
    let quotas: Arc<dyn crate::limits::QuotaStore> = Arc::new(MemoryQuotaStore::default());
    let old = Limits::new(&set, Arc::clone(&quotas));
    let echo = set
        .agreements()
        .iter()
        .position(|a| a.id == "echo-all")
        .unwrap();
    for _ in 0..30 {
        assert!(matches!(
            old.check(&set, echo, "dinkes/simpus", NOW),
            LimitOutcome::Pass { .. }
        ));
    }
    // The same agreements again (a reload): the burst is still spent.
    let mut again = Limits::new(&set, Arc::clone(&quotas));
    again.adopt(&set, &old, &set);
    assert!(matches!(
        again.check(&set, echo, "dinkes/simpus", NOW),
        LimitOutcome::Limited {
            reason: Reason::RateLimited,
            ..
        }
    ));
    // Without adopting (what a reload did before), the caller would get a fresh burst.
    let fresh = Limits::new(&set, Arc::clone(&quotas));
    assert!(matches!(
        fresh.check(&set, echo, "dinkes/simpus", NOW),
        LimitOutcome::Pass { .. }
    ));
    // A changed rate starts afresh.
    let mut agreements = set.agreements().to_vec();
    if let Some(r) = agreements[echo].rate.as_mut() {
        r.limit += 1;
    }
    let changed = PolicySet::new(set.services_for_tests(), agreements);
    let mut after = Limits::new(&changed, Arc::clone(&quotas));
    after.adopt(&changed, &old, &set);
    assert!(matches!(
        after.check(&changed, echo, "dinkes/simpus", NOW),
        LimitOutcome::Pass { .. }
    ));
}

#[test]
fn quota_per_day_in_jakarta_time() {
    let set = fixture();
    let limits = Limits::new(&set, Arc::new(MemoryQuotaStore::default()));
    let lab = set
        .agreements()
        .iter()
        .position(|a| a.id == "pks-lab-faskes")
        .unwrap();
    // 2026-11-19 23:00 WIB = 16:00 UTC.
    let late = super::limits::days_from_civil(2026, 11, 19) * DAY + 16 * 3600;
    assert!(matches!(
        limits.check(&set, lab, "dinkes/lab", late),
        LimitOutcome::Pass { .. }
    ));
    assert!(matches!(
        limits.check(&set, lab, "dinkes/lab", late),
        LimitOutcome::Pass { .. }
    ));
    match limits.check(&set, lab, "dinkes/lab", late) {
        LimitOutcome::Limited {
            reason: Reason::QuotaExhausted,
            retry_after_secs,
            rate,
        } => {
            assert_eq!(retry_after_secs, 3600, "until midnight WIB");
            // The quota's own numbers, for the `RateLimit-*` headers of the 429.
            let quota = set.agreements()[lab].quota.unwrap();
            assert_eq!(
                rate,
                Some(super::limits::RateInfo {
                    limit: u32::try_from(quota.limit).unwrap(),
                    remaining: 0,
                    reset_secs: 3600,
                })
            );
        }
        other => panic!("{other:?}"),
    }
    // Midnight in Jakarta: a new day.
    assert!(matches!(
        limits.check(&set, lab, "dinkes/lab", late + 3600),
        LimitOutcome::Pass { .. }
    ));
    let (m1, next) = period_of(QuotaPeriod::Month, late);
    let (m2, _) = period_of(QuotaPeriod::Month, next);
    assert_eq!(m2, m1 + 1);
    assert_eq!(
        next,
        super::limits::days_from_civil(2026, 12, 1) * DAY - 7 * 3600
    );
}

#[test]
fn index_lookups_do_not_depend_on_unrelated_agreements() {
    // 10,000 agreements over 1,000 services: a decision touches only its own candidates.
    let mut services = HashMap::new();
    let mut agreements = Vec::new();
    for s in 0..1000 {
        let id = format!("a{s}/s");
        services.insert(
            id.clone(),
            ServicePolicy {
                endpoints: vec![ep("GET", "/x/{id}", Classification::Terbatas, Some("id"))],
                classification: Classification::Terbatas,
                path_matching: PathMatching::Exact,
            },
        );
        for k in 0..10 {
            agreements.push(Agreement {
                endpoints: vec!["GET /x/{id}".into()],
                ..agreement(&format!("pks-{s}-{k}"), &id, &[&format!("c{k}/app")])
            });
        }
    }
    let set = PolicySet::new(services, agreements);
    let req = Request {
        application: "c7/app",
        agency: "c7",
        service: "a512/s",
        method: "GET",
        path: "/x/1",
        query: None,
        purpose: None,
        now: NOW,
    };
    let e = set.explain(&req);
    assert_eq!(e.considered.len(), 1);
    assert!(matches!(e.decision.outcome, Outcome::Allow { .. }));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z0-9 ]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("nik".to_owned()),
                    Just("data".to_owned()),
                    "[a-z]{1,4}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Puts `secret` at every `nik` key and returns the document.
fn plant(v: &mut Value, secret: &str) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "nik" {
                    *child = Value::String(secret.to_owned());
                } else {
                    plant(child, secret);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| plant(i, secret)),
        _ => {}
    }
}

fn paths_to_nik(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if k == "nik" {
                    out.push(p.clone());
                }
                paths_to_nik(child, p, out);
            }
        }
        Value::Array(items) => {
            for i in items {
                paths_to_nik(i, format!("{prefix}[*]"), out);
            }
        }
        _ => {}
    }
}

proptest! {
    /// Whatever the document's shape, a value at a dropped or masked path never appears in the
    /// output: not whole, and for masking not even its hidden middle.
    #[test]
    fn dropped_and_masked_values_never_appear(mut doc in arb_json(), masked in any::<bool>()) {
        let secret = "3603015505900001";
        plant(&mut doc, secret);
        let mut paths = Vec::new();
        paths_to_nik(&doc, String::new(), &mut paths);
        paths.sort();
        paths.dedup();
        let rules = if masked {
            FieldRules {
                mask: paths.iter().map(|p| Mask { path: FieldPath::parse(p).unwrap(), keep_first: 6, keep_last: 4 }).collect(),
                ..FieldRules::default()
            }
        } else {
            FieldRules { deny: paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect(), ..FieldRules::default() }
        };
        rules.apply(&mut doc);
        let text = doc.to_string();
        prop_assert!(!text.contains(secret), "{}", text);
        prop_assert!(!text.contains("550590"), "the masked middle leaked: {}", text);
    }

    /// An allow-list keeps nothing that is not on an allowed path.
    #[test]
    fn allow_list_keeps_only_allowed_keys(mut doc in arb_json()) {
        plant(&mut doc, "3603015505900001");
        if let Value::Object(_) = doc {
            FieldRules { allow: vec![FieldPath::parse("data").unwrap()], ..FieldRules::default() }.apply(&mut doc);
            let obj = doc.as_object().unwrap();
            prop_assert!(obj.keys().all(|k| k == "data"));
        }
    }
}

/// Documents over a few keys that rules name, with every kind of JSON value.
fn arb_small_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z0-9 \"\\\\é\u{1}]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("a".to_owned()),
                    Just("b".to_owned()),
                    Just("c".to_owned()),
                    Just("x\"y".to_owned()),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field path over the same keys, in the documented syntax.
fn arb_path() -> impl Strategy<Value = FieldPath> {
    let step = prop_oneof![Just("a"), Just("b"), Just("[*]")];
    prop::collection::vec(step, 1..4).prop_map(|steps| {
        let mut text = String::new();
        for s in steps {
            if s != "[*]" && !text.is_empty() {
                text.push('.');
            }
            text.push_str(s);
        }
        FieldPath::parse(&text).unwrap()
    })
}

fn arb_rules() -> impl Strategy<Value = FieldRules> {
    (
        prop::collection::vec(arb_path(), 0..3),
        prop::collection::vec(arb_path(), 0..3),
        prop::collection::vec((arb_path(), 0usize..4, 0usize..4), 0..3),
    )
        .prop_map(|(allow, deny, mask)| FieldRules {
            allow,
            deny,
            mask: mask
                .into_iter()
                .map(|(path, keep_first, keep_last)| Mask {
                    path,
                    keep_first,
                    keep_last,
                })
                .collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    /// The gateway's filter on the JSON text gives the same document as the reference
    /// `FieldRules::apply` on the parsed one, for compact and pretty-printed input.
    #[test]
    fn filtering_the_text_equals_filtering_the_document(
        doc in arb_small_json(),
        rules in arb_rules(),
        pretty in any::<bool>(),
    ) {
        let text = if pretty { serde_json::to_string_pretty(&doc) } else { serde_json::to_string(&doc) }.unwrap();
        let mut expected = doc.clone();
        rules.apply(&mut expected);
        let mut out = Vec::new();
        rules.filter_json(text.as_bytes(), &mut out).unwrap();
        let got: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("output is not JSON ({e}): {}", String::from_utf8_lossy(&out)));
        prop_assert_eq!(got, expected, "input {} rules {:?}", text, rules);
    }

    /// What is not JSON is refused, also where no rule reaches: every cut of a document that
    /// does not parse is an error, and so is a document with something after it.
    #[test]
    fn text_that_is_not_json_is_refused(doc in arb_small_json(), rules in arb_rules(), cut in any::<prop::sample::Index>()) {
        let text = serde_json::to_string(&doc).unwrap();
        let at = cut.index(text.len() + 1);
        let Some(prefix) = text.get(..at) else { return Ok(()) };
        let mut out = Vec::new();
        let result = rules.filter_json(prefix.as_bytes(), &mut out);
        prop_assert_eq!(result.is_ok(), serde_json::from_str::<Value>(prefix).is_ok(), "{:?}", prefix);
        let trailing = format!("{text} x");
        prop_assert!(rules.filter_json(trailing.as_bytes(), &mut Vec::new()).is_err());
    }
}

#[test]
fn the_text_filter_keeps_what_no_rule_reaches_as_written() {
    let rules = FieldRules {
        deny: vec![FieldPath::parse("status_perkawinan").unwrap()],
        mask: vec![Mask {
            path: FieldPath::parse("nik").unwrap(),
            keep_first: 6,
            keep_last: 4,
        }],
        ..FieldRules::default()
    };
    let input = br#" {"nik": "3603015505900001", "status_perkawinan":"KAWIN",
        "berat": 61.50, "nama": "Siti \u00c9", "alamat": { "rt" : "001" }} "#;
    let mut out = Vec::new();
    rules.filter_json(input, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"nik":"360301******0001","berat":61.50,"nama":"Siti \u00c9","alamat":{ "rt" : "001" }}"#
    );
    // Masked where an allow-list continues below: the reference makes the value `null` (or
    // keeps only its allowed structure) before masking, and masking drops what is not a
    // string or number, so nothing of it is left.
    let allow_below = FieldRules {
        allow: vec![
            FieldPath::parse("a.b").unwrap(),
            FieldPath::parse("c").unwrap(),
        ],
        mask: vec![Mask {
            path: FieldPath::parse("a").unwrap(),
            keep_first: 1,
            keep_last: 1,
        }],
        ..FieldRules::default()
    };
    for input in [r#"{"a":"secret","c":1}"#, r#"{"a":{"b":"x"},"c":1}"#] {
        let mut out = Vec::new();
        allow_below.filter_json(input.as_bytes(), &mut out).unwrap();
        assert_eq!(out, br#"{"c":1}"#, "{input}");
    }
    // A repeated key where a rule reaches: filtered as the reference does, with the last value.
    let mut out = Vec::new();
    rules
        .filter_json(
            br#"{"nik":"1111111111111111","nik":"2222222222222222"}"#,
            &mut out,
        )
        .unwrap();
    assert_eq!(out, br#"{"nik":"222222******2222"}"#);
    // Found by fuzz/field_filter: the first `b` masked and the second (an object) dropped left
    // the masked first one, where the reference (the last value, dropped) leaves none.
    let mask_b = FieldRules {
        mask: vec![Mask {
            path: FieldPath::parse("b").unwrap(),
            keep_first: 1,
            keep_last: 0,
        }],
        ..FieldRules::default()
    };
    let mut out = Vec::new();
    mask_b
        .filter_json(br#"{"x":"abc","b":"","b":{"a":"secret"}}"#, &mut out)
        .unwrap();
    assert_eq!(out, br#"{"x":"abc"}"#);
    // Repeated where no rule reaches: copied as written.
    let mut out = Vec::new();
    mask_b
        .filter_json(br#"{"c":{"k":1,"k":2},"b":"xy"}"#, &mut out)
        .unwrap();
    assert_eq!(out, br#"{"c":{"k":1,"k":2},"b":"x*"}"#);
    // Repeated after more keys than the short list holds (the set takes over).
    let mut big = String::from("{");
    for i in 0..40 {
        big.push_str(&format!("\"k{i}\":{i},"));
    }
    big.push_str(r#""b":"123","k7":"x","b":[1]}"#);
    let mut expected: Value = serde_json::from_str(&big).unwrap();
    mask_b.apply(&mut expected);
    let mut out = Vec::new();
    mask_b.filter_json(big.as_bytes(), &mut out).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), expected);
    assert!(!String::from_utf8(out).unwrap().contains("\"b\""));
    // A repeated key and text that is not JSON after it: still refused.
    assert!(mask_b
        .filter_json(br#"{"b":"1","b":"2","z":tru}"#, &mut Vec::new())
        .is_err());
    // Not UTF-8, or not one JSON value: refused.
    assert!(rules
        .filter_json(b"{\"a\":\"\xff\"}", &mut Vec::new())
        .is_err());
    assert!(rules.filter_json(b"{\"a\":1}{}", &mut Vec::new()).is_err());
    assert!(rules.filter_json(b"{\"a\":tru}", &mut Vec::new()).is_err());
}

/// A service that takes the NIK in the query, and one whose provider ignores case.
fn query_fixture(matching: PathMatching) -> PolicySet {
    use Classification::*;
    let mut services = HashMap::new();
    services.insert(
        "dukcapil/cari".to_owned(),
        ServicePolicy {
            endpoints: vec![
                ep("GET", "/penduduk?nik={nik}", Rahasia, Some("nik")),
                ep("GET", "/penduduk/{nik}", Rahasia, Some("nik")),
                ep("GET", "/wilayah?kode={kode}", Terbuka, None),
                ep("GET", "/statistik", Terbuka, None),
            ],
            classification: Rahasia,
            path_matching: PathMatching::Exact,
        },
    );
    services.insert(
        "bappeda/laporan".to_owned(),
        ServicePolicy {
            endpoints: vec![
                ep("GET", "/laporan/{id}", Terbuka, None),
                ep("GET", "/laporan/rekap-nik", Rahasia, None),
            ],
            classification: Terbuka,
            path_matching: matching,
        },
    );
    let agreements = vec![
        agreement("pks-cari", "dukcapil/cari", &["dinkes/simpus"]),
        Agreement {
            max_classification: Terbuka,
            ..agreement("open-laporan", "bappeda/laporan", &["*"])
        },
    ];
    PolicySet::new(services, agreements)
}

fn query_req<'a>(service: &'a str, path: &'a str, query: Option<&'a str>) -> Request<'a> {
    Request {
        application: "dinkes/simpus",
        agency: "dinkes",
        service,
        method: "GET",
        path,
        query,
        purpose: None,
        now: NOW,
    }
}

#[test]
fn the_subject_comes_from_the_query_and_the_query_is_strict() {
    let set = query_fixture(PathMatching::Exact);
    let d = set.decide(&query_req(
        "dukcapil/cari",
        "/penduduk",
        Some("nik=3603015505900001"),
    ));
    assert!(matches!(d.outcome, Outcome::Allow { .. }), "{d:?}");
    assert_eq!(&*d.endpoint.unwrap().id, "GET /penduduk?nik={nik}");
    assert_eq!(d.subject, Some("3603015505900001"));
    for (path, query, reason) in [
        (
            "/penduduk",
            "nik=3603015505900001&nik=3603015505900002",
            Reason::QueryRepeated,
        ),
        (
            "/penduduk",
            "nik=3603015505900001&x=1",
            Reason::QueryNotAllowed,
        ),
        (
            "/penduduk",
            "nik=3603015505900001&NIK=3603015505900002",
            Reason::QueryNotAllowed,
        ),
        (
            "/penduduk",
            "nik=3603015505900001&%6Eik=3603015505900002",
            Reason::QueryMalformed,
        ),
        (
            "/penduduk",
            "nik=3603015505900001;nik=3603015505900002",
            Reason::QueryMalformed,
        ),
        (
            "/penduduk",
            "nik=%33603015505900001",
            Reason::QueryMalformed,
        ),
        ("/penduduk", "id=1", Reason::QueryNotAllowed),
        ("/penduduk", "", Reason::QueryMissing),
        // A path subject: its endpoint takes no query parameter at all.
        (
            "/penduduk/3603015505900001",
            "nik=3603015505900002",
            Reason::QueryNotAllowed,
        ),
        ("/wilayah", "kode=36&kode=37", Reason::QueryRepeated),
    ] {
        let req = query_req("dukcapil/cari", path, Some(query));
        let d = set.decide(&req);
        assert_eq!(
            d.outcome,
            Outcome::Deny {
                reason,
                agreement: None
            },
            "{path}?{query}"
        );
        assert!(reason.is_bad_request());
        assert!(
            d.endpoint.is_some(),
            "{path}?{query}: the endpoint is known"
        );
        // The subject of a refused query is not taken from it; a path subject stays.
        let want = path.strip_prefix("/penduduk/");
        assert_eq!(d.subject, want, "{path}?{query}");
        assert_eq!(set.explain(&req).decision.outcome, d.outcome);
    }
    let d = set.decide(&query_req("dukcapil/cari", "/penduduk", None));
    assert_eq!(
        d.outcome,
        Outcome::Deny {
            reason: Reason::QueryMissing,
            agreement: None
        }
    );
    // Endpoints without a subject or declared query do not look at the query.
    let d = set.decide(&query_req("dukcapil/cari", "/statistik", Some("a=1;b&&")));
    assert!(matches!(d.outcome, Outcome::Allow { .. }), "{d:?}");
    // A declared query without a subject lets other parameters pass.
    let d = set.decide(&query_req(
        "dukcapil/cari",
        "/wilayah",
        Some("kode=36&halaman=2"),
    ));
    assert!(matches!(d.outcome, Outcome::Allow { .. }), "{d:?}");
    assert_eq!(d.subject, None);
    assert!(!Reason::NoAgreement.is_bad_request());
    assert_eq!(Reason::QueryNotAllowed.as_str(), "query_not_allowed");
}

#[test]
fn a_case_insensitive_provider_has_case_variants_judged_as_the_literal() {
    let exact = query_fixture(PathMatching::Exact);
    let folded = query_fixture(PathMatching::CaseInsensitive);
    for path in [
        "/laporan/REKAP-NIK",
        "/laporan/rekap-nik.",
        "/laporan/Rekap-Nik..",
        "/laporan/rekap-ni%E2%84%AA",
    ] {
        let req = query_req("bappeda/laporan", path, None);
        // Exact: the template takes it (what the provider is asserted to do too).
        let d = exact.decide(&req);
        assert_eq!(&*d.endpoint.unwrap().id, "GET /laporan/{id}", "{path}");
        assert!(matches!(d.outcome, Outcome::Allow { .. }), "{path}");
        // Case-insensitive: judged as the rahasia endpoint, beyond the open agreement.
        let d = folded.decide(&req);
        assert_eq!(&*d.endpoint.unwrap().id, "GET /laporan/rekap-nik", "{path}");
        assert_eq!(
            d.outcome,
            Outcome::Deny {
                reason: Reason::ClassificationExceeded,
                agreement: Some(1)
            },
            "{path}"
        );
    }
    let d = folded.decide(&query_req("bappeda/laporan", "/laporan/2024", None));
    assert_eq!(&*d.endpoint.unwrap().id, "GET /laporan/{id}");
    assert!(matches!(d.outcome, Outcome::Allow { .. }));
}

#[test]
fn shadowing_counts_only_a_lower_classification() {
    use Classification::*;
    let service = |endpoints| ServicePolicy {
        endpoints,
        classification: Terbatas,
        path_matching: PathMatching::Exact,
    };
    let s = service(vec![
        ep("GET", "/laporan/{id}", Terbuka, None),
        ep("GET", "/laporan/rekap-nik", Rahasia, None),
        ep("GET", "/laporan/ringkas", Terbuka, None),
        ep("POST", "/laporan/{id}/arsip", Terbatas, None),
        ep("DELETE", "/laporan/hapus/arsip", SangatRahasia, None),
    ]);
    assert_eq!(
        s.shadows(),
        vec![
            Shadow {
                by: 0,
                shadowed: 1,
                example: "/laporan/REKAP-NIK".into()
            },
            Shadow {
                by: 3,
                shadowed: 4,
                example: "/laporan/HAPUS/arsip".into()
            },
        ],
        "same classification (ringkas) is no shadow; methods are not compared"
    );
    let s = service(vec![
        ep("GET", "/laporan/{id}", Rahasia, None),
        ep("GET", "/laporan/rekap-nik", Terbuka, None),
    ]);
    assert!(s.shadows().is_empty(), "a literal of a lower class is safe");
}

/// Cluster mode's local fallback: each of N replicas limits on its own with the rate, the burst
/// and the quota divided by N (rounded up, at least 1).
#[test]
fn a_share_divides_rate_burst_and_quota() {
    let set = fixture();
    let quotas: Arc<dyn crate::limits::QuotaStore> = Arc::new(MemoryQuotaStore::default());
    let limits = Limits::with_share(&set, Arc::clone(&quotas), 3);
    assert_eq!(limits.share(), 3);
    let echo = set
        .agreements()
        .iter()
        .position(|a| a.id == "echo-all")
        .unwrap();
    // A burst of 30 becomes 10.
    for i in 0..10 {
        match limits.check(&set, echo, "dinkes/simpus", NOW) {
            LimitOutcome::Pass { rate: Some(r) } => {
                assert_eq!(r.limit, 10);
                assert_eq!(r.remaining, 9 - i);
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert!(matches!(
        limits.check(&set, echo, "dinkes/simpus", NOW),
        LimitOutcome::Limited {
            reason: Reason::RateLimited,
            ..
        }
    ));
    // A quota of 2 a day becomes 1 (rounded up), and the 429 names the divided limit.
    let lab = set
        .agreements()
        .iter()
        .position(|a| a.id == "pks-lab-faskes")
        .unwrap();
    assert_eq!(set.agreements()[lab].quota.unwrap().limit, 2);
    assert!(matches!(
        limits.check(&set, lab, "dinkes/lab", NOW),
        LimitOutcome::Pass { .. }
    ));
    match limits.check(&set, lab, "dinkes/lab", NOW) {
        LimitOutcome::Limited {
            reason: Reason::QuotaExhausted,
            rate: Some(r),
            ..
        } => assert_eq!(r.limit, 1),
        other => panic!("{other:?}"),
    }
    // A share larger than the limit still lets one call through.
    let many = Limits::with_share(&set, Arc::new(MemoryQuotaStore::default()), 1000);
    assert!(matches!(
        many.check(&set, lab, "dinkes/lab", NOW),
        LimitOutcome::Pass { .. }
    ));
}
