//! Endpoints of services (in registry files) and agreement files (`agreements/*.toml`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use gerbang_policy::{
    Agreement, Classification, Consumer, Endpoint, FieldPath, FieldRules, Mask, PathMatching,
    PathTemplate, QuotaPeriod, QuotaSpec, RatePeriod, RateSpec, ServicePolicy,
};
use serde::Deserialize;

use super::Problems;

/// An `[[service.endpoint]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    method: String,
    /// `/penduduk/{nik}`, or with declared query parameters `/penduduk?nik={nik}`.
    path: String,
    #[serde(default)]
    classification: Option<String>,
    /// The path or query parameter naming the data subject, e.g. `nik`.
    #[serde(default)]
    subject: Option<String>,
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn classification(
    s: Option<&str>,
    default: Classification,
    path: &Path,
    key: String,
    problems: &mut Problems,
) -> Classification {
    match s {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|()| {
            problems.push(
                path,
                key,
                format!(
                    "`{s}` is not a classification; use one of {}",
                    Classification::NAMES.join(", ")
                ),
            );
            default
        }),
    }
}

/// The policy view of `service[i]`.
pub(super) fn service_policy(
    path: &Path,
    i: usize,
    raw_classification: Option<&str>,
    raw_path_matching: Option<&str>,
    raw: &[RawEndpoint],
    problems: &mut Problems,
) -> ServicePolicy {
    let service_class = classification(
        raw_classification,
        Classification::Terbatas,
        path,
        format!("service[{i}].classification"),
        problems,
    );
    let path_matching = match raw_path_matching {
        None | Some("exact") => PathMatching::Exact,
        Some("case_insensitive") => PathMatching::CaseInsensitive,
        Some(other) => {
            problems.push(
                path,
                format!("service[{i}].path_matching"),
                format!("`{other}` is not \"exact\" or \"case_insensitive\""),
            );
            PathMatching::Exact
        }
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    // Index in `raw` of each endpoint kept, for the keys of later problems.
    let mut raw_index: Vec<usize> = Vec::new();
    for (j, e) in raw.iter().enumerate() {
        let key = |k: &str| format!("service[{i}].endpoint[{j}].{k}");
        let method = e.method.to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            problems.push(
                path,
                key("method"),
                format!("`{}` is not one of {}", e.method, METHODS.join(", ")),
            );
            continue;
        }
        let template = match PathTemplate::parse(&e.path) {
            Ok(t) => t,
            Err(err) => {
                problems.push(path, key("path"), format!("`{}`: {err}", e.path));
                continue;
            }
        };
        if let Some(s) = &e.subject {
            if !template.params().any(|p| p == s) {
                problems.push(
                    path,
                    key("subject"),
                    format!("`{s}` is not a parameter of `{}`", e.path),
                );
            }
        }
        let class = classification(
            e.classification.as_deref(),
            service_class,
            path,
            key("classification"),
            problems,
        );
        let endpoint = Endpoint::new(&method, template, class, e.subject.clone());
        let same_path = |x: &Endpoint| {
            x.method == endpoint.method && x.template.path_str() == endpoint.template.path_str()
        };
        if let Some(x) = endpoints.iter().find(|x| same_path(x)) {
            let detail = if x.id == endpoint.id {
                String::new()
            } else {
                format!(" (as `{}`: a query does not tell endpoints apart)", x.id)
            };
            problems.push(
                path,
                key("path"),
                format!("`{}` is declared twice{detail}", endpoint.id),
            );
            continue;
        }
        if path_matching == PathMatching::CaseInsensitive {
            if let Some(x) = endpoints.iter().find(|x| {
                x.method == endpoint.method && x.template.same_when_folded(&endpoint.template)
            }) {
                problems.push(
                    path,
                    key("path"),
                    format!(
                        "`{}` and `{}` are the same path to a provider that ignores case (path_matching = \"case_insensitive\")",
                        endpoint.id, x.id
                    ),
                );
                continue;
            }
        }
        endpoints.push(endpoint);
        raw_index.push(j);
    }
    let policy = ServicePolicy {
        endpoints,
        classification: service_class,
        path_matching,
    };
    // A literal that a `{param}` of a lower classification takes case variants of: refused
    // until the service says how its provider matches paths.
    if raw_path_matching.is_none() {
        for s in policy.shadows() {
            let (Some(low), Some(high), Some(j)) = (
                policy.endpoints.get(s.by),
                policy.endpoints.get(s.shadowed),
                raw_index.get(s.by),
            ) else {
                continue;
            };
            problems.push(
                path,
                format!("service[{i}].endpoint[{j}].path"),
                format!(
                    "`{}` ({}) also takes `{}`, which a provider that ignores case or trailing dots serves as `{}` ({}); \
                     declare how the provider matches paths with the service's path_matching: \
                     \"case_insensitive\" (the gateway then folds case and trailing dots and judges such calls as `{}`) \
                     or \"exact\" (you assert the provider matches paths exactly)",
                    low.id,
                    low.classification.as_str(),
                    s.example,
                    high.id,
                    high.classification.as_str(),
                    high.id,
                ),
            );
        }
    }
    policy
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgreementFile {
    #[serde(default)]
    agreement: Vec<RawAgreement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgreement {
    id: String,
    title: String,
    legal_basis: String,
    service: String,
    consumers: Vec<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    purposes: Vec<String>,
    #[serde(default)]
    valid_from: Option<toml::value::Datetime>,
    #[serde(default)]
    valid_until: Option<toml::value::Datetime>,
    #[serde(default = "active")]
    status: String,
    #[serde(default)]
    max_classification: Option<String>,
    #[serde(default)]
    rate_limit: Option<RawRate>,
    #[serde(default)]
    quota: Option<RawQuota>,
    #[serde(default)]
    fields: Option<RawFields>,
}

fn active() -> String {
    "active".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    limit: u32,
    per: String,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    limit: u64,
    per: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFields {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    mask: Vec<RawMask>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMask {
    path: String,
    #[serde(default)]
    keep_first: usize,
    #[serde(default)]
    keep_last: usize,
}

/// What agreements may name.
pub(super) struct Known<'a> {
    pub services: &'a HashMap<String, ServicePolicy>,
    pub applications: HashSet<String>,
    pub agencies: HashSet<String>,
    /// The registry files had no problem; otherwise a name may be unknown only because the
    /// entry that declares it is wrong, which the message says.
    pub registry_complete: bool,
}

impl Known<'_> {
    fn unknown(&self, what: String) -> String {
        if self.registry_complete {
            what
        } else {
            format!("{what} (or its registry entry has a problem reported here)")
        }
    }
}

/// Whether an agreement id is usable: letters, digits, '-', '_', '.', 1 to 64 bytes.
fn is_agreement_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The problem key of field `field` (`service`, `consumers[1]`; empty: the entry) of the
/// `i`th agreement of a file: `line N: agreement ID: field`, by its id when it has a usable
/// one (else `agreement[i]`) and the line of the field (else of the entry).
fn agreement_key(
    text: &super::Located<'_>,
    i: usize,
    a: Option<&RawAgreement>,
    field: &str,
) -> String {
    let name = match a {
        Some(a) if is_agreement_id(&a.id) => format!("agreement {}", a.id),
        _ => format!("agreement[{i}]"),
    };
    let label = if field.is_empty() {
        name
    } else {
        format!("{name}: {field}")
    };
    let dotted = if field.is_empty() {
        format!("agreement[{i}]")
    } else {
        format!("agreement[{i}].{field}")
    };
    match text.line_of(&dotted) {
        Some(n) => format!("line {n}: {label}"),
        None => label,
    }
}

/// Seconds since the epoch of a TOML date (midnight Asia/Jakarta; `end_of_day` = the last
/// second of that day) or an offset date-time.
fn instant(dt: &toml::value::Datetime, end_of_day: bool) -> Option<i64> {
    let date = dt.date?;
    let days = super::auth::days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    match (dt.time, dt.offset) {
        (None, None) => {
            let start = days * 86_400 - 7 * 3600;
            Some(if end_of_day { start + 86_399 } else { start })
        }
        (Some(_), Some(_)) => super::auth::datetime_to_unix(dt).and_then(|t| i64::try_from(t).ok()),
        _ => None,
    }
}

/// Loads every agreement file in `dir`. `now` decides which agreements are already expired
/// (a warning).
pub(super) fn load_agreements(
    dir: &Path,
    overlay: &super::Overlay,
    fp: &mut super::Fingerprint,
    known: &Known<'_>,
    now: i64,
    problems: &mut Problems,
    warnings: &mut Problems,
) -> Vec<Agreement> {
    let files = match super::toml_files(dir, overlay) {
        Ok(f) => f,
        Err(e) => {
            problems.push(
                dir,
                "",
                format!("cannot read the agreements directory: {e}"),
            );
            return Vec::new();
        }
    };
    // (file, (key of its consumers, file:line of its id), agreement)
    #[allow(clippy::type_complexity)]
    let mut out: Vec<(PathBuf, (String, String), Agreement)> = Vec::new();
    // Agreement id -> its index in `out`.
    let mut ids: HashMap<String, usize> = HashMap::new();
    for path in files {
        let text = match super::read_text(&path, overlay) {
            Ok(t) => t,
            Err(e) => {
                problems.push(&path, "", format!("cannot read: {e}"));
                continue;
            }
        };
        fp.add(
            path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
            text.as_bytes(),
        );
        let raw: RawAgreementFile = match toml::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                let line = e.span().map(|s| super::line_at(&text, s.start));
                problems.push(
                    &path,
                    line.map(|l| format!("line {l}")).unwrap_or_default(),
                    e.message().to_owned(),
                );
                continue;
            }
        };
        let located = super::Located::new(&text);
        for (i, a) in raw.agreement.iter().enumerate() {
            let key = |field: &str| agreement_key(&located, i, Some(a), field);
            if let Some(agreement) = agreement(&path, &key, a, known, problems) {
                if let Some(other) = ids.get(agreement.id.as_str()).map(|&o| &out[o].0) {
                    problems.push(
                        &path,
                        key("id"),
                        format!(
                            "`{}` is already defined in {}",
                            agreement.id,
                            other.display()
                        ),
                    );
                    continue;
                }
                if agreement.valid_until.is_some_and(|t| t < now) {
                    warnings.push(
                        &path,
                        key("valid_until"),
                        format!("`{}` has expired", agreement.id),
                    );
                }
                let at = match located.line_of(&format!("agreement[{i}].id")) {
                    Some(n) => format!("{}:{n}", path.display()),
                    None => path.display().to_string(),
                };
                ids.insert(agreement.id.clone(), out.len());
                out.push((path.clone(), (key("consumers"), at), agreement));
            }
        }
    }
    // Overlaps: two active agreements for the same consumer, service and endpoint. Only
    // agreements of one service can overlap, so each service's are compared among themselves
    // (comparing every pair was quadratic in all agreements), in load order.
    let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
    for (n, (_, _, a)) in out.iter().enumerate() {
        if !a.suspended {
            by_service.entry(a.service.as_str()).or_default().push(n);
        }
    }
    let mut groups: Vec<Vec<usize>> = by_service.into_values().collect();
    groups.sort_unstable_by_key(|g| g[0]);
    for members in &groups {
        for (k, &x) in members.iter().enumerate() {
            for &y in &members[k + 1..] {
                let (_, (_, at_x), ax) = &out[x];
                let (py, (ky, _), ay) = &out[y];
                let same_consumer = ax.consumers.iter().any(|c| ay.consumers.contains(c));
                let endpoints_overlap = ax.endpoints.is_empty()
                    || ay.endpoints.is_empty()
                    || ax.endpoints.iter().any(|e| ay.endpoints.contains(e));
                if same_consumer && endpoints_overlap {
                    let message = format!(
                        "`{}` overlaps `{}` ({at_x}) for the same consumer and endpoint; the one with the smaller id is tried first",
                        ay.id, ax.id,
                    );
                    warnings.push(py, ky.as_str(), message);
                }
            }
        }
    }
    out.into_iter().map(|(_, _, a)| a).collect()
}

