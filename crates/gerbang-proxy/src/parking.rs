//! Parking idle HTTP/1.1 connections: what a keep-alive connection keeps while it waits for
//! its next request.
//!
//! hyper keeps two 8 KiB buffers (read and write) and its connection state for as long as a
//! connection is open, busy or not: about 20 KiB for every idle keep-alive client. A regency's
//! backends keep many connections open and use few of them at a time, so the server releases
//! hyper's state once a connection has been idle for a moment, waits for the socket to become
//! readable holding only the socket and the framing guard, and then serves the next request
//! with a fresh hyper connection on the same socket. The client sees one keep-alive connection
//! throughout.
//!
//! The server asks hyper to let a connection go (`graceful_shutdown`, which ends an idle hyper
//! connection without writing a byte) only when hyper holds nothing of it: no request whose
//! response has not been wholly handed over ([`InFlight`]), no response bytes that have not
//! reached the socket (`unflushed`; hyper counts a connection idle only after its flush, and
//! asked earlier it would end the connection after the response instead of handing it back),
//! no partial request in the framing guard (`between_messages`: a head arriving slowly keeps
//! hyper's head timer), and no traffic for the whole idle period (`events`). [`ConnIo`] and
//! the service keep these facts in [`Activity`], which the connection's task reads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::framing::FramingGuard;
use crate::response_body::{BoxError, ResponseBody};
use crate::tls_stream::TlsServerStream;

/// A connection's byte stream as the server needs it: something to wait on that holds no
/// buffer.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Nothing read from the socket is held above it: no decrypted bytes or TLS record waiting
    /// in the TLS session, nothing of it still to send. Only then does waiting for the socket
    /// to become readable wait for the client's next bytes.
    fn drained(&self) -> bool;

    /// Resolves when the socket has bytes (or an end) to read.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;

    /// Gives back the memory of buffers that hold nothing (the connection is being parked).
    fn release_buffers(&mut self) {}
}

