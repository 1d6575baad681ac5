//! Gerbang's admin API: [`api::AdminApi`], the admin listener's handler (built-in probes and
//! metrics, then `/admin/*` behind admin tokens), and [`store`], the registry and agreement
//! files as `toml_edit` documents that a change edits, keeping comments and other entries.
//!
//! A change is checked with a [`gerbang_config::Overlay`] over the files on disk, persisted,
//! then applied by a reload. The reload belongs to the binary (it rebuilds the authenticator and
//! swaps the gateway's snapshot); this crate reaches it only through the [`Reload`] trait.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use gerbang_config::{AdminToken, Config, Overlay, Problem};

pub mod api;
pub mod console;
pub mod roles;
pub mod store;

pub use api::AdminApi;

/// What a successful reload did, as the admin API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// The new configuration's hash (`gerbang_config_info`).
    pub hash: String,
    /// Settings that changed but take effect on restart only.
    pub restart_needed: Vec<String>,
    /// Warnings of the new configuration (expired or overlapping agreements).
    pub warnings: Vec<String>,
}

/// The reloader the admin API drives: validate a proposed change, hold the reload lock from
/// validation to swap, reload. Implemented by the binary's `Reloader`.
pub trait Reload: Send + Sync + 'static {
    /// The directory of the registry files in force.
    fn registry_dir(&self) -> &Path;
    /// The directory of the agreement files in force.
    fn agreements_dir(&self) -> &Path;
    /// The admin tokens in force (a reload that removes one revokes it at once).
    fn admin_tokens(&self) -> Arc<Vec<AdminToken>>;
    /// The reload lock; what it guards is the hash of the configuration in force.
    fn lock(&self) -> impl Future<Output = tokio::sync::MutexGuard<'_, String>> + Send;
    /// Loads and checks the configuration with files replaced as `overlay` says, applying
    /// nothing.
    fn validate_with(
        &self,
        overlay: Overlay,
    ) -> impl Future<Output = Result<Config, Vec<Problem>>> + Send;
    /// [`Reload::validate_with`] the files on disk.
    fn validate(&self) -> impl Future<Output = Result<Config, Vec<Problem>>> + Send {
        self.validate_with(Overlay::new())
    }
    /// Reloads from disk; `trigger` names the cause for the log.
    fn reload(&self, trigger: &str) -> impl Future<Output = Result<Applied, Vec<Problem>>> + Send;
    /// [`Reload::reload`] for a caller that holds [`Reload::lock`] (`current` is what it guards).
    fn reload_locked(
        &self,
        current: &mut String,
        trigger: &str,
    ) -> impl Future<Output = Result<Applied, Vec<Problem>>> + Send;
    /// Counts and logs a refused change (the running configuration stays).
    fn refused(&self, trigger: &str, problems: &[Problem]);
    /// Configuration revisions, newest first (cluster mode; without it: an empty history).
    fn revisions(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<serde_json::Value, RevisionsError>> + Send;
    /// One revision with its files and its diff against its parent; `None`: the one in force
    /// (without cluster mode: the files in force, for `gerbang admin export`).
    fn revision(
        &self,
        id: Option<u64>,
    ) -> impl Future<Output = Result<serde_json::Value, RevisionsError>> + Send;
    /// Publishes revision `id`'s files again as the newest revision and applies it.
    fn restore(
        &self,
        id: u64,
        author: &str,
    ) -> impl Future<Output = Result<serde_json::Value, RevisionsError>> + Send;
}

/// Why a revision request failed.
#[derive(Debug, thiserror::Error)]
pub enum RevisionsError {
    /// No such revision (or no longer kept).
    #[error("{0}")]
    NotFound(String),
    /// Restore needs cluster mode.
    #[error("{0}")]
    NotClustered(String),
    /// Redis cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The revision does not validate here.
    #[error("the revision does not validate")]
    Invalid(Vec<Problem>),
}
