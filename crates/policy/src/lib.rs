//! Istio's security and networking resources, typed, and their validation.
//!
//! This crate is the vocabulary of meshd's configuration: the `security.istio.io`
//! AuthorizationPolicy and PeerAuthentication and the `networking.istio.io` WorkloadEntry and
//! ServiceEntry that users write exactly as they would apply them to a cluster. Every struct
//! rejects unknown fields, so a typo in a security policy can never silently widen or narrow it.
//!
//! It does **not** read files (that is `meshd-manifests`, which also turns field paths into
//! file:line:column positions), and it does **not** decide connections (that is `meshd-rbac`,
//! which compiles these resources). Values that both validation and the engine must read the same
//! way (IP blocks, ports, wildcard strings, `when` keys) are parsed in [`values`].
//!
//! # Validation rules
//!
//! Errors (everything Istio's CRD schema and admission webhook reject):
//! - `metadata.name` missing or not a DNS-1123 subdomain; `metadata.namespace` not a DNS-1123
//!   label; label keys empty or with `*`, label values with `*` or over 63 characters.
//! - AuthorizationPolicy: more than one of `selector`, `targetRef`, `targetRefs`; a target
//!   reference without `name`, with a `namespace`, or of an unsupported group/kind; more than 16
//!   `targetRefs`; `DENY` or `CUSTOM` without rules; `CUSTOM` without `provider.name`; `provider`
//!   with another action; `CUSTOM` with identity-based source fields or `when` keys; more than 512
//!   rules, sources or operations; `from: []`, `to: []`; a `from` entry without `source`, a `to`
//!   entry without `operation`; a source or operation with no field set (an empty list counts as
//!   unset, as Istio's `len(field) == 0`); `serviceAccounts` with
//!   `principals`/`namespaces` (or their negations); empty values; malformed IPs and CIDRs; ports
//!   that are not decimal 0..65535; bad service accounts (`ns/sa` or `sa`, no `*`, ≤ 16 values);
//!   bad trust domains (one `*` at either end only, no `/`); bad path templates; `when` without
//!   `key` or without non-empty `values`/`notValues`; unknown `when` keys, `destination.namespace`,
//!   `destination.labels[…]`, `destination.name`, `destination.user`; malformed `name[key]` keys;
//!   value checks per key (IPs for `source.ip`/`remote.ip`/`destination.ip`, ports for
//!   `destination.port`, …); a dry-run annotation that is not a boolean or sits on an AUDIT or
//!   CUSTOM policy.
//! - Any other kind: the dry-run annotation (Istio's "unsupported annotation").
//! - `security.meshd.io/trust-domain` (meshd's): a valid SPIFFE trust domain, on a
//!   WorkloadEntry or ServiceEntry only.
//! - PeerAuthentication: `portLevelMtls` without a selector with labels; empty `portLevelMtls`;
//!   port keys that are not decimal 1..65535 (integer keys such as `8080:`, as Istio's examples
//!   write them, and quoted ones are both read) or that name one port twice (`8080`, `"08080"`);
//!   unknown modes.
//! - WorkloadEntry: `address` missing or not an IP address (meshd resolves no names); ports
//!   outside 1..65535; bad labels or service account.
//! - ServiceEntry: no hosts, bad host names, bad addresses, no ports, duplicate port numbers or
//!   names, ports outside 1..65535, unknown protocol/location/resolution, both `endpoints` and
//!   `workloadSelector`.
//!
//! Errors that are meshd's own (Istio accepts these; each could silently widen what is allowed):
//! - an empty list where values are expected (`principals: []`, `notPorts: []`,
//!   `values: []`, …) that leaves its source, operation or condition with nothing set: Istio
//!   reads it as unset, and a list emptied by a template must not turn a rule into "match
//!   everything". Next to a field that is set, the empty list is a warning (Istio accepts it),
//!   saying how meshd reads it: unset in a DENY, matching nothing in an ALLOW;
//! - `when: []` (the rule would be `{}`: match everything);
//! - `targetRefs: []` (Istio reads it as unset, so the policy applies to its whole namespace).
//!
//! Warnings (accepted, but meshd enforces something other than what a reader may expect):
//! - a selector without labels (Istio warns; meshd applies the policy to the whole namespace);
//! - `targetRef(s)` policies (waypoint-only: loaded, not enforced);
//! - ALLOW rules with L7 attributes (the rule is ignored, the policy allows less);
//! - DENY/CUSTOM rules with L7 attributes (the L7 parts match everything: denies more);
//! - CUSTOM policies (no external authorizer at L4: matching connections are denied);
//! - dry-run policies (never enforced);
//! - PeerAuthentication DISABLE (acts as PERMISSIVE) and root-namespace PeerAuthentication with
//!   a selector (ignored, as in Istio);
//! - a ServiceEntry `workloadSelector` without labels (every WorkloadEntry of its namespace
//!   becomes an endpoint).
//!
//! Checks that need every resource (duplicates, conflicting PeerAuthentications, two workloads
//! at one address and port, a ServiceEntry shadowing another or a workload) are `meshd-manifests`'s.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod authz;
mod diag;
pub mod meta;
pub mod networking;
mod path;
pub mod peer;
mod resource;
mod validate;
pub mod values;

pub use authz::{Action, AuthorizationPolicy};
pub use diag::{Diagnostic, Severity};
pub use meta::{Kind, ObjectMeta, ResourceKey, WorkloadSelector};
pub use networking::{ServiceEntry, WorkloadEntry};
pub use path::{FieldPath, Segment};
pub use peer::{MtlsMode, PeerAuthentication, PeerAuthnLevel};
pub use resource::Resource;
pub use validate::{ValidationContext, validate};
