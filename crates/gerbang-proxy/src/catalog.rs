//! The service catalogue on the data plane (GovStack Information Mediator's directory, SPLP's
//! *katalog layanan*): what the gateway offers and what the calling application may use.
//! Authenticated like any call; the agency id `catalog` is reserved so no service can shadow it.
//!
//! - `GET /catalog/services`: every service with its owner agency, classification, declared
//!   endpoints and whether an instance is available now;
//! - `GET /catalog/allowed`: the agreements that name the caller (by application, agency or
//!   `*`), with their state now, covered endpoints, methods, purposes, period, limits and the
//!   field rules applied to responses.

use gerbang_auth::Principal;
use gerbang_policy::{Agreement, Classification, Consumer, PolicySet};
use gerbang_registry::Registry;
use serde_json::{json, Value};

pub const SERVICES_PATH: &str = "/catalog/services";
pub const ALLOWED_PATH: &str = "/catalog/allowed";

/// Whether `path` belongs to the catalogue (checked before routing).
pub fn is_catalog_path(path: &str) -> bool {
    path == "/catalog" || path.starts_with("/catalog/")
}

fn endpoints_of(policy: &PolicySet, service: &str, max: Option<Classification>) -> Vec<Value> {
    policy
        .service(service)
        .map(|s| {
            s.endpoints
                .iter()
                .filter(|e| max.is_none_or(|m| e.classification <= m))
                .map(|e| {
                    json!({
                        "id": &*e.id,
                        "method": e.method,
                        "path": e.template.as_str(),
                        "classification": e.classification.as_str(),
                        "personal_data": e.subject_param.is_some(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /catalog/services`.
pub fn services(registry: &Registry, policy: &PolicySet) -> Value {
    let agency_name = |id: &str| {
        registry
            .agencies()
            .find(|a| a.id == id)
            .map(|a| a.name.clone())
            .unwrap_or_default()
    };
    let mut list: Vec<Value> = registry
        .services()
        .iter()
        .map(|s| {
            let healthy = s
                .instance_states()
                .filter(|(_, st)| *st == gerbang_registry::InstanceState::Healthy)
                .count();
            json!({
                "service": s.full_id(),
                "name": s.name,
                "agency": { "id": s.agency, "name": agency_name(&s.agency) },
                "classification": policy.service(s.full_id()).map(|p| p.classification.as_str()),
                "endpoints": endpoints_of(policy, s.full_id(), None),
                "health": {
                    "available": s.any_available(),
                    "instances": s.instances.len(),
                    "healthy_instances": healthy,
                },
            })
        })
        .collect();
    list.sort_by(|a, b| a["service"].as_str().cmp(&b["service"].as_str()));
    json!({ "services": list })
}

fn names(a: &Agreement, p: &Principal) -> Option<&'static str> {
    a.consumers.iter().find_map(|c| match c {
        Consumer::Application(app) if *app == p.application => Some("application"),
        Consumer::Agency(ag) if *ag == p.agency => Some("agency"),
        Consumer::Anyone => Some("anyone"),
        _ => None,
    })
}

/// `GET /catalog/allowed` for the caller `p` at Unix time `now`.
pub fn allowed(p: &Principal, policy: &PolicySet, now: i64) -> Value {
    let list: Vec<Value> = policy
        .agreements()
        .iter()
        .filter_map(|a| {
            let matched_by = names(a, p)?;
            let state = if a.suspended {
                "suspended"
            } else if a.valid_from.is_some_and(|f| now < f) {
                "not_yet_valid"
            } else if a.valid_until.is_some_and(|u| now > u) {
                "expired"
            } else {
                "active"
            };
            let mut endpoints = endpoints_of(policy, &a.service, Some(a.max_classification));
            if !a.endpoints.is_empty() {
                endpoints.retain(|e| {
                    e["id"]
                        .as_str()
                        .is_some_and(|id| a.endpoints.iter().any(|x| x == id))
                });
            }
            let paths = |v: &[gerbang_policy::FieldPath]| {
                v.iter().map(|f| f.as_str().to_owned()).collect::<Vec<_>>()
            };
            Some(json!({
                "agreement": a.id,
                "title": a.title,
                "legal_basis": a.legal_basis,
                "service": a.service,
                "matched_by": matched_by,
                "state": state,
                "valid_from": a.valid_from,
                "valid_until": a.valid_until,
                "endpoints": endpoints,
                "methods": a.methods,
                "purposes": a.purposes,
                "max_classification": a.max_classification.as_str(),
                "rate_limit": a.rate.map(|r| json!({ "limit": r.limit, "per": format!("{:?}", r.per).to_lowercase(), "burst": r.burst })),
                "quota": a.quota.map(|q| json!({ "limit": q.limit, "per": format!("{:?}", q.per).to_lowercase() })),
                "fields": {
                    "allow": paths(&a.fields.allow),
                    "deny": paths(&a.fields.deny),
                    "mask": a.fields.mask.iter().map(|m| m.path.as_str().to_owned()).collect::<Vec<_>>(),
                },
            }))
        })
        .collect();
    json!({ "application": p.application, "agency": p.agency, "agreements": list })
}
