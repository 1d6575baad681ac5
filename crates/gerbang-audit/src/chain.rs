//! Writing and verifying the hash chain.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{digest, SHA256};
use base64::Engine;
use serde_json::{Map, Value};

use crate::keys::{verify_seal, SealKey};
use crate::GENESIS;

/// When the writer forces records to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every append: a record acknowledged is a record on disk.
    Always,
    /// At most this long after a record.
    Interval(Duration),
    /// Left to the operating system.
    Never,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub dir: PathBuf,
    /// A file larger than this is closed and a new one begun.
    pub max_file_bytes: u64,
    pub fsync: Fsync,
    /// A seal after this many records (and on close).
    pub seal_every: u64,
    /// The replica that writes this chain (`[cluster] replica_id`), named in every seal; `None`
    /// writes seals as earlier versions did.
    pub replica: Option<String>,
}

/// Appends records to the chain. See the crate documentation.
pub struct Writer {
    settings: WriterSettings,
    seal_key: SealKey,
    file: Option<std::io::BufWriter<File>>,
    file_number: u64,
    file_bytes: u64,
    file_day: String,
    /// `file_day` as a day number (compared for every record; the text only at a roll).
    file_day_number: i64,
    seq: u64,
    prev: String,
    since_seal: u64,
    last_sync: Instant,
    dirty: bool,
    /// The line being written, kept between records (one allocation for the writer's life).
    line: Vec<u8>,
    /// The stamp of the last second a record was written in.
    stamp: SecondStamp,
}

/// `YYYY-MM-DDTHH:MM:SS.` of one second, kept so that the records of a second (thousands under
/// load) take only their milliseconds from the calendar arithmetic.
#[derive(Default)]
pub(crate) struct SecondStamp {
    secs: Option<u64>,
    text: [u8; 20],
}

