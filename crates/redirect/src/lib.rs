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
//! - Socket helpers ([`original_dst`], [`set_mark`], [`connect_marked`], [`verify_can_mark`],
//!   and for `originalSource` [`connect_transparent`], [`verify_can_be_transparent`]) built on
//!   socket2, with no unsafe code.
//! - With `originalSource` (ztunnel's `ENABLE_ORIG_SRC`), install also adds the nftables chains,
//!   routing rule and routing table that bring a local workload's replies to a client's address
//!   back to meshd (`origsrc` module; [`ORIGINAL_SOURCE_MARK`], [`ORIGINAL_SOURCE_TABLE`]).
//! - With the `test-util` feature, a network-namespace harness (`netns` module) that other
//!   crates' tests use to run code inside namespaces they create.
//!
//! # What it does not do
//! - No TPROXY capture (original source binds meshd's own upstream sockets; it captures
//!   nothing), no UDP or DNS capture, no iptables backend: REDIRECT over nftables is the
//!   simplest mechanism that gives meshd the original destination.
//! - No policy: which captured connections may go where is the proxy's and RBAC's business.
//! - It does not touch any nftables table but its own; other users' nftables or iptables rules
//!   stay. The routing rule and table of original source are istio-cni's fixed ones (rule
//!   32764, table 100), removed by exactly their values.
//! - It does not acquire privileges: installing rules and setting `SO_MARK` need
//!   `CAP_NET_ADMIN`, which the caller (e.g. a systemd `ExecStartPre=+` step) must hold.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod error;
mod nft;
mod origsrc;
mod rules;
mod socket;

#[cfg(feature = "test-util")]
pub mod netns;

pub use error::Error;
pub use nft::{TABLE_NAME, install, show, uninstall};
pub use origsrc::{
    MARK as ORIGINAL_SOURCE_MARK, RULE_PRIORITY as ORIGINAL_SOURCE_RULE_PRIORITY,
    TABLE as ORIGINAL_SOURCE_TABLE, show_routes as show_original_source_routes,
};
pub use rules::{
    DEFAULT_HBONE_PORT, DEFAULT_INBOUND_PORT, DEFAULT_MARK, DEFAULT_MARK_MASK,
    DEFAULT_OUTBOUND_PORT, RedirectConfig, WELL_KNOWN_PORTS, render,
};
pub use socket::{
    connect_marked, connect_transparent, original_dst, set_mark, verify_can_be_transparent,
    verify_can_mark,
};
