//! The service registry: which agencies (OPD) exist, which applications they run, which services
//! they offer through the gateway and where those services' upstream instances live.
//!
//! Types here are already validated: the binary parses and checks the configuration files and
//! builds a [`Registry`] with [`RegistryBuilder`]. The registry is immutable once built; a reload
//! builds a new one and swaps it in whole, adopting the health state of unchanged instances.
//!
//! As in pingora-load-balancing, discovery (the instances a service lists), health
//! ([`health`]: active checks and passive outlier detection) and selection ([`balance`]) are
//! separate; selection reads health through atomics and takes no lock.

pub mod balance;
pub mod health;
pub mod resilience;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use balance::Balancing;
pub use health::{HealthCheckSettings, InstanceHealth, InstanceState, OutlierSettings};
pub use resilience::{BreakerSettings, RetryPolicy, ServiceLoad};

/// A government agency (OPD), e.g. `dukcapil`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agency {
    /// Slug used in URLs and identifiers: lower-case letters, digits and `-`.
    pub id: String,
    /// Human-readable name, e.g. "Dinas Kependudukan dan Pencatatan Sipil".
    pub name: String,
}

/// A backend system of an agency; the unit that authenticates (`agency/app`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// The owning agency's slug.
    pub agency: String,
    /// The application's slug within its agency.
    pub id: String,
    pub name: String,
}

impl Application {
    /// The full identifier, `agency/app`.
    pub fn full_id(&self) -> String {
        format!("{}/{}", self.agency, self.id)
    }
}

/// URL scheme of an upstream instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One upstream instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Name unique within the service, e.g. `penduduk-1`; used in logs and metrics.
    pub name: String,
    pub scheme: Scheme,
    /// `host:port` (or `host` with the scheme's default port), as sent in `Host`.
    pub authority: http::uri::Authority,
    /// Share of traffic under weighted balancing, 1 to [`balance::MAX_WEIGHT`].
    pub weight: u32,
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority)
    }
}

/// Per-service limits and timeouts, already defaulted from the global settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Time allowed to establish a connection to an instance (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time allowed from forwarding the request until the response head arrives.
    pub request_timeout: Duration,
    /// Largest request body accepted for this service; `None` means no limit.
    pub max_body_bytes: Option<u64>,
}

/// An API that a provider agency offers through the gateway (`agency/service`).
#[derive(Debug)]
pub struct Service {
    pub agency: String,
    pub id: String,
    pub name: String,
    /// Path prefix on the upstream, without a trailing slash; empty for the root.
    pub base_path: String,
    pub limits: ServiceLimits,
    pub instances: Vec<Instance>,
    pub balancing: Balancing,
    pub outlier: OutlierSettings,
    pub health_check: Option<HealthCheckSettings>,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
    /// Request header names containing `_` that this service's provider expects, lower case;
    /// every other such name is dropped before forwarding.
    pub allow_underscore_headers: Vec<String>,
    /// Requests, retries and connection attempts in flight (circuit breaking, retry budget);
    /// carried over by a reload like instance health.
    pub load: Arc<ServiceLoad>,
    /// Live state of each instance (same order as `instances`).
    health: Vec<Arc<InstanceHealth>>,
    selector: balance::Selector,
    /// Dense index of this service in its registry, for per-service side tables.
    pub index: usize,
    /// `agency/service`, computed once, shared with every call's record.
    full_id: Arc<str>,
}

impl Service {
    /// The full identifier, `agency/service`.
    pub fn full_id(&self) -> &str {
        &self.full_id
    }

    /// The full identifier, shared: a call that names its service in its record and metrics
    /// takes a reference, not a copy.
    pub fn full_id_shared(&self) -> &Arc<str> {
        &self.full_id
    }

