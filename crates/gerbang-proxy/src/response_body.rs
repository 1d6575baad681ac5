//! What the gateway sends back: the upstream's body untouched, or a body the gateway made itself,
//! optionally counted and guarded. Separate from `body` (the request side) so that neither
//! `body` nor `h1` needs the other's module to name its types.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_counted_response_body_adds_its_data_bytes() {
        let counter = prometheus::IntCounter::new("c", "c").unwrap();
        let body = full(Bytes::from_static(b"twelve bytes")).counted(counter.clone());
        assert_eq!(body.size_hint().exact(), Some(12));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 12);
        assert_eq!(counter.get(), 12);
    }
}
