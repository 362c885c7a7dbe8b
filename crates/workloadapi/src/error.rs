//! Why a resource from istiod cannot be used. The xDS client NACKs it with this message and
//! keeps the resource's last good version.

/// A resource that does not decode into meshd's model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not the protobuf message.
    #[error("not a valid {message} message: {source}")]
    Protobuf {
        /// The message expected.
        message: &'static str,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// The resource's name is not the one its body implies (a workload's uid, a service's
    /// `<namespace>/<hostname>`, a policy's `<namespace>/<name>`): two names could then hold
    /// the same resource, and a removal by name would leave a copy behind.
    #[error("resource name {name:?} does not match its body, which names it {expected:?}")]
    NameMismatch {
        /// The name sent.
        name: String,
        /// The name the body implies.
        expected: String,
    },
    /// A field holds a value meshd cannot use.
    #[error("{field}: {problem}")]
    Field {
        /// Its path in the resource, e.g. `workload.addresses[1]` or
        /// `groups[0].rules[1].matches[0].source_ips[2].length`.
        field: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// An address of neither 4 nor 16 bytes.
    #[error("an IP address must be 4 or 16 bytes, got {0}")]
    AddressLength(usize),
    /// A prefix length longer than the address.
    #[error("prefix length {length} is longer than the address ({max} bits)")]
    PrefixLength {
        /// The length sent.
        length: u32,
        /// The address's bits.
        max: u8,
    },
    /// An enum value this version of meshd does not know (a newer istiod).
    #[error("unknown enum value {0} (a newer istiod? meshd refuses what it cannot read)")]
    UnknownEnum(i32),
    /// A port outside 1–65535.
    #[error("port {0} is outside 1-65535")]
    PortOutOfRange(u32),
    /// A field that must be set is empty.
    #[error("must not be empty")]
    Empty,
    /// A value used to build an identity or a key contains a character that would change its
    /// meaning (`/`, whitespace).
    #[error("{0:?} contains '/' or whitespace")]
    BadName(String),
    /// A `services` key that is not `<namespace>/<hostname>`.
    #[error("{0:?} is not <namespace>/<hostname>")]
    BadServiceKey(String),
    /// An `authorization_policies` entry that is not `<namespace>/<name>`.
    #[error("{0:?} is not <namespace>/<name>")]
    BadPolicyKey(String),
    /// A oneof with no member set.
    #[error("no member of the oneof is set")]
    EmptyOneof,
}

impl DecodeError {
    pub(crate) fn field(field: impl Into<String>, problem: Problem) -> Self {
        DecodeError::Field {
            field: field.into(),
            problem,
        }
    }
}
