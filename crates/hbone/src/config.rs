//! Settings for the client (pool) and the server, with ztunnel's numbers as defaults.

use std::time::Duration;

use crate::Error;

/// The HBONE port: ztunnel listens for mTLS HTTP/2 CONNECT on 15008 (and meshd serves QUIC on
/// the same number over UDP).
pub const DEFAULT_PORT: u16 = 15008;

/// Initial per-stream receive window: 4 MiB, as ztunnel (`HTTP2_STREAM_WINDOW_SIZE`); large
/// enough that one stream is not window-bound on a LAN (4 MiB / 0.2 ms RTT = 160 Gbit/s); see
/// docs/HBONE.md for the measurement behind keeping it.
pub const DEFAULT_STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Initial connection receive window: 16 MiB, 4x the stream window as ztunnel, so four busy
/// streams cannot starve the others of connection-level credit.
pub const DEFAULT_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Largest DATA frame we accept: 1 MiB, as ztunnel (`HTTP2_FRAME_SIZE`); fewer frame headers and
/// wake-ups per byte than the 16 KiB HTTP/2 default.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// Header list limit the client accepts in responses: 16 KiB, as ztunnel's client.
pub const DEFAULT_CLIENT_MAX_HEADER_LIST: u32 = 16 * 1024;

/// Header list limit the server accepts in requests: 64 KiB, as ztunnel's server; larger
/// requests are refused by h2 before they reach the service.
pub const DEFAULT_SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Client send buffer per stream: the stream window, as ztunnel (the client side is the local
/// application's, so buffering one window is what keeps the pipe full).
pub const DEFAULT_CLIENT_SEND_BUFFER: usize = DEFAULT_STREAM_WINDOW as usize;

/// Server send buffer per stream: 400 KiB, as ztunnel, bounding what an unread stream can pin.
pub const DEFAULT_SERVER_SEND_BUFFER: usize = 400 * 1024;

/// Streams the client multiplexes on one connection before opening another: 100, as ztunnel's
/// `POOL_MAX_STREAMS_PER_CONNECTION` (ztunnel opens 10 connections for 1 000 tunnels).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Concurrent streams the server allows per connection: 200, as ztunnel's server; above the
/// client's 100 so a ztunnel client never meets REFUSED_STREAM.
pub const DEFAULT_SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;

/// Authenticated connections the server holds at once; a connection over it is closed right
/// after its TLS handshake. ztunnel has no limit; 4 096 × at most 16 MiB of window per
/// connection bounds memory while leaving room for a busy node. Handshakes in flight do not
/// count here (see [`DEFAULT_MAX_HANDSHAKES`]), so unauthenticated hosts cannot fill it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// TLS handshakes the server runs at once, from all sources; beyond it new connections are
/// closed on accept. ztunnel has no limit. A TLS 1.3 server handshake (ECDHE, a signature, a
/// client chain to verify) costs about a millisecond of CPU and holds a rustls connection of a
/// few tens of KiB, so 1 024 bounds both to about a second of CPU and a few tens of MiB, while
/// an honest burst (every peer of a node reconnecting after a restart) completes well below it.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// TLS handshakes the server runs at once from one source (an IPv4 address or an IPv6 /64), so
/// one host opening idle connections takes at most this share of [`DEFAULT_MAX_HANDSHAKES`]; it
/// takes 16 such hosts to fill it. An honest peer handshakes about one connection per (local
/// identity, peer identity) pair, in milliseconds, and rarely has more than a few in flight
/// (OpenSSH's `PerSourceMaxStartups` is the same idea).
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 64;

/// Client: how long a CONNECT may wait for the peer's response head. A ztunnel or meshd peer
/// answers after dialing the destination, which it bounds at 10 s (ztunnel's connect timeout);
/// 15 s adds room for its policy check and the round trip. A peer that completed TLS and
/// HTTP/2 but never answers fails the tunnel at this point instead of holding it forever.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Both sides: once a peer's certificate chain stops verifying (its root left the trust bundle,
/// or a certificate in it expired), streams already open on the connection get this long to
/// finish before they are reset; new streams are refused at once. 5 s, as ztunnel's
/// `CONNECTION_TERMINATION_DEADLINE` for a drain.
pub const DEFAULT_REVOCATION_GRACE: Duration = Duration::from_secs(5);

/// PING interval: 10 s, as ztunnel (`do_ping_pong`).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// PING timeout: 20 s, as ztunnel; a peer silent that long is presumed dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP connect timeout: 10 s, as ztunnel.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS + HTTP/2 handshake timeout, both sides: 10 s; bounds a client that connects and never
/// finishes its handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Client pool: an unused connection is closed after 5 min, as ztunnel's
/// `POOL_UNUSED_RELEASE_TIMEOUT`.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Client pool: an unused connection while an older one to the same peer is open is closed
/// after 10 s. A burst opens one connection per `max_streams_per_connection` tunnels; once it
/// ends, new tunnels go to the oldest connection first, so the others only hold memory (about
/// 150 KB a side each) until this timeout, not for [`DEFAULT_CLIENT_IDLE_TIMEOUT`].
pub const DEFAULT_CLIENT_SURPLUS_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server: a connection without streams is closed (GOAWAY) after 10 min, longer than the
/// client's 5 so the client, which knows when it will reuse, normally closes first.
pub const DEFAULT_SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// HTTP/2 parameters shared by both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE: receive window per stream.
    pub stream_window: u32,
    /// Receive window of the whole connection (WINDOW_UPDATE on stream 0).
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we accept.
    pub max_header_list_size: u32,
    /// Bytes h2 may buffer per stream for sending before writes wait.
    pub max_send_buffer: usize,
}

