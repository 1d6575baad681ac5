//! Phase 3: the path, normalised once, names an agency and a service of the registry snapshot.
//! The call is judged, forwarded and recorded on this normalised path only.

use std::sync::Arc;

use gerbang_registry::{LookupError, Registry, Service};

use super::context::Call;
use crate::error::GatewayError;
use crate::path::{self, NormalizedPath as Normalized};

/// The normalised path (400 on anything ambiguous).
pub(crate) fn normalise(raw: &str) -> Result<Normalized, GatewayError> {
    path::normalize(raw).map_err(GatewayError::Path)
}

/// Where a call goes: the service (or why there is none) and the rest of the path below it.
pub(crate) struct Route<'a> {
    agency: &'a str,
    service_id: &'a str,
    /// The path below `/{agency}/{service}`, `/` when empty.
    pub rest: &'a str,
    looked_up: Result<&'a Arc<Service>, LookupError>,
}

/// One lookup. Its error waits until the caller is authenticated ([`Route::service`]). Only a
/// registered service names itself in the call's record and metrics: a client-made path could
/// carry anything, a NIK included.
pub(crate) fn resolve<'a>(
    registry: &'a Registry,
    normalized: &'a Normalized,
    call: &mut Call,
) -> Result<Route<'a>, GatewayError> {
    let (agency, service_id, rest) = normalized
        .route_parts()
        .ok_or(GatewayError::RouteNotFound)?;
    let looked_up = registry.lookup(agency, service_id);
    if let Ok(s) = looked_up {
        call.service = Some(Arc::clone(s.full_id_shared()));
    }
    Ok(Route {
        agency,
        service_id,
        rest: if rest.is_empty() { "/" } else { rest },
        looked_up,
    })
}

impl<'a> Route<'a> {
    /// The service, or 404 `unknown_agency` / `unknown_service`.
    pub(crate) fn service(&self) -> Result<&'a Arc<Service>, GatewayError> {
        self.looked_up.map_err(|e| match e {
            LookupError::UnknownAgency => GatewayError::UnknownAgency(self.agency.to_owned()),
            LookupError::UnknownService => {
                GatewayError::UnknownService(format!("{}/{}", self.agency, self.service_id))
            }
        })
    }
}
