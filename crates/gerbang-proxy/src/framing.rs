//! A guard below hyper that finds HTTP/1.1 requests carrying both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 §6.1 by framing such a request as chunked and silently dropping
//! `Content-Length` before the handler sees it (hyper issues #3860, #4123), so the gateway cannot
//! tell from the parsed request. This guard sits between the socket and hyper, tracks HTTP/1.1
//! message boundaries (heads, `Content-Length` and chunked bodies), and renames the
//! `Content-Length` field of an ambiguous head to [`AMBIGUOUS_FRAMING_MARKER`]. Framing is
//! unchanged (hyper still reads the body as chunked), and the pipeline refuses the request with
//! 400 and closes the connection.
//!
//! The guard mirrors hyper's framing rules exactly (heads end at the first empty line, chunked
//! framing needs CRLF everywhere, the same overflow rules). It passes bytes through untracked
//! only where hyper stops reading HTTP/1 heads on the connection too: after the HTTP/2 preface,
//! after malformed framing (hyper fails the connection at the same byte), after a head larger
//! than hyper's buffer (hyper answers 431 and closes), and at end of stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header name that replaces `Content-Length` in an ambiguous head.
pub const AMBIGUOUS_FRAMING_MARKER: &str = "x-gerbang-ambiguous-framing";

/// Limits above hyper's own (16 KiB of chunk extensions, 16 KiB of trailers): hyper fails such a
/// stream first, so the guard never gives up on a stream that hyper goes on reading.
const MAX_EXTENSION_BYTES: u32 = 64 * 1024;
const MAX_TRAILER_BYTES: u32 = 64 * 1024;

/// The chunked decoder's states, mirroring hyper's (`proto/h1/decode.rs`) byte for byte:
/// CRLF is required everywhere, a bare LF ends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    Start,
    /// Inside the hex digits.
    Size(u64),
    /// Whitespace after the size.
    SizeLws(u64),
    /// Inside a chunk extension; the count of its bytes.
    Extension(u64, u32),
    /// Expecting the LF after the size line's CR.
    SizeLf(u64),
    /// Inside chunk data.
    Data(u64),
    /// Expecting the CR, then the LF, after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk: CR of the final empty line, or the first byte of a trailer.
    EndCr(u32),
    /// Inside a trailer line; bytes of trailers so far.
    Trailer(u32),
    /// Expecting the LF after a trailer line's CR.
    TrailerLf(u32),
    /// Expecting the final LF.
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    PassThrough,
    /// A head larger than hyper's buffer: hyper got enough of it to answer 431; nothing more
    /// is read from this connection.
    Refuse,
}

/// See the module documentation.
pub struct FramingGuard<T> {
    inner: T,
    state: State,
    /// Bytes of a head not yet complete.
    head: Vec<u8>,
    /// Bytes ready for hyper.
    out: Vec<u8>,
    out_pos: usize,
    max_head: usize,
}

