//! The client's request body, streamed upstream under an optional size limit and held to its
//! declared length. The response side is `response_body`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Error of a streamed request body.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error(
        "request body of {received} bytes or more does not match its declared length of {declared}"
    )]
    LengthMismatch { declared: u64, received: u64 },
    #[error(transparent)]
    Client(#[from] hyper::Error),
}

/// What the handler learns afterwards about a request body it streamed upstream.
#[derive(Debug, Default)]
pub struct BodyWatch {
    exceeded: AtomicBool,
    finished: AtomicBool,
    received: AtomicU64,
}

impl BodyWatch {
    /// Data bytes read from the client so far (what the audit record counts).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The body went over the service's limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// The client sent the whole body.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// The client's body, forwarded frame by frame (flat memory), failing once more than
    /// `limit` bytes have passed. `watch` (when the request has a body) tells the handler
    /// afterwards whether the body was too large or is still arriving, and how much came.
    ///
    /// A provider sees a complete request only when the client completed it: with a declared
    /// length, the frame that reaches it is held back until the client's body has ended
    /// cleanly (HTTP/2 can send more DATA than `content-length` says, or reset the stream);
    /// a longer or shorter body is an error, so the upstream request stays incomplete and its
    /// connection is closed. Without a declared length the upstream body is chunked, and its
    /// last chunk is written only after the client's body ended.
    pub struct RequestBody {
        #[pin]
        inner: Option<Incoming>,
        seen: u64,
        limit: Option<u64>,
        declared: Option<u64>,
        // The held frame's data (only a data frame is held): 32 bytes, where a `Frame` (which
        // may hold trailers) takes 96 in every request's future.
        held: Option<Bytes>,
        ended: bool,
        watch: Option<Arc<BodyWatch>>,
        counter: Option<prometheus::IntCounter>,
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>, watch: Option<Arc<BodyWatch>>) -> Self {
        let declared = inner.size_hint().exact();
        Self {
            inner: Some(inner),
            seen: 0,
            limit,
            declared,
            held: None,
            ended: false,
            watch,
            counter: None,
        }
    }

    /// An empty body: a request without one, sent again (a retry).
    pub fn empty() -> Self {
        Self {
            inner: None,
            seen: 0,
            limit: None,
            declared: None,
            held: None,
            ended: true,
            watch: None,
            counter: None,
        }
    }

