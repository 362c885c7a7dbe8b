//! `security.istio.io` AuthorizationPolicy, field for field as Istio's API defines it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::meta::{ObjectMeta, WorkloadSelector};
use crate::values::{L7_OPERATION_FIELDS, L7_SOURCE_FIELDS, WhenKey};

/// An Istio AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// Always `AuthorizationPolicy`.
    pub kind: String,
    /// Name, namespace, annotations.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy itself; absent means `{}` (an ALLOW policy with no rules: allow nothing).
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
    /// Ignored (written by Kubernetes controllers).
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Narrows the policy to workloads with these labels.
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single target reference (waypoint-only; not enforced by meshd).
    pub target_ref: Option<PolicyTargetReference>,
    /// Target references (waypoint-only; not enforced by meshd).
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// The rules; absent and empty differ for validation only.
    pub rules: Option<Vec<Rule>>,
    /// ALLOW when absent.
    pub action: Option<Action>,
    /// The external authorizer of a CUSTOM policy.
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicySpec {
    /// The action, defaulted to ALLOW.
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Allow)
    }

    /// True when the policy targets a gateway/service via `targetRef(s)` (waypoint-only).
    /// An empty `targetRefs` is unset, as Istio reads it: such a policy applies by namespace and
    /// selector, so an unvalidated one is enforced rather than skipped.
    pub fn has_target_refs(&self) -> bool {
        self.target_ref.is_some() || self.target_refs.as_ref().is_some_and(|t| !t.is_empty())
    }
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow matching connections; once any ALLOW applies, unmatched ones are denied.
    Allow,
    /// Deny matching connections.
    Deny,
    /// Record matching connections; never changes a decision.
    Audit,
    /// Delegate to an external authorizer (meshd has none at L4: matching connections are denied).
    Custom,
}

impl Action {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// `spec.provider` of a CUSTOM policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The name of an extension provider in the mesh config.
    pub name: Option<String>,
}

/// `targetRef` / `targetRefs[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (`""` for core).
    pub group: Option<String>,
    /// Kind of the target.
    pub kind: Option<String>,
    /// Name of the target.
    pub name: Option<String>,
    /// Must be empty: cross-namespace references are not supported.
    pub namespace: Option<String>,
}

/// One entry of `spec.rules`: `from` AND `to` AND every `when`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources (OR).
    pub from: Option<Vec<RuleFrom>>,
    /// Operations (OR).
    pub to: Option<Vec<RuleTo>>,
    /// Conditions (AND).
    pub when: Option<Vec<Condition>>,
}

impl Rule {
    /// The attributes of this rule meshd cannot evaluate at L4, by name (sorted, once each).
    /// A condition without a usable key counts as L7, so an unvalidated rule fails safe.
    pub fn l7_attributes(&self) -> Vec<String> {
        let mut found = Vec::new();
        for source in self.from.iter().flatten().filter_map(|f| f.source.as_ref()) {
            for (name, values) in source.fields() {
                if values.is_some() && L7_SOURCE_FIELDS.contains(&name) {
                    found.push(name.to_string());
                }
            }
        }
        for operation in self
            .to
            .iter()
            .flatten()
            .filter_map(|t| t.operation.as_ref())
        {
            for (name, values) in operation.fields() {
                if values.is_some() && L7_OPERATION_FIELDS.contains(&name) {
                    found.push(name.to_string());
                }
            }
        }
        for condition in self.when.iter().flatten() {
            let key = condition.key.as_deref().unwrap_or_default();
            if !WhenKey::parse(key).is_l4() {
                let key = if key.is_empty() { "<no key>" } else { key };
                found.push(format!("when {key}"));
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

/// One entry of `rules[].from`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source; required.
    pub source: Option<Source>,
}

/// One entry of `rules[].to`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation; required.
    pub operation: Option<Operation>,
}

/// `rules[].from[].source`: every set field must match (AND), values within a field OR.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)] // the fields are Istio's, documented in its API reference
pub struct Source {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub service_accounts: Option<Vec<String>>,
    pub not_service_accounts: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
    pub trust_domains: Option<Vec<String>>,
    pub not_trust_domains: Option<Vec<String>>,
}

impl Source {
    /// Every field with its YAML name, in declaration order.
    pub fn fields(&self) -> [(&'static str, Option<&Vec<String>>); 14] {
        [
            ("principals", self.principals.as_ref()),
            ("notPrincipals", self.not_principals.as_ref()),
            ("requestPrincipals", self.request_principals.as_ref()),
            ("notRequestPrincipals", self.not_request_principals.as_ref()),
            ("namespaces", self.namespaces.as_ref()),
            ("notNamespaces", self.not_namespaces.as_ref()),
            ("serviceAccounts", self.service_accounts.as_ref()),
            ("notServiceAccounts", self.not_service_accounts.as_ref()),
            ("ipBlocks", self.ip_blocks.as_ref()),
            ("notIpBlocks", self.not_ip_blocks.as_ref()),
            ("remoteIpBlocks", self.remote_ip_blocks.as_ref()),
            ("notRemoteIpBlocks", self.not_remote_ip_blocks.as_ref()),
            ("trustDomains", self.trust_domains.as_ref()),
            ("notTrustDomains", self.not_trust_domains.as_ref()),
        ]
    }
}

/// `rules[].to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)] // the fields are Istio's, documented in its API reference
pub struct Operation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

impl Operation {
    /// Every field with its YAML name, in declaration order.
    pub fn fields(&self) -> [(&'static str, Option<&Vec<String>>); 8] {
        [
            ("hosts", self.hosts.as_ref()),
            ("notHosts", self.not_hosts.as_ref()),
            ("ports", self.ports.as_ref()),
            ("notPorts", self.not_ports.as_ref()),
            ("methods", self.methods.as_ref()),
            ("notMethods", self.not_methods.as_ref()),
            ("paths", self.paths.as_ref()),
            ("notPaths", self.not_paths.as_ref()),
        ]
    }
}

/// `rules[].when[]`: an attribute condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute, e.g. `source.ip`.
    pub key: Option<String>,
    /// Matches when the attribute equals any of these.
    pub values: Option<Vec<String>>,
    /// Matches when the attribute equals none of these.
    pub not_values: Option<Vec<String>>,
}

/// Labels of a workload, as selectors see them.
pub type Labels = BTreeMap<String, String>;