impl Http2Settings {
    /// ztunnel's client settings.
    pub fn client_default() -> Self {
        Http2Settings {
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: DEFAULT_CLIENT_MAX_HEADER_LIST,
            max_send_buffer: DEFAULT_CLIENT_SEND_BUFFER,
        }
    }

    /// ztunnel's server settings.
    pub fn server_default() -> Self {
        Http2Settings {
            max_header_list_size: DEFAULT_SERVER_MAX_HEADER_LIST,
            max_send_buffer: DEFAULT_SERVER_SEND_BUFFER,
            ..Http2Settings::client_default()
        }
    }

    fn validate(&self) -> Result<(), Error> {
        // RFC 9113 §6.5.2: frame size between 16 KiB and 16 MiB - 1; windows at most 2^31 - 1.
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return Err(Error::Config(format!(
                "max_frame_size {} is outside 16384..=16777215",
                self.max_frame_size
            )));
        }
        for (name, value) in [
            ("stream_window", self.stream_window),
            ("connection_window", self.connection_window),
        ] {
            if value == 0 || value > i32::MAX as u32 {
                return Err(Error::Config(format!(
                    "{name} {value} is outside 1..=2147483647"
                )));
            }
        }
        if self.max_send_buffer == 0 {
            return Err(Error::Config("max_send_buffer must be above zero".into()));
        }
        Ok(())
    }
}

