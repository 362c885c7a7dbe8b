//! Transparent TCP capture on Linux for meshd, the way ztunnel's dedicated mode does it.
//!
//! # What this crate does
//! - Describes the capture in a serde-friendly [`RedirectConfig`] (it sits in the daemon config)
//!   and renders it as one nftables table, `inet meshd`, covering IPv4 and IPv6
//!   ([`render`]): outbound TCP is REDIRECTed to meshd's outbound port (15001), optionally
//!   inbound TCP to its plaintext inbound port (15006). meshd's own sockets carry a mark
//!   (1337, as ztunnel) that the rules exempt, so meshd never captures its own upstream
//!   connections.
//! - Installs, removes and shows that table by running the `nft` binary ([`install`],
//!   [`uninstall`], [`show`]). Installing replaces the whole table in one atomic `nft -f`
//!   transaction, so it is idempotent and never leaves a half-written ruleset; uninstalling an
//!   absent table is not an error.
//! - Socket helpers ([`original_dst`], [`set_mark`], [`connect_marked`], [`verify_can_mark`])
//!   built on socket2, with no unsafe code.
//! - With the `test-util` feature, a network-namespace harness (`netns` module) that other
//!   crates' tests use to run code inside namespaces they create.
//!
//! # What it does not do
//! - No TPROXY (source-address preserving) capture, no UDP or DNS capture, no iptables backend:
//!   REDIRECT over nftables is the simplest mechanism that gives meshd the original destination.
//! - No policy: which captured connections may go where is the proxy's and RBAC's business.
//! - It does not touch any table but its own; other users' nftables or iptables rules stay.
//! - It does not acquire privileges: installing rules and setting `SO_MARK` need
//!   `CAP_NET_ADMIN`, which the caller (e.g. a systemd `ExecStartPre=+` step) must hold.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod error;
mod nft;
mod rules;
mod socket;

#[cfg(feature = "test-util")]
pub mod netns;

pub use error::Error;
pub use nft::{TABLE_NAME, install, show, uninstall};
pub use rules::{
    DEFAULT_HBONE_PORT, DEFAULT_INBOUND_PORT, DEFAULT_MARK, DEFAULT_MARK_MASK,
    DEFAULT_OUTBOUND_PORT, RedirectConfig, WELL_KNOWN_PORTS, render,
};
pub use socket::{connect_marked, original_dst, set_mark, verify_can_mark};
