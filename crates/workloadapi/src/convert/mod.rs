//! From istiod's protobuf resources to meshd's [`model`](crate::model), field by field.
//!
//! Every field of the vendored protos is handled here, in one of three ways: **mapped** (the
//! model carries it and the registry or engine uses it), **shown** (carried for operators and
//! records, not used for a decision: locality, app protocol, ip_families, canonical, node...), or
//! **refused**: the resource is kept but marked [`Refusal`](crate::model::Refusal) so that
//! connections to it are refused (waypoint, weighted_waypoints, network_gateway,
//! application_tunnel, LEGACY_ISTIO_MTLS, hostname-only, extensions on a Workload or Service).
//! A value meshd cannot read at all (wrong address length, unknown enum value, port out of
//! range, empty identity parts) is a [`DecodeError`] naming the field: the client NACKs the
//! resource and keeps its last good version.
//!
//! `docs/architecture.md` ("Inputs from istiod") has the table for operators.

mod authorization;
mod workload;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use prost::Message;

use crate::error::{DecodeError, Problem};
use crate::model::{Address, Authorization};
use crate::proto;

pub use authorization::authorization;
pub use workload::{service, workload};

/// Decodes one `istio.workload.Address` resource body.
pub fn decode_address(bytes: &[u8]) -> Result<Address, DecodeError> {
    let address =
        proto::workload::Address::decode(bytes).map_err(|source| DecodeError::Protobuf {
            message: "istio.workload.Address",
            source,
        })?;
    match address.r#type {
        Some(proto::workload::address::Type::Workload(w)) => {
            Ok(Address::Workload(workload(w)?.into()))
        }
        Some(proto::workload::address::Type::Service(s)) => {
            Ok(Address::Service(service(s)?.into()))
        }
        None => Err(DecodeError::field("type", Problem::EmptyOneof)),
    }
}

/// Decodes one `istio.security.Authorization` resource body.
pub fn decode_authorization(bytes: &[u8]) -> Result<Authorization, DecodeError> {
    let policy =
        proto::security::Authorization::decode(bytes).map_err(|source| DecodeError::Protobuf {
            message: "istio.security.Authorization",
            source,
        })?;
    authorization(policy)
}

/// Collects results into a vector of exactly their number. A collect of `Result`s cannot know
/// the length ahead and grows the vector to 4: for 10⁴ policies of one match each (a `Match`
/// is ~300 bytes), that spare room was most of their memory.
pub(crate) fn exact<T, E>(items: impl ExactSizeIterator<Item = Result<T, E>>) -> Result<Vec<T>, E> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(item?);
    }
    Ok(out)
}

/// An IP address from its 4 or 16 network-order bytes (v4-mapped v6 made v4, as the registry
/// indexes addresses canonically).
pub(crate) fn ip(bytes: &[u8], field: impl FnOnce() -> String) -> Result<IpAddr, DecodeError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(v6)).to_canonical());
    }
    Err(DecodeError::field(
        field(),
        Problem::AddressLength(bytes.len()),
    ))
}

/// An address block: `length` bits of prefix (host bits kept, as CIDR containment ignores them).
pub(crate) fn net(
    bytes: &[u8],
    length: Option<u32>,
    field: &dyn Fn() -> String,
) -> Result<IpNet, DecodeError> {
    let address = ip(bytes, field)?;
    let max: u8 = if address.is_ipv4() { 32 } else { 128 };
    let length = length.unwrap_or(u32::from(max));
    u8::try_from(length)
        .ok()
        .and_then(|l| IpNet::new(address, l).ok())
        .ok_or_else(|| {
            DecodeError::field(
                format!("{}.length", field()),
                Problem::PrefixLength { length, max },
            )
        })
}

/// A port 1–65535.
pub(crate) fn port(value: u32, field: impl FnOnce() -> String) -> Result<u16, DecodeError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| DecodeError::field(field(), Problem::PortOutOfRange(value)))
}

/// A name that becomes part of an identity or key: no `/`, no whitespace.
pub(crate) fn name(value: &str, field: &str) -> Result<(), DecodeError> {
    if value.contains('/') || value.chars().any(char::is_whitespace) {
        return Err(DecodeError::field(
            field,
            Problem::BadName(value.to_string()),
        ));
    }
    Ok(())
}

/// A required name: non-empty, and [`name`].
pub(crate) fn required(value: &str, field: &str) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::field(field, Problem::Empty));
    }
    name(value, field)
}

/// An enum value this build knows, or [`Problem::UnknownEnum`].
pub(crate) fn known<E: TryFrom<i32>>(value: i32, field: &str) -> Result<E, DecodeError> {
    E::try_from(value).map_err(|_| DecodeError::field(field, Problem::UnknownEnum(value)))
}
