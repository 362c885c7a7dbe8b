//! HBONE over HTTP/3 on QUIC: experimental, meshd-to-meshd only (no Istio component speaks it).
//!
//! Same CONNECT semantics, headers, status codes and identity checks as the HTTP/2 transport;
//! QUIC over UDP on the same port number, TLS 1.3 with the same SVIDs and verifiers, ALPN `h3`
//! (the identity crate's configs are cloned with ALPN changed). Differences, all from h3 0.0.8:
//! - its client adds `:scheme https` and `:path /` to CONNECT (RFC 9114 §4.4 says omit them;
//!   fixed upstream, unreleased); our server accepts both forms;
//! - sends are async-only, so a write is accepted into a one-write buffer (at most
//!   `stream::MAX_WRITE`) and completed on the next write, flush or shutdown;
//! - a certificate rejection reaches us as text only: [`Error::Tls`] has `identity: None`.
//!
//! Keepalive is QUIC's (PING every interval, idle timeout = keepalive timeout); the client keeps
//! one QUIC connection per pool key (QUIC multiplexes without head-of-line blocking and enforces
//! its own stream limits) until it fails.

mod client;
mod server;
mod stream;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use crate::{Error, Http2Settings, Keepalive};

pub(crate) use client::QuicClient;

/// ALPN for HTTP/3.
const ALPN_H3: &[u8] = b"h3";

fn transport_config(
    h: &Http2Settings,
    keepalive: Keepalive,
    max_bidi: u32,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The same windows as HTTP/2, for the same reasons (see config.rs).
    t.stream_receive_window(quinn::VarInt::from_u32(h.stream_window));
    t.receive_window(quinn::VarInt::from_u32(h.connection_window));
    t.send_window(u64::from(h.connection_window));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(max_bidi));
    t.keep_alive_interval(Some(keepalive.interval));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(keepalive.timeout).ok());
    t
}

fn h3_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::H3(crate::Cause::new(e))
}

/// Maps a failed QUIC handshake; TLS failures travel as CRYPTO_ERROR transport codes, and
/// reach us as text only (no typed identity cause).
fn handshake_error(addr: SocketAddr, e: quinn::ConnectionError) -> Error {
    let tls = match &e {
        quinn::ConnectionError::TransportError(t) => t.code.to_string().contains("crypto"),
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code.to_string().contains("crypto"),
        _ => false,
    };
    if tls {
        Error::Tls {
            addr,
            identity: None,
            source: crate::Cause::new(e),
        }
    } else {
        Error::Connect {
            addr,
            source: crate::Cause::new(e),
        }
    }
}

/// The certificates the peer presented in the QUIC handshake.
fn peer_chain(quic: &quinn::Connection) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    quic.peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|chain| *chain)
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