impl<T> FramingGuard<T> {
    /// Wraps `inner`; heads longer than `max_head` bytes are passed through untracked.
    pub fn new(inner: T, max_head: usize) -> Self {
        Self {
            inner,
            state: State::Head,
            head: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            max_head,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Between two requests: no partial head held back, no body bytes still expected, nothing
    /// prepared for hyper that it has not read. (Past the HTTP/2 preface or a framing error,
    /// never: such a stream is not HTTP/1 messages any more.)
    pub fn is_between_messages(&self) -> bool {
        self.state == State::Head && self.head.is_empty() && self.out_pos >= self.out.len()
    }

    /// Frees the buffer of a head that had to be held back, once it is empty: an idle
    /// connection keeps no capacity from its last request. (`out` gives its buffer back as
    /// soon as hyper has read it.)
    pub fn release_buffers(&mut self) {
        if self.head.is_empty() {
            self.head = Vec::new();
        }
    }

    /// Puts bytes that already passed the guard back in front of what hyper reads next: the
    /// bytes read to tell the protocol, or what hyper had read ahead when it let the
    /// connection go.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let pending = &self.out[self.out_pos..];
        let mut out = Vec::with_capacity(bytes.len() + pending.len());
        out.extend_from_slice(bytes);
        out.extend_from_slice(pending);
        self.out = out;
        self.out_pos = 0;
    }

    /// Consumes body bytes at the start of `data`; returns how many belonged to the body.
    /// Malformed chunked framing makes hyper fail the connection at the same byte; the guard
    /// then passes everything through.
    fn advance_body(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            let chunk = match self.state {
                State::Head | State::Refuse => return i,
                State::PassThrough => return data.len(),
                State::Length(rem) => {
                    let take = rem.min((data.len() - i) as u64);
                    i += take as usize;
                    let left = rem - take;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    continue;
                }
                State::Chunked(Chunk::Data(rem)) => {
                    let take = rem.min((data.len() - i) as u64);
                    i += take as usize;
                    let left = rem - take;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    });
                    continue;
                }
                State::Chunked(c) => c,
            };
            let b = data[i];
            i += 1;
            self.state = match step_chunk(chunk, b) {
                Some(Some(next)) => State::Chunked(next),
                Some(None) => State::Head,
                None => State::PassThrough,
            };
        }
        i
    }

    /// Hands hyper just enough of an oversized head to fill its buffer (it answers 431 and
    /// closes), and reads nothing more.
    fn refuse_oversized_head(&mut self) {
        let mut head = std::mem::take(&mut self.head);
        head.truncate(self.max_head + 1);
        self.out.extend_from_slice(&head);
        self.state = State::Refuse;
    }

    /// Moves complete heads (and the body bytes after them) from `self.head` to `self.out`.
    fn process_heads(&mut self) {
        loop {
            if self.state != State::Head {
                let rest = std::mem::take(&mut self.head);
                let used = self.advance_body(&rest);
                self.out.extend_from_slice(&rest[..used]);
                self.head = rest[used..].to_vec();
                if self.state == State::PassThrough {
                    let rest = std::mem::take(&mut self.head);
                    self.out.extend_from_slice(&rest);
                    return;
                }
                if self.head.is_empty() || self.state != State::Head {
                    return;
                }
            }
            let Some(end) = head_end(&self.head) else {
                if self.head.len() > self.max_head {
                    self.refuse_oversized_head();
                }
                return;
            };
            let rest = self.head.split_off(end);
            let head = std::mem::replace(&mut self.head, rest);
            self.state = inspect_head(&head, &mut self.out);
        }
    }
}

/// Where the head ends (index after its blank line), skipping leading empty lines. Like
/// httparse, a bare LF ends a line too.
fn head_end(buf: &[u8]) -> Option<usize> {
    scan_head(buf).map(|(end, _)| end)
}

/// Where the head ends, as [`head_end`], and whether [`analyse`] can find anything in it, both
/// from one scan of the line ends. A head with no empty line before its request line, that is
/// not the HTTP/2 preface, and none of whose lines starts `Content-Length:` or
/// `Transfer-Encoding:` (in any case) is neither ambiguous nor followed by a body: `analyse`
/// would answer `(false, State::Head)`, and the head is not read a second time.
fn scan_head(buf: &[u8]) -> Option<(usize, bool)> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let mut framed = start > 0 || buf.starts_with(HTTP2_PREFACE);
    // Only the line ends matter: found with memchr (SIMD) rather than byte by byte, which was
    // a tenth of the pipeline's instructions with a bearer token in the head.
    for i in memchr::memchr_iter(b'\n', &buf[start..]).map(|i| start + i) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some((i + 2, framed)),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((i + 3, framed)),
            Some(b'c' | b'C' | b't' | b'T') => framed |= names_framing(&buf[i + 1..]),
            _ => {}
        }
    }
    None
}

/// Whether a line (and what follows it) starts with the name of `Content-Length` or
/// `Transfer-Encoding` and its colon: the fields [`analyse`] reads.
fn names_framing(line: &[u8]) -> bool {
    let starts = |name: &[u8]| {
        line.get(..name.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(name))
    };
    starts(b"content-length:") || starts(b"transfer-encoding:")
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The lines of `head` as `head.split(|&b| b == b'\n')` gives them, found with memchr.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', head);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match ends.next() {
            Some(end) => {
                let line = &head[start..end];
                start = end + 1;
                Some(line)
            }
            None => {
                done = true;
                Some(&head[start..])
            }
        }
    })
}