impl SecondStamp {
    /// [`rfc3339`] of `t` appended to `out`.
    pub(crate) fn write(&mut self, t: SystemTime, out: &mut Vec<u8>) {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.secs != Some(d.as_secs()) {
            // A new second: written in full (always 24 bytes), its first 20 kept.
            let start = out.len();
            rfc3339_into(t, out);
            if let Some(text) = out.get(start..start + 20) {
                self.text.copy_from_slice(text);
                self.secs = Some(d.as_secs());
            }
            return;
        }
        out.extend_from_slice(&self.text);
        let ms = d.subsec_millis();
        out.extend_from_slice(&[
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

fn sha256_hex(b: &[u8]) -> String {
    crate::hex_lower(digest(&SHA256, b).as_ref())
}

/// `YYYYMMDD` of a time in Asia/Jakarta (UTC+7).
/// The day in Asia/Jakarta (UTC+7) as a day number since 1970-01-01.
fn jakarta_day_number(t: SystemTime) -> i64 {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64 + 7 * 3600;
    secs.div_euclid(86_400)
}

fn jakarta_day(t: SystemTime) -> String {
    let (y, m, d) = civil_from_days(jakarta_day_number(t));
    format!("{y:04}{m:02}{d:02}")
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T09:15:02.123Z` (sorts as text).
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    rfc3339_into(t, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// [`rfc3339`] appended to `out` (digits written directly: this runs once per audit record).
fn rfc3339_into(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let digits = |out: &mut Vec<u8>, v: i64, width: u32| {
        for k in (0..width).rev() {
            out.push(b'0' + (v / 10_i64.pow(k) % 10) as u8);
        }
    };
    digits(out, y, 4);
    out.push(b'-');
    digits(out, m, 2);
    out.push(b'-');
    digits(out, day, 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, (rem / 60) % 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'.');
    digits(out, i64::from(d.subsec_millis()), 3);
    out.push(b'Z');
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `audit-NNNNNN-YYYYMMDD.jsonl` → N.
fn file_number(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (n, day) = rest.split_once('-')?;
    (n.len() == 6 && day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// The audit files of `dir`, in chain order.
fn audit_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((file_number(&name)?, e.path()))
        })
        .collect();
    files.sort();
    Ok(files)
}

impl Writer {
    /// Opens the chain in `settings.dir` (created if missing), continuing after its last
    /// record. A torn last line (a crash while writing) is cut off and a `recovery` record
    /// notes how many bytes were lost and their digest.
    pub fn open(settings: WriterSettings, seal_key: SealKey) -> io::Result<Self> {
        std::fs::create_dir_all(&settings.dir)?;
        let files = audit_files(&settings.dir)?;
        let mut w = Self {
            settings,
            seal_key,
            file: None,
            file_number: 0,
            file_bytes: 0,
            file_day: String::new(),
            file_day_number: i64::MIN,
            seq: 0,
            prev: GENESIS.to_owned(),
            since_seal: 0,
            last_sync: Instant::now(),
            dirty: false,
            line: Vec::new(),
            stamp: SecondStamp::default(),
        };
        let mut torn: Option<(usize, String)> = None;
        if let Some((n, path)) = files.last() {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if complete < bytes.len() {
                let tail = &bytes[complete..];
                torn = Some((tail.len(), sha256_hex(tail)));
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(complete as u64)?;
            }
            if let Some(last) = bytes[..complete].split(|b| *b == b'\n').rev().nth(1) {
                let v: Value = serde_json::from_slice(last)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                w.seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                w.prev = sha256_hex(last);
            } else if *n > 1 {
                // An empty last file: continue from the one before.
                if let Some((_, before)) = files.get(files.len().saturating_sub(2)) {
                    let text = std::fs::read(before)?;
                    if let Some(last) = text.split(|b| *b == b'\n').rev().nth(1) {
                        let v: Value = serde_json::from_slice(last)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        w.seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                        w.prev = sha256_hex(last);
                    }
                }
            }
            w.file_number = *n;
        }
        if let Some((bytes, digest)) = torn {
            let mut m = Map::new();
            m.insert("torn_bytes".into(), Value::from(bytes));
            m.insert("torn_sha256".into(), Value::from(digest));
            w.append("recovery", m)?;
        }
        Ok(w)
    }

    /// The sequence number of the last record written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn roll_if_needed(&mut self, now: SystemTime) -> io::Result<()> {
        let day_number = jakarta_day_number(now);
        let need = self.file.is_none()
            || self.file_bytes >= self.settings.max_file_bytes
            || day_number != self.file_day_number;
        if !need {
            return Ok(());
        }
        let day = jakarta_day(now);
        if let Some(mut f) = self.file.take() {
            f.flush()?;
            f.get_ref().sync_all()?;
        }
        self.file_number += 1;
        let name = format!("audit-{:06}-{day}.jsonl", self.file_number);
        let path = self.settings.dir.join(name);
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(&path)?;
        self.file_bytes = f.metadata()?.len();
        // A batch (one linger's records, ~130 KiB at 25,000 calls a second) in one write: each
        // write system call also updates the file's times (a journalled inode change).
        self.file = Some(std::io::BufWriter::with_capacity(256 * 1024, f));
        self.file_day = day;
        self.file_day_number = day_number;
        // The new file's directory entry must survive a crash too.
        if let Ok(d) = File::open(&self.settings.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Appends one record of `kind` with `fields` and returns its sequence number. With
    /// [`Fsync::Always`] the record is on disk when this returns.
    pub fn append(&mut self, kind: &str, fields: Map<String, Value>) -> io::Result<u64> {
        let seq = self.append_buffered(kind, fields)?;
        self.finish_batch()?;
        Ok(seq)
    }

    /// Appends one record to the write buffer; [`Writer::finish_batch`] writes the batch out
    /// (one write, and with [`Fsync::Always`] one fsync, for many records: group commit).
    pub fn append_buffered(&mut self, kind: &str, fields: Map<String, Value>) -> io::Result<u64> {
        let fields = serde_json::to_vec(&Value::Object(fields))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.append_raw_buffered(kind, &fields)
    }

    /// As [`Writer::append_buffered`], with the record's fields already serialised as a JSON
    /// object (`{...}`) that has none of the chain's keys (`seq`, `prev`, `kind`, `time`): the
    /// line is the chain's keys followed by these fields, with no map built in between.
    pub fn append_raw_buffered(&mut self, kind: &str, fields: &[u8]) -> io::Result<u64> {
        let seq = self.write_line(kind, fields)?;
        self.since_seal += 1;
        if self.since_seal >= self.settings.seal_every.max(1) {
            self.seal()?;
        }
        Ok(seq)
    }

    /// Writes the buffered records and syncs them as the fsync policy says.
    pub fn finish_batch(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        self.sync_per_policy()
    }

    /// Writes one line: the chain's keys (`seq`, `prev`, `kind`, `time`) spliced in front of
    /// `fields`, a serialised JSON object.
    fn write_line(&mut self, kind: &str, fields: &[u8]) -> io::Result<u64> {
        let inner = fields
            .strip_prefix(b"{")
            .and_then(|f| f.strip_suffix(b"}"))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "fields are not a JSON object")
            })?;
        let now = SystemTime::now();
        self.roll_if_needed(now)?;
        let seq = self.seq + 1;
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.extend_from_slice(b"{\"seq\":");
        line.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        line.extend_from_slice(b",\"prev\":\"");
        line.extend_from_slice(self.prev.as_bytes());
        line.extend_from_slice(b"\",\"kind\":");
        serde_json::to_writer(&mut line, kind)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        line.extend_from_slice(b",\"time\":\"");
        self.stamp.write(now, &mut line);
        line.push(b'"');
        if !inner.iter().all(u8::is_ascii_whitespace) {
            line.push(b',');
            line.extend_from_slice(inner);
        }
        line.push(b'}');
        let mut hash = [0u8; 64];
        crate::hex_lower_into(digest(&SHA256, &line).as_ref(), &mut hash);
        line.push(b'\n');
        let written = match self.file.as_mut() {
            Some(f) => f.write_all(&line),
            None => Err(io::Error::other("no audit file open")),
        };
        let len = line.len() as u64;
        self.line = line;
        written?;
        self.file_bytes += len;
        self.seq = seq;
        self.prev.clear();
        self.prev
            .push_str(std::str::from_utf8(&hash).map_err(io::Error::other)?);
        self.dirty = true;
        Ok(seq)
    }

    /// Appends a seal over the chain so far.
    pub fn seal(&mut self) -> io::Result<()> {
        let sig = self.seal_key.sign(&self.prev);
        let mut m = Map::new();
        m.insert("sealed".into(), Value::from(self.prev.clone()));
        m.insert(
            "sig".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(sig)),
        );
        if let Some(r) = &self.settings.replica {
            m.insert("replica".into(), Value::from(r.clone()));
        }
        let fields = serde_json::to_vec(&Value::Object(m))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.write_line("seal", &fields)?;
        self.since_seal = 0;
        Ok(())
    }

    fn sync_per_policy(&mut self) -> io::Result<()> {
        match self.settings.fsync {
            Fsync::Always => self.sync(),
            Fsync::Interval(d) if self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        }
    }

    /// Forces written records to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            if let Some(f) = self.file.as_mut() {
                f.flush()?;
                f.get_ref().sync_data()?;
            }
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals and syncs (on shutdown).
    pub fn close(mut self) -> io::Result<()> {
        if self.since_seal > 0 {
            self.seal()?;
        }
        self.dirty = true;
        self.sync()
    }
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub files: usize,
    pub records: u64,
    pub seals: u64,
    /// A final line without its newline: a crash while writing, not tampering.
    pub torn_tail: Option<(PathBuf, usize)>,
    /// Records after the last seal (not yet covered by a signature).
    pub unsealed: u64,
    /// The latest seal as an anchor to keep outside the gateway's host.
    pub last_seal: Option<Anchor>,
    /// The replicas named by the seals, in the order they first appear (one, unless the data
    /// directory moved to another replica id; none for a log of an earlier version).
    pub replicas: Vec<String>,
}

/// A point of the chain exported off the host: "record `seq` hashes to `hash`" (from a seal,
/// with its signature and time). Whoever controls the host, and with it the seal key, can
/// rewrite and re-seal the whole log; an anchor kept elsewhere exposes that, because the
/// rewritten chain no longer passes through it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
    /// The seal's signature (base64) over `hash`.
    #[serde(default)]
    pub sig: String,
    /// When the seal was written.
    #[serde(default)]
    pub time: String,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {what}")]
pub struct VerifyError {
    pub file: String,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: usize,
    pub what: String,
}

/// Checks every file, link and seal of the chain in `dir` with the seal public key.
pub fn verify(dir: &Path, public_key: &[u8]) -> Result<Verification, VerifyError> {
    verify_with_anchors(dir, public_key, &[])
}

/// [`verify`], and the chain must pass through every anchor exported earlier.
pub fn verify_with_anchors(
    dir: &Path,
    public_key: &[u8],
    anchors: &[Anchor],
) -> Result<Verification, VerifyError> {
    let err = |file: &Path, line: usize, what: String| VerifyError {
        file: file.display().to_string(),
        line,
        what,
    };
    let files = audit_files(dir).map_err(|e| err(dir, 0, format!("cannot read: {e}")))?;
    if files.is_empty() {
        return Err(err(dir, 0, "no audit file".into()));
    }
    if files.first().map_or(1, |f| f.0) != 1 {
        return Err(err(
            dir,
            0,
            format!("audit file {:06} (the first) is missing", 1),
        ));
    }
    let mut seq = 0u64;
    let mut prev = GENESIS.to_owned();
    let mut seals = 0u64;
    let mut since_seal = 0u64;
    let mut torn_tail = None;
    // Where the previous record is: a broken link names it, the record that was changed.
    let mut prev_at: Option<(PathBuf, usize)> = None;
    let mut last_seal = None;
    let mut replicas: Vec<String> = Vec::new();
    let last_index = files.len() - 1;
    for (fi, (n, path)) in files.iter().enumerate() {
        let expected_number = fi as u64 + 1;
        if *n != expected_number {
            return Err(err(
                path,
                0,
                format!("audit file {expected_number:06} is missing before this one"),
            ));
        }
        let f = File::open(path).map_err(|e| err(path, 0, format!("cannot read: {e}")))?;
        let mut reader = BufReader::new(f);
        let mut lineno = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| err(path, lineno + 1, format!("cannot read: {e}")))?;
            if read == 0 {
                break;
            }
            lineno += 1;
            if buf.last() != Some(&b'\n') {
                // Only the very end of the chain may be cut short.
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                if fi == last_index && rest.is_empty() {
                    torn_tail = Some((path.clone(), lineno));
                    break;
                }
                return Err(err(path, lineno, "line without its end".into()));
            }
            let line = &buf[..buf.len() - 1];
            let v: Value = serde_json::from_slice(line)
                .map_err(|e| err(path, lineno, format!("not a JSON record: {e}")))?;
            let got_seq = v.get("seq").and_then(Value::as_u64);
            if got_seq != Some(seq + 1) {
                return Err(err(
                    path,
                    lineno,
                    format!(
                        "sequence {} where {} was expected (a record was removed, inserted or moved)",
                        got_seq.map_or("missing".to_owned(), |s| s.to_string()),
                        seq + 1
                    ),
                ));
            }
            if v.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
                let (p, l) = prev_at.clone().unwrap_or((path.clone(), lineno));
                return Err(err(
                    &p,
                    l,
                    "this record was changed: the next record's link to it does not match".into(),
                ));
            }
            if v.get("kind").and_then(Value::as_str) == Some("seal") {
                let sealed = v.get("sealed").and_then(Value::as_str).unwrap_or("");
                let sig = v
                    .get("sig")
                    .and_then(Value::as_str)
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .unwrap_or_default();
                if sealed != prev || !verify_seal(public_key, &prev, &sig) {
                    return Err(err(
                        path,
                        lineno,
                        "the seal's signature does not verify".into(),
                    ));
                }
                seals += 1;
                since_seal = 0;
                if let Some(r) = v.get("replica").and_then(Value::as_str) {
                    if !replicas.iter().any(|o| o == r) {
                        replicas.push(r.to_owned());
                    }
                }
                last_seal = Some(Anchor {
                    seq,
                    hash: prev.clone(),
                    sig: v
                        .get("sig")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    time: v
                        .get("time")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                });
            } else {
                since_seal += 1;
            }
            seq += 1;
            prev = sha256_hex(line);
            prev_at = Some((path.clone(), lineno));
            if let Some(a) = anchors.iter().find(|a| a.seq == seq) {
                if a.hash != prev {
                    return Err(err(
                        path,
                        lineno,
                        format!(
                            "record {seq} is not the one anchored outside the host (seal of {}): the log was rewritten",
                            if a.time.is_empty() { "an earlier export" } else { a.time.as_str() }
                        ),
                    ));
                }
            }
        }
    }
    if let Some(a) = anchors.iter().filter(|a| a.seq > seq).max_by_key(|a| a.seq) {
        return Err(err(
            dir,
            0,
            format!(
                "the log ends at record {seq}, but record {} was anchored outside the host: records were removed",
                a.seq
            ),
        ));
    }
    Ok(Verification {
        files: files.len(),
        records: seq,
        seals,
        torn_tail,
        unsealed: since_seal,
        last_seal,
        replicas,
    })
}

/// The replica named by the newest seal of the chain in `dir` that names one (newest file
/// first, so that a long log is not read whole); `None` for a log of an earlier version.
pub fn replica_of(dir: &Path) -> io::Result<Option<String>> {
    for (_, path) in audit_files(dir)?.iter().rev() {
        let text = std::fs::read(path)?;
        for line in text.split(|b| *b == b'\n').rev() {
            if !line.windows(10).any(|w| w == b"\"replica\":") {
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if v.get("kind").and_then(Value::as_str) == Some("seal") {
                    if let Some(r) = v.get("replica").and_then(Value::as_str) {
                        return Ok(Some(r.to_owned()));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Reads records (complete lines) of every audit file in order, for queries.
pub(crate) fn for_each_record(dir: &Path, mut f: impl FnMut(Value)) -> io::Result<()> {
    for (_, path) in audit_files(dir)? {
        let mut file = File::open(&path)?;
        file.seek(SeekFrom::Start(0))?;
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                f(v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
