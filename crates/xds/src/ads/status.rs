//! What the operator sees of the xDS stream.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// The stream's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    /// Dialling, handshaking, or waiting for the first response.
    Connecting,
    /// The stream is open.
    Connected,
    /// Waiting `delay` before the next attempt.
    BackingOff {
        /// The delay drawn for this wait.
        delay: Duration,
    },
}

/// The last reply meshd sent for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// ACK (`true`) or NACK.
    pub ack: bool,
    /// The nonce of the response it answers.
    pub nonce: String,
    /// istiod's `system_version_info` of that response (often empty).
    pub system_version: String,
    /// When it was sent.
    pub at: SystemTime,
    /// The NACK's `error_detail` message.
    pub error: Option<String>,
}

/// Per type URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The last ACK or NACK.
    pub last: Option<Reply>,
    /// The last NACK (kept when an ACK follows, for the operator).
    pub last_nack: Option<Reply>,
    /// Resources the handler holds after the last response.
    pub resources: usize,
    /// ACKs sent.
    pub acks: u64,
    /// NACKs sent.
    pub nacks: u64,
}

/// The whole client status, published through a `tokio::sync::watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsStatus {
    /// The configured address (`host:port`).
    pub address: String,
    /// What is dialled (`connectTo` or the address).
    pub dial: String,
    /// The name istiod's certificate is verified against.
    pub server_name: String,
    /// Current state.
    pub state: StreamState,
    /// Since when.
    pub since: SystemTime,
    /// Why the last stream ended or the last attempt failed.
    pub last_error: Option<String>,
    /// Both types ACKed at least once since start (ztunnel's readiness rule).
    pub ready: bool,
    /// Streams opened so far.
    pub connections: u64,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
}
