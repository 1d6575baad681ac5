//! The server side of a TLS connection on rustls's unbuffered API: the session's state is
//! rustls's, the buffers are this module's.
//!
//! rustls's buffered connection (what `tokio-rustls` drives) keeps a 4 KiB buffer to read
//! records into for as long as the session lives, busy or idle, and offers no way to give it
//! back. A parked keep-alive connection (see [`crate::parking`]) should hold its socket, the
//! session's keys and little else, so here the ciphertext read, the plaintext not yet handed
//! to hyper and the records not yet written are three `Vec`s that
//! [`TlsServerStream::release_buffers`] lets go of when they are empty.
//!
//! rustls's unbuffered connection is a state machine: each call of `process_tls_records` on
//! the bytes read so far returns one thing to do (records to encode, decrypted data to take,
//! more bytes needed, application data may be written) and how many bytes to drop from the
//! front of the input. [`TlsServerStream::drive`] runs it until it needs the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::BufMut;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes read from the socket at a time (rustls's own reads are 4 KiB too): each read's
/// records are processed before the next read.
const READ_ROOM: usize = 4096;

/// A buffer whose capacity grew past this (a large write, a record or handshake message read
/// in pieces) is let go once it is empty, so that a connection keeps only what it uses.
const KEEP_CAPACITY: usize = 16 * 1024;

/// The largest TLS record on the wire: a 5-byte header and at most 2^14 + 2048 bytes of
/// ciphertext (RFC 5246 §6.2.3; TLS 1.3 allows less).
const MAX_RECORD: usize = 5 + 16_384 + 2048;

/// Most ciphertext held while rustls cannot make progress: a handshake message of up to
/// 64 KiB split over records (rustls's own limit for its buffer), plus one record.
const MAX_INCOMING: usize = 0xffff + MAX_RECORD;

/// Most plaintext encrypted by one write: hyper hands over its whole buffer, and the records
/// of a larger write would only wait here for the socket.
const MAX_WRITE: usize = 64 * 1024;

/// What the session waits for once it has done what it could with the bytes it has.
#[derive(Debug, PartialEq, Eq)]
enum Outcome<R> {
    /// More bytes from the peer (mid-handshake, or a record not wholly read).
    NeedInput,
    /// Application data may be written; `R` is what the caller did with that.
    Traffic(R),
    /// Both sides sent close_notify.
    Closed,
}

/// A TLS server connection over TCP whose buffers are released when empty.
pub struct TlsServerStream {
    tcp: TcpStream,
    /// Boxed: the session is 1 KiB, and a stream moved through a connection's futures leaves
    /// a slot of its size in each of them (inline, a TLS connection's task was 4.9 KiB in a
    /// debug build; boxed, 1.7 KiB).
    conn: Box<UnbufferedServerConnection>,
    /// Ciphertext read and not yet wholly processed (at most a partial record between reads).
    incoming: Vec<u8>,
    /// Decrypted bytes not yet handed to the reader, from `plain_pos` on.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Records encoded and not yet written, from `out_pos` on.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// Bytes were read that rustls has not processed yet.
    unprocessed: bool,
    /// The peer's close_notify arrived: what was read before it is all there is.
    peer_closed: bool,
    /// The socket reached its end.
    eof: bool,
    /// Our close_notify is queued (or there was nothing to close).
    close_sent: bool,
    /// The session failed (its alert queued): rustls is not asked anything again.
    failed: bool,
}

