//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong talking to istiod or reading its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of istioctl's VM bundle (or another input file) is malformed.
    #[error("{}:{line}: {key}: {reason}", file.display())]
    Bundle {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when the whole file is at fault).
        line: usize,
        /// The key or field at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A `controlPlane:` setting is invalid.
    #[error("controlPlane.{field}: {reason}")]
    Settings {
        /// The camelCase field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The token file is absent or unusable and no client certificate can stand in.
    #[error("token file {}: {reason}", file.display())]
    Token {
        /// The token file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Neither a token nor a client certificate is available to authenticate.
    #[error("no credential to authenticate to {0}: no token file and no client certificate")]
    NoCredential(String),
    /// TCP or TLS connection to istiod failed.
    #[error("connecting to {address}: {reason}")]
    Connect {
        /// Where meshd dialled.
        address: String,
        /// What failed.
        reason: String,
    },
    /// A gRPC call failed.
    #[error("{call}: {status}")]
    Grpc {
        /// The RPC.
        call: &'static str,
        /// gRPC status from the server or the transport.
        #[source]
        status: Box<tonic::Status>,
    },
    /// The Istio CA answered with something unusable.
    #[error("Istio CA response: {0}")]
    CaResponse(String),
    /// The certificate the CA issued is for another identity than the one requested.
    #[error("Istio CA issued a certificate for {got}, expected {want}")]
    SanMismatch {
        /// The SPIFFE ID meshd asked for.
        want: String,
        /// The URI SAN(s) of the issued leaf.
        got: String,
    },
    /// The certificate signing request could not be made.
    #[error("certificate signing request: {0}")]
    Csr(#[source] rcgen::Error),
    /// Certificates, keys or SPIFFE IDs rejected by meshd-identity.
    #[error(transparent)]
    Identity(#[from] meshd_identity::Error),
}

impl Error {
    pub(crate) fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            file: file.into(),
            source,
        }
    }

    pub(crate) fn grpc(call: &'static str, status: tonic::Status) -> Self {
        Error::Grpc {
            call,
            status: Box::new(status),
        }
    }
}