    /// Picks an instance for a call: its index in [`Service::instances`] and the instance.
    /// `key` is the value of the consistent-hash header (if any); `tried` are instances this
    /// call already used. `None` when no instance is available.
    pub fn select(&self, key: Option<&[u8]>, tried: &[usize]) -> Option<(usize, &Instance)> {
        // The clock is read only when an ejection can matter: while no instance has ever been
        // ejected, availability at time 0 is availability now.
        let now = if self.health.iter().any(|h| h.ever_ejected()) {
            health::now_ms()
        } else {
            0
        };
        let i = self
            .selector
            .select(&self.balancing, &self.health, key, tried, now)?;
        self.instances.get(i).map(|inst| (i, inst))
    }

    /// [`Service::select`] with no key and nothing tried.
    pub fn pick(&self) -> Option<(usize, &Instance)> {
        self.select(None, &[])
    }

    /// The live state of instance `i`.
    pub fn health(&self, i: usize) -> Option<&Arc<InstanceHealth>> {
        self.health.get(i)
    }

    /// Every instance with its state now.
    pub fn instance_states(&self) -> impl Iterator<Item = (&Instance, InstanceState)> {
        let now = health::now_ms();
        self.instances
            .iter()
            .zip(&self.health)
            .map(move |(i, h)| (i, h.state(now)))
    }

    /// Whether any instance takes calls now.
    pub fn any_available(&self) -> bool {
        let now = health::now_ms();
        self.health.iter().any(|h| h.available(now))
    }
}

/// Why a lookup found no service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    UnknownAgency,
    UnknownService,
}

/// The maps every request looks up (agency, then service): foldhash, not SipHash. Their keys
/// are configuration, never chosen by a client.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct AgencyEntry {
    agency: Option<Agency>,
    /// Service slug → index in `Registry::services`.
    services: FastMap<String, usize>,
}

/// An immutable, validated registry snapshot.
#[derive(Debug, Default)]
pub struct Registry {
    agencies: FastMap<String, AgencyEntry>,
    applications: Vec<Application>,
    services: Vec<Arc<Service>>,
}

impl Registry {
    /// Finds the service `agency/service` (both slugs as they appear in the path).
    pub fn lookup(&self, agency: &str, service: &str) -> Result<&Arc<Service>, LookupError> {
        let entry = self
            .agencies
            .get(agency)
            .ok_or(LookupError::UnknownAgency)?;
        entry
            .services
            .get(service)
            .and_then(|i| self.services.get(*i))
            .ok_or(LookupError::UnknownService)
    }

    /// Takes over the health state of every instance that `old` also has (same service, name,
    /// scheme and authority), so that a reload neither forgets an ejection nor re-checks from
    /// scratch. Call before the registry is shared.
    pub fn adopt_health(&mut self, old: &Registry) {
        for svc in &mut self.services {
            let Some(prev) = old
                .lookup(&svc.agency, &svc.id)
                .ok()
                .filter(|p| p.full_id == svc.full_id)
            else {
                continue;
            };
            let Some(svc) = Arc::get_mut(svc) else {
                continue;
            };
            svc.load = Arc::clone(&prev.load);
            for (i, inst) in svc.instances.iter().enumerate() {
                let same = prev.instances.iter().position(|p| {
                    p.name == inst.name && p.scheme == inst.scheme && p.authority == inst.authority
                });
                if let (Some(j), Some(slot)) = (same, svc.health.get_mut(i)) {
                    if let Some(h) = prev.health.get(j) {
                        // A verdict of checks that no longer exist (or changed) must not keep
                        // the instance out: nothing would ever bring it back.
                        if svc.health_check != prev.health_check {
                            h.reset_check();
                        }
                        *slot = Arc::clone(h);
                    }
                }
            }
        }
    }

    pub fn agencies(&self) -> impl Iterator<Item = &Agency> {
        self.agencies.values().filter_map(|e| e.agency.as_ref())
    }

    pub fn applications(&self) -> &[Application] {
        &self.applications
    }

    /// Services in index order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    pub fn application(&self, agency: &str, app: &str) -> Option<&Application> {
        self.applications
            .iter()
            .find(|a| a.agency == agency && a.id == app)
    }
}

