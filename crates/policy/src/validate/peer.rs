//! PeerAuthentication validation (Istio's `ValidatePeerAuthentication` and CRD rules).

use std::collections::BTreeMap;

use crate::path::FieldPath;
use crate::peer::{MtlsMode, PeerAuthentication};
use crate::validate::{Sink, ValidationContext, checks};

const DISABLE_WARNING: &str = "DISABLE acts as PERMISSIVE in meshd: mTLS between meshd instances cannot be turned off, and plaintext is accepted";

pub(super) fn validate(
    pa: &PeerAuthentication,
    spec_path: &FieldPath,
    ctx: &ValidationContext,
    sink: &mut Sink,
) {
    let spec = &pa.spec;
    let has_labels = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if let Some(selector) = &spec.selector {
        let path = spec_path.field("selector");
        checks::labels(&selector.match_labels, &path.field("matchLabels"), sink);
        if selector.match_labels.is_empty() {
            sink.warning(path.clone(), "workload selector specified without labels");
        } else if pa.metadata.namespace() == ctx.root_namespace {
            sink.warning(
                path,
                "PeerAuthentication policies with workload selectors are ignored in the root namespace (as in Istio)",
            );
        }
    }
    if spec.mode() == MtlsMode::Disable {
        sink.warning(spec_path.field("mtls").field("mode"), DISABLE_WARNING);
    }
    let Some(ports) = &spec.port_level_mtls else {
        return;
    };
    let path = spec_path.field("portLevelMtls");
    if !has_labels {
        sink.error(
            path.clone(),
            "mesh/namespace peer authentication cannot have port level mTLS: portLevelMtls requires a selector with labels",
        );
    }
    if ports.is_empty() {
        sink.error(
            path.clone(),
            "port level mTLS, if defined, must have at least one element",
        );
    }
    // Istio keys the map by number: "8080" and "08080" are the same port.
    let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
    for (port, mtls) in ports {
        let at = path.field(port);
        match port_number(port) {
            Err(message) => sink.error(at.clone(), message),
            Ok(number) => {
                if let Some(first) = seen.insert(number, port) {
                    sink.error(
                        at.clone(),
                        format!("port {number} is listed twice (as {first:?} and {port:?})"),
                    );
                }
            }
        }
        if mtls.mode == Some(MtlsMode::Disable) {
            sink.warning(at.field("mode"), DISABLE_WARNING);
        }
    }
}

/// A `portLevelMtls` key: decimal digits (as Istio's uint32 map key) naming a port 1..65535.
fn port_number(key: &str) -> Result<u32, String> {
    let digits = key.strip_prefix('-').unwrap_or(key);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {key:?} is not a port number"));
    }
    match key.parse::<i64>() {
        Ok(n @ 1..=65535) => u32::try_from(n).map_err(|_| range_error(key)),
        _ => Err(range_error(key)),
    }
}

fn range_error(key: &str) -> String {
    format!("port {key:?} must be in the range 1..65535")
}
