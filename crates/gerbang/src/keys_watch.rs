//! Polls the signing keys directory: a replica must notice a key file that another replica's
//! operator (or a Kubernetes Secret update) added, removed or replaced, without relying on file
//! notifications (a Secret volume changes by swapping a `..data` link, which inotify does not
//! report for the files behind it). A change triggers a reload: the new key is published and
//! verifies at once, and signs from its activation time on (`[auth] key_activation_delay`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::reload::Reloader;

/// This replica's seal key: the one loaded, else a new one created in `seal_dir`
/// (`<data_dir>/keys`: a replica started on an empty data directory makes its own). A key read
/// from the shared keys directory (where earlier versions kept it) is used, with a warning.
pub fn replica_seal_key(
    loaded: Option<gerbang_audit::SealKey>,
    seal_dir: &Path,
    legacy: &Option<PathBuf>,
) -> Result<gerbang_audit::SealKey, String> {
    if let Some(file) = legacy {
        tracing::warn!(
            file = %file.display(),
            own = %seal_dir.display(),
            "the audit seal key is in the shared keys directory; each replica should have its \
             own: move it (and audit-seal.pub) to the replica's data directory's keys/"
        );
    }
    if let Some(k) = loaded {
        return Ok(k);
    }
    match crate::config::ensure_seal_key(seal_dir) {
        Ok((key, created)) => {
            if let Some(f) = created {
                tracing::info!(file = %f.display(), "audit seal key created for this replica");
            }
            Ok(key)
        }
        Err(e) => Err(format!(
            "cannot create this replica's seal key in {}: {e}",
            seal_dir.display()
        )),
    }
}

/// What the directory looks like: every entry's name, size and modification time (links
/// followed, so a swapped Secret volume shows), sorted.
type Listing = Vec<(String, u64, Option<SystemTime>)>;

/// The current [`Listing`] of `dir` (empty when it cannot be read: a reload then reports why).
pub fn listing(dir: &Path) -> Listing {
    let mut out: Listing = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let meta = std::fs::metadata(e.path()).ok();
                    (
                        name,
                        meta.as_ref().map_or(0, |m| m.len()),
                        meta.and_then(|m| m.modified().ok()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Every `interval`, compares the listing of `dir` with the one before and reloads when it
/// changed, until `shutdown` completes.
pub async fn poll_keys_dir(
    reloader: Arc<Reloader>,
    dir: PathBuf,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let read = |d: PathBuf| async move {
        tokio::task::spawn_blocking(move || listing(&d))
            .await
            .unwrap_or_default()
    };
    let mut last = read(dir.clone()).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {
                let now = read(dir.clone()).await;
                if now != last {
                    tracing::info!(dir = %dir.display(), "signing keys changed; reloading");
                    // A refused configuration keeps the running one and is logged by the
                    // reloader; the next change tries again.
                    let _ = reloader.reload("signing keys changed").await;
                    last = now;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_new_or_replaced_key_file_changes_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pem"), "a").unwrap();
        let before = listing(dir.path());
        assert_eq!(before, listing(dir.path()));
        std::fs::write(dir.path().join("b.pem"), "b").unwrap();
        let added = listing(dir.path());
        assert_ne!(before, added);
        std::fs::write(dir.path().join("b.pem"), "bb").unwrap();
        assert_ne!(added, listing(dir.path()));
        assert!(listing(&dir.path().join("missing")).is_empty());
    }
}
