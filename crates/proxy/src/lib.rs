//! meshd's node proxy: identity, HBONE and the authorization engine composed into inbound and
//! outbound connection stacks of tower layers.
//!
//! - [`registry`]: workloads and services from the configuration snapshot; which are local;
//!   endpoint choice.
//! - [`stack`]: the two stacks, layer by layer, in one place; [`layers`] holds the layers.
//! - [`plugins`]: layers added by name from configuration (connection limit, rate limit),
//!   after authorization.
//! - [`access_log`]: the access log, a sink of connection records.
//! - connection records (meshd-record, re-exported as [`record`]): one per connection, opened
//!   where it enters, filled in by the layers, for metrics, access logs and admin.
//! - [`live`] and [`views`]: the operator views (open connections, recent denials,
//!   workloads, services, policies, certificate) that `meshd status` and the admin page show.
//! - [`runtime`]: binds the listeners (HBONE 15008, captured inbound 15006, captured outbound
//!   15001, SOCKS5 15080, explicit listeners) and feeds connections to the stacks.
//!
//! It does not load files (meshd-config), decide policy (meshd-rbac), speak HBONE
//! (meshd-hbone), manage certificates (meshd-identity) or install capture rules
//! (meshd-redirect); it composes them.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod access_log;
pub mod config;
pub mod conn;
pub mod connector;
pub mod copy;
pub mod dump;
mod entry;
pub mod error;
pub mod exposure;
pub mod layers;
pub mod live;
pub mod metered;
pub mod own_ports;
pub mod plugins;
pub mod registry;
pub mod relay;
pub mod runtime;
pub mod socks5;
pub mod stack;
pub mod state;
pub mod views;

pub use config::{ConfigError, ProxyConfig};
pub use error::ProxyError;
pub use meshd_record as record;
pub use own_ports::OwnPorts;
pub use runtime::{BoundAddrs, BoundListeners, Proxy, StartError, local_predicate};
pub use state::ProxyState;
