//! What each admin role may do, on the admin API and in the console alike.
//!
//! | role | may |
//! | --- | --- |
//! | `admin` | everything |
//! | `operator` | reload, validate, health; read everything (no edits, no audit search) |
//! | `auditor` | the audit views; read agreements and history; explain |
//! | `viewer` | read agencies, applications, services, agreements and history; explain |

use gerbang_config::AdminRole;
use http::Method;

use AdminRole::{Admin, Auditor, Operator, Viewer};

/// Everyone.
const ALL: &[AdminRole] = &[Admin, Operator, Auditor, Viewer];
/// Those who read the registry (agencies, applications, services).
const REGISTRY_READERS: &[AdminRole] = &[Admin, Operator, Viewer];

/// The roles that may call `method` on the admin API route `template`.
pub fn api_roles(template: &str, method: &Method) -> &'static [AdminRole] {
    let read = *method == Method::GET || *method == Method::HEAD;
    match template {
        "/admin/openapi.json" | "/admin/explain" => ALL,
        "/admin/reload" | "/admin/validate" => &[Admin, Operator],
        "/admin/agreements" | "/admin/agreements/{agreement}" if read => ALL,
        "/admin/revisions" | "/admin/revisions/{revision}" if read => ALL,
        _ if read => REGISTRY_READERS,
        // Every change: PUT, DELETE, rotate-secret, restore.
        _ => &[Admin],
    }
}

/// Whether `role` may call `method` on the admin API route `template`.
pub fn api_allows(role: AdminRole, template: &str, method: &Method) -> bool {
    api_roles(template, method).contains(&role)
}

/// What a console page or form does, for its role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAction {
    /// Overview, services, applications: the registry and the gateway's state.
    ReadRegistry,
    /// Agreements, explain, history.
    ReadAgreements,
    /// Searching the audit log (by NIK) and its verification.
    Audit,
    /// Reload or validate.
    Operate,
    /// Any change of the configuration.
    Edit,
}

/// The roles that may do `action` in the console.
pub fn console_roles(action: ConsoleAction) -> &'static [AdminRole] {
    match action {
        ConsoleAction::ReadRegistry => REGISTRY_READERS,
        ConsoleAction::ReadAgreements => ALL,
        ConsoleAction::Audit => &[Admin, Auditor],
        ConsoleAction::Operate => &[Admin, Operator],
        ConsoleAction::Edit => &[Admin],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix() {
        let put = Method::PUT;
        let get = Method::GET;
        let post = Method::POST;
        for r in AdminRole::ALL {
            assert_eq!(
                api_allows(r, "/admin/agreements/{agreement}", &put),
                r == Admin
            );
            assert!(api_allows(r, "/admin/agreements", &get));
            assert!(api_allows(r, "/admin/explain", &post));
            assert_eq!(
                api_allows(r, "/admin/reload", &post),
                matches!(r, Admin | Operator)
            );
            assert_eq!(api_allows(r, "/admin/services", &get), r != Auditor);
            assert_eq!(
                api_allows(
                    r,
                    "/admin/applications/{agency}/{application}/rotate-secret",
                    &post
                ),
                r == Admin
            );
            assert_eq!(
                console_roles(ConsoleAction::Audit).contains(&r),
                matches!(r, Admin | Auditor)
            );
        }
    }
}
