//! Gerbang's data plane: listeners, the request pipeline, path normalisation and the upstream
//! client. It receives validated settings and a registry; it reads no configuration file.

pub mod admin;
pub mod audit;
pub mod body;
pub mod catalog;
pub mod error;
pub mod framing;
pub mod gateway;
pub mod h1;
pub mod headers;
pub mod health_check;
pub mod ids;
pub mod metrics;
pub mod oauth;
pub mod parking;
pub mod path;
pub mod phase;
pub mod response_body;
pub mod server;
pub mod tls;
pub mod tls_stream;
pub mod token_guard;
pub mod trace;
pub mod upstream;
mod word_hash;

pub use admin::{Admin, Health};
pub use error::{ErrorSource, GatewayError};
pub use gateway::{ConnInfo, Gateway, IdentitySettings, Limits, Reloadable};
pub use server::{serve, ListenerSettings, ShutdownOutcome};
pub use upstream::PoolSettings;
