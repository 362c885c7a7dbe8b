//! istiod's ambient resources, as meshd reads them.
//!
//! The two resource types ztunnel subscribes to over Delta xDS,
//! `istio.workload.Address` (a Workload or a Service) and `istio.security.Authorization`, are
//! generated from Istio's own protos (vendored in `proto/`, compiled with prost and protox) and
//! decoded into meshd's [`model`]: every field is either mapped or refused aloud. A malformed
//! resource (an address of the wrong length, an unknown enum value, a port out of range) is a
//! [`DecodeError`] naming the field, which the xDS client turns into a NACK. A resource meshd
//! cannot serve safely (a waypoint-bound or gateway-reached workload, legacy Istio mTLS, ...) is
//! not an error: it is kept, marked [`model::Refusal`], so that connections to it are refused
//! rather than sent around whatever stands in front of it.
//!
//! [`MeshState`] holds what istiod sent, by resource name, updated one resource at a time, in
//! maps whose clones share what did not change ([`shared::SharedMap`]).
//!
//! It does not speak xDS (meshd-xds), compile policies (meshd-rbac) or route connections
//! (meshd-proxy).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod convert;
mod error;
mod intern;
pub mod model;
pub mod shared;
mod state;

pub use convert::{decode_address, decode_authorization};
pub use error::{DecodeError, Problem};
pub use intern::Sym;
pub use state::{MeshState, ResourceKind};

/// The type URL of `istio.workload.Address` resources (workloads and services).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";

/// The type URL of `istio.security.Authorization` resources (policies).
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// The generated protobuf types (Istio's field names), for encoders: tests, fixtures, benches.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `istio.*` packages.
    pub mod istio {
        /// `istio.workload`: Address, Workload, Service.
        pub mod workload {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
        }
        /// `istio.security`: Authorization.
        pub mod security {
            include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
        }
    }
    pub use istio::security;
    pub use istio::workload;
}
