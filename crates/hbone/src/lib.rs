//! HBONE: the tunnel every byte between meshd nodes (and Istio ztunnels) travels in.
//!
//! # What this crate does
//! - [`Client`] opens tunneled TCP connections: one HTTP/2 `CONNECT` stream per tunnel, over
//!   pooled mutual-TLS connections to a peer's port 15008, verifying that the peer proves the
//!   expected SPIFFE ID. The pool is keyed by (local identity, expected peer identity, peer
//!   address), multiplexes up to a stream limit per connection, shares one dial (and its
//!   failure) between concurrent requests, bounds every step (connect, handshake, CONNECT
//!   response), evicts broken connections and closes idle ones.
//! - [`Server`] accepts mTLS connections, reads the client's SPIFFE ID, serves HTTP/2 within
//!   limits (handshakes in flight overall and per source before authentication, authenticated
//!   connections, streams per connection, header size, handshake and idle timeouts) and
//!   validates each `CONNECT`. The caller's `tower::Service` then gets an [`Inbound`]: the
//!   validated [`InboundRequest`] and its [`Responder`], with which the service answers once it
//!   knows (after policy and its upstream dial): `accept()` sends `200` and returns the
//!   tunnel, `refuse(`[`Refusal`]`)` sends its status; a responder dropped unanswered sends
//!   `503` (HTTP/3: resets the stream). The service runs in the stream's own task, so a client that resets the CONNECT
//!   cancels it. Shutdown is graceful (GOAWAY, then a deadline), with one lifecycle for both
//!   transports.
//! - Both sides re-verify an established connection's peer chain on every rotation of the local
//!   credential set and when a certificate in it expires; a peer no longer trusted gets no new
//!   streams at once, and its open ones a grace period (`revocation_grace`) before the
//!   connection closes.
//! - [`TunnelStream`] is the tunnel as `AsyncRead + AsyncWrite`, with TCP half-close mapped to
//!   END_STREAM and resets mapped both ways, ready for `tokio::io::copy_bidirectional`.
//! - Both sides speak ztunnel's wire format (see `docs/HBONE.md`): TLS 1.3
//!   with AES-GCM only, ALPN `h2`, no SNI, no resumption (all from meshd-identity's configs);
//!   classic CONNECT with `:authority ip:port` and the `baggage`, `forwarded`, `traceparent`
//!   headers; ztunnel's HTTP/2 windows and PING keepalive (10 s / 20 s).
//! - With the `quic` feature (off by default, experimental, meshd-to-meshd only), the same
//!   CONNECT semantics over HTTP/3 on QUIC: `Server::spawn_quic` on UDP, and
//!   `Peer::with_transport(Transport::H3)` on the client. See `docs/HBONE.md` §10 for its gaps.
//!
//! # What it does not do
//! - No policy: whether a peer may reach a destination, and where to dial, is the caller's
//!   service's decision; the transport only enforces that a tunnel targets the address it
//!   arrived on (an open-relay guard, as ztunnel's `ip mismatch` check).
//! - No upstream dialing, byte copying, metrics or access logs: the proxy composes those.
//! - No hostname authorities, double HBONE (east-west gateways) or PROXY-protocol app tunnels.
//!
//! # Why the `h2` crate and not hyper
//! ztunnel moved its data path from hyper to raw h2 (istio/ztunnel#990) and meshd follows for
//! the same reasons: hyper hides the peer's SETTINGS, so a pool cannot see
//! `max_concurrent_streams` and blocks instead of opening another connection; hyper's pool is
//! keyed by authority only and cannot hold several HTTP/2 connections to one destination or key
//! them by identity; and its CONNECT/upgrade path, built for general HTTP, had termination bugs.
//! With h2 we own flow control (capacity reserved per write, released per read), PING, GOAWAY
//! and the pool. Since h2 0.4.12 an authority-only request sends a classic CONNECT (no
//! `:scheme`/`:path`).
//!
//! # Features
//! - `quic`: HBONE over HTTP/3, above ([`QUIC_BUILT`] says whether it is compiled in).
//! - `test-util`: `Decide`, `Decision` and `TunnelHandler`, a shortcut for tests, benchmarks
//!   and fuzz targets whose service decides before doing anything else. meshd itself answers
//!   through the [`Responder`].
//! - `fuzzing`: `Server::serve_authenticated`, one connection over any transport.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod admission;
mod client;
mod config;
#[cfg(feature = "test-util")]
mod decide;
mod dial;
mod error;
pub mod headers;
mod keepalive;
mod observe;
mod peer;
mod pool;
#[cfg(feature = "quic")]
mod quic;

/// Whether HBONE over HTTP/3 (the `quic` feature) is compiled in. Without it a client asked
/// for [`Transport::H3`] fails with [`Error::TransportUnavailable`], never falls back.
pub const QUIC_BUILT: bool = cfg!(feature = "quic");
mod request;
mod responder;
mod revoke;
mod server;
mod socket;
mod stream;

pub use client::Client;
pub use config::{
    ClientSettings, DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_CLIENT_MAX_HEADER_LIST,
    DEFAULT_CLIENT_SEND_BUFFER, DEFAULT_CLIENT_SURPLUS_IDLE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_CONNECTION_WINDOW, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_HANDSHAKES_PER_IP, DEFAULT_MAX_STREAMS_PER_CONNECTION,
    DEFAULT_PORT, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_REVOCATION_GRACE, DEFAULT_SERVER_IDLE_TIMEOUT,
    DEFAULT_SERVER_MAX_CONCURRENT_STREAMS, DEFAULT_SERVER_MAX_HEADER_LIST,
    DEFAULT_SERVER_SEND_BUFFER, DEFAULT_STREAM_WINDOW, Http2Settings, Keepalive, ServerSettings,
};
#[cfg(feature = "test-util")]
pub use decide::{Decide, Decision, TunnelHandler};
pub use error::{Cause, Error};
pub use headers::{Forwarded, RequestHeaders, TraceParent};
pub use observe::{NoObserver, Observer, Refused, Stage};
pub use peer::{Peer, Transport};
pub use request::{InboundRequest, Refusal};
pub use responder::{BoxError, Inbound, Responder};
pub use server::{Server, ServerHandle, ServerIdentities};
pub use stream::TunnelStream;
