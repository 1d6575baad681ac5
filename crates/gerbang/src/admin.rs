//! The binary's side of the admin API: its reload is [`Reloader`], behind
//! [`gerbang_admin::Reload`].

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use gerbang_admin::{Applied, Reload, RevisionsError};
use serde_json::{json, Value};

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

    async fn revisions(&self, limit: usize) -> Result<Value, RevisionsError> {
        let Some(c) = self.cluster() else {
            return Ok(json!({
                "cluster": false,
                "revisions": [],
                "note": "one node: changes are in the admin audit records (cluster mode keeps revisions in Redis)",
            }));
        };
        let list = c.list(limit).await.map_err(RevisionsError::Unavailable)?;
        let (in_force, _) = c.applied();
        Ok(json!({ "cluster": true, "in_force": in_force, "revisions": list }))
    }

    async fn revision(&self, id: Option<u64>) -> Result<Value, RevisionsError> {
        let Some(c) = self.cluster() else {
            if id.is_some() {
                return Err(RevisionsError::NotFound(
                    "one node keeps no revisions; `current` gives the files in force".into(),
                ));
            }
            let files = gerbang_cluster::revisions::read_files(
                Reloader::registry_dir(self),
                Reloader::agreements_dir(self),
            )
            .map_err(|e| RevisionsError::Unavailable(e.to_string()))?;
            return Ok(json!({
                "id": null,
                "hash": gerbang_cluster::revisions::content_hash(&files),
                "files": files,
            }));
        };
        match c.get(id).await.map_err(RevisionsError::Unavailable)? {
            Some((r, diff)) => {
                let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("diff".into(), diff.map_or(Value::Null, Value::from));
                }
                Ok(v)
            }
            None => Err(RevisionsError::NotFound(match id {
                Some(id) => format!("revision {id} is not kept (or never was)"),
                None => "no revision has been published yet".into(),
            })),
        }
    }

    async fn restore(&self, id: u64, author: &str) -> Result<Value, RevisionsError> {
        let Some(c) = self.cluster() else {
            return Err(RevisionsError::NotClustered(
                "restore needs cluster mode (cluster.redis_url); one node keeps no revisions"
                    .into(),
            ));
        };
        match c.restore(self, id, author).await {
            Ok(r) => Ok(json!({ "restored": id, "revision": r.meta })),
            Err(crate::cluster::RestoreError::NotFound(m)) => Err(RevisionsError::NotFound(m)),
            Err(crate::cluster::RestoreError::Unavailable(m)) => {
                Err(RevisionsError::Unavailable(m))
            }
            Err(crate::cluster::RestoreError::Invalid(p)) => Err(RevisionsError::Invalid(p)),
        }
    }
}