/// Checks one agreement; `key` names a field of it in problems.
fn agreement(
    path: &Path,
    key: &dyn Fn(&str) -> String,
    a: &RawAgreement,
    known: &Known<'_>,
    problems: &mut Problems,
) -> Option<Agreement> {
    let before = problems.list.len();
    if !is_agreement_id(&a.id) {
        problems.push(
            path,
            key("id"),
            format!("`{}` is not an id (letters, digits, '-', '_', '.')", a.id),
        );
    }
    let service = known.services.get(&a.service);
    if service.is_none() {
        problems.push(
            path,
            key("service"),
            known.unknown(format!("`{}` is not a registered service", a.service)),
        );
    }
    if a.consumers.is_empty() {
        problems.push(
            path,
            key("consumers"),
            "name at least one consumer: `agency/app`, `agency` or `*`",
        );
    }
    let mut consumers = Vec::new();
    for (j, c) in a.consumers.iter().enumerate() {
        let consumer = Consumer::parse(c);
        let ok = match &consumer {
            Consumer::Application(app) => known.applications.contains(app),
            Consumer::Agency(ag) => known.agencies.contains(ag),
            Consumer::Anyone => true,
        };
        if !ok {
            problems.push(
                path,
                key(&format!("consumers[{j}]")),
                known.unknown(format!("`{c}` is not a registered application or agency")),
            );
        }
        consumers.push(consumer);
    }
    if let Some(s) = service {
        for (j, e) in a.endpoints.iter().enumerate() {
            let normalised = match e.split_once(' ') {
                Some((m, t)) => format!("{} {t}", m.to_ascii_uppercase()),
                None => e.clone(),
            };
            if !s.endpoints.iter().any(|x| *x.id == *normalised) {
                let hint = if s.endpoints.is_empty() {
                    "the service declares no endpoints; leave `endpoints` out".to_owned()
                } else {
                    format!(
                        "declared: {}",
                        s.endpoints
                            .iter()
                            .map(|x| &*x.id)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                problems.push(
                    path,
                    key(&format!("endpoints[{j}]")),
                    format!("`{e}` is not an endpoint of `{}` ({hint})", a.service),
                );
            }
        }
    }
    let mut methods = Vec::new();
    for (j, m) in a.methods.iter().enumerate() {
        let up = m.to_ascii_uppercase();
        if !METHODS.contains(&up.as_str()) {
            problems.push(
                path,
                key(&format!("methods[{j}]")),
                format!("`{m}` is not one of {}", METHODS.join(", ")),
            );
        }
        methods.push(up);
    }
    for (j, p) in a.purposes.iter().enumerate() {
        let ok = !p.is_empty()
            && p.len() <= 64
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            problems.push(
                path,
                key(&format!("purposes[{j}]")),
                format!("`{p}` is not a purpose code (a-z, 0-9, '-')"),
            );
        }
    }
    let valid_from = a.valid_from.as_ref().and_then(|d| {
        let t = instant(d, false);
        if t.is_none() {
            problems.push(
                path,
                key("valid_from"),
                "a date (2026-01-01, Asia/Jakarta) or a date-time with an offset",
            );
        }
        t
    });
    let valid_until = a.valid_until.as_ref().and_then(|d| {
        let t = instant(d, true);
        if t.is_none() {
            problems.push(
                path,
                key("valid_until"),
                "a date (2026-12-31, Asia/Jakarta) or a date-time with an offset",
            );
        }
        t
    });
    if let (Some(f), Some(u)) = (valid_from, valid_until) {
        if u < f {
            problems.push(path, key("valid_until"), "is before valid_from");
        }
    }
    let suspended = match a.status.as_str() {
        "active" => false,
        "suspended" => true,
        other => {
            problems.push(
                path,
                key("status"),
                format!("`{other}` is not \"active\" or \"suspended\""),
            );
            false
        }
    };
    let max_classification = classification(
        a.max_classification.as_deref(),
        Classification::Terbatas,
        path,
        key("max_classification"),
        problems,
    );
    let rate = a.rate_limit.as_ref().and_then(|r| {
        let per = match r.per.as_str() {
            "second" => RatePeriod::Second,
            "minute" => RatePeriod::Minute,
            other => {
                problems.push(
                    path,
                    key("rate_limit.per"),
                    format!("`{other}` is not \"second\" or \"minute\""),
                );
                return None;
            }
        };
        if r.limit == 0 {
            problems.push(path, key("rate_limit.limit"), "must be at least 1");
            return None;
        }
        let burst = r.burst.unwrap_or(r.limit);
        if burst == 0 {
            problems.push(path, key("rate_limit.burst"), "must be at least 1");
            return None;
        }
        Some(RateSpec {
            limit: r.limit,
            per,
            burst,
        })
    });
    let quota = a.quota.as_ref().and_then(|q| {
        let per = match q.per.as_str() {
            "day" => QuotaPeriod::Day,
            "month" => QuotaPeriod::Month,
            other => {
                problems.push(
                    path,
                    key("quota.per"),
                    format!("`{other}` is not \"day\" or \"month\""),
                );
                return None;
            }
        };
        if q.limit == 0 {
            problems.push(path, key("quota.limit"), "must be at least 1");
            return None;
        }
        Some(QuotaSpec {
            limit: q.limit,
            per,
        })
    });
    let mut fields = FieldRules::default();
    if let Some(f) = &a.fields {
        let mut parse = |list: &[String], name: &str, out: &mut Vec<FieldPath>| {
            for (j, p) in list.iter().enumerate() {
                match FieldPath::parse(p) {
                    Ok(fp) => out.push(fp),
                    Err(e) => {
                        problems.push(path, key(&format!("fields.{name}[{j}]")), e.to_string())
                    }
                }
            }
        };
        parse(&f.allow, "allow", &mut fields.allow);
        parse(&f.deny, "deny", &mut fields.deny);
        for (j, m) in f.mask.iter().enumerate() {
            match FieldPath::parse(&m.path) {
                Ok(fp) => fields.mask.push(Mask {
                    path: fp,
                    keep_first: m.keep_first,
                    keep_last: m.keep_last,
                }),
                Err(e) => {
                    problems.push(path, key(&format!("fields.mask[{j}].path")), e.to_string())
                }
            }
        }
    }
    (problems.list.len() == before).then(|| Agreement {
        id: a.id.clone(),
        title: a.title.clone(),
        legal_basis: a.legal_basis.clone(),
        service: a.service.clone(),
        consumers,
        endpoints: a
            .endpoints
            .iter()
            .map(|e| match e.split_once(' ') {
                Some((m, t)) => format!("{} {t}", m.to_ascii_uppercase()),
                None => e.clone(),
            })
            .collect(),
        methods,
        purposes: a.purposes.clone(),
        valid_from,
        valid_until,
        suspended,
        max_classification,
        rate,
        quota,
        fields,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[derive(Deserialize)]
    struct Endpoints {
        endpoint: Vec<RawEndpoint>,
    }

    /// `service_policy` over endpoints written as `(method, path, classification, subject)`.
    fn load(
        path_matching: Option<&str>,
        endpoints: &[(&str, &str, &str, Option<&str>)],
    ) -> (ServicePolicy, Vec<String>) {
        let mut text = String::new();
        for (m, p, c, s) in endpoints {
            text.push_str(&format!(
                "[[endpoint]]\nmethod = \"{m}\"\npath = \"{p}\"\nclassification = \"{c}\"\n"
            ));
            if let Some(s) = s {
                text.push_str(&format!("subject = \"{s}\"\n"));
            }
        }
        let raw: Endpoints = toml::from_str(&text).unwrap();
        let mut problems = Problems { list: Vec::new() };
        let policy = service_policy(
            Path::new("r.toml"),
            0,
            None,
            path_matching,
            &raw.endpoint,
            &mut problems,
        );
        let list = problems.list.iter().map(ToString::to_string).collect();
        (policy, list)
    }

    const SHADOWED: &[(&str, &str, &str, Option<&str>)] = &[
        ("GET", "/laporan/rekap-nik", "rahasia", None),
        ("GET", "/laporan/{id}", "terbuka", None),
    ];

    #[test]
    fn a_shadowed_literal_needs_path_matching() {
        let (_, problems) = load(None, SHADOWED);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(
            p.starts_with("r.toml: service[0].endpoint[1].path: `GET /laporan/{id}` (terbuka) also takes `/laporan/REKAP-NIK`"),
            "{p}"
        );
        assert!(p.contains("`GET /laporan/rekap-nik` (rahasia)"), "{p}");
        assert!(
            p.contains("path_matching")
                && p.contains("\"case_insensitive\"")
                && p.contains("\"exact\""),
            "{p}"
        );
        for (mode, want) in [
            ("exact", PathMatching::Exact),
            ("case_insensitive", PathMatching::CaseInsensitive),
        ] {
            let (policy, problems) = load(Some(mode), SHADOWED);
            assert!(problems.is_empty(), "{mode}: {problems:?}");
            assert_eq!(policy.path_matching, want);
        }
        let (_, problems) = load(Some("insensitive"), SHADOWED);
        assert_eq!(
            problems,
            ["r.toml: service[0].path_matching: `insensitive` is not \"exact\" or \"case_insensitive\""]
        );
        // The same classification, or a parameter of a higher one: nothing to refuse.
        let (_, problems) = load(
            None,
            &[
                ("GET", "/laporan/rekap", "terbuka", None),
                ("GET", "/laporan/{id}", "terbuka", None),
                ("GET", "/arsip/ringkas", "terbuka", None),
                ("GET", "/arsip/{id}", "rahasia", None),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn case_insensitive_paths_must_differ_when_folded() {
        let (_, problems) = load(
            Some("case_insensitive"),
            &[
                ("GET", "/laporan/Rekap", "terbuka", None),
                ("GET", "/laporan/rekap", "rahasia", None),
            ],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("the same path to a provider that ignores case"));
    }

    #[test]
    fn query_declarations_and_subjects() {
        let (policy, problems) = load(
            None,
            &[
                (
                    "GET",
                    "/penduduk?nik={nik}&tahun={tahun}",
                    "rahasia",
                    Some("nik"),
                ),
                ("GET", "/wilayah?jenis=desa", "terbuka", None),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            &*policy.endpoints[0].id,
            "GET /penduduk?nik={nik}&tahun={tahun}"
        );
        let (_, problems) = load(
            None,
            &[
                ("GET", "/penduduk?nik={nik}", "rahasia", Some("id")),
                ("GET", "/a?nik=", "rahasia", None),
                ("GET", "/b", "rahasia", None),
                ("GET", "/b?x={x}", "rahasia", None),
            ],
        );
        assert_eq!(
            problems,
            [
                "r.toml: service[0].endpoint[0].subject: `id` is not a parameter of `/penduduk?nik={nik}`",
                "r.toml: service[0].endpoint[1].path: `/a?nik=`: query part `nik=` is not `name={param}` or `name=value` (name and value of letters, digits, '-', '.', '_', '~'; parts joined by '&')",
                "r.toml: service[0].endpoint[3].path: `GET /b?x={x}` is declared twice (as `GET /b`: a query does not tell endpoints apart)",
            ]
        );
    }
}
