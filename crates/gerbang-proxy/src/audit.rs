//! The data plane's side of the audit log: one record per call, handed to a writer thread over
//! a bounded queue so that a slow disk never blocks a request without bound.
//!
//! - With `fsync = always` a request waits (up to `ack_timeout`) until its record is on disk:
//!   no response leaves without its record.
//! - Otherwise the record is queued; a full queue is a failed write.
//! - A failed write refuses the call with 503 `audit_unavailable` when the operator chose
//!   fail-closed, or is counted (`dropped`) and the call served when fail-open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gerbang_audit::{SubjectKey, Writer};

/// How long the writer lets records gather before writing them (no waiters: fsync interval or
/// never). Bounds how stale the file can be, well below any fsync interval. Each linger is a
/// timer armed, a wake-up and a context switch on a core the workers use, and a write system
/// call: under load on this VM the writer thread took 1.5-1.9 µs of CPU per call at 2 ms
/// (0.6-0.9 of it in the kernel), 1.2-1.4 µs at 10 ms (0.3-0.4) (issue 15, fifteenth pass).
/// The queue holds what arrives during one linger: 10 ms of a million calls a second fit the
/// default queue of 10,000. With a smaller queue or a faster stream the linger ends early:
/// the sender that fills half the queue wakes the writer.
const LINGER: Duration = Duration::from_millis(10);
/// Most records written in one batch.
const MAX_BATCH: usize = 4096;
/// Record buffers kept for reuse at most, and the largest capacity kept.
const SPARE_BUFFERS: usize = 1024;
const SPARE_CAPACITY: usize = 4096;
/// The capacity of a new record buffer (a call's record is 300-500 bytes).
const RECORD_CAPACITY: usize = 512;

/// How the data plane uses the audit log.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Wait for each record to be on disk before answering.
    pub wait_for_disk: bool,
    /// Refuse calls whose record cannot be written.
    pub fail_closed: bool,
    /// Longest wait for the writer before a record counts as failed.
    pub ack_timeout: Duration,
    /// Records waiting for the writer at most.
    pub queue: usize,
    /// How often an idle writer syncs (for interval fsync) and checks for work.
    pub idle_sync: Duration,
}

enum Job {
    Record {
        kind: &'static str,
        /// The record's own fields as a serialised JSON object; the writer adds the chain's.
        fields: Vec<u8>,
        ack: Option<tokio::sync::oneshot::Sender<bool>>,
    },
    Close,
}

/// Counters of the audit pipeline (exported as metrics).
#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    pub failed: AtomicU64,
    /// Records lost in fail-open mode (the call was served anyway).
    pub dropped: AtomicU64,
    pub queued: AtomicU64,
}

/// A handle to the writer thread.
pub struct AuditSink {
    tx: SyncSender<Job>,
    /// Record buffers the writer has finished with, for the next records. A buffer allocated
    /// by a worker and freed by the writer thread defeats the allocator's per-thread cache:
    /// every record then took glibc's slow path on both sides (about 1,400 instructions per
    /// call); handed back, the buffer is allocated once.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    subject: SubjectKey,
    pub settings: AuditSettings,
    pub stats: Arc<AuditStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, woken before its linger is over when the queue is half full.
    writer_thread: std::thread::Thread,
}

impl AuditSink {
    /// Starts the writer thread.
    pub fn start(
        writer: Writer,
        subject: SubjectKey,
        settings: AuditSettings,
    ) -> std::io::Result<Arc<Self>> {
        Self::start_lingering(writer, subject, settings, LINGER)
    }

