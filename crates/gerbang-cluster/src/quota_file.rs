//! One node's quota use, kept in the data directory (`<data_dir>/quota-use.json`) so that a
//! restart does not hand out a fresh daily or monthly quota.
//!
//! Counting happens in memory exactly as [`gerbang_policy::limits::MemoryQuotaStore`] does; a
//! background task writes the counts when they changed, at most once per second (temporary
//! file, fsync, rename, directory fsync), and the graceful shutdown writes them once more after
//! the last call. At start the file is read and counts of past periods are dropped. A crash
//! loses at most the last second of counting.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gerbang_policy::limits::{period_of, QuotaExceeded, QuotaStore};
use gerbang_policy::QuotaPeriod;
use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "quota-use.json";

/// Why the quota file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QuotaFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a quota file ({source}); move it away to start counting afresh")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    agreement: String,
    application: String,
    /// The period index (a WIB day or month, as `period_of` numbers them).
    period: i64,
    used: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileBody {
    version: u32,
    entries: Vec<FileEntry>,
}

type Counts = HashMap<(String, String), (i64, u64)>;

/// A [`QuotaStore`] whose counts survive a restart of this process.
#[derive(Debug)]
pub struct FileQuotaStore {
    path: PathBuf,
    counts: Mutex<Counts>,
    dirty: AtomicBool,
    /// Serialises writers (the periodic task and the shutdown).
    write: Mutex<()>,
}

/// Whether `period` is the current day or month at `now` (older periods are dropped).
fn current(period: i64, now: i64) -> bool {
    period == period_of(QuotaPeriod::Day, now).0 || period == period_of(QuotaPeriod::Month, now).0
}

impl FileQuotaStore {
    /// Reads `dir/quota-use.json` (none yet: nothing counted), keeping the counts of the
    /// periods current at `now`.
    pub fn open(dir: &Path, now: i64) -> Result<Self, QuotaFileError> {
        let path = dir.join(FILE_NAME);
        let mut counts = Counts::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let body: FileBody =
                    serde_json::from_slice(&bytes).map_err(|source| QuotaFileError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                for e in body.entries {
                    if current(e.period, now) {
                        counts.insert((e.agreement, e.application), (e.period, e.used));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(QuotaFileError::Io { path, source }),
        }
        Ok(Self {
            path,
            counts: Mutex::new(counts),
            dirty: AtomicBool::new(false),
            write: Mutex::new(()),
        })
    }

    /// Where the counts are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the counts when they changed since the last write; returns whether it wrote.
    /// Counts of past periods are left out.
    pub fn flush(&self, now: i64) -> Result<bool, QuotaFileError> {
        let _one = self
            .write
            .lock()
            .map_err(|_| self.io_error("lock poisoned"))?;
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let body = {
            let counts = self
                .counts
                .lock()
                .map_err(|_| self.io_error("lock poisoned"))?;
            let mut entries: Vec<FileEntry> = counts
                .iter()
                .filter(|(_, (period, _))| current(*period, now))
                .map(|((agreement, application), (period, used))| FileEntry {
                    agreement: agreement.clone(),
                    application: application.clone(),
                    period: *period,
                    used: *used,
                })
                .collect();
            entries.sort_by(|a, b| {
                (&a.agreement, &a.application).cmp(&(&b.agreement, &b.application))
            });
            FileBody {
                version: 1,
                entries,
            }
        };
        let result = serde_json::to_vec_pretty(&body)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomically(&self.path, &bytes));
        if let Err(source) = result {
            // Try again at the next tick.
            self.dirty.store(true, Ordering::Release);
            return Err(QuotaFileError::Io {
                path: self.path.clone(),
                source,
            });
        }
        Ok(true)
    }

    fn io_error(&self, what: &str) -> QuotaFileError {
        QuotaFileError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(what.to_owned()),
        }
    }

    /// Writes the counts every `every` when they changed, until `stop` completes (the final
    /// write after the last call is the shutdown's, see [`Self::flush`]).
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            if !self.dirty.load(Ordering::Acquire) {
                continue;
            }
            let store = Arc::clone(&self);
            let written = tokio::task::spawn_blocking(move || store.flush(unix_now())).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(error = %e, "quota use could not be saved; trying again");
            }
        }
    }
}

impl QuotaStore for FileQuotaStore {
    fn try_consume(
        &self,
        agreement: &str,
        application: &str,
        period: i64,
        limit: u64,
    ) -> Result<u64, QuotaExceeded> {
        let mut counts = self.counts.lock().map_err(|_| QuotaExceeded)?;
        let key = (agreement.to_owned(), application.to_owned());
        let entry = counts.entry(key).or_insert((period, 0));
        if entry.0 != period {
            *entry = (period, 0);
        }
        if entry.1 >= limit {
            return Err(QuotaExceeded);
        }
        entry.1 += 1;
        self.dirty.store(true, Ordering::Release);
        Ok(limit - entry.1)
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Temporary file beside `path`, fsync, rename over `path`, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_survive_a_new_store_and_past_periods_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_767_225_600; // 2026-01-01 07:00 WIB
        let day = period_of(QuotaPeriod::Day, now).0;
        let month = period_of(QuotaPeriod::Month, now).0;
        let s = FileQuotaStore::open(dir.path(), now).unwrap();
        assert!(!s.flush(now).unwrap(), "nothing changed, nothing written");
        for _ in 0..3 {
            s.try_consume("pks-d", "a/x", day, 3).unwrap();
        }
        assert_eq!(s.try_consume("pks-d", "a/x", day, 3), Err(QuotaExceeded));
        s.try_consume("pks-m", "a/x", month, 10).unwrap();
        s.try_consume("pks-old", "a/x", day - 1, 10).unwrap();
        assert!(s.flush(now).unwrap());
        assert!(!s.flush(now).unwrap());
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains("pks-old"), "{text}");
        assert!(!dir.path().join("quota-use.json.tmp").exists());

        // A restart the same day: the day's quota stays used.
        let again = FileQuotaStore::open(dir.path(), now + 3600).unwrap();
        assert_eq!(
            again.try_consume("pks-d", "a/x", day, 3),
            Err(QuotaExceeded)
        );
        assert_eq!(again.try_consume("pks-m", "a/x", month, 10), Ok(8));
        // The next day: the day's count is gone, the month's stays.
        let tomorrow = now + 86_400;
        let next = FileQuotaStore::open(dir.path(), tomorrow).unwrap();
        assert_eq!(
            next.try_consume("pks-d", "a/x", period_of(QuotaPeriod::Day, tomorrow).0, 3),
            Ok(2)
        );
        assert_eq!(next.try_consume("pks-m", "a/x", month, 10), Ok(8));
    }

    #[test]
    fn a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let e = FileQuotaStore::open(dir.path(), 0).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME), "{e}");
    }
}
