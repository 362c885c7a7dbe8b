//! The crate's single error type, and recovery of it from rustls/tokio-rustls errors.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

/// Everything that can go wrong in meshd-identity; every certificate rejection has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a valid SPIFFE ID.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The rejected input.
        id: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A SPIRE agent (its Workload API, or its Delegated Identity API on the admin socket)
    /// could not give meshd a usable X.509-SVID: unreachable, meshd refused as a delegate, no
    /// SVID registered (yet), the stream ended, or none with the wanted ID.
    #[error("SPIRE agent at {socket}: {reason}")]
    WorkloadApi {
        /// The configured endpoint (the Workload API socket or the admin socket).
        socket: String,
        /// What the agent (or the connection to it) said.
        reason: String,
    },

    /// A string is not a valid SPIFFE trust domain name.
    #[error("invalid trust domain {name:?}: {reason}")]
    InvalidTrustDomain {
        /// The rejected input.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },

    /// An error about the contents of a file; `source` says what is wrong with it.
    #[error("{path}: {source}")]
    InFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<Error>,
    },

    /// A certificate, key or bundle file is larger than any such file could be.
    #[error("file is larger than {limit} bytes; not a certificate, key or bundle")]
    FileTooLarge {
        /// The limit, [`crate::pem::MAX_PEM_FILE`].
        limit: u64,
    },

    /// PEM text is malformed (for example a half-written file missing its END line).
    #[error("malformed PEM: {reason}")]
    Pem {
        /// The parser's message.
        reason: String,
    },

    /// No `CERTIFICATE` PEM block was found.
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,

    /// No private key PEM block (PKCS#8, SEC1 or PKCS#1) was found.
    #[error("no PEM private key (PKCS#8, SEC1 or PKCS#1) found")]
    NoPrivateKey,

    /// The private key cannot be used (unsupported algorithm or malformed DER).
    #[error("unusable private key: {reason}")]
    BadPrivateKey {
        /// The crypto provider's message.
        reason: String,
    },

    /// A certificate's DER could not be parsed.
    #[error("malformed certificate: {reason}")]
    BadCertificate {
        /// The parser's message.
        reason: String,
    },

    /// The certificate's validity period ended.
    #[error("certificate expired at {not_after}")]
    Expired {
        /// The certificate's notAfter.
        not_after: OffsetDateTime,
    },

    /// The certificate's validity period has not started yet.
    #[error("certificate is not valid before {not_before}")]
    NotYetValid {
        /// The certificate's notBefore.
        not_before: OffsetDateTime,
    },

    /// The chain does not lead to any root of the bundle for the certificate's trust domain.
    #[error("certificate does not chain to a trusted root of trust domain {trust_domain}")]
    UnknownIssuer {
        /// The trust domain whose roots were tried.
        trust_domain: String,
    },

    /// The certificate's trust domain has no bundle, so it is not trusted.
    #[error("trust domain {trust_domain} is not trusted (no bundle configured for it)")]
    UntrustedTrustDomain {
        /// The certificate's trust domain.
        trust_domain: String,
    },

    /// The leaf has no URI SAN, so it carries no SPIFFE ID.
    #[error("certificate has no URI SAN (an X.509 SVID carries exactly one SPIFFE ID)")]
    NoUriSan,

    /// The leaf has more than one URI SAN, which the X509-SVID spec forbids.
    #[error("certificate has {count} URI SANs (an X.509 SVID carries exactly one)")]
    MultipleUriSans {
        /// How many URI SANs were found.
        count: usize,
    },

    /// The leaf's URI SAN is not a `spiffe://` URI.
    #[error("certificate URI SAN {uri:?} is not a SPIFFE ID")]
    NotSpiffeUri {
        /// The URI found.
        uri: String,
    },

    /// The leaf's SPIFFE ID has no path, i.e. names a trust domain rather than a workload.
    #[error("SPIFFE ID {id} names a trust domain, not a workload (an SVID's ID needs a path)")]
    NoWorkloadPath {
        /// The ID found.
        id: String,
    },

    /// The leaf is a CA certificate (basicConstraints CA:true), which may not identify a workload.
    #[error("leaf certificate is a CA (basicConstraints CA:true)")]
    LeafIsCa,

    /// The peer's SPIFFE ID is not the one expected for this destination.
    #[error("peer identity {found} does not match the expected {expected}")]
    IdentityMismatch {
        /// The identity the caller expected.
        expected: String,
        /// The identity the certificate carries.
        found: String,
    },

    /// The private key does not belong to the leaf certificate.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,

    /// The chain was rejected for a reason without its own variant (e.g. missing EKU).
    #[error("certificate rejected: {reason}")]
    Untrusted {
        /// rustls/webpki's reason.
        reason: String,
    },

    /// A trust bundle file or set of roots is unusable.
    #[error("unusable trust bundle: {reason}")]
    BadBundle {
        /// Why.
        reason: String,
    },

    /// The TLS peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,

    /// A rustls configuration could not be built.
    #[error("TLS configuration: {reason}")]
    TlsConfig {
        /// rustls' message.
        reason: String,
    },

    /// Certificate generation by the dev CA failed.
    #[error("dev CA: {reason}")]
    DevCa {
        /// rcgen's message.
        reason: String,
    },

    /// A configuration value is invalid.
    #[error("{field}: {reason}")]
    Config {
        /// The field path (camelCase, as written in the config).
        field: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The identity manager could not be started.
    #[error("identity manager: {reason}")]
    Manager {
        /// Why.
        reason: String,
    },

    /// One local workload's own identity (meshd.yaml's `workloadIdentities:`) could not be
    /// loaded; `identity` is the SPIFFE ID it is pinned to, `source` why.
    #[error("workload identity {identity}: {source}")]
    Workload {
        /// The SPIFFE ID the workload's SVID must carry.
        identity: String,
        /// Why it could not be loaded.
        source: Box<Error>,
    },
}