impl TlsServerStream {
    /// Runs the server's side of the handshake on `tcp`. The stream comes back once the
    /// handshake is complete (the client's certificate, if any, verified) and every record
    /// it produced has been written.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = Box::new(UnbufferedServerConnection::new(config).map_err(tls_error)?);
        let mut stream = Self {
            tcp,
            conn,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            unprocessed: false,
            peer_closed: false,
            eof: false,
            close_sent: false,
            failed: false,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The session (peer certificates, negotiated protocol and the like).
    pub fn session(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// Nothing read from the socket is held here: no plaintext for the reader, no bytes rustls
    /// has not processed (a partial record or handshake message waits for more from the
    /// socket), nothing to write, no end seen. Only then does the socket's readiness say
    /// whether the peer sent something.
    pub fn drained(&self) -> bool {
        self.plain.is_empty()
            && self.out_pos == self.outgoing.len()
            && !self.unprocessed
            && !self.peer_closed
            && !self.eof
    }

    /// Gives back the memory of every buffer that holds nothing (a parked connection).
    pub fn release_buffers(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        } else {
            self.incoming.shrink_to_fit();
        }
        if self.plain.is_empty() {
            self.plain = Vec::new();
        }
        if self.out_pos == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.out_pos = 0;
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let outcome = self.drive(None, |_, _| Ok(()))?;
            ready!(self.poll_write_out(cx))?;
            // A TLS 1.3 server may send data before the client's last flight (with its
            // certificate) arrived: `Traffic` alone does not end the handshake.
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if outcome == Outcome::Closed || self.peer_closed || self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS handshake ended early",
                )));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                self.eof = true;
            }
        }
    }

    /// Processes every whole record read so far: handshake and alert records encoded into
    /// `outgoing`, application data into `sink` as far as it has room (when `plain` is empty;
    /// one copy fewer) and the rest appended to `plain`, and, once data may be written,
    /// `at_traffic` called with the session's writer and `outgoing`.
    fn drive<R>(
        &mut self,
        mut sink: Option<&mut ReadBuf<'_>>,
        mut at_traffic: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut Vec<u8>,
        ) -> io::Result<R>,
    ) -> io::Result<Outcome<R>> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS session failed earlier",
            ));
        }
        let Self {
            conn,
            incoming,
            plain,
            outgoing,
            unprocessed,
            peer_closed,
            failed,
            ..
        } = self;
        // What rustls has discarded from the front of `incoming` so far: the bytes are
        // removed once, when the loop ends (one shift per call, not one per record).
        let mut start = 0;
        let result = loop {
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut incoming[start..]);
            let mut extra_discard = 0;
            let step = match state {
                Err(e) => Err(tls_error(e)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut taken = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                extra_discard += record.discard;
                                let mut payload = record.payload;
                                if let Some(buf) = sink.as_deref_mut().filter(|_| plain.is_empty())
                                {
                                    let n = buf.remaining().min(payload.len());
                                    buf.put_slice(&payload[..n]);
                                    payload = &payload[n..];
                                }
                                plain.extend_from_slice(payload);
                            }
                            Err(e) => {
                                taken = Err(tls_error(e));
                                break;
                            }
                        }
                    }
                    taken
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(&mut data, outgoing).map(|()| None)
                }
                // The records are in `outgoing`, which is written before the session waits
                // for anything.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Outcome::NeedInput)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    at_traffic(&mut traffic, outgoing).map(|r| Some(Outcome::Traffic(r)))
                }
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Ok(Some(Outcome::Closed)),
                // Early data is not enabled in the server's configuration.
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS early data",
                )),
            };
            start = (start + discard + extra_discard).min(incoming.len());
            match step {
                Ok(Some(outcome)) => {
                    // rustls stops at `NeedInput` or `Traffic` only once no whole record is
                    // left (`Closed`: nothing more will be processed).
                    *unprocessed = false;
                    break Ok(outcome);
                }
                Ok(None) => {}
                Err(e) => {
                    *failed = true;
                    break Err(e);
                }
            }
        };
        incoming.drain(..start);
        if incoming.capacity() > KEEP_CAPACITY && incoming.len() <= READ_ROOM {
            incoming.shrink_to(READ_ROOM);
        }
        if result.is_err() {
            self.send_alert();
        }
        result
    }

    /// After a failure in [`Self::drive`]: encodes the alert rustls queued for it and tries
    /// once to write it (the connection is closed right after, whatever the socket takes).
    fn send_alert(&mut self) {
        let Self {
            conn,
            incoming,
            outgoing,
            ..
        } = self;
        // Only while rustls has records queued: with none, the call would process the input
        // that failed again. The bound is against a surprise.
        for _ in 0..4 {
            if !conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(&mut data, outgoing).is_ok()
                }
                _ => false,
            };
            let discard = discard.min(incoming.len());
            incoming.drain(..discard);
            if !encoded {
                break;
            }
        }
        if let Some(pending) = self.outgoing.get(self.out_pos..) {
            if let Ok(n) = self.tcp.try_write(pending) {
                self.out_pos += n;
            }
        }
    }

    /// Reads what the socket has into `incoming`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS input over the size of any record or handshake message",
            )));
        }
        self.incoming.reserve(READ_ROOM);
        // Through the socket's `poll_read`: a read shorter than the room clears the socket's
        // readiness, so the next poll waits without a system call. (`try_read_buf` after
        // `poll_read_ready` does not, and cost a `recvfrom` answering EAGAIN per request.)
        let mut room = (&mut self.incoming).limit(READ_ROOM);
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.tcp),
            cx,
            &mut room
        ))?;
        if read > 0 {
            self.unprocessed = true;
        }
        Poll::Ready(Ok(read))
    }

    /// Writes `outgoing` to the socket; ready when all of it went.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(pending) = self.outgoing.get(self.out_pos..).filter(|p| !p.is_empty()) {
            match ready!(Pin::new(&mut self.tcp).poll_write(cx, pending)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_pos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        empty(&mut self.outgoing);
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = this.plain.get(this.plain_pos..).filter(|p| !p.is_empty()) {
                let n = buf.remaining().min(pending.len());
                buf.put_slice(&pending[..n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    empty(&mut this.plain);
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let filled = buf.filled().len();
            let drove = this.drive(Some(&mut *buf), |_, _| Ok(()));
            // Data decrypted before an error is handed over first (and what `plain` holds
            // after it, in order); the error comes with the next read (`failed` makes the
            // session fail again).
            let delivered = buf.filled().len() > filled;
            let outcome = match drove {
                Ok(outcome) => outcome,
                Err(_) if delivered => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            };
            // Records the session produced while reading (alerts: a TLS 1.2 client's
            // renegotiation is refused with one) go out now if the socket takes them,
            // otherwise with the next write or flush.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                if !delivered {
                    return Poll::Ready(Err(e));
                }
            }
            if delivered {
                return Poll::Ready(Ok(()));
            }
            if !this.plain.is_empty() || this.peer_closed {
                continue;
            }
            if outcome == Outcome::Closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // As rustls's own reader: an end without close_notify may be a truncation.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.eof = true;
            }
        }
    }
}

