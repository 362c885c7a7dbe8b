//! Validation: everything Istio's CRD schema and admission webhook reject is an error here, and
//! meshd warns where Istio warns and wherever meshd enforces something other than what was
//! written (see the crate documentation for the list).

mod authz;
mod checks;
mod networking;
mod peer;

use crate::diag::Diagnostic;
use crate::meta::{
    DEFAULT_ROOT_NAMESPACE, DRY_RUN_ANNOTATION, Kind, ObjectMeta, TRUST_DOMAIN_ANNOTATION,
};
use crate::path::FieldPath;
use crate::resource::Resource;

/// Settings validation depends on.
#[derive(Debug, Clone)]
pub struct ValidationContext {
    /// The mesh root namespace: its policies apply mesh-wide.
    pub root_namespace: String,
}

impl Default for ValidationContext {
    fn default() -> Self {
        Self {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
        }
    }
}

/// Validates one resource on its own (cross-resource rules live with the loader that sees them
/// all). Returns every problem, not just the first.
pub fn validate(resource: &Resource, ctx: &ValidationContext) -> Vec<Diagnostic> {
    let mut sink = Sink::default();
    validate_meta(resource.meta(), &mut sink);
    if resource.kind() != Kind::AuthorizationPolicy
        && resource.meta().annotations.contains_key(DRY_RUN_ANNOTATION)
    {
        // Istio's webhook (`checkDryRunAnnotation`): only AuthorizationPolicy can be dry-run,
        // and a PeerAuthentication its author believes is not enforced would be.
        sink.error(
            FieldPath::root()
                .field("metadata")
                .field("annotations")
                .field(DRY_RUN_ANNOTATION),
            format!(
                "{} has unsupported annotation {DRY_RUN_ANNOTATION}, please remove the annotation (only AuthorizationPolicy can be dry-run)",
                resource.kind()
            ),
        );
    }
    validate_trust_domain(resource, &mut sink);
    let spec = FieldPath::root().field("spec");
    match resource {
        Resource::AuthorizationPolicy(p) => authz::validate(p, &spec, ctx, &mut sink),
        Resource::PeerAuthentication(p) => peer::validate(p, &spec, ctx, &mut sink),
        Resource::WorkloadEntry(w) => {
            networking::validate_workload_entry(&w.spec, &spec, &mut sink)
        }
        Resource::ServiceEntry(s) => networking::validate_service_entry(&s.spec, &spec, &mut sink),
    }
    sink.0
}

/// Collects diagnostics.
#[derive(Default)]
pub(crate) struct Sink(Vec<Diagnostic>);

impl Sink {
    pub(crate) fn error(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(Diagnostic::error(path, message));
    }

    pub(crate) fn warning(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(Diagnostic::warning(path, message));
    }
}

/// The trust-domain annotation: a valid SPIFFE trust domain, on the kinds that describe
/// workloads only (elsewhere it would look like it changed something it does not).
fn validate_trust_domain(resource: &Resource, sink: &mut Sink) {
    let Some(value) = resource.meta().trust_domain() else {
        return;
    };
    let path = FieldPath::root()
        .field("metadata")
        .field("annotations")
        .field(TRUST_DOMAIN_ANNOTATION);
    if !matches!(resource.kind(), Kind::WorkloadEntry | Kind::ServiceEntry) {
        sink.error(
            path,
            format!(
                "{} has unsupported annotation {TRUST_DOMAIN_ANNOTATION} (only WorkloadEntry and ServiceEntry have a trust domain)",
                resource.kind()
            ),
        );
        return;
    }
    if let Err(e) = meshd_identity::TrustDomain::new(value) {
        sink.error(path, e.to_string());
    }
}

fn validate_meta(meta: &ObjectMeta, sink: &mut Sink) {
    let path = FieldPath::root().field("metadata");
    match meta.name.as_deref() {
        None => sink.error(path.clone(), "missing field `name`"),
        Some(name) => {
            if let Err(e) = checks::dns1123_subdomain(name) {
                sink.error(path.field("name"), e);
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref()
        && let Err(e) = checks::dns1123_label(ns)
    {
        sink.error(path.field("namespace"), e);
    }
    checks::labels(&meta.labels, &path.field("labels"), sink);
}