    /// Adds every data byte that passes to `counter` (bytes received, per service).
    pub fn counted(mut self, counter: prometheus::IntCounter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// For a body declared empty whose stream is still open (HTTP/2 `content-length: 0`
    /// before `END_STREAM`): waits for its end, so that no upstream request is sent complete
    /// before the client's is. Any data is a length mismatch.
    pub async fn settle_declared_empty(&mut self) -> Result<(), RequestBodyError> {
        if self.declared != Some(0) || http_body::Body::is_end_stream(self) {
            return Ok(());
        }
        while let Some(frame) = http_body_util::BodyExt::frame(self).await {
            frame?;
        }
        Ok(())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        loop {
            if *this.ended {
                return Poll::Ready(this.held.take().map(|data| Ok(Frame::data(data))));
            }
            let Some(mut inner) = this.inner.as_mut().as_pin_mut() else {
                *this.ended = true;
                continue;
            };
            let frame = match inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    if let Some(declared) = *this.declared {
                        if *this.seen != declared {
                            return Poll::Ready(Some(Err(RequestBodyError::LengthMismatch {
                                declared,
                                received: *this.seen,
                            })));
                        }
                    }
                    if let Some(w) = this.watch.as_ref() {
                        w.finished.store(true, Ordering::Relaxed);
                    }
                    *this.ended = true;
                    continue;
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            if len > 0 {
                *this.seen += len;
                if let Some(c) = this.counter.as_ref() {
                    c.inc_by(len);
                }
                if let Some(w) = this.watch.as_ref() {
                    w.received.fetch_add(len, Ordering::Relaxed);
                }
                if let Some(limit) = *this.limit {
                    if *this.seen > limit {
                        if let Some(w) = this.watch.as_ref() {
                            w.exceeded.store(true, Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(limit))));
                    }
                }
                if let Some(declared) = *this.declared {
                    if *this.seen > declared {
                        return Poll::Ready(Some(Err(RequestBodyError::LengthMismatch {
                            declared,
                            received: *this.seen,
                        })));
                    }
                }
            }
            if this.held.is_some() {
                // Nothing may follow the declared length but the end (or trailers, which the
                // upstream request does not carry).
                continue;
            }
            if inner.is_end_stream() {
                // A client (hyper's, for https instances) stops reading once the body says it
                // is at its end after the last frame: the client has sent everything then.
                if let Some(declared) = *this.declared {
                    if *this.seen != declared {
                        return Poll::Ready(Some(Err(RequestBodyError::LengthMismatch {
                            declared,
                            received: *this.seen,
                        })));
                    }
                }
                if let Some(w) = this.watch.as_ref() {
                    w.finished.store(true, Ordering::Relaxed);
                }
                *this.ended = true;
                return Poll::Ready(Some(Ok(frame)));
            }
            if len > 0 && *this.declared == Some(*this.seen) {
                // The last declared bytes: released only when the client's body has ended.
                match frame.into_data() {
                    Ok(data) => {
                        *this.held = Some(data);
                        continue;
                    }
                    // Not reached: only a data frame has a length.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.ended || self.inner.as_ref().is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, self.declared) {
            (Some(_), Some(n)) => SizeHint::with_exact(n),
            (Some(b), None) => b.size_hint(),
            (None, _) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    //! `RequestBody` over real `Incoming` bodies: a hyper server on an in-memory pipe hands each
    //! request's body to the test, whose client writes raw HTTP/1.1 bytes or drives an HTTP/2
    //! stream frame by frame.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::convert::Infallible;
    use std::future::Future;
    use std::time::Duration;

    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// A request body, and the sender whose drop lets the server answer that request.
    type Got = (Incoming, oneshot::Sender<()>);

    /// Hands each request's body to the test and answers once the test drops the sender.
    #[derive(Clone)]
    struct Handoff(mpsc::UnboundedSender<Got>);

    impl hyper::service::Service<Request<Incoming>> for Handoff {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn call(&self, req: Request<Incoming>) -> Self::Future {
            let tx = self.0.clone();
            Box::pin(async move {
                let (done, wait) = oneshot::channel();
                let _ = tx.send((req.into_body(), done));
                let _ = wait.await;
                Ok(Response::new(Full::new(Bytes::new())))
            })
        }
    }

    /// A request body the test feeds frame by frame; dropping the sender ends it.
    struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// An HTTP/1.1 server on one end of a pipe; the other end for the test's raw bytes.
    fn h1() -> (DuplexStream, mpsc::UnboundedReceiver<Got>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), Handoff(tx)),
        );
        (client, rx)
    }

    /// An HTTP/2 server on a pipe and a request sent to it with `content-length: declared`,
    /// whose DATA frames the test sends through the returned channel (dropping it ends the
    /// stream).
    async fn h2(declared: &str) -> (mpsc::UnboundedSender<Bytes>, mpsc::UnboundedReceiver<Got>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), Handoff(tx)),
        );
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (frames, stream) = mpsc::unbounded_channel();
        let body = ChannelBody(stream);
        let req = Request::post("http://t/x")
            .header("content-length", declared)
            .body(body)
            .unwrap();
        tokio::spawn(async move {
            let _ = send.send_request(req).await;
        });
        (frames, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Got>) -> Got {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a request reached the server")
            .expect("server running")
    }

    #[tokio::test]
    async fn a_whole_body_passes_counted_into_the_watch_and_the_counter() {
        let (mut client, mut rx) = h1();
        client
            .write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
            .await
            .unwrap();
        let (incoming, _done) = next(&mut rx).await;
        let watch = Arc::new(BodyWatch::default());
        let counter = prometheus::IntCounter::new("c", "c").unwrap();
        let body = RequestBody::new(incoming, Some(100), Some(Arc::clone(&watch)))
            .counted(counter.clone());
        assert_eq!(body.size_hint().exact(), Some(10));
        let collect = tokio::spawn(body.collect());
        client.write_all(b"56789").await.unwrap();
        let bytes = collect.await.unwrap().unwrap().to_bytes();
        assert_eq!(&bytes[..], b"0123456789");
        assert_eq!(watch.received(), 10);
        assert_eq!(counter.get(), 10);
        assert!(watch.finished());
        assert!(!watch.exceeded());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_fails_and_says_so() {
        let (mut client, mut rx) = h1();
        client
            .write_all(
                b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        let (incoming, _done) = next(&mut rx).await;
        let watch = Arc::new(BodyWatch::default());
        let err = RequestBody::new(incoming, Some(4), Some(Arc::clone(&watch)))
            .collect()
            .await
            .expect_err("over the limit");
        assert!(matches!(err, RequestBodyError::TooLarge(4)), "{err:?}");
        assert!(watch.exceeded());
        assert!(!watch.finished());
        assert_eq!(watch.received(), 6);
    }

    #[tokio::test]
    async fn a_body_at_the_limit_passes() {
        let (mut client, mut rx) = h1();
        client
            .write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd")
            .await
            .unwrap();
        let (incoming, _done) = next(&mut rx).await;
        let bytes = RequestBody::new(incoming, Some(4), None)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&bytes[..], b"abcd");
    }

    #[tokio::test]
    async fn a_client_that_breaks_off_is_an_error_not_an_end() {
        let (mut client, mut rx) = h1();
        client
            .write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
            .await
            .unwrap();
        let (incoming, _done) = next(&mut rx).await;
        let watch = Arc::new(BodyWatch::default());
        let mut body = RequestBody::new(incoming, None, Some(Arc::clone(&watch)));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"01234");
        drop(client);
        let err = body.frame().await.expect("an error, not the end").err();
        assert!(matches!(err, Some(RequestBodyError::Client(_))), "{err:?}");
        assert!(!watch.finished());
        assert_eq!(watch.received(), 5);
    }

    /// HTTP/2 lets a client stop after the declared bytes without ending the stream: the last
    /// declared bytes are held until it ends, so an upstream never sees the body complete first.
    #[tokio::test]
    async fn the_last_declared_bytes_wait_for_the_end_of_the_stream() {
        let (frames, mut rx) = h2("5").await;
        frames.send(Bytes::from_static(b"hello")).unwrap();
        let (incoming, _done) = next(&mut rx).await;
        let watch = Arc::new(BodyWatch::default());
        let mut body = RequestBody::new(incoming, None, Some(Arc::clone(&watch)));
        {
            let mut pending = Box::pin(body.frame());
            // The bytes arrive (counted) but do not come out while the stream is open.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while watch.received() < 5 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "bytes never arrived"
                );
                let polled = tokio::time::timeout(Duration::from_millis(20), &mut pending).await;
                assert!(polled.is_err(), "released before the end: {polled:?}");
            }
            let polled = tokio::time::timeout(Duration::from_millis(50), &mut pending).await;
            assert!(polled.is_err(), "released before the end: {polled:?}");
            assert!(!watch.finished());
        }
        drop(frames);
        let held = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(&held[..], b"hello");
        assert!(body.frame().await.is_none());
        assert!(watch.finished());
    }

    /// More DATA than `content-length` declared never comes out whole.
    #[tokio::test]
    async fn more_data_than_declared_is_an_error() {
        let (frames, mut rx) = h2("3").await;
        frames.send(Bytes::from_static(b"hello")).unwrap();
        drop(frames);
        let (incoming, _done) = next(&mut rx).await;
        let watch = Arc::new(BodyWatch::default());
        let result = RequestBody::new(incoming, None, Some(Arc::clone(&watch)))
            .collect()
            .await;
        // h2 resets such a stream itself; `LengthMismatch` is the second line behind it.
        assert!(
            matches!(
                result,
                Err(RequestBodyError::Client(_) | RequestBodyError::LengthMismatch { .. })
            ),
            "a body longer than declared passed: {result:?}"
        );
        assert!(!watch.finished());
    }

    /// Fewer bytes than declared, then the end: an error, never a short complete body.
    #[tokio::test]
    async fn fewer_bytes_than_declared_is_an_error() {
        let (frames, mut rx) = h2("10").await;
        frames.send(Bytes::from_static(b"hello")).unwrap();
        drop(frames);
        let (incoming, _done) = next(&mut rx).await;
        let result = RequestBody::new(incoming, None, None).collect().await;
        assert!(
            matches!(
                result,
                Err(RequestBodyError::Client(_) | RequestBodyError::LengthMismatch { .. })
            ),
            "a body shorter than declared passed: {result:?}"
        );
    }

    #[tokio::test]
    async fn an_empty_body_is_at_its_end() {
        let mut body = RequestBody::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
        assert!(body.settle_declared_empty().await.is_ok());
    }
}