impl AsyncWrite for TlsServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_sent {
            // Nothing is written after our close_notify (rustls would still encrypt it).
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Records from an earlier write that the socket has not taken come first: this is
        // where a slow reader holds the writer back.
        ready!(this.poll_write_out(cx))?;
        let take = buf.len().min(MAX_WRITE);
        let plain_before = this.plain.len();
        let outcome = this.drive(None, |traffic, out| {
            encrypt_into(traffic, &buf[..take], out)
        })?;
        if this.plain.len() != plain_before {
            // Records read earlier held data the reader has not seen: let it look again.
            cx.waker().wake_by_ref();
        }
        match outcome {
            Outcome::Traffic(()) => {}
            Outcome::NeedInput => {
                return Poll::Ready(Err(io::Error::other("TLS handshake not complete")));
            }
            Outcome::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        // The records go out now as far as the socket takes them; the rest waits for the
        // next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            // Nothing to notify when the session already closed or failed.
            if let Ok(Outcome::Traffic(())) = this.drive(None, close_notify_into) {
                ready!(this.poll_write_out(cx))?;
            }
        }
        // As tokio-rustls: a socket the peer already disconnected is shut down.
        match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            done => Poll::Ready(done),
        }
    }
}

/// Empties a buffer whose contents have all been used; one that grew past [`KEEP_CAPACITY`]
/// is let go.
fn empty(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_CAPACITY {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends the records `data` holds to `out`.
fn encode_into(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    append(out, 2048, |room| {
        data.encode(room).map_err(|e| match e {
            EncodeError::InsufficientSize(size) => Short::Room(size.required_size),
            e => Short::Failed(e.to_string()),
        })
    })
}

/// Appends `data`, encrypted, to `out`.
fn encrypt_into(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    // Each record of at most 16 KiB gets a header and a tag: 64 bytes covers every cipher
    // suite rustls offers, and rustls says how much it needs if not.
    let room = data.len() + (data.len() / 16_384 + 1) * 64;
    append(out, room, |room| traffic.encrypt(data, room).map_err(short))
}

/// Appends a close_notify alert to `out`.
fn close_notify_into(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    append(out, 64, |room| {
        traffic.queue_close_notify(room).map_err(short)
    })
}

/// Why rustls wrote nothing into the room it was given.
enum Short {
    /// It needs this much.
    Room(usize),
    Failed(String),
}

fn short(e: EncryptError) -> Short {
    match e {
        EncryptError::InsufficientSize(size) => Short::Room(size.required_size),
        e => Short::Failed(e.to_string()),
    }
}

/// Appends to `out` what `write` puts into the room it is given (`room` bytes first, then
/// what `write` says it needs).
fn append(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        let failed = match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n.min(room));
                return Ok(());
            }
            Err(Short::Room(needed)) if needed > room => {
                room = needed;
                continue;
            }
            Err(Short::Room(needed)) => format!("rustls asked for {needed} bytes of {room}"),
            Err(Short::Failed(why)) => why,
        };
        out.truncate(start);
        return Err(io::Error::other(failed));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::tls::test_configs as configs;

    /// A listener whose first connection is handed to `serve` after the handshake (or the
    /// handshake's error, when it fails).
    async fn server<F, Fut, R>(
        serve: F,
    ) -> (
        std::net::SocketAddr,
        Arc<rustls::ClientConfig>,
        tokio::task::JoinHandle<R>,
    )
    where
        F: FnOnce(io::Result<TlsServerStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = R> + Send,
        R: Send + 'static,
    {
        let (server, client) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(TlsServerStream::accept(tcp, server).await).await
        });
        (addr, client, task)
    }

    /// Reads to the end in reads of at most 7 bytes (smaller than any record).
    async fn read_in_small_pieces(s: &mut TlsServerStream) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        let mut piece = [0u8; 7];
        loop {
            match s.read(&mut piece).await? {
                0 => return Ok(all),
                n => all.extend_from_slice(&piece[..n]),
            }
        }
    }

    /// Echoes what the client sent, once the client has closed its side with close_notify.
    async fn echo(s: io::Result<TlsServerStream>) -> Vec<u8> {
        let mut s = s.unwrap();
        let got = read_in_small_pieces(&mut s).await.unwrap();
        for piece in got.chunks(10_000) {
            s.write_all(piece).await.unwrap();
        }
        s.shutdown().await.unwrap();
        got
    }

    /// Closes the client's side (close_notify) and reads what the server sends until its end.
    async fn close_and_read_back<T: AsyncRead + AsyncWrite + Unpin>(
        c: &mut tokio_rustls::client::TlsStream<T>,
    ) -> Vec<u8> {
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        back
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
        client: Arc<rustls::ClientConfig>,
        io: T,
    ) -> tokio_rustls::client::TlsStream<T> {
        tokio_rustls::TlsConnector::from(client)
            .connect("localhost".try_into().unwrap(), io)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn data_crosses_both_ways_in_large_and_small_pieces() {
        let (addr, client, task) = server(echo).await;
        let mut c = connect(client, TcpStream::connect(addr).await.unwrap()).await;
        let sent = pattern(300_000);
        for piece in sent.chunks(33_333) {
            tokio::time::timeout(Duration::from_secs(20), c.write_all(piece))
                .await
                .unwrap()
                .unwrap();
        }
        let back = close_and_read_back(&mut c).await;
        assert_eq!(task.await.unwrap(), sent, "what the server read");
        assert_eq!(back, sent, "what came back");
    }

    /// A socket that writes one byte per call: every record, the handshake's included,
    /// reaches the server in pieces.
    struct OneByteWrites(TcpStream);

    impl AsyncRead for OneByteWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for OneByteWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let one = buf.len().min(1);
            Pin::new(&mut self.0).poll_write(cx, &buf[..one])
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_one_byte_at_a_time_is_understood() {
        let (addr, client, task) = server(echo).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut c = connect(client, OneByteWrites(tcp)).await;
        let sent = pattern(3_000);
        c.write_all(&sent).await.unwrap();
        let back = close_and_read_back(&mut c).await;
        assert_eq!(task.await.unwrap(), sent);
        assert_eq!(back, sent);
    }

    #[tokio::test]
    async fn an_end_without_close_notify_is_an_error_not_an_end() {
        // A TCP end without close_notify may be an attacker cutting a request short: the
        // reader must not take it for the end of the data.
        let (addr, client, task) = server(|s| async move {
            let mut s = s.unwrap();
            let mut got = [0u8; 3];
            s.read_exact(&mut got).await.unwrap();
            (got, s.read(&mut [0u8; 16]).await)
        })
        .await;
        let mut c = connect(client, TcpStream::connect(addr).await.unwrap()).await;
        c.write_all(b"abc").await.unwrap();
        c.flush().await.unwrap();
        drop(c);
        let (got, after) = task.await.unwrap();
        assert_eq!(&got, b"abc");
        let err = after.expect_err("an end without close_notify read as an end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_idle_stream_gives_its_buffers_back_and_serves_on() {
        let (addr, client, task) = server(|s| async move {
            let mut s = s.unwrap();
            let mut capacities = Vec::new();
            for _ in 0..2 {
                let mut got = [0u8; 5];
                s.read_exact(&mut got).await.unwrap();
                s.write_all(&got).await.unwrap();
                s.flush().await.unwrap();
                assert!(s.drained(), "nothing is held after an exchange");
                let before = s.incoming.capacity() + s.plain.capacity() + s.outgoing.capacity();
                s.release_buffers();
                let after = s.incoming.capacity() + s.plain.capacity() + s.outgoing.capacity();
                capacities.push((before, after));
            }
            capacities
        })
        .await;
        let mut c = connect(client, TcpStream::connect(addr).await.unwrap()).await;
        for word in [b"hello", b"again"] {
            c.write_all(word).await.unwrap();
            c.flush().await.unwrap();
            let mut back = [0u8; 5];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, word);
        }
        for (before, after) in task.await.unwrap() {
            assert!(before >= READ_ROOM, "the exchange used buffers: {before}");
            assert_eq!(after, 0, "kept after release");
        }
    }

    #[tokio::test]
    async fn many_small_records_in_one_read_arrive_whole_and_in_order() {
        // Each write of the client is a record of its own; 3,000 one-byte records go out in
        // one flush and reach the server a read (of at most 4 KiB) at a time.
        let (addr, client, task) = server(echo).await;
        let mut c = connect(client, TcpStream::connect(addr).await.unwrap()).await;
        let sent = pattern(3_000);
        for byte in &sent {
            c.write_all(std::slice::from_ref(byte)).await.unwrap();
        }
        let back = close_and_read_back(&mut c).await;
        assert_eq!(task.await.unwrap(), sent);
        assert_eq!(back, sent);
    }

    #[tokio::test]
    async fn data_flows_across_client_key_updates() {
        let (addr, client, task) = server(echo).await;
        let mut c = connect(client, TcpStream::connect(addr).await.unwrap()).await;
        let mut sent = Vec::new();
        for round in 0..5u8 {
            c.get_mut().1.refresh_traffic_keys().unwrap();
            let piece = vec![round; 1000];
            c.write_all(&piece).await.unwrap();
            c.flush().await.unwrap();
            sent.extend_from_slice(&piece);
        }
        let back = close_and_read_back(&mut c).await;
        assert_eq!(task.await.unwrap(), sent);
        assert_eq!(back, sent);
    }

    #[tokio::test]
    async fn plain_http_instead_of_a_client_hello_fails_with_an_alert() {
        let (addr, _client, task) = server(|s| async move { s.err().map(|e| e.kind()) }).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(task.await.unwrap(), Some(io::ErrorKind::InvalidData));
        // An alert record (content type 21) tells the client why.
        assert_eq!(back.first(), Some(&21), "{back:?}");
    }

    #[tokio::test]
    async fn a_forged_record_fails_the_session_for_good() {
        let (addr, client, task) = server(|s| async move {
            let mut s = s.unwrap();
            let first = s.read(&mut [0u8; 64]).await.map_err(|e| e.kind());
            let again = s.read(&mut [0u8; 64]).await.map_err(|e| e.kind());
            let write = s.write(b"late").await.map_err(|e| e.kind());
            let _ = s.shutdown().await;
            (first, again, write, s.outgoing.len() - s.out_pos)
        })
        .await;
        let mut c = connect(client, TcpStream::connect(addr).await.unwrap()).await;
        // An application-data record whose ciphertext no key made.
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5a; 40]);
        c.get_mut().0.write_all(&forged).await.unwrap();
        let mut back = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
            .await
            .unwrap();
        let (first, again, write, unsent) = task.await.unwrap();
        assert_eq!(first, Err(io::ErrorKind::InvalidData));
        assert_eq!(again, Err(io::ErrorKind::InvalidData));
        assert!(write.is_err(), "{write:?}");
        assert_eq!(unsent, 0, "the alert is sent once");
        // The client learns why from the server's alert.
        let err = read.expect_err("the client saw no alert").to_string();
        assert!(err.contains("BadRecordMac"), "{err}");
    }

    #[tokio::test]
    async fn the_handshake_ends_when_the_client_has_finished_not_when_the_server_may_write() {
        // With half-RTT data allowed, rustls lets a TLS 1.3 server write as soon as its own
        // flight is out, before the client's last flight (and, with mTLS, its certificate)
        // has been read. rustls never allows it with client authentication; the stream does
        // not rely on that.
        let (server, client) = configs();
        let mut server = (*server).clone();
        server.send_half_rtt_data = true;
        let server = Arc::new(server);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let s = TlsServerStream::accept(tcp, server).await.unwrap();
            s.session().is_handshaking()
        });
        let _c = connect(client, TcpStream::connect(addr).await.unwrap()).await;
        assert!(!task.await.unwrap(), "accept returned mid-handshake");
    }

    #[tokio::test]
    async fn data_decrypted_before_a_forged_record_is_read_before_the_error() {
        // A valid record and a forged one in one TCP write: the server decrypts the first
        // and fails on the second in the same read. The first's data comes out, then the
        // error.
        let (addr, client, task) = server(|s| async move {
            let mut s = s.unwrap();
            let mut got = Vec::new();
            let mut piece = [0u8; 64];
            let end = loop {
                match s.read(&mut piece).await {
                    Ok(0) => break None,
                    Ok(n) => got.extend_from_slice(&piece[..n]),
                    Err(e) => break Some(e.kind()),
                }
            };
            (got, end)
        })
        .await;
        let client_side = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut tls =
                rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
            while tls.is_handshaking() {
                while tls.wants_write() {
                    tls.write_tls(&mut sock).unwrap();
                }
                if tls.is_handshaking() {
                    tls.read_tls(&mut sock).unwrap();
                    tls.process_new_packets().unwrap();
                }
            }
            while tls.wants_write() {
                tls.write_tls(&mut sock).unwrap();
            }
            tls.writer().write_all(b"hello, gateway").unwrap();
            let mut burst = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut burst).unwrap();
            }
            burst.extend_from_slice(&[23, 3, 3, 0, 40]);
            burst.extend_from_slice(&[0x5a; 40]);
            sock.write_all(&burst).unwrap();
            // Open until the server is done with the connection.
            let _ = sock.read_to_end(&mut Vec::new());
        });
        let (got, end) = task.await.unwrap();
        client_side.await.unwrap();
        assert_eq!(got, b"hello, gateway");
        assert_eq!(end, Some(io::ErrorKind::InvalidData));
    }

    #[tokio::test]
    async fn an_early_end_of_the_handshake_is_an_error() {
        let (addr, _client, task) = server(|s| async move { s.err().map(|e| e.kind()) }).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // The first bytes of a ClientHello record, then the end.
        tcp.write_all(&[22, 3, 1, 0, 200, 1, 0]).await.unwrap();
        tcp.shutdown().await.unwrap();
        assert_eq!(task.await.unwrap(), Some(io::ErrorKind::UnexpectedEof));
    }
}