impl Transport for TcpStream {
    fn drained(&self) -> bool {
        true
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

impl Transport for TlsServerStream {
    fn drained(&self) -> bool {
        TlsServerStream::drained(self)
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.tcp().readable()
    }

    fn release_buffers(&mut self) {
        TlsServerStream::release_buffers(self);
    }
}

/// What one connection's task needs to know to decide that hyper holds nothing of it. Relaxed
/// atomics: the connection's task both writes and reads them (the type must be `Sync` only
/// because hyper requires `Send` bodies and futures).
#[derive(Debug)]
pub(crate) struct Activity {
    /// Requests whose response body has not been wholly handed to hyper (or dropped).
    in_flight: AtomicU32,
    /// Requests started since the connection opened.
    requests: AtomicU64,
    /// Reads that returned bytes plus writes that took bytes, since the connection opened.
    events: AtomicU64,
    /// hyper tried to write since the last flush that completed (it keeps what the socket
    /// refused, and flushes the stream only once its own buffer is empty).
    unflushed: AtomicBool,
    /// At hyper's last read that found nothing, the framing guard was between messages (no
    /// partial head held back, no body bytes still to come).
    between_messages: AtomicBool,
    /// When the last request stopped being in flight, in nanoseconds after `epoch`: the next
    /// head is due within the head timeout of it (see `server::serve_http1`).
    idle_at: AtomicU64,
    epoch: tokio::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
            unflushed: AtomicBool::new(false),
            between_messages: AtomicBool::new(true),
            idle_at: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Activity {
    /// Counts one read or write that moved bytes.
    fn event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads and writes so far: unchanged over a period means no traffic in it.
    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// hyper holds nothing of the connection right now: no request in flight, every response
    /// byte flushed, and the guard between messages.
    pub(crate) fn quiet(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.unflushed.load(Ordering::Relaxed)
            && self.between_messages.load(Ordering::Relaxed)
    }

    /// Requests started so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests whose response body hyper has not wholly taken yet.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the last request stopped being in flight (the connection's start before any).
    pub(crate) fn idle_at(&self) -> tokio::time::Instant {
        self.epoch + std::time::Duration::from_nanos(self.idle_at.load(Ordering::Relaxed))
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub(crate) fn start_request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// One request in flight on a connection; dropped when its response body has been wholly
/// handed to hyper, or when hyper drops the request.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let since = self.0.epoch.elapsed().as_nanos();
            self.0
                .idle_at
                .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as in flight until hyper has taken all of
/// it (hyper drops a body at its end).
pub struct ServedBody {
    body: ResponseBody,
    _in_flight: Option<InFlight>,
}

impl ServedBody {
    pub(crate) fn new(body: ResponseBody, in_flight: Option<InFlight>) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The stream hyper reads and writes on a connection: the framing guard (which also holds
/// bytes handed back to be read again), with every step recorded in [`Activity`].
pub(crate) struct ConnIo<T> {
    inner: FramingGuard<T>,
    activity: Arc<Activity>,
}

impl<T> ConnIo<T> {
    pub(crate) fn new(inner: FramingGuard<T>, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    pub(crate) fn guard(&self) -> &FramingGuard<T> {
        &self.inner
    }

    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Puts `bytes` in front of what is still to be read (hyper's read-ahead when it let the
    /// connection go, or the bytes read to tell the protocol).
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        self.inner.unread(bytes);
    }
}

impl<T: Transport> ConnIo<T> {
    /// Gives back memory kept from the last request (parking).
    pub(crate) fn release_buffers(&mut self) {
        self.inner.release_buffers();
        self.inner.get_mut().release_buffers();
    }

    /// Bytes are waiting to be read without touching the socket (or may be: a TLS session that
    /// is not drained).
    pub(crate) fn has_unread(&self) -> bool {
        !self.inner.is_between_messages() || !self.inner.get_ref().drained()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.activity.event(),
            Poll::Pending => this
                .activity
                .between_messages
                .store(this.inner.is_between_messages(), Ordering::Relaxed),
            Poll::Ready(_) => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.activity.unflushed.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T> ConnIo<T> {
    /// hyper writes only what it has buffered and flushes the stream only once its buffer is
    /// empty: any write attempt, taken by the socket or not, means bytes wait until the next
    /// completed flush.
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        self.activity.unflushed.store(true, Ordering::Relaxed);
        if let Poll::Ready(Ok(n)) = polled {
            if *n > 0 {
                self.activity.event();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::AtomicBool;

    use tokio::io::AsyncReadExt;

    use super::*;

    impl Transport for tokio::io::DuplexStream {
        fn drained(&self) -> bool {
            true
        }

        fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
            std::future::ready(Ok(()))
        }
    }

    /// Storage of a `Bytes` that records when it is freed.
    struct Owner(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn bytes_put_back_are_read_first_and_their_storage_freed_once_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::default());
        let mut io = ConnIo::new(FramingGuard::new(server, 8192), Arc::clone(&activity));
        let freed = Arc::new(AtomicBool::new(false));
        let head = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
        io.unread(&Bytes::from_owner(Owner(head.clone(), Arc::clone(&freed))));
        assert!(io.has_unread());
        let mut got = vec![0u8; head.len()];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(got, head);
        assert!(
            freed.load(Ordering::SeqCst),
            "the read bytes' storage is still held"
        );
        assert!(!io.has_unread());
        // Then the stream itself.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET /2 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut next = [0u8; 19];
        io.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"GET /2 HTTP/1.1\r\n\r\n");
        assert_eq!(activity.events(), 2);
    }

    #[tokio::test]
    async fn a_request_counts_until_its_response_body_is_dropped() {
        let activity = Arc::new(Activity::default());
        assert!(activity.quiet());
        let in_flight = activity.start_request();
        assert!(!activity.quiet());
        let body = ServedBody::new(
            crate::response_body::full(Bytes::from("x")),
            Some(in_flight),
        );
        assert!(!activity.quiet());
        drop(body);
        assert!(activity.quiet());
    }

    #[tokio::test]
    async fn a_write_the_socket_refuses_still_counts_as_unflushed() {
        // hyper keeps what the socket did not take and flushes the stream only once its own
        // buffer is empty: a write attempt, taken or not, means bytes are waiting.
        let (_client, server) = tokio::io::duplex(16);
        let activity = Arc::new(Activity::default());
        let mut io = ConnIo::new(FramingGuard::new(server, 8192), Arc::clone(&activity));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let full = Pin::new(&mut io).poll_write(&mut cx, &[b'x'; 16]);
        assert!(matches!(full, Poll::Ready(Ok(16))));
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert!(activity.quiet());
        // The pipe is full: this write takes nothing.
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"more").is_pending());
        assert!(
            !activity.quiet(),
            "bytes waiting in hyper's buffer counted as flushed"
        );
    }
}
