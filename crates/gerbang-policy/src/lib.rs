//! Data-sharing agreements (PKS, *perjanjian kerja sama*) and the default-deny decisions made
//! from them. Pure: no I/O, no clock of its own (the caller passes `now`), no configuration
//! format (the binary parses files into these types).
//!
//! - [`template`]: endpoint templates (`/penduduk/{nik}`, `/penduduk?nik={nik}`);
//! - [`fields`]: response field rules (allow-list, deny-list, mask) on JSON;
//! - [`limits`]: per-agreement, per-application rate limits (governor) and quotas;
//! - [`PolicySet`]: agreements indexed by (service, consumer) and [`PolicySet::decide`].
//!
//! ## The decision rule
//! 1. When the service declares endpoints, the request must match one (method and path
//!    template; the most specific template wins), else `method_not_allowed` (the path matches
//!    an endpoint of another method) or `endpoint_not_declared`. A service whose provider
//!    ignores case ([`PathMatching::CaseInsensitive`]) has its literals matched with case and
//!    trailing dots folded. An endpoint that names a subject or declares query parameters
//!    then checks the query ([`PathTemplate::match_query`]): on a subject endpoint only
//!    declared parameters, each once; anything ambiguous is refused with a `query_*` reason,
//!    which the gateway answers with 400 ([`Reason::is_bad_request`]), before any agreement
//!    is looked at. The subject comes from the path or the query, as the endpoint declares.
//! 2. Candidates are the agreements of this service whose consumers name the application, its
//!    agency, or `*`: three index lookups, never a scan. None: `no_agreement`.
//! 3. Candidates are tried from the most specific consumer (application, then agency, then
//!    `*`), ties by agreement id. Each is checked in this order: suspended, not yet valid,
//!    expired, endpoint not covered, method not allowed, classification exceeded, purpose
//!    missing, purpose not allowed. The first that passes every check decides: allow, subject
//!    to its rate limit and quota (a limited request is never passed on to a broader
//!    agreement). If none passes, the request is denied with the reason of the most specific
//!    candidate.

pub mod fields;
pub mod limits;
pub mod template;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use fields::{FieldPath, FieldRules, Mask};
pub use template::{PathMatching, PathTemplate, QueryError};

/// Data classification (SPBE / BSSN levels), ordered from open to secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Classification {
    Terbuka,
    Terbatas,
    Rahasia,
    SangatRahasia,
}

impl Classification {
    pub const NAMES: [&'static str; 4] = ["terbuka", "terbatas", "rahasia", "sangat-rahasia"];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Terbuka => "terbuka",
            Classification::Terbatas => "terbatas",
            Classification::Rahasia => "rahasia",
            Classification::SangatRahasia => "sangat-rahasia",
        }
    }
}

impl FromStr for Classification {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "terbuka" => Classification::Terbuka,
            "terbatas" => Classification::Terbatas,
            "rahasia" => Classification::Rahasia,
            "sangat-rahasia" => Classification::SangatRahasia,
            _ => return Err(()),
        })
    }
}

/// A declared endpoint of a service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Upper-case method, e.g. `GET`.
    pub method: String,
    pub template: PathTemplate,
    pub classification: Classification,
    /// The path or query parameter that names the data subject (e.g. `nik`), for the audit
    /// log. Its endpoint accepts only declared query parameters.
    pub subject_param: Option<String>,
    /// `METHOD /template`, e.g. `GET /penduduk/{nik}` or `GET /penduduk?nik={nik}`: how
    /// agreements name it. Shared: every call's record names its endpoint.
    pub id: std::sync::Arc<str>,
}

impl Endpoint {
    pub fn new(
        method: &str,
        template: PathTemplate,
        classification: Classification,
        subject_param: Option<String>,
    ) -> Self {
        let method = method.to_ascii_uppercase();
        let id = format!("{method} {}", template.as_str()).into();
        Self {
            method,
            template,
            classification,
            subject_param,
            id,
        }
    }
}

/// What the policy knows of one service.
#[derive(Debug, Clone)]
pub struct ServicePolicy {
    /// Declared endpoints; empty = the service declares none (any path is its own).
    pub endpoints: Vec<Endpoint>,
    /// Classification of the service, for calls when it declares no endpoints.
    pub classification: Classification,
    /// How the provider matches paths (`path_matching`); exact unless declared otherwise.
    pub path_matching: PathMatching,
}

