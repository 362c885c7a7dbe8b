//! Kubernetes object metadata and the kinds meshd accepts.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// The namespace a resource without `metadata.namespace` lands in, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The mesh root namespace when none is configured, as Istio's `rootNamespace` default.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The annotation that marks an AuthorizationPolicy as dry-run (evaluated, never enforced).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The annotation that gives a WorkloadEntry (or a ServiceEntry's inline endpoints) its own
/// SPIFFE trust domain: the one its peers' certificates must be issued in. Without it a
/// workload is in the mesh's trust domain.
pub const TRUST_DOMAIN_ANNOTATION: &str = "security.meshd.io/trust-domain";

/// `metadata` of a resource. Fields Kubernetes adds on export are accepted and ignored, so that
/// `kubectl get -o yaml` output can be dropped into the directory as it is.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Resource name; required.
    pub name: Option<String>,
    /// Namespace; [`DEFAULT_NAMESPACE`] when absent.
    pub namespace: Option<String>,
    /// Labels of the resource itself (not of the workloads it selects).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations, e.g. [`DRY_RUN_ANNOTATION`].
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Ignored (set by Kubernetes).
    #[serde(default)]
    pub uid: Option<IgnoredAny>,
    /// Ignored (set by Kubernetes).
    #[serde(default)]
    pub resource_version: Option<IgnoredAny>,
    /// Ignored (set by Kubernetes).
    #[serde(default)]
    pub generation: Option<IgnoredAny>,
    /// Ignored (set by Kubernetes).
    #[serde(default)]
    pub creation_timestamp: Option<IgnoredAny>,
    /// Ignored (set by Kubernetes).
    #[serde(default)]
    pub managed_fields: Option<IgnoredAny>,
}

impl ObjectMeta {
    /// The name, or the empty string when it is missing (validation reports that).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// The namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The trust domain the [`TRUST_DOMAIN_ANNOTATION`] names, if any (validation checks it).
    pub fn trust_domain(&self) -> Option<&str> {
        self.annotations
            .get(TRUST_DOMAIN_ANNOTATION)
            .map(String::as_str)
    }

    /// True when the dry-run annotation is set to a true value.
    pub fn is_dry_run(&self) -> bool {
        self.annotations
            .get(DRY_RUN_ANNOTATION)
            .and_then(|v| parse_go_bool(v))
            == Some(true)
    }
}

/// Go's `strconv.ParseBool`, which Istio uses for the dry-run annotation.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The resource kinds meshd reads from its configuration directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
}

impl Kind {
    /// All kinds, for messages listing what is accepted.
    pub const ALL: [Kind; 4] = [
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::WorkloadEntry,
        Kind::ServiceEntry,
    ];

    /// Parses a `kind:` value (case-sensitive, as Kubernetes).
    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The `kind:` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::ServiceEntry => "ServiceEntry",
        }
    }

    /// The API group the kind belongs to.
    pub fn group(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io",
            Kind::WorkloadEntry | Kind::ServiceEntry => "networking.istio.io",
        }
    }

    /// The API versions of the group that are accepted for this kind.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => &["v1", "v1beta1"],
            Kind::WorkloadEntry | Kind::ServiceEntry => &["v1", "v1beta1", "v1alpha3"],
        }
    }

    /// True when `api_version` (`group/version`) is one this kind is served under.
    pub fn accepts_api_version(self, api_version: &str) -> bool {
        match api_version.split_once('/') {
            Some((group, version)) => group == self.group() && self.versions().contains(&version),
            None => false,
        }
    }

    /// The accepted `apiVersion` values, for error messages.
    pub fn api_versions(self) -> Vec<String> {
        self.versions()
            .iter()
            .map(|v| format!("{}/{v}", self.group()))
            .collect()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of a resource in a snapshot: no two resources may share it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace (defaulted).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ResourceKey {
    /// The key of a resource of `kind` with `meta`.
    pub fn new(kind: Kind, meta: &ObjectMeta) -> Self {
        ResourceKey {
            kind,
            namespace: meta.namespace().to_string(),
            name: meta.name().to_string(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// `selector` / `workloadSelector` of Istio's `type.v1beta1.WorkloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry (all of them, with equal values) to be selected.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True when every label of the selector is present with an equal value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}
