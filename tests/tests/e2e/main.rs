//! End-to-end tests: the real gateway and real upstream servers, all on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod admin_api;
mod adversarial;
mod audit;
mod auth;
mod balancing;
mod console;
mod external_issuer;
mod footprint;
mod forwarding;
mod limits;
mod metrics;
mod paths;
mod policy;
mod reload_boundary;
mod routing;
mod shutdown;
mod streaming;
mod tls;
mod token_abuse;
mod upstream_failures;
mod upstream_protocol;