/// A literal endpoint that a `{param}` endpoint of a lower classification takes case variants
/// of (see [`ServicePolicy::shadows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// Index in `endpoints` of the `{param}` endpoint (the lower classification).
    pub by: usize,
    /// Index of the endpoint whose literal it shadows.
    pub shadowed: usize,
    /// A path that the lower endpoint takes and a case-insensitive provider serves as the
    /// higher one, e.g. `/laporan/REKAP-NIK`.
    pub example: String,
}

impl ServicePolicy {
    /// Every pair of endpoints (whatever their methods) where one with a `{param}` (or `/*`)
    /// at some position, matched exactly, takes case or trailing-dot variants of a literal
    /// that another endpoint of a higher classification has at that position: with a provider
    /// that ignores case, such a call would be judged at the lower classification and served
    /// from the higher one. Methods are not compared: the provider's handlers of the higher
    /// path may serve other methods than the one declared.
    pub fn shadows(&self) -> Vec<Shadow> {
        let mut out = Vec::new();
        for (by, low) in self.endpoints.iter().enumerate() {
            for (shadowed, high) in self.endpoints.iter().enumerate() {
                if low.classification >= high.classification {
                    continue;
                }
                if let Some(example) = low.template.shadows(&high.template) {
                    out.push(Shadow {
                        by,
                        shadowed,
                        example,
                    });
                }
            }
        }
        out
    }
}

/// Who an agreement is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumer {
    /// One application, `agency/app`.
    Application(String),
    /// Every application of an agency.
    Agency(String),
    /// Everyone authenticated (public data).
    Anyone,
}

impl Consumer {
    /// `agency/app`, `agency` or `*`.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Consumer::Anyone
        } else if s.contains('/') {
            Consumer::Application(s.to_owned())
        } else {
            Consumer::Agency(s.to_owned())
        }
    }
}

/// Rate limit of an agreement, per consumer application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    /// Requests per `per`.
    pub limit: u32,
    pub per: RatePeriod,
    /// Requests allowed at once above the steady rate (at least `limit`... as configured).
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatePeriod {
    Second,
    Minute,
}

/// Quota of an agreement, per consumer application, in Asia/Jakarta calendar periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    pub limit: u64,
    pub per: QuotaPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// One data-sharing agreement.
#[derive(Debug, Clone)]
pub struct Agreement {
    pub id: String,
    pub title: String,
    /// The PKS document number.
    pub legal_basis: String,
    /// Provider service, `agency/service`.
    pub service: String,
    pub consumers: Vec<Consumer>,
    /// Covered endpoint ids (`GET /penduduk/{nik}`); empty = every endpoint of the service.
    pub endpoints: Vec<String>,
    /// Allowed methods (upper case); empty = any.
    pub methods: Vec<String>,
    /// When not empty, the request must name one in `X-Gerbang-Purpose`.
    pub purposes: Vec<String>,
    /// Seconds since the epoch.
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
    pub suspended: bool,
    pub max_classification: Classification,
    pub rate: Option<RateSpec>,
    pub quota: Option<QuotaSpec>,
    pub fields: FieldRules,
}

/// Why a request was denied. `as_str` gives the stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NoAgreement,
    EndpointNotCovered,
    EndpointNotDeclared,
    MethodNotAllowed,
    PurposeMissing,
    PurposeNotAllowed,
    AgreementNotYetValid,
    AgreementExpired,
    AgreementSuspended,
    ClassificationExceeded,
    RateLimited,
    QuotaExhausted,
    /// The query is not plain `name=value` pairs, or is ambiguous ([`QueryError::Malformed`]).
    QueryMalformed,
    /// An undeclared query parameter or value ([`QueryError::NotAllowed`]).
    QueryNotAllowed,
    /// A query parameter given more than once ([`QueryError::Repeated`]).
    QueryRepeated,
    /// A declared query parameter is missing ([`QueryError::Missing`]).
    QueryMissing,
}

impl From<QueryError> for Reason {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Malformed => Reason::QueryMalformed,
            QueryError::NotAllowed => Reason::QueryNotAllowed,
            QueryError::Repeated => Reason::QueryRepeated,
            QueryError::Missing => Reason::QueryMissing,
        }
    }
}

