//! PeerAuthentication validation (Istio's `ValidatePeerAuthentication` and CRD rules).

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
    for (port, mtls) in ports {
        let at = path.field(port);
        match port.parse::<u32>() {
            Ok(1..=65535) => {}
            _ => sink.error(
                at.clone(),
                format!("port {port:?} must be in the range 1..65535"),
            ),
        }
        if mtls.mode == Some(MtlsMode::Disable) {
            sink.warning(at.field("mode"), DISABLE_WARNING);
        }
    }
}