impl Error {
    /// Wraps `self` with the file it came from.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Error {
        Error::InFile {
            path: path.into(),
            source: Box::new(self),
        }
    }

    /// The innermost error, without the file context; tests and metrics match on it.
    pub fn cause(&self) -> &Error {
        match self {
            Error::InFile { source, .. } | Error::Workload { source, .. } => source.cause(),
            other => other,
        }
    }

    /// When a rejection is one that time alone cures (a certificate in the chain is not valid
    /// yet, e.g. issued by a CA whose clock runs ahead), the moment it becomes valid; `None` for
    /// every other error, which stays an error until the input changes.
    pub fn valid_from(&self) -> Option<OffsetDateTime> {
        match self.cause() {
            Error::NotYetValid { not_before } => Some(*not_before),
            _ => None,
        }
    }

    /// Whether new identity files (or, for a certificate not valid yet, time) can cure this
    /// error with meshd's configuration unchanged: files missing or half-written, a
    /// certificate expired or not valid yet, a key and certificate of two different
    /// rotations, a chain that does not verify to the bundle. meshd waits for such files at
    /// start instead of exiting. `false` for what only a person can fix: a configuration
    /// value, or a failure of meshd itself (no file watcher, no runtime).
    pub fn curable_by_new_files(&self) -> bool {
        match self.cause() {
            // A configured `spiffeId` that the files do not carry: an agent that has not yet
            // written the new identity looks the same as a typo, and waiting (not ready, the
            // reason on the readiness endpoint) is safe for both.
            Error::Io { .. }
            | Error::FileTooLarge { .. }
            | Error::Pem { .. }
            | Error::NoCertificate
            | Error::NoPrivateKey
            | Error::BadPrivateKey { .. }
            | Error::BadCertificate { .. }
            | Error::Expired { .. }
            | Error::NotYetValid { .. }
            | Error::UnknownIssuer { .. }
            | Error::UntrustedTrustDomain { .. }
            | Error::NoUriSan
            | Error::MultipleUriSans { .. }
            | Error::NotSpiffeUri { .. }
            | Error::InvalidSpiffeId { .. }
            | Error::NoWorkloadPath { .. }
            | Error::LeafIsCa
            | Error::IdentityMismatch { .. }
            | Error::KeyMismatch
            | Error::Untrusted { .. }
            | Error::BadBundle { .. }
            // The agent may be starting, restarting, or not yet synced with the entry.
            | Error::WorkloadApi { .. } => true,
            Error::InvalidTrustDomain { .. }
            | Error::NoPeerCertificate
            | Error::TlsConfig { .. }
            | Error::DevCa { .. }
            | Error::Config { .. }
            | Error::Manager { .. }
            // `cause` never returns these variants.
            | Error::InFile { .. }
            | Error::Workload { .. } => false,
        }
    }

    /// Recovers a meshd rejection carried inside a rustls error, if there is one.
    pub fn from_rustls(err: &rustls::Error) -> Option<Error> {
        match err {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<Error>().cloned()
            }
            _ => None,
        }
    }

    /// Recovers a meshd rejection from a failed tokio-rustls handshake's `io::Error`.
    pub fn from_io(err: &io::Error) -> Option<Error> {
        let inner = err.get_ref()?;
        if let Some(e) = inner.downcast_ref::<Error>() {
            return Some(e.clone());
        }
        inner
            .downcast_ref::<rustls::Error>()
            .and_then(Error::from_rustls)
    }

    /// Wraps `self` so rustls carries it through a handshake failure; `from_rustls` undoes it.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(self),
        )))
    }

    /// Builds an `Io` error naming `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, err: &io::Error) -> Error {
        Error::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_round_trip_keeps_the_variant() {
        // The verifiers rely on this to hand the exact cause back to callers and tests.
        let err = Error::MultipleUriSans { count: 2 };
        let wrapped = err.clone().into_rustls();
        assert_eq!(Error::from_rustls(&wrapped), Some(err.clone()));
        let io = io::Error::new(io::ErrorKind::InvalidData, wrapped);
        assert_eq!(Error::from_io(&io), Some(err));
    }

    #[test]
    fn file_states_are_curable_and_configuration_is_not() {
        // What a rotation agent writes can be cured by its next write; a configuration value
        // cannot, whatever file it is reported against.
        for curable in [
            Error::NotYetValid {
                not_before: OffsetDateTime::UNIX_EPOCH,
            },
            Error::Expired {
                not_after: OffsetDateTime::UNIX_EPOCH,
            },
            Error::KeyMismatch,
            Error::UnknownIssuer {
                trust_domain: "cluster.local".into(),
            },
            Error::NoPrivateKey,
        ] {
            assert!(curable.curable_by_new_files(), "{curable:?}");
            assert!(curable.in_file("/tls/svid.pem").curable_by_new_files());
        }
        let config = Error::Config {
            field: "federatedBundles.cluster.local".into(),
            reason: "is the local trust domain".into(),
        };
        assert!(!config.curable_by_new_files());
        assert!(!config.in_file("/tls/svid.pem").curable_by_new_files());
    }

    #[test]
    fn in_file_names_the_path_and_cause_strips_it() {
        let err = Error::NoCertificate.in_file("/etc/meshd/cert.pem");
        assert_eq!(
            err.to_string(),
            "/etc/meshd/cert.pem: no PEM CERTIFICATE block found"
        );
        assert_eq!(err.cause(), &Error::NoCertificate);
    }
}