/// HTTP/2 PING keepalive: both sides ping on this schedule and drop a peer that stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between PINGs (the first is sent one interval after the handshake).
    pub interval: Duration,
    /// How long to wait for the PONG before declaring the connection dead.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: DEFAULT_KEEPALIVE_INTERVAL,
            timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Settings of the client side: the connection pool and the connections it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// HTTP/2 windows and limits.
    pub http2: Http2Settings,
    /// PING schedule.
    pub keepalive: Keepalive,
    /// Streams per pooled connection before another connection is opened (further capped by
    /// the server's SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// How long an unused pooled connection is kept.
    pub idle_timeout: Duration,
    /// How long an unused pooled connection is kept while an older connection to the same
    /// peer is open (the oldest one is kept for `idle_timeout`). Capped by `idle_timeout`.
    pub surplus_idle_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// TLS + HTTP/2 handshake timeout.
    pub handshake_timeout: Duration,
    /// `SO_MARK` for the TCP connections to peers, so traffic-capture rules exempt them (as
    /// ztunnel marks its sockets 1337); `None` leaves them unmarked.
    pub socket_mark: Option<u32>,
    /// How long a CONNECT waits for a stream slot and the peer's response head.
    pub response_timeout: Duration,
    /// Time open streams get to finish once the peer's certificate stops verifying.
    pub revocation_grace: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            http2: Http2Settings::client_default(),
            keepalive: Keepalive::default(),
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            surplus_idle_timeout: DEFAULT_CLIENT_SURPLUS_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            socket_mark: None,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            revocation_grace: DEFAULT_REVOCATION_GRACE,
        }
    }
}

impl ClientSettings {
    /// Rejects settings that h2 would refuse or that would wedge the pool.
    pub fn validate(&self) -> Result<(), Error> {
        self.http2.validate()?;
        if self.max_streams_per_connection == 0 {
            return Err(Error::Config(
                "max_streams_per_connection must be above zero".into(),
            ));
        }
        if self.response_timeout.is_zero() {
            return Err(Error::Config("response_timeout must be above zero".into()));
        }
        validate_keepalive(&self.keepalive)
    }
}

/// Settings of the server side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// HTTP/2 windows and limits.
    pub http2: Http2Settings,
    /// PING schedule.
    pub keepalive: Keepalive,
    /// SETTINGS_MAX_CONCURRENT_STREAMS announced to clients; extra streams are refused.
    pub max_concurrent_streams: u32,
    /// Authenticated connections held at once; a further one is closed after its TLS handshake.
    pub max_connections: usize,
    /// TLS handshakes in flight at once, from all sources; further connections are closed on
    /// accept.
    pub max_handshakes: usize,
    /// TLS handshakes in flight at once from one source IP (IPv6: one /64).
    pub max_handshakes_per_ip: usize,
    /// TLS + HTTP/2 handshake timeout (a client that never finishes is dropped).
    pub handshake_timeout: Duration,
    /// A connection without open streams this long gets a GOAWAY.
    pub idle_timeout: Duration,
    /// Time open streams get to finish once the client's certificate stops verifying.
    pub revocation_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            http2: Http2Settings::server_default(),
            keepalive: Keepalive::default(),
            max_concurrent_streams: DEFAULT_SERVER_MAX_CONCURRENT_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_SERVER_IDLE_TIMEOUT,
            revocation_grace: DEFAULT_REVOCATION_GRACE,
        }
    }
}

impl ServerSettings {
    /// Rejects settings that h2 would refuse or that would make the server refuse everything.
    pub fn validate(&self) -> Result<(), Error> {
        self.http2.validate()?;
        if self.max_concurrent_streams == 0
            || self.max_connections == 0
            || self.max_handshakes == 0
            || self.max_handshakes_per_ip == 0
        {
            return Err(Error::Config(
                "max_concurrent_streams, max_connections, max_handshakes and \
                 max_handshakes_per_ip must be above zero"
                    .into(),
            ));
        }
        validate_keepalive(&self.keepalive)
    }
}

impl ServerSettings {
    /// A fresh handshake budget sized by these settings (one per listener).
    pub(crate) fn handshake_budget(&self) -> crate::admission::HandshakeBudget {
        crate::admission::HandshakeBudget::new(self.max_handshakes, self.max_handshakes_per_ip)
    }
}

fn validate_keepalive(k: &Keepalive) -> Result<(), Error> {
    if k.interval.is_zero() || k.timeout.is_zero() {
        return Err(Error::Config(
            "keepalive interval and timeout must be above zero".into(),
        ));
    }
    Ok(())
}