impl Reason {
    /// Every reason (for metrics exported at 0 before the first one; keep in step with
    /// `as_str`).
    pub const ALL: [Reason; 16] = [
        Reason::NoAgreement,
        Reason::EndpointNotCovered,
        Reason::EndpointNotDeclared,
        Reason::MethodNotAllowed,
        Reason::PurposeMissing,
        Reason::PurposeNotAllowed,
        Reason::AgreementNotYetValid,
        Reason::AgreementExpired,
        Reason::AgreementSuspended,
        Reason::ClassificationExceeded,
        Reason::RateLimited,
        Reason::QuotaExhausted,
        Reason::QueryMalformed,
        Reason::QueryNotAllowed,
        Reason::QueryRepeated,
        Reason::QueryMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoAgreement => "no_agreement",
            Reason::EndpointNotCovered => "endpoint_not_covered",
            Reason::EndpointNotDeclared => "endpoint_not_declared",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::PurposeMissing => "purpose_missing",
            Reason::PurposeNotAllowed => "purpose_not_allowed",
            Reason::AgreementNotYetValid => "agreement_not_yet_valid",
            Reason::AgreementExpired => "agreement_expired",
            Reason::AgreementSuspended => "agreement_suspended",
            Reason::ClassificationExceeded => "classification_exceeded",
            Reason::RateLimited => "rate_limited",
            Reason::QuotaExhausted => "quota_exhausted",
            Reason::QueryMalformed => "query_malformed",
            Reason::QueryNotAllowed => "query_not_allowed",
            Reason::QueryRepeated => "query_repeated",
            Reason::QueryMissing => "query_missing",
        }
    }

    /// The request itself is refused (HTTP 400: its query does not fit the endpoint), rather
    /// than denied by the agreements (403) or limited (429).
    pub fn is_bad_request(self) -> bool {
        matches!(
            self,
            Reason::QueryMalformed
                | Reason::QueryNotAllowed
                | Reason::QueryRepeated
                | Reason::QueryMissing
        )
    }

    /// A sentence for the client.
    pub fn message(self) -> &'static str {
        match self {
            Reason::NoAgreement => {
                "no data-sharing agreement allows this application to call this service"
            }
            Reason::EndpointNotCovered => "the agreement does not cover this endpoint",
            Reason::EndpointNotDeclared => {
                "the service does not offer this endpoint through the gateway"
            }
            Reason::MethodNotAllowed => "this method is not allowed on this endpoint",
            Reason::PurposeMissing => {
                "the agreement requires the purpose of processing in X-Gerbang-Purpose"
            }
            Reason::PurposeNotAllowed => "the agreement does not allow this purpose of processing",
            Reason::AgreementNotYetValid => "the agreement is not in force yet",
            Reason::AgreementExpired => "the agreement has expired",
            Reason::AgreementSuspended => "the agreement is suspended",
            Reason::ClassificationExceeded => {
                "the data is classified above what the agreement covers"
            }
            Reason::RateLimited => {
                "the agreement's rate limit is reached; retry after the Retry-After delay"
            }
            Reason::QuotaExhausted => "the agreement's quota for this period is used up",
            Reason::QueryMalformed => {
                "the query must be name=value pairs joined by '&': no ';' or '+', no empty or encoded names, no encoded delimiters, and a plain subject value"
            }
            Reason::QueryNotAllowed => {
                "this endpoint does not accept this query parameter or value (names are case-sensitive)"
            }
            Reason::QueryRepeated => "a query parameter is given more than once",
            Reason::QueryMissing => "a query parameter this endpoint requires is missing or empty",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The calling application, `agency/app`.
    pub application: &'a str,
    pub agency: &'a str,
    /// Provider service, `agency/service`.
    pub service: &'a str,
    pub method: &'a str,
    /// The normalised path below the service, starting with `/`.
    pub path: &'a str,
    /// The raw query (after `?`, as forwarded), `None` without a `?`.
    pub query: Option<&'a str>,
    pub purpose: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: i64,
}

/// The outcome of the static checks (everything but rate limits and quotas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow {
        agreement: usize,
    },
    Deny {
        reason: Reason,
        agreement: Option<usize>,
    },
}

/// A decision with what it was made on.
#[derive(Debug, Clone)]
pub struct Decision<'p, 'a> {
    pub outcome: Outcome,
    /// The endpoint the request matched, when the service declares endpoints.
    pub endpoint: Option<&'p Endpoint>,
    /// The value of the endpoint's subject parameter (e.g. the NIK) from the path or the query,
    /// byte for byte what the provider receives; for the audit log only.
    pub subject: Option<&'a str>,
}

/// Every agreement considered for an explanation, with why it did or did not decide.
#[derive(Debug, Clone)]
pub struct Explanation<'p, 'a> {
    pub decision: Decision<'p, 'a>,
    /// (agreement id, consumer match, `None` = passed the checks, `Some(reason)` = failed).
    pub considered: Vec<(&'p str, &'static str, Option<Reason>)>,
}

