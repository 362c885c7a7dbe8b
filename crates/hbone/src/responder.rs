//! How the caller's service answers a CONNECT: a [`Responder`] travels with the request into the
//! service, which accepts (sends `200`, gets the [`TunnelStream`]) or refuses (sends the status)
//! when it knows — after policy, and after dialing the upstream, so a client gets `503` rather
//! than a `200` followed by a dead tunnel (as ztunnel).
//!
//! The service runs inside the stream's own task for the whole life of the tunnel: one task per
//! CONNECT, no channels between the server and the proxy, and a client that resets the stream
//! before the answer cancels the service's future (its upstream dial included).

use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::StatusCode;
use tower::util::BoxCloneService;

use crate::Error;
use crate::request::{InboundRequest, Refusal, response};
use crate::stream::TunnelStream;

/// A boxed error from the caller's service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service type the server stores: any caller service, boxed once at construction.
pub(crate) type ConnectService = BoxCloneService<Inbound, (), BoxError>;

/// An HTTP/3 request stream's answer. Implemented by the `quic` module, which plugs into the
/// responder through this trait so that the responder does not depend on it.
#[cfg(feature = "quic")]
pub(crate) trait H3Answer: Send {
    /// Sends `200` and turns the request stream into a tunnel.
    fn accept(self: Box<Self>) -> futures::future::BoxFuture<'static, Result<TunnelStream, Error>>;
    /// Sends `status` and finishes the stream.
    fn refuse(self: Box<Self>, status: StatusCode) -> futures::future::BoxFuture<'static, ()>;
}

/// One CONNECT as the caller's service receives it: what was asked, and how to answer.
#[derive(Debug)]
pub struct Inbound {
    /// The validated request.
    pub request: InboundRequest,
    /// The answer, given once.
    pub responder: Responder,
}

/// The one answer to a CONNECT. Dropped without an answer, it refuses with `503` (HTTP/2; an
/// HTTP/3 stream is reset), so a service that fails or forgets never leaves a client waiting or
/// holding a tunnel nobody decided on.
pub struct Responder(Kind);

enum Kind {
    H2 {
        respond: SharedRespond,
        body: RecvStream,
    },
    #[cfg(feature = "quic")]
    // Boxed: an h3 request stream is several times the size of the h2 handles.
    H3(Box<dyn H3Answer>),
    Answered,
}

/// The HTTP/2 stream's response handle, shared with the server task that watches it for a
/// client reset until the service answers (and takes it).
pub(crate) type SharedRespond = Arc<Mutex<Option<SendResponse<Bytes>>>>;

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::H2 { .. } => "Responder(h2)",
            #[cfg(feature = "quic")]
            Kind::H3(_) => "Responder(h3)",
            Kind::Answered => "Responder(answered)",
        })
    }
}

impl Responder {
    pub(crate) fn h2(respond: SharedRespond, body: RecvStream) -> Responder {
        Responder(Kind::H2 { respond, body })
    }

    #[cfg(feature = "quic")]
    pub(crate) fn h3(stream: Box<dyn H3Answer>) -> Responder {
        Responder(Kind::H3(stream))
    }

    /// Sends `200` and returns the tunnel. Fails when the client went away first.
    pub async fn accept(mut self) -> Result<TunnelStream, Error> {
        match std::mem::replace(&mut self.0, Kind::Answered) {
            Kind::H2 { respond, body } => {
                let mut respond = take(&respond).ok_or_else(gone)?;
                let send = respond
                    .send_response(response(StatusCode::OK), false)
                    .map_err(Error::h2)?;
                Ok(TunnelStream::h2(send, body, None))
            }
            #[cfg(feature = "quic")]
            Kind::H3(stream) => stream.accept().await,
            Kind::Answered => Err(gone()),
        }
    }

    /// Sends the refusal's status and ends the stream.
    pub async fn refuse(mut self, refusal: Refusal) {
        match std::mem::replace(&mut self.0, Kind::Answered) {
            Kind::H2 { respond, .. } => {
                if let Some(mut respond) = take(&respond) {
                    // END_STREAM on the response head; h2 follows with RST_STREAM(NO_ERROR)
                    // for the unread request side, as ztunnel's wire trace shows.
                    let _ = respond.send_response(response(refusal.status()), true);
                }
            }
            #[cfg(feature = "quic")]
            Kind::H3(stream) => stream.refuse(refusal.status()).await,
            Kind::Answered => {}
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Kind::H2 { respond, .. } = &self.0
            && let Some(mut respond) = take(respond)
        {
            let _ = respond.send_response(response(StatusCode::SERVICE_UNAVAILABLE), true);
        }
    }
}

/// Resolves when the client resets the stream before the service answered; never after.
pub(crate) async fn reset_before_answer(respond: &SharedRespond) {
    poll_fn(|cx| {
        let mut guard = respond.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(respond) => respond.poll_reset(cx).map(|_| ()),
            // Answered: from here a reset is the tunnel's to report.
            None => Poll::Pending,
        }
    })
    .await
}

fn take(respond: &SharedRespond) -> Option<SendResponse<Bytes>> {
    respond
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

fn gone() -> Error {
    Error::ClientReset
}
