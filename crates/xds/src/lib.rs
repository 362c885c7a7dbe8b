//! meshd's client of istiod.
//!
//! # What this crate does
//! - Speaks istiod's wire contract with generated gRPC stubs ([`proto`]): the Delta variant of
//!   Envoy's aggregated discovery service and Istio's `IstioCertificateService`, compiled from
//!   vendored protos by a pure-Rust build script (no `protoc`).
//! - [`ads`]: one Delta ADS stream over TLS (h2 only, istiod verified against its root and a
//!   host name that may differ from the address dialled), wildcard subscription to
//!   [`ads::ADDRESS_TYPE`] and [`ads::AUTHORIZATION_TYPE`], ACK/NACK per response (a rejected
//!   resource is named in `error_detail`; the caller's [`ads::Handler`] keeps its last good
//!   version), `removed_resources`, `initial_resource_versions` on reconnect, readiness after
//!   the first ACK of both types, reconnection with jittered exponential backoff, an observable
//!   [`ads::XdsStatus`] and ztunnel-named metrics ([`metrics::XdsMetrics`]).
//! - [`node`]: the node ID and metadata exactly as ztunnel sends them, for a VM.
//! - [`settings`]: the `controlPlane:` section of meshd.yaml; [`bundle`]: the same from the
//!   directory `istioctl x workload entry configure` writes.
//! - [`ca`]: the workload certificate from the Istio CA (ECDSA P-256 CSR, first with the bearer
//!   token, then renewed over mutual TLS with the current certificate), its SAN checked against
//!   the expected SPIFFE ID, persisted atomically in `certDir` as Istio's `cert-chain.pem`,
//!   `key.pem`, `root-cert.pem`; meshd-identity's `istioCa` source loads and rotates those files
//!   like any file identity.
//! - The daemon wires them (crates/daemon/src/control_plane): certificate (persisted, else by
//!   token, retried until it comes), identity manager over `certDir`, renewal task, the ADS
//!   stream over its own store of what istiod sent.
//!
//! # What it does not do
//! - It does not decode `Address` or `Authorization`: resources leave as bytes
//!   ([`ads::Resource::body`]) and `meshd-workloadapi` turns them into meshd's model.
//! - No state of its own beyond the stream: what is held, merged, persisted or enforced is the
//!   handler's (the daemon's) business; the client asks it what it holds on each reconnect.
//! - No State-of-the-World xDS, no on-demand subscription, no impersonation (a VM has one
//!   identity), no OIDC/XFCC authentication, no plaintext.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod ads;
mod backoff;
pub mod bundle;
pub mod ca;
mod error;
pub mod metrics;
pub mod node;
pub mod settings;
mod transport;

pub use error::Error;
pub use settings::ControlPlaneSettings;

/// Generated protobuf and gRPC client code.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod proto {
    /// `envoy.*` (subset).
    pub mod envoy {
        /// `envoy.config`.
        pub mod config {
            /// `envoy.config.core`.
            pub mod core {
                /// `envoy.config.core.v3`.
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
                }
            }
        }
        /// `envoy.service`.
        pub mod service {
            /// `envoy.service.discovery`.
            pub mod discovery {
                /// `envoy.service.discovery.v3`.
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
                }
            }
        }
    }
    /// `google.rpc`.
    pub mod google {
        /// `google.rpc`.
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
    }
    /// `istio.v1.auth`: the Istio CA.
    pub mod istio {
        /// `istio.v1`.
        pub mod v1 {
            /// `istio.v1.auth`.
            pub mod auth {
                include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
            }
        }
    }
}