/// The maps a decision looks up (two to four per request): foldhash, not SipHash. Their keys
/// are configuration (service, application and agency ids), never chosen by a client.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct ServiceIndex {
    by_application: FastMap<String, Vec<usize>>,
    by_agency: FastMap<String, Vec<usize>>,
    anyone: Vec<usize>,
}

/// Agreements and service endpoints, indexed for decisions.
#[derive(Debug, Default)]
pub struct PolicySet {
    services: FastMap<String, ServicePolicy>,
    agreements: Vec<Agreement>,
    /// Each agreement's id, shared: a call names its agreement without a copy.
    agreement_ids: Vec<Arc<str>>,
    index: FastMap<String, ServiceIndex>,
}

impl PolicySet {
    /// Builds the index. Endpoints are ordered most specific first.
    pub fn new(services: HashMap<String, ServicePolicy>, agreements: Vec<Agreement>) -> Self {
        let mut services: FastMap<String, ServicePolicy> = services.into_iter().collect();
        for s in services.values_mut() {
            s.endpoints
                .sort_by_key(|e| std::cmp::Reverse(e.template.specificity()));
        }
        let mut index: FastMap<String, ServiceIndex> = FastMap::default();
        // Ties are broken by agreement id: insert in id order.
        let mut order: Vec<usize> = (0..agreements.len()).collect();
        order.sort_by(|a, b| agreements[*a].id.cmp(&agreements[*b].id));
        for i in order {
            let a = &agreements[i];
            let entry = index.entry(a.service.clone()).or_default();
            for c in &a.consumers {
                let list = match c {
                    Consumer::Application(app) => {
                        entry.by_application.entry(app.clone()).or_default()
                    }
                    Consumer::Agency(ag) => entry.by_agency.entry(ag.clone()).or_default(),
                    Consumer::Anyone => &mut entry.anyone,
                };
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
        let agreement_ids = agreements
            .iter()
            .map(|a| Arc::from(a.id.as_str()))
            .collect();
        Self {
            services,
            agreements,
            agreement_ids,
            index,
        }
    }

    #[cfg(test)]
    pub(crate) fn services_for_tests(&self) -> HashMap<String, ServicePolicy> {
        self.services
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn agreements(&self) -> &[Agreement] {
        &self.agreements
    }

    pub fn agreement(&self, i: usize) -> Option<&Agreement> {
        self.agreements.get(i)
    }

    /// The id of agreement `i`, shared.
    pub fn agreement_id(&self, i: usize) -> Option<&Arc<str>> {
        self.agreement_ids.get(i)
    }

    pub fn service(&self, id: &str) -> Option<&ServicePolicy> {
        self.services.get(id)
    }

    /// The static decision for `req`.
    pub fn decide<'p, 'a>(&'p self, req: &Request<'a>) -> Decision<'p, 'a> {
        self.evaluate(req, None)
    }

    /// The decision and every agreement considered.
    pub fn explain<'p, 'a>(&'p self, req: &Request<'a>) -> Explanation<'p, 'a> {
        let mut considered = Vec::new();
        let decision = self.evaluate(req, Some(&mut considered));
        Explanation {
            decision,
            considered,
        }
    }

    fn evaluate<'p, 'a>(
        &'p self,
        req: &Request<'a>,
        mut trace: Option<&mut Vec<(&'p str, &'static str, Option<Reason>)>>,
    ) -> Decision<'p, 'a> {
        let deny = |reason, agreement, endpoint, subject| Decision {
            outcome: Outcome::Deny { reason, agreement },
            endpoint,
            subject,
        };
        // 1. The endpoint.
        let service = self.services.get(req.service);
        let mut endpoint: Option<&'p Endpoint> = None;
        let mut subject: Option<&'a str> = None;
        let classification;
        match service {
            Some(s) if !s.endpoints.is_empty() => {
                let mut path_matched = false;
                for e in &s.endpoints {
                    let Some(params) = e.template.matches_with(req.path, s.path_matching) else {
                        continue;
                    };
                    path_matched = true;
                    if e.method == req.method {
                        endpoint = Some(e);
                        subject = e.subject_param.as_deref().and_then(|name| {
                            params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
                        });
                        break;
                    }
                }
                let Some(e) = endpoint else {
                    let reason = if path_matched {
                        Reason::MethodNotAllowed
                    } else {
                        Reason::EndpointNotDeclared
                    };
                    return deny(reason, None, None, None);
                };
                classification = e.classification;
                // The query: checked on a subject endpoint (only declared parameters) and on
                // one that declares parameters; refused before any agreement is considered.
                if e.subject_param.is_some() || e.template.declares_query() {
                    let subject_param = e.subject_param.as_deref();
                    match e
                        .template
                        .match_query(req.query, subject_param.is_some(), subject_param)
                    {
                        Ok(params) => {
                            if subject.is_none() {
                                subject = subject_param.and_then(|name| {
                                    params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
                                });
                            }
                        }
                        Err(q) => return deny(q.into(), None, endpoint, subject),
                    }
                }
            }
            Some(s) => classification = s.classification,
            None => classification = Classification::Terbatas,
        }
        // 2. Candidates: three lookups.
        let Some(ix) = self.index.get(req.service) else {
            return deny(Reason::NoAgreement, None, endpoint, subject);
        };
        let tiers: [(&'static str, &[usize]); 3] = [
            (
                "application",
                ix.by_application
                    .get(req.application)
                    .map_or(&[], Vec::as_slice),
            ),
            (
                "agency",
                ix.by_agency.get(req.agency).map_or(&[], Vec::as_slice),
            ),
            ("*", ix.anyone.as_slice()),
        ];
        let mut first_failure: Option<(Reason, usize)> = None;
        let mut winner: Option<usize> = None;
        for (matched_by, list) in tiers {
            for &i in list {
                let Some(a) = self.agreements.get(i) else {
                    continue;
                };
                // An agreement naming both the application and its agency is tried once.
                if seen_before(a, req, matched_by) {
                    continue;
                }
                let result = check(a, req, endpoint, classification);
                match trace.as_deref_mut() {
                    // Explaining: record every candidate; the first that passes still decides.
                    Some(t) => t.push((a.id.as_str(), matched_by, result.err())),
                    None if result.is_ok() => {
                        return Decision {
                            outcome: Outcome::Allow { agreement: i },
                            endpoint,
                            subject,
                        }
                    }
                    None => {}
                }
                match result {
                    Ok(()) => {
                        winner.get_or_insert(i);
                    }
                    Err(reason) => {
                        first_failure.get_or_insert((reason, i));
                    }
                }
            }
        }
        match (winner, first_failure) {
            (Some(i), _) => Decision {
                outcome: Outcome::Allow { agreement: i },
                endpoint,
                subject,
            },
            (None, Some((reason, i))) => deny(reason, Some(i), endpoint, subject),
            (None, None) => deny(Reason::NoAgreement, None, endpoint, subject),
        }
    }
}

/// Whether `a` was already tried in a more specific tier for this request.
fn seen_before(a: &Agreement, req: &Request<'_>, tier: &str) -> bool {
    let names_app = || {
        a.consumers
            .iter()
            .any(|c| matches!(c, Consumer::Application(x) if x == req.application))
    };
    let names_agency = || {
        a.consumers
            .iter()
            .any(|c| matches!(c, Consumer::Agency(x) if x == req.agency))
    };
    match tier {
        "agency" => names_app(),
        "*" => names_app() || names_agency(),
        _ => false,
    }
}

/// The static checks of one agreement, in the documented order.
fn check(
    a: &Agreement,
    req: &Request<'_>,
    endpoint: Option<&Endpoint>,
    classification: Classification,
) -> Result<(), Reason> {
    if a.suspended {
        return Err(Reason::AgreementSuspended);
    }
    if a.valid_from.is_some_and(|t| req.now < t) {
        return Err(Reason::AgreementNotYetValid);
    }
    if a.valid_until.is_some_and(|t| req.now > t) {
        return Err(Reason::AgreementExpired);
    }
    if let Some(e) = endpoint {
        if !a.endpoints.is_empty() && !a.endpoints.iter().any(|n| **n == *e.id) {
            return Err(Reason::EndpointNotCovered);
        }
    }
    if !a.methods.is_empty() && !a.methods.iter().any(|m| m == req.method) {
        return Err(Reason::MethodNotAllowed);
    }
    if classification > a.max_classification {
        return Err(Reason::ClassificationExceeded);
    }
    if !a.purposes.is_empty() {
        match req.purpose {
            None => return Err(Reason::PurposeMissing),
            Some(p) if !a.purposes.iter().any(|x| x == p) => return Err(Reason::PurposeNotAllowed),
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