fn oversized() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "request head larger than the limit",
    )
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// One byte of chunked framing: `Some(Some(next))` to go on, `Some(None)` when the body ended,
/// `None` when the framing is malformed (hyper refuses it too).
fn step_chunk(state: Chunk, b: u8) -> Option<Option<Chunk>> {
    let next = match (state, b) {
        (Chunk::Start, _) => Chunk::Size(hex(b)?),
        (Chunk::Size(n), _) if hex(b).is_some() => {
            Chunk::Size(n.checked_mul(16)?.checked_add(hex(b)?)?)
        }
        (Chunk::Size(n) | Chunk::SizeLws(n), b'\t' | b' ') => Chunk::SizeLws(n),
        (Chunk::Size(n) | Chunk::SizeLws(n), b';') => Chunk::Extension(n, 0),
        (Chunk::Size(n) | Chunk::SizeLws(n) | Chunk::Extension(n, _), b'\r') => Chunk::SizeLf(n),
        (Chunk::Size(_) | Chunk::SizeLws(_), _) => return None,
        (Chunk::Extension(_, _), b'\n') => return None,
        (Chunk::Extension(n, c), _) if c < MAX_EXTENSION_BYTES => Chunk::Extension(n, c + 1),
        (Chunk::Extension(_, _), _) => return None,
        (Chunk::SizeLf(0), b'\n') => Chunk::EndCr(0),
        (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
        (Chunk::SizeLf(_), _) => return None,
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Start,
        (Chunk::DataCr | Chunk::DataLf, _) => return None,
        (Chunk::EndCr(_), b'\r') => Chunk::EndLf,
        (Chunk::EndCr(t) | Chunk::Trailer(t), _) if t >= MAX_TRAILER_BYTES => return None,
        (Chunk::Trailer(t), b'\r') => Chunk::TrailerLf(t + 1),
        (Chunk::EndCr(t) | Chunk::Trailer(t), _) => Chunk::Trailer(t + 1),
        (Chunk::TrailerLf(t), b'\n') => Chunk::EndCr(t + 1),
        (Chunk::TrailerLf(_), _) => return None,
        (Chunk::EndLf, b'\n') => return Some(None),
        (Chunk::EndLf, _) => return None,
        (Chunk::Data(_), _) => return None,
    };
    Some(Some(next))
}

/// What a complete head tells: whether it is ambiguous, and the framing of what follows.
fn analyse(head: &[u8]) -> (bool, State) {
    let request_line = lines(head)
        .find(|l| !l.is_empty() && *l != b"\r")
        .unwrap_or(b"");
    if request_line.starts_with(HTTP2_PREFACE) {
        return (false, State::PassThrough);
    }
    let mut content_length: Option<u64> = None;
    let mut cl_invalid = false;
    let mut has_te = false;
    let mut te_chunked = false;
    for line in lines(head).skip(1) {
        // Only Content-Length and Transfer-Encoding matter: skip other lines at their first
        // byte, before looking for the colon.
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
            match value.parse::<u64>() {
                Ok(n) => content_length = Some(n),
                Err(_) => cl_invalid = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
            has_te = true;
            te_chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let ambiguous = has_te && (content_length.is_some() || cl_invalid);
    let next = if has_te {
        if te_chunked {
            State::Chunked(Chunk::Start)
        } else {
            State::PassThrough
        }
    } else if cl_invalid {
        State::PassThrough
    } else {
        match content_length {
            Some(0) | None => State::Head,
            Some(n) => State::Length(n),
        }
    };
    (ambiguous, next)
}

/// Copies `head` to `out`, renaming `Content-Length` fields to the marker when `ambiguous`, and
/// returns the framing of the body that follows.
fn inspect_head(head: &[u8], out: &mut Vec<u8>) -> State {
    let (ambiguous, next) = analyse(head);
    if !ambiguous {
        out.extend_from_slice(head);
        return next;
    }
    for (n, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let colon = line.iter().position(|&b| b == b':');
        match colon {
            Some(c) if n > 0 && line[..c].eq_ignore_ascii_case(b"content-length") => {
                out.extend_from_slice(AMBIGUOUS_FRAMING_MARKER.as_bytes());
                out.extend_from_slice(&line[c..]);
            }
            _ => out.extend_from_slice(line),
        }
    }
    next
}

impl<T> FramingGuard<T> {
    /// Scans bytes just read, in place. Returns how many of them hyper may have now; the rest
    /// (a head not yet complete, or an ambiguous head and what follows) was moved to `head` or
    /// `out`.
    fn scan_in_place(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::PassThrough => return data.len(),
                State::Refuse => return i,
                State::Head => match scan_head(&data[i..]) {
                    None => {
                        self.head.extend_from_slice(&data[i..]);
                        if self.head.len() > self.max_head {
                            self.refuse_oversized_head();
                        }
                        return i;
                    }
                    Some((end, framed)) => {
                        let (ambiguous, next) = if framed {
                            analyse(&data[i..i + end])
                        } else {
                            (false, State::Head)
                        };
                        if ambiguous {
                            // Rare: rewrite through `out`.
                            self.head.extend_from_slice(&data[i..]);
                            self.process_heads();
                            return i;
                        }
                        self.state = next;
                        i += end;
                    }
                },
                State::Length(_) | State::Chunked(_) => i += self.advance_body(&data[i..]),
            }
        }
        i
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(ready) = this.poll_pending_or_untracked(cx, buf) {
                return ready;
            }
            if buf.remaining() <= this.head.len() {
                // No room to put a partial head back in front: use the copying path.
                return this.poll_read_copying(cx, buf);
            }
            // Fast path: read into the caller's buffer and scan in place. A partial head held
            // back last time goes in front of the new bytes.
            let start = buf.filled().len();
            let stash = std::mem::take(&mut this.head);
            buf.put_slice(&stash);
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => {
                    buf.set_filled(start);
                    this.head = stash;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    buf.set_filled(start);
                    this.head = stash;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {}
            }
            let filled = buf.filled().len();
            if filled == before {
                // EOF: hand over what was held back as it is; hyper decides.
                this.state = State::PassThrough;
                return Poll::Ready(Ok(()));
            }
            let keep = this.scan_in_place(&buf.filled()[start..filled]);
            buf.set_filled(start + keep);
            if keep > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T: AsyncRead + Unpin> FramingGuard<T> {
    /// Serves bytes already prepared for hyper, or reads untracked when the guard stepped
    /// aside; `None` when the caller must read and scan.
    fn poll_pending_or_untracked(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Option<Poll<io::Result<()>>> {
        if self.out_pos < self.out.len() {
            let n = buf.remaining().min(self.out.len() - self.out_pos);
            buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
            self.out_pos += n;
            if self.out_pos == self.out.len() {
                // Freed rather than kept: `out` is the rare path (a rewritten or oversized
                // head, bytes handed back), and a connection should not carry its capacity.
                self.out = Vec::new();
                self.out_pos = 0;
            }
            return Some(Poll::Ready(Ok(())));
        }
        match self.state {
            State::PassThrough => Some(Pin::new(&mut self.inner).poll_read(cx, buf)),
            State::Refuse => Some(Poll::Ready(Err(oversized()))),
            _ => None,
        }
    }

    fn poll_read_copying(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(ready) = self.poll_pending_or_untracked(cx, buf) {
                return ready;
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                let rest = std::mem::take(&mut self.head);
                self.state = State::PassThrough;
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                self.out.extend_from_slice(&rest);
                continue;
            }
            self.head.extend_from_slice(rb.filled());
            self.process_heads();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Hands out at most `step` bytes per read, to exercise every split.
    pub struct Trickle {
        pub data: Vec<u8>,
        pub pos: usize,
        pub step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .step
                .min(this.data.len() - this.pos)
                .min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    pub async fn through(input: &[u8], step: usize) -> Vec<u8> {
        let t = Trickle {
            data: input.to_vec(),
            pos: 0,
            step,
        };
        let mut g = FramingGuard::new(t, 65536);
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.unwrap();
        out
    }

    pub fn count(hay: &[u8], needle: &str) -> usize {
        hay.windows(needle.len())
            .filter(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The byte-by-byte `head_end` that memchr replaced, kept as the reference.
    fn head_end_bytewise(buf: &[u8]) -> Option<usize> {
        let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
        let mut i = start;
        while i < buf.len() {
            if buf[i] == b'\n' {
                match buf.get(i + 1) {
                    Some(b'\n') => return Some(i + 2),
                    Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                    _ => {}
                }
            }
            i += 1;
        }
        None
    }

    #[test]
    fn memchr_scans_agree_with_the_bytewise_ones() {
        // Every string over an alphabet of the bytes that matter, up to length 7, then random
        // longer ones (a fixed LCG: the same inputs every run).
        let alphabet = b"\r\n:Ta ";
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut frontier = inputs.clone();
        for _ in 0..7 {
            let mut next = Vec::new();
            for p in &frontier {
                for &b in alphabet {
                    let mut q = p.clone();
                    q.push(b);
                    next.push(q);
                }
            }
            inputs.extend(next.iter().cloned());
            frontier = next;
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let len = (x % 300) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                v.push(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            inputs.push(v);
        }
        for input in &inputs {
            assert_eq!(head_end(input), head_end_bytewise(input), "{input:?}");
            let split: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            let found: Vec<&[u8]> = lines(input).collect();
            assert_eq!(found, split, "{input:?}");
        }
    }

    /// `scan_head` lets a head skip `analyse` only where `analyse` finds nothing: every input
    /// of up to four pieces that matter to either (line ends, the framing names in several
    /// cases and spellings, the HTTP/2 preface), then random longer ones.
    #[test]
    fn heads_that_skip_analyse_are_the_ones_it_finds_nothing_in() {
        let pieces: [&[u8]; 13] = [
            b"\r",
            b"\n",
            b"\r\n",
            b"Content-Length:",
            b"content-LENGTH: 7",
            b"TRANSFER-encoding: chunked",
            b"transfer-encoding:gzip",
            b"Content-Length 1:",
            b"c",
            b"T",
            b"PRI * HTTP/2.0",
            b"GET / HTTP/1.1",
            b": 5",
        ];
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut frontier = inputs.clone();
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &frontier {
                for piece in pieces {
                    next.push([p.as_slice(), piece].concat());
                }
            }
            inputs.extend(next.iter().cloned());
            frontier = next;
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let mut v = Vec::new();
            for _ in 0..(x >> 60) + 5 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                v.extend_from_slice(pieces[(x >> 33) as usize % pieces.len()]);
            }
            inputs.push(v);
        }
        let (mut skipped, mut framed_bodies) = (0, 0);
        for input in &inputs {
            let scanned = scan_head(input);
            assert_eq!(scanned.map(|(end, _)| end), head_end_bytewise(input));
            match scanned {
                Some((end, false)) => {
                    skipped += 1;
                    assert_eq!(
                        analyse(&input[..end]),
                        (false, State::Head),
                        "{:?}",
                        String::from_utf8_lossy(input)
                    );
                }
                Some((end, true)) if analyse(&input[..end]).1 != State::Head => {
                    framed_bodies += 1;
                }
                _ => {}
            }
        }
        // Both sides of the choice were exercised.
        assert!(
            skipped > 1_000 && framed_bodies > 1_000,
            "{skipped} {framed_bodies}"
        );
    }

    #[tokio::test]
    async fn marks_content_length_with_transfer_encoding_in_any_split() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, 64, 8192] {
            let out = through(input, step).await;
            assert_eq!(
                out.len(),
                input.len() + AMBIGUOUS_FRAMING_MARKER.len() - "content-length".len()
            );
            assert_eq!(count(&out, AMBIGUOUS_FRAMING_MARKER), 1, "step {step}");
            assert_eq!(count(&out, "content-length"), 0, "step {step}");
            assert!(out.ends_with(b"5\r\nhello\r\n0\r\n\r\n"));
        }
    }

    #[tokio::test]
    async fn bodies_that_look_like_heads_are_not_touched() {
        let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // then a chunked request whose chunk data also looks like a head, then a clean GET
        input.push_str(&format!(
            "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\nX-Trailer: 1\r\n\r\n",
            body.len()
        ));
        input.push_str("GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        for step in [1, 5, 13, 8192] {
            let out = through(input.as_bytes(), step).await;
            assert_eq!(out, input.as_bytes(), "step {step}");
        }
    }

    #[tokio::test]
    async fn a_later_ambiguous_request_on_the_connection_is_marked() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";
        for step in [1, 4, 8192] {
            let out = through(input, step).await;
            assert_eq!(count(&out, AMBIGUOUS_FRAMING_MARKER), 1, "step {step}");
            let marker_at = out
                .windows(AMBIGUOUS_FRAMING_MARKER.len())
                .position(|w| w == AMBIGUOUS_FRAMING_MARKER.as_bytes())
                .unwrap();
            let c_at = out.windows(7).position(|w| w == b"POST /c").unwrap();
            assert!(marker_at > c_at);
        }
    }

    #[tokio::test]
    async fn a_bare_lf_in_trailers_does_not_end_the_body() {
        // hyper reads "\nGET /x ..." as trailer bytes (only CRLF ends a trailer line), so the
        // ambiguous request that follows is the next head it parses: it must be marked.
        let inner = "GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        let input = format!(
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n{inner}\r\n\r\n\
             POST /z HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        for step in [1, 3, 8192] {
            let out = through(input.as_bytes(), step).await;
            assert_eq!(count(&out, AMBIGUOUS_FRAMING_MARKER), 1, "step {step}");
            assert_eq!(
                count(&out, "content-length"),
                1,
                "the trailer's copy is untouched"
            );
        }
    }

    #[tokio::test]
    async fn chunk_sizes_with_leading_zeros_are_followed() {
        let input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000003\r\nabc\r\n00000000000000000000\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n0\r\n\r\n";
        let out = through(input, 5).await;
        assert_eq!(count(&out, AMBIGUOUS_FRAMING_MARKER), 1);
    }

    #[tokio::test]
    async fn an_oversized_head_is_cut_at_the_limit_then_the_stream_fails() {
        let mut input = b"GET /a HTTP/1.1\r\nX-Big: ".to_vec();
        input.extend(std::iter::repeat_n(b'v', 70_000));
        input.extend_from_slice(b"\r\n\r\n");
        let t = Trickle {
            data: input,
            pos: 0,
            step: 4096,
        };
        let mut g = FramingGuard::new(t, 65536);
        let mut out = Vec::new();
        let err = g.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out.len(), 65537);
    }

    #[tokio::test]
    async fn http2_preface_passes_through() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        input.extend_from_slice(b"content-length: 1\r\ntransfer-encoding: chunked\r\n\r\n");
        let out = through(&input, 3).await;
        assert_eq!(out, input);
    }
}

#[cfg(test)]
mod properties {
    use super::tests_support::*;
    use super::*;
    use proptest::prelude::*;

    /// A well-formed HTTP/1.1 request: with no body, a Content-Length body or a chunked body
    /// (whose data and trailers may contain anything, head-like text included).
    fn request() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(
            prop_oneof![
                Just(b"Content-Length: 3\r\n".to_vec()),
                Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
                Just(b"\r\n\r\nGET / HTTP/1.1\r\n".to_vec()),
                Just(b"\n\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ],
            0..4,
        )
        .prop_map(|v| v.concat());
        (0..3u8, body, any::<bool>()).prop_map(|(kind, body, trailer)| {
            let mut r = b"POST /a/s/x HTTP/1.1\r\nHost: h\r\n".to_vec();
            match kind {
                0 => r.extend_from_slice(b"\r\n"),
                1 => {
                    r.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    r.extend_from_slice(&body);
                }
                _ => {
                    r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    if !body.is_empty() {
                        r.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                        r.extend_from_slice(&body);
                        r.extend_from_slice(b"\r\n");
                    }
                    r.extend_from_slice(b"0\r\n");
                    if trailer {
                        // A bare LF does not end a trailer line (hyper needs CRLF): what
                        // follows it must not be taken for a head with a body.
                        r.extend_from_slice(b"\nGET /x HTTP/1.1\r\nContent-Length: 40\r\n");
                    }
                    r.extend_from_slice(b"\r\n");
                }
            }
            r
        })
    }

    const AMBIGUOUS: &[u8] =
        b"POST /z HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// Unambiguous requests pass byte for byte in any read split; an ambiguous request after
        /// them is always the one marked (the guard never loses track of message boundaries).
        #[test]
        fn follows_boundaries_in_any_split(
            reqs in proptest::collection::vec(request(), 1..4),
            step in 1usize..300,
        ) {
            let clean = reqs.concat();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let out = rt.block_on(through(&clean, step));
            prop_assert_eq!(&out, &clean);

            let mut with_bad = clean.clone();
            with_bad.extend_from_slice(AMBIGUOUS);
            let out = rt.block_on(through(&with_bad, step));
            prop_assert_eq!(count(&out, AMBIGUOUS_FRAMING_MARKER), 1);
            let marker_at = out
                .windows(AMBIGUOUS_FRAMING_MARKER.len())
                .position(|w| w == AMBIGUOUS_FRAMING_MARKER.as_bytes())
                .unwrap();
            prop_assert!(marker_at > clean.len());
            prop_assert_eq!(&out[..clean.len()], &clean[..]);
        }
    }
}