/// Why the builder refused an entry. The binary checks the same rules earlier with file and key
/// context; these are the last line of defence for programmatic callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    DuplicateAgency(String),
    UnknownAgency(String),
    DuplicateService(String),
    DuplicateApplication(String),
    /// A service's base path that is not a plain absolute path (see [`valid_base_path`]).
    InvalidBasePath(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::DuplicateAgency(a) => write!(f, "agency `{a}` is defined twice"),
            BuildError::UnknownAgency(a) => write!(f, "agency `{a}` is not defined"),
            BuildError::DuplicateService(s) => write!(f, "service `{s}` is defined twice"),
            BuildError::DuplicateApplication(s) => write!(f, "application `{s}` is defined twice"),
            BuildError::InvalidBasePath(s) => write!(
                f,
                "service `{s}`: base_path must be empty or an absolute path of visible ASCII without `?` or `#`"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// Whether `path` may be a service's base path: empty, or `/` then visible ASCII other than
/// `?` and `#`. The gateway writes it into the upstream request line as it is, so no byte of
/// it may end the target or the line. (The configuration asks more: a normalised path.)
pub fn valid_base_path(path: &str) -> bool {
    path.is_empty()
        || (path.starts_with('/')
            && path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'))
}

/// Assembles a [`Registry`].
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    registry: Registry,
}

/// Everything needed to add a service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub agency: String,
    pub id: String,
    pub name: String,
    pub base_path: String,
    pub limits: ServiceLimits,
    pub instances: Vec<Instance>,
    pub balancing: Balancing,
    pub outlier: OutlierSettings,
    pub health_check: Option<HealthCheckSettings>,
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
    /// See [`Service::allow_underscore_headers`].
    pub allow_underscore_headers: Vec<String>,
}

impl ServiceSpec {
    /// A spec with round-robin balancing, default outlier detection and no active checks.
    pub fn new(
        agency: impl Into<String>,
        id: impl Into<String>,
        limits: ServiceLimits,
        instances: Vec<Instance>,
    ) -> Self {
        let id = id.into();
        Self {
            agency: agency.into(),
            name: id.clone(),
            id,
            base_path: String::new(),
            limits,
            instances,
            balancing: Balancing::RoundRobin,
            outlier: OutlierSettings::default(),
            health_check: None,
            retry: RetryPolicy::default(),
            breaker: BreakerSettings::default(),
            allow_underscore_headers: Vec::new(),
        }
    }
}

impl RegistryBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn agency(&mut self, agency: Agency) -> Result<&mut Self, BuildError> {
        let entry = self.registry.agencies.entry(agency.id.clone()).or_default();
        if entry.agency.is_some() {
            return Err(BuildError::DuplicateAgency(agency.id));
        }
        entry.agency = Some(agency);
        Ok(self)
    }

    pub fn application(&mut self, app: Application) -> Result<&mut Self, BuildError> {
        if !self.has_agency(&app.agency) {
            return Err(BuildError::UnknownAgency(app.agency));
        }
        if self.registry.application(&app.agency, &app.id).is_some() {
            return Err(BuildError::DuplicateApplication(app.full_id()));
        }
        self.registry.applications.push(app);
        Ok(self)
    }

    pub fn service(&mut self, spec: ServiceSpec) -> Result<&mut Self, BuildError> {
        if !valid_base_path(&spec.base_path) {
            return Err(BuildError::InvalidBasePath(format!(
                "{}/{}",
                spec.agency, spec.id
            )));
        }
        let index = self.registry.services.len();
        let entry = match self.registry.agencies.get_mut(&spec.agency) {
            Some(e) if e.agency.is_some() => e,
            _ => return Err(BuildError::UnknownAgency(spec.agency)),
        };
        if entry.services.contains_key(&spec.id) {
            return Err(BuildError::DuplicateService(format!(
                "{}/{}",
                spec.agency, spec.id
            )));
        }
        let full_id: Arc<str> = format!("{}/{}", spec.agency, spec.id).into();
        let weights: Vec<u32> = spec.instances.iter().map(|i| i.weight).collect();
        let service = Arc::new(Service {
            full_id,
            agency: spec.agency,
            id: spec.id.clone(),
            name: spec.name,
            base_path: spec.base_path,
            limits: spec.limits,
            health: spec
                .instances
                .iter()
                .map(|_| Arc::new(InstanceHealth::default()))
                .collect(),
            selector: balance::Selector::new(&spec.balancing, &weights),
            instances: spec.instances,
            balancing: spec.balancing,
            outlier: spec.outlier,
            health_check: spec.health_check,
            retry: spec.retry,
            breaker: spec.breaker,
            allow_underscore_headers: spec.allow_underscore_headers,
            load: Arc::new(ServiceLoad::default()),
            index,
        });
        entry.services.insert(spec.id, index);
        self.registry.services.push(service);
        Ok(self)
    }

    fn has_agency(&self, id: &str) -> bool {
        self.registry
            .agencies
            .get(id)
            .is_some_and(|e| e.agency.is_some())
    }

    pub fn build(self) -> Registry {
        self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServiceLimits {
        ServiceLimits {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            max_body_bytes: None,
        }
    }

    fn instance(name: &str, port: u16) -> Instance {
        Instance {
            name: name.into(),
            scheme: Scheme::Http,
            authority: format!("127.0.0.1:{port}").parse().unwrap(),
            weight: 1,
        }
    }

    /// A builder that knows the agency `dukcapil`.
    fn with_agency() -> RegistryBuilder {
        let mut b = RegistryBuilder::new();
        b.agency(Agency {
            id: "dukcapil".into(),
            name: "Disdukcapil".into(),
        })
        .unwrap();
        b
    }

    /// `dukcapil/penduduk` on one instance.
    fn one_instance_service() -> ServiceSpec {
        ServiceSpec::new("dukcapil", "penduduk", limits(), vec![instance("a", 1)])
    }

    fn registry() -> Registry {
        let mut b = with_agency();
        b.service(ServiceSpec::new(
            "dukcapil",
            "penduduk",
            limits(),
            vec![instance("a", 1), instance("b", 2), instance("c", 3)],
        ))
        .unwrap();
        b.build()
    }

    /// The gateway writes a base path into the upstream request line as it is: a byte that
    /// ends the target (`?`, `#`, space) or the line (CR, LF) is refused when the registry is
    /// built, whatever built it.
    #[test]
    fn a_base_path_that_could_break_the_request_line_is_refused() {
        for ok in ["", "/", "/api", "/api/v1", "/a%20b/~x"] {
            assert!(valid_base_path(ok), "{ok:?}");
        }
        for bad in [
            "api",
            "/a b",
            "/a\r\nHost: x",
            "/a?x",
            "/a#x",
            "/a\u{7f}",
            "/é",
            "/a\tb",
        ] {
            assert!(!valid_base_path(bad), "{bad:?}");
            let mut b = with_agency();
            let mut spec = one_instance_service();
            spec.base_path = bad.into();
            assert!(matches!(
                b.service(spec),
                Err(BuildError::InvalidBasePath(_))
            ));
        }
    }

    #[test]
    fn lookup_distinguishes_unknown_agency_and_service() {
        let r = registry();
        assert_eq!(r.lookup("dukcapil", "penduduk").unwrap().id, "penduduk");
        assert_eq!(
            r.lookup("dinkes", "penduduk").unwrap_err(),
            LookupError::UnknownAgency
        );
        assert_eq!(
            r.lookup("dukcapil", "pbb").unwrap_err(),
            LookupError::UnknownService
        );
    }

    #[test]
    fn round_robin_visits_every_instance_evenly() {
        let r = registry();
        let s = r.lookup("dukcapil", "penduduk").unwrap();
        let mut counts = HashMap::new();
        for _ in 0..300 {
            *counts.entry(s.pick().unwrap().1.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    }

    #[test]
    fn an_ejected_instance_is_skipped_at_once_and_taken_back_when_its_ejection_runs_out() {
        let r = registry();
        let s = r.lookup("dukcapil", "penduduk").unwrap();
        assert!((0..3).all(|i| !s.health(i).unwrap().ever_ejected()));
        let eject = OutlierSettings {
            consecutive_failures: 1,
            ..Default::default()
        };
        // Ejected at the clock's current reading: select must read the clock from now on.
        let now = health::now_ms();
        assert!(s.health(1).unwrap().report_failure(now, &eject).is_some());
        assert!(s.health(1).unwrap().ever_ejected());
        for _ in 0..30 {
            let (i, _) = s.pick().unwrap();
            assert_ne!(i, 1, "an ejected instance was picked");
        }
        // A 1 ms ejection that has run out: select must read the clock (at time 0 the
        // instance would still look ejected) and take the instance back.
        let short = OutlierSettings {
            consecutive_failures: 1,
            base_ejection: std::time::Duration::from_millis(1),
            max_ejection: std::time::Duration::from_millis(1),
        };
        assert!(s
            .health(2)
            .unwrap()
            .report_failure(health::now_ms(), &short)
            .is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let picked: Vec<usize> = (0..30).map(|_| s.pick().unwrap().0).collect();
        assert!(
            picked.contains(&2),
            "an expired ejection kept the instance out: {picked:?}"
        );
    }

    #[test]
    fn a_reload_keeps_the_health_of_unchanged_instances_only() {
        let old = registry();
        let s = old.lookup("dukcapil", "penduduk").unwrap();
        let eject = OutlierSettings {
            consecutive_failures: 1,
            ..Default::default()
        };
        for i in 0..3 {
            assert!(s.health(i).unwrap().report_failure(0, &eject).is_some());
        }
        let mut b = RegistryBuilder::new();
        b.agency(Agency {
            id: "dukcapil".into(),
            name: "Disdukcapil".into(),
        })
        .unwrap();
        // `a` unchanged, `b` moved to another port, `c` gone, `d` new.
        b.service(ServiceSpec::new(
            "dukcapil",
            "penduduk",
            limits(),
            vec![instance("a", 1), instance("b", 9), instance("d", 4)],
        ))
        .unwrap();
        let mut new = b.build();
        new.adopt_health(&old);
        let states: Vec<&str> = new
            .lookup("dukcapil", "penduduk")
            .unwrap()
            .instance_states()
            .map(|(_, st)| st.as_str())
            .collect();
        assert_eq!(states, ["ejected", "healthy", "healthy"]);
    }

    #[test]
    fn removing_the_health_check_forgets_its_verdict() {
        let check = HealthCheckSettings {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        };
        let build = |hc: Option<HealthCheckSettings>| {
            let mut b = with_agency();
            let mut spec = one_instance_service();
            spec.health_check = hc;
            b.service(spec).unwrap();
            b.build()
        };
        let old = build(Some(check.clone()));
        let h = old
            .lookup("dukcapil", "penduduk")
            .unwrap()
            .health(0)
            .unwrap();
        assert_eq!(h.record_check(false, &check), Some(false));
        // Same checks: the verdict stays.
        let mut same = build(Some(check.clone()));
        same.adopt_health(&old);
        assert!(!same.lookup("dukcapil", "penduduk").unwrap().any_available());
        // Checks removed: nothing could bring the instance back, so the verdict goes.
        let mut without = build(None);
        without.adopt_health(&same);
        assert!(without
            .lookup("dukcapil", "penduduk")
            .unwrap()
            .any_available());
    }

    #[test]
    fn builder_refuses_duplicates_and_orphans() {
        let mut b = RegistryBuilder::new();
        let a = Agency {
            id: "x".into(),
            name: "X".into(),
        };
        b.agency(a.clone()).unwrap();
        assert_eq!(
            b.agency(a).unwrap_err(),
            BuildError::DuplicateAgency("x".into())
        );
        let orphan = Application {
            agency: "y".into(),
            id: "app".into(),
            name: "App".into(),
        };
        assert_eq!(
            b.application(orphan).unwrap_err(),
            BuildError::UnknownAgency("y".into())
        );
    }
}