    /// [`AuditSink::start`] with the writer's linger (without waiters) at most `linger`.
    fn start_lingering(
        mut writer: Writer,
        subject: SubjectKey,
        settings: AuditSettings,
        linger: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = sync_channel::<Job>(settings.queue.max(1));
        let stats = Arc::new(AuditStats::default());
        let thread_stats = Arc::clone(&stats);
        let spare: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let thread_spare = Arc::clone(&spare);
        let idle = settings.idle_sync;
        // Without a waiter on each record, the writer lets records gather for a moment before
        // it writes: requests then queue without waking it (no futex wake, no context switch
        // per record on a busy core). With fsync on every record a waiter is on the line, so
        // the writer starts at once (the fsync itself gathers the next batch).
        let linger = if settings.wait_for_disk {
            Duration::ZERO
        } else {
            linger.min(idle)
        };
        let thread = std::thread::Builder::new()
            .name("gerbang-audit".into())
            .spawn(move || loop {
                match rx.recv_timeout(idle) {
                    Ok(Job::Record { kind, fields, ack }) => {
                        // Group commit: everything already queued goes out in one write (and,
                        // with fsync always, one fsync); then every waiter is answered.
                        if !linger.is_zero() {
                            std::thread::park_timeout(linger);
                        }
                        let mut next = Some((kind, fields, ack));
                        while let Some(first) = next.take() {
                            let mut batch = vec![first];
                            let closing = drain(&rx, &mut batch);
                            write_batch(&mut writer, &thread_stats, &thread_spare, batch);
                            if closing {
                                close(writer);
                                return;
                            }
                            // While records keep coming, look again after the linger rather
                            // than block on the queue: a blocked writer is woken by the next
                            // record's sender, a futex wake on the request path and a second
                            // context switch per batch. Quiet after the linger: block again.
                            if linger.is_zero() {
                                break;
                            }
                            std::thread::park_timeout(linger);
                            match rx.try_recv() {
                                Ok(Job::Record { kind, fields, ack }) => {
                                    next = Some((kind, fields, ack));
                                }
                                Ok(Job::Close) => {
                                    close(writer);
                                    return;
                                }
                                Err(_) => {}
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = writer.sync() {
                            tracing::error!(error = %e, "syncing the audit log failed");
                        }
                    }
                    Ok(Job::Close) | Err(RecvTimeoutError::Disconnected) => {
                        close(writer);
                        return;
                    }
                }
            })?;
        let writer_thread = thread.thread().clone();
        Ok(Arc::new(Self {
            tx,
            spare,
            subject,
            settings,
            stats,
            thread: Mutex::new(Some(thread)),
            writer_thread,
        }))
    }

    /// An empty buffer for a record's fields: one the writer has finished with, or a new one.
    pub fn buffer(&self) -> Vec<u8> {
        self.spare
            .lock()
            .ok()
            .and_then(|mut spare| spare.pop())
            .unwrap_or_else(|| Vec::with_capacity(RECORD_CAPACITY))
    }

    /// The keyed hash of a data subject id.
    pub fn subject_hash(&self, subject: &str) -> String {
        self.subject.hash(subject)
    }

    /// Records one call; `false` when the record could not be written (or queued).
    pub async fn record(&self, fields: Vec<u8>) -> bool {
        self.record_kind("call", fields).await
    }

    /// Records an entry of another kind (`admin`: a change through the admin API).
    pub async fn record_kind(&self, kind: &'static str, fields: Vec<u8>) -> bool {
        let (ack, rx) = if self.settings.wait_for_disk {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if !self.queue(Job::Record { kind, fields, ack }) {
            return self.lost();
        }
        let Some(rx) = rx else {
            return true;
        };
        match tokio::time::timeout(self.settings.ack_timeout, rx).await {
            Ok(Ok(true)) => true,
            _ => self.lost(),
        }
    }

    /// Queues a record without waiting for it (a call whose client went away before it was
    /// answered: there is no one to wait for). Returns whether it was queued.
    pub fn record_detached(&self, fields: Vec<u8>) -> bool {
        let job = Job::Record {
            kind: "call",
            fields,
            ack: None,
        };
        self.queue(job) || self.lost()
    }

    /// Puts `job` on the queue, counted as queued, or counts it failed (a full queue, a
    /// stopped writer). The record that brings the queue to half its size ends the writer's
    /// linger: a linger is sized for the default queue and a steady stream, and a record that
    /// finds the queue full is lost (or, fail-closed, refuses its call). Below half, no
    /// wake-up on the request path.
    fn queue(&self, job: Job) -> bool {
        let depth = self.stats.queued.fetch_add(1, Ordering::Relaxed) + 1;
        if self.tx.try_send(job).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if depth >= (self.settings.queue as u64 / 2).max(1) {
            self.writer_thread.unpark();
        }
        true
    }

    /// Buffers kept for reuse.
    #[cfg(test)]
    fn spare_buffers(&self) -> usize {
        self.spare.lock().map_or(0, |s| s.len())
    }

    fn lost(&self) -> bool {
        if !self.settings.fail_closed {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// Seals, syncs and stops the writer (on shutdown).
    pub fn close(&self) {
        let _ = self.tx.send(Job::Close);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// One queued record: its kind, its fields and who waits for it to be written.
type Queued = (
    &'static str,
    Vec<u8>,
    Option<tokio::sync::oneshot::Sender<bool>>,
);

/// Moves what is queued into `batch`, up to [`MAX_BATCH`]; `true` when the queue asked the
/// writer to close (what came before is in `batch`).
fn drain(rx: &Receiver<Job>, batch: &mut Vec<Queued>) -> bool {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Job::Record { kind, fields, ack }) => batch.push((kind, fields, ack)),
            Ok(Job::Close) => return true,
            Err(_) => break,
        }
    }
    false
}

/// Writes `batch` (one write; with fsync always, one fsync), counts it, gives the buffers
/// back and answers every waiter.
fn write_batch(
    writer: &mut Writer,
    stats: &AuditStats,
    spare: &Mutex<Vec<Vec<u8>>>,
    batch: Vec<Queued>,
) {
    stats
        .queued
        .fetch_sub(batch.len() as u64, Ordering::Relaxed);
    let mut acks = Vec::with_capacity(batch.len());
    let mut used = Vec::with_capacity(batch.len());
    let mut ok = true;
    for (kind, fields, ack) in batch {
        if ok {
            if let Err(e) = writer.append_raw_buffered(kind, &fields) {
                tracing::error!(error = %e, "writing an audit record failed");
                ok = false;
            }
        }
        acks.push(ack);
        used.push(fields);
    }
    give_back(spare, used);
    if ok {
        if let Err(e) = writer.finish_batch() {
            tracing::error!(error = %e, "writing an audit batch failed");
            ok = false;
        }
    }
    let n = acks.len() as u64;
    if ok {
        stats.written.fetch_add(n, Ordering::Relaxed);
    } else {
        stats.failed.fetch_add(n, Ordering::Relaxed);
    }
    for ack in acks.into_iter().flatten() {
        let _ = ack.send(ok);
    }
}

/// Seals and syncs the log as the writer ends.
fn close(writer: Writer) {
    if let Err(e) = writer.close() {
        tracing::error!(error = %e, "closing the audit log failed");
    }
}

/// Keeps `used` record buffers, emptied, for the next records: as many as fit under
/// [`SPARE_BUFFERS`], none that grew beyond [`SPARE_CAPACITY`].
fn give_back(spare: &Mutex<Vec<Vec<u8>>>, used: Vec<Vec<u8>>) {
    let Ok(mut spare) = spare.lock() else {
        return;
    };
    for mut buf in used {
        if spare.len() >= SPARE_BUFFERS {
            break;
        }
        if buf.capacity() <= SPARE_CAPACITY {
            buf.clear();
            spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A sink writing to a fresh directory (named after `what`) with `fsync` and `settings`;
    /// the directory, the sink and the seal key's public half.
    fn started(
        what: &str,
        fsync: gerbang_audit::chain::Fsync,
        settings: AuditSettings,
    ) -> (std::path::PathBuf, Arc<AuditSink>, Vec<u8>) {
        started_lingering(what, fsync, settings, LINGER)
    }

    /// [`started`] with the writer's linger.
    fn started_lingering(
        what: &str,
        fsync: gerbang_audit::chain::Fsync,
        settings: AuditSettings,
        linger: Duration,
    ) -> (std::path::PathBuf, Arc<AuditSink>, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!(
            "gerbang-audit-{what}-{}-{}",
            std::process::id(),
            crate::ids::new_request_id().to_str().unwrap()
        ));
        let key =
            gerbang_audit::SealKey::from_pkcs8(&gerbang_audit::SealKey::generate_pkcs8().unwrap())
                .unwrap();
        let public = key.public_key();
        let writer = Writer::open(
            gerbang_audit::WriterSettings {
                dir: dir.clone(),
                max_file_bytes: 1 << 20,
                fsync,
                seal_every: 1000,
                replica: None,
            },
            key,
        )
        .unwrap();
        let subject = SubjectKey::from_hex(&SubjectKey::generate_hex().unwrap()).unwrap();
        let sink = AuditSink::start_lingering(writer, subject, settings, linger).unwrap();
        (dir, sink, public)
    }

    /// The writer lingers while the queue fills, but not past half of it: the record that
    /// fills half the queue wakes it (a linger sized for the default queue would otherwise
    /// lose records of a small one). Below half it keeps lingering.
    #[test]
    fn a_half_full_queue_ends_the_writers_linger() {
        let (dir, sink, _) = started_lingering(
            "wake",
            gerbang_audit::chain::Fsync::Never,
            AuditSettings {
                wait_for_disk: false,
                fail_closed: true,
                ack_timeout: Duration::from_secs(5),
                queue: 8,
                idle_sync: Duration::from_secs(60),
            },
            Duration::from_secs(5),
        );
        let written = || sink.stats.written.load(Ordering::Relaxed);
        for n in 0..3 {
            assert!(sink.record_detached(format!(r#"{{"n":{n}}}"#).into_bytes()));
        }
        // Three of eight: the writer took the first and lingers (five seconds here).
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            written(),
            0,
            "below half the queue the writer keeps lingering"
        );
        assert!(sink.record_detached(br#"{"n":3}"#.to_vec()));
        let woken = std::time::Instant::now();
        while written() < 4 && woken.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            written(),
            4,
            "the fourth of eight wakes the writer before its linger ends"
        );
        assert_eq!(sink.stats.failed.load(Ordering::Relaxed), 0);
        sink.close();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_writer_gives_record_buffers_back_for_the_next_records() {
        let (dir, sink, _) = started(
            "spare",
            gerbang_audit::chain::Fsync::Always,
            AuditSettings {
                wait_for_disk: true,
                fail_closed: true,
                ack_timeout: Duration::from_secs(5),
                queue: 16,
                idle_sync: Duration::from_secs(1),
            },
        );
        assert_eq!(sink.spare_buffers(), 0);
        let mut first = sink.buffer();
        assert!(first.is_empty() && first.capacity() >= RECORD_CAPACITY);
        first.extend_from_slice(br#"{"n":1}"#);
        let first_ptr = first.as_ptr();
        // With fsync on every record the answer comes after the batch was written and its
        // buffers given back.
        assert!(sink.record(first).await);
        assert_eq!(sink.spare_buffers(), 1);
        let again = sink.buffer();
        assert!(again.is_empty(), "a buffer comes back emptied");
        assert_eq!(
            again.as_ptr(),
            first_ptr,
            "the same allocation is used again"
        );
        // A buffer that grew large is not kept.
        let mut big = again;
        big.resize(SPARE_CAPACITY * 2, b' ');
        big.clear();
        big.extend_from_slice(br#"{"n":2}"#);
        assert!(sink.record(big).await);
        assert_eq!(sink.spare_buffers(), 0);
        sink.close();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Records that keep coming (no waiter: the writer lingers, and while busy looks again
    /// after each linger instead of blocking) are all written, in order, whether they arrive
    /// in a stream, after a pause, or just before the log closes; the chain verifies.
    #[test]
    fn a_stream_of_records_is_written_whole_in_order_while_the_writer_keeps_looking() {
        let (dir, sink, public) = started(
            "stream",
            gerbang_audit::chain::Fsync::Interval(Duration::from_secs(1)),
            AuditSettings {
                wait_for_disk: false,
                fail_closed: false,
                ack_timeout: Duration::from_secs(5),
                queue: 10_000,
                // Long: only a record may wake a blocked writer in this test.
                idle_sync: Duration::from_secs(60),
            },
        );
        let send = |n: u64| {
            let mut buf = sink.buffer();
            buf.extend_from_slice(format!(r#"{{"n":{n}}}"#).as_bytes());
            assert!(sink.record_detached(buf));
        };
        let written_within = |count: u64, limit: Duration| {
            let start = std::time::Instant::now();
            while sink.stats.written.load(Ordering::Relaxed) < count {
                assert!(
                    start.elapsed() < limit,
                    "{} of {count} records written after {limit:?}",
                    sink.stats.written.load(Ordering::Relaxed)
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // A stream over many lingers, then a pause: everything is written without a
        // further record to wake the writer.
        let mut n = 0;
        for _ in 0..40 {
            for _ in 0..10 {
                send(n);
                n += 1;
            }
            std::thread::sleep(Duration::from_micros(700));
        }
        written_within(n, Duration::from_secs(2));
        // One record after the writer went quiet, then a burst that ends in the close.
        std::thread::sleep(Duration::from_millis(20));
        send(n);
        n += 1;
        written_within(n, Duration::from_secs(2));
        for _ in 0..100 {
            send(n);
            n += 1;
        }
        sink.close();
        assert_eq!(sink.stats.written.load(Ordering::Relaxed), n);
        assert_eq!(sink.stats.failed.load(Ordering::Relaxed), 0);
        let verified = gerbang_audit::chain::verify(&dir, &public).unwrap();
        assert!(verified.torn_tail.is_none());
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if v["kind"] == "call" {
                    seen.push(v["n"].as_u64().unwrap());
                }
            }
        }
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(dir);
    }
}
