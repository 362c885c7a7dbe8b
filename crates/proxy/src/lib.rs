//! meshd's node proxy: identity, HBONE and the authorization engine composed into inbound and
//! outbound connection stacks of tower layers.
//!
//! The path of a connection, file by file (`docs/architecture.md` walks it in full):
//!
//! - `entry/`: every way in (HBONE over HTTP/2 and HTTP/3, captured inbound and outbound,
//!   SOCKS5, explicit listeners) opens the connection's record in one place, with the
//!   connection's facts shared by the record and the stack's context (`conn.rs`).
//! - `stack.rs`: the two stacks, layer by layer, in one place; `layers/` holds the layers
//!   (record, authorize, resolve, connect); [`plugins`] adds layers by name from configuration
//!   (connection limit, rate limit), after authorization. `connector.rs` dials upstreams.
//! - `relay.rs`, `copy.rs`, `metered.rs`: the established connection's bytes.
//! - `registry/` and `state.rs`: workloads and services from the configuration snapshot and
//!   istiod's state (meshd-workloadapi), which are local, endpoint choice, refused and
//!   conflicted addresses; the state a connection is handled under.
//! - [`AccessLog`] and [`Live`]: sinks of the connection records ([`record`], meshd-record);
//!   [`views`]: the operator views (open connections, recent denials, workloads, services,
//!   policies, certificate) that `meshd status` and the admin page show; [`traffic`]: the
//!   traffic picture's bounded time series and graph, kept by [`Live`].
//! - `runtime.rs`: binds the listeners (HBONE 15008, captured inbound 15006, captured outbound
//!   15001, SOCKS5 15080, explicit listeners) and starts the ways in.
//!
//! It does not load files (meshd-manifests), decide policy (meshd-rbac), speak HBONE
//! (meshd-hbone), manage certificates (meshd-identity) or install capture rules
//! (meshd-redirect); it composes them.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

// Modules other crates use are public: `config` (the proxy's sections of `meshd.yaml`), `plugins` (the
// plugin API), `views` (the operator views the daemon serves). The rest are private; what
// other crates need of them is re-exported below.
mod access_log;
pub mod config;
mod conn;
mod connector;
mod copy;
mod dump;
mod entry;
mod error;
mod exposure;
mod identities;
mod layers;
mod live;
mod local;
mod metered;
mod own_ports;
pub mod plugins;
mod registry;
mod relay;
mod runtime;
mod stack;
mod state;
pub mod traffic;
pub mod views;

pub use access_log::AccessLog;
pub use config::{
    ConfigError, ExplicitListener, HBONE_PORT, Listen, LocalWorkloads, PoolSettings, ProxyConfig,
    Socks5Settings,
};
pub use conn::{BoxIo, Conn, ConnCtx, Downstream, Io, Refusal, Target, TunnelRequest, Upstream};
pub use dump::config_dump;
pub use entry::socks5;
pub use error::ProxyError;
pub use exposure::strict_without_capture;
pub use layers::{ChosenService, ConnService};
pub use live::{DENIALS_KEPT, Live};
pub use local::local_predicate;
pub use meshd_record as record;
pub use meshd_workloadapi::MeshState;
pub use own_ports::OwnPorts;
pub use registry::{
    Conflict, EJECTION, MeshRefusal, Origin, Protocol, Registry, ResolveError, Resolved, Service,
    Workload,
};
pub use relay::{Check, Relay};
pub use runtime::{BoundAddrs, BoundListeners, Proxy, StartError};
pub use state::ProxyState;
