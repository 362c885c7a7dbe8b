//! SPIFFE identities and mutual-TLS credentials for meshd.
//!
//! # What this crate does
//! - Parses and validates SPIFFE IDs ([`SpiffeId`]), with accessors for Istio's
//!   `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` form.
//! - Loads a workload's X.509 SVID (certificate chain + private key in PKCS#8, SEC1 or PKCS#1
//!   PEM) and a trust bundle per trust domain ([`TrustBundle`]; several for federation), and
//!   validates them together as a [`CredentialSet`].
//! - Keeps that set fresh ([`IdentityManager`]) from one of six [`IdentitySource`]s: explicit
//!   files, a spiffe-helper directory, the certificate directory meshd-xds keeps from the Istio
//!   CA, the built-in development CA ([`DevCa`]), a SPIRE agent's Workload API
//!   ([`SpireSource`]: the X.509-SVID stream), or a SPIRE agent's Delegated Identity API
//!   ([`SpireDelegatedSource`]: the SVID of the workload its [`Selector`]s name, meshd being an
//!   authorized delegate); a broken SPIRE stream keeps the current set and reconnects. File sources
//!   are watched by directory, so atomic renames and Kubernetes `..data` symlink swaps work; a
//!   changed set that does not validate is logged and rejected once, and the previous set
//!   stays; one refused only as not valid yet (issuer clock ahead) is retried until it is.
//!   Files over [`pem::MAX_PEM_FILE`] are refused unread.
//! - Builds rustls 0.23 configurations for HBONE ([`tls::server_config`],
//!   [`tls::client_config`]) whose verifiers apply SPIFFE rules instead of DNS-name rules, and
//!   reads the verified peer identity after a handshake ([`tls::peer_identity`]).
//!
//! # What it does not do
//! - No authorization: it says *who* the peer is; whether that principal may connect is the
//!   RBAC crate's decision.
//! - One identity per manager: several local workloads get one manager each, gathered in an
//!   [`IdentitySet`] (meshd's own plus one per service account with a [`WorkloadSource`],
//!   each pinned to its expected SPIFFE ID); which connection presents which is the HBONE
//!   and proxy crates' choice. No Istio CA (CSR) client (meshd-xds has it), no CRL/OCSP
//!   checking.
//! - No TLS 1.2, no session resumption, no DNS or IP name checks (SPIFFE forbids them).
//! - The dev CA is for trying meshd; production uses certificates from a real CA.
//!
//! # Rejection rules
//! A peer certificate (and the local one, when loaded) is rejected, each with its own
//! [`Error`] variant, when:
//! - the leaf is a CA (`basicConstraints CA:true`): [`Error::LeafIsCa`];
//! - it has no URI SAN: [`Error::NoUriSan`];
//! - it has more than one URI SAN: [`Error::MultipleUriSans`] (the X509-SVID spec says exactly
//!   one; ztunnel accepts several and takes the first, meshd is strict);
//! - its URI SAN is not a `spiffe://` URI: [`Error::NotSpiffeUri`], or not a valid SPIFFE ID:
//!   [`Error::InvalidSpiffeId`], or an ID without a path (a trust domain, not a workload):
//!   [`Error::NoWorkloadPath`];
//! - its trust domain has no bundle: [`Error::UntrustedTrustDomain`] (by default only the local
//!   trust domain has one);
//! - it is outside its validity period: [`Error::Expired`], [`Error::NotYetValid`];
//! - it does not chain to a root of its own trust domain's bundle: [`Error::UnknownIssuer`];
//! - other webpki failures, e.g. a missing serverAuth/clientAuth EKU: [`Error::Untrusted`];
//! - (client side) its ID is not the one expected for the destination:
//!   [`Error::IdentityMismatch`];
//! - the peer's handshake signature does not verify with the certificate's key, or a loaded
//!   key does not match the loaded leaf: [`Error::KeyMismatch`].
//!
//! rustls carries these inside `CertificateError::Other`; [`Error::from_io`] and
//! [`Error::from_rustls`] recover the exact variant from a failed handshake.
//!
//! # Crypto provider
//! aws-lc-rs, built once in [`tls::crypto_provider`] and passed explicitly to every config (the
//! process default is never installed): it is ztunnel's default provider, it offers the hybrid
//! post-quantum group X25519MLKEM768 so meshd can talk to a ztunnel in PQC compliance mode, and
//! it has a FIPS path. The cost is about 35 s more per clean build than ring. TLS 1.3 only,
//! cipher suites TLS13_AES_256_GCM_SHA384 and TLS13_AES_128_GCM_SHA256 (as ztunnel), the
//! provider's default key-exchange groups.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod bundle;
mod credentials;
pub mod dev_ca;
mod error;
mod expiry;
pub mod pem;
mod set;
mod source;
mod spiffe_id;
mod spire;
pub mod tls;
mod watch;
pub mod x509;

pub use bundle::{Purpose, TrustBundle};
pub use credentials::{CredentialSet, Credentials};
pub use dev_ca::{DevCa, IssuedSvid};
pub use error::Error;
pub use set::{IdentitySet, WorkloadDevCa, WorkloadIstioCa, WorkloadManagers, WorkloadSource};
pub use source::{
    DEFAULT_DEV_TTL, DEFAULT_TRUST_DOMAIN, DevCaSource, FilesSource, ISTIO_CERT_CHAIN_FILE,
    ISTIO_KEY_FILE, ISTIO_ROOT_CERT_FILE, IdentitySource, IstioCaSource, SpiffeHelperSource,
    duration_text, format_duration, parse_duration,
};
pub use spiffe_id::{MAX_SPIFFE_ID_LEN, SPIFFE_PREFIX, SpiffeId, TrustDomain};
pub use spire::{Selector, SpireDelegatedSource, SpireSource};
pub use watch::{
    DEFAULT_DEBOUNCE, DEFAULT_RESCAN, IdentityHandle, IdentityManager, ManagerOptions,
    RotationStats,
};
