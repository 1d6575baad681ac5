//! Body types: the client's request body streamed upstream under an optional size limit, and the
//! response body that is either the upstream's stream or a gateway-made JSON error.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
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
        held: Option<Frame<Bytes>>,
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
                return Poll::Ready(this.held.take().map(Ok));
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
                *this.held = Some(frame);
                continue;
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

/// Boxed error of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gateway sends back: the upstream's body untouched (from hyper-util's client or the
/// inline HTTP/1.1 client), or a body it made itself.
pub enum ResponseBody {
    Upstream(Incoming),
    Inline(crate::h1::UpstreamBody),
    Full(Full<Bytes>),
    /// Another body whose data bytes are added to a counter as they pass (bytes sent).
    Counted(Box<ResponseBody>, prometheus::IntCounter),
    /// Another body with what must live until it has been sent: the call's circuit-breaker slot
    /// and its instance's in-flight count.
    Guarded(
        Box<ResponseBody>,
        gerbang_registry::resilience::Slot,
        Option<gerbang_registry::health::InFlight>,
    ),
}

impl ResponseBody {
    /// This body, counting its data bytes into `counter`.
    pub fn counted(self, counter: prometheus::IntCounter) -> Self {
        ResponseBody::Counted(Box::new(self), counter)
    }
}

/// Wraps a gateway-made body.
pub fn full(bytes: Bytes) -> ResponseBody {
    ResponseBody::Full(Full::new(bytes))
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Inline(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            ResponseBody::Guarded(b, ..) => Pin::new(b.as_mut()).poll_frame(cx),
            ResponseBody::Counted(b, counter) => {
                let polled = Pin::new(b.as_mut()).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        counter.inc_by(data.len() as u64);
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Inline(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.is_end_stream(),
            ResponseBody::Counted(b, _) | ResponseBody::Guarded(b, ..) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Inline(b) => b.size_hint(),
            ResponseBody::Full(b) => b.size_hint(),
            ResponseBody::Counted(b, _) | ResponseBody::Guarded(b, ..) => b.size_hint(),
        }
    }
}
