//! The binary's side of the admin API: its reload is [`Reloader`], behind
//! [`gerbang_admin::Reload`].

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use gerbang_admin::{Applied, Reload};

use crate::config::{AdminToken, Config, Overlay, Problem};
use crate::reload::{self, Reloader};

fn applied(a: reload::Applied) -> Applied {
    Applied {
        hash: a.hash,
        restart_needed: a.restart_needed,
        warnings: a.warnings,
    }
}

impl Reload for Reloader {
    fn registry_dir(&self) -> &Path {
        Reloader::registry_dir(self)
    }

    fn agreements_dir(&self) -> &Path {
        Reloader::agreements_dir(self)
    }

    fn admin_tokens(&self) -> Arc<Vec<AdminToken>> {
        Reloader::admin_tokens(self)
    }

    fn lock(&self) -> impl Future<Output = tokio::sync::MutexGuard<'_, String>> + Send {
        Reloader::lock(self)
    }

    fn validate_with(
        &self,
        overlay: Overlay,
    ) -> impl Future<Output = Result<Config, Vec<Problem>>> + Send {
        Reloader::validate_with(self, overlay)
    }

    async fn reload(&self, trigger: &str) -> Result<Applied, Vec<Problem>> {
        Reloader::reload(self, trigger).await.map(applied)
    }

    async fn reload_locked(
        &self,
        current: &mut String,
        trigger: &str,
    ) -> Result<Applied, Vec<Problem>> {
        Reloader::reload_locked(self, current, trigger, false)
            .await
            .map(applied)
    }

    fn refused(&self, trigger: &str, problems: &[Problem]) {
        Reloader::refused(self, trigger, problems)
    }
}
