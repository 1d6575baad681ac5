//! The `gerbang` binary's library half: configuration loading, wiring and the demo. The
//! binary (`main.rs`) only parses the command line and calls in here; end-to-end tests use the
//! same functions.

mod admin;
pub mod admin_cli;
pub mod cluster;
pub mod demo;
pub mod keys_watch;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod reload;
pub mod run;

/// The admin API crate's modules, at their old paths (`gerbang::admin_api::ROUTES`, …).
pub use gerbang_admin::{api as admin_api, store as admin_store};
/// The configuration crate, at its old path (`gerbang::config::…`, `crate::config::…`).
pub use gerbang_config as config;

pub use config::{load, ConfigError, Overrides, Problem};
pub use run::{start, Running, StartError};

/// Sets up logging: human-readable or JSON lines, filtered by `RUST_LOG` or the configured level.
pub fn init_logging(settings: &config::LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if settings.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
