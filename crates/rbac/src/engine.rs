//! The compiled, indexed policy set and the decision procedure.
//!
//! Policies are indexed by scope (mesh-wide, namespace, selector label) and, within a scope, by
//! action and by the destination ports their rules can match. A decision only looks at the
//! destination's namespace, the mesh-wide policies and the selector buckets of the
//! destination's own labels, so its cost does not grow with policies elsewhere.

use std::collections::HashMap as StdHashMap;

use meshd_policy::authz::Labels;
use meshd_policy::{Action, AuthorizationPolicy, PeerAuthentication};
use meshd_workloadapi::Sym;
use meshd_workloadapi::model::{self as istiod, Authorization};

use crate::PolicyKey;
use crate::istiod::compile_istiod_rules;

/// Index maps are keyed by configuration values and hashed on every decision: foldhash is several
/// times faster than SipHash on short keys, and its per-process seed keeps it unpredictable.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
use crate::compile::{CompiledRule, compile_rules};
use crate::connection::Connection;
use crate::decision::{Decision, Reason};
use crate::peer_authn::{EffectiveMode, PeerAuthnIndex};

#[derive(Debug, Clone)]
struct CompiledPolicy {
    key: PolicyKey,
    action: Action,
    /// Empty for namespace-wide and mesh-wide policies.
    selector: Labels,
    /// The scope of an istiod policy; `None` for a file's (scoped by namespace and selector).
    istiod_scope: Option<istiod::Scope>,
    rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    fn selects(&self, labels: &Labels) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// True when it applies to a workload (for views; decisions go through the index).
    fn applies_to(&self, root: &str, namespace: &str, labels: &Labels, bound: &[Sym]) -> bool {
        match self.istiod_scope {
            None => {
                (self.key.namespace == root || self.key.namespace == namespace)
                    && self.selects(labels)
            }
            Some(istiod::Scope::Global) => true,
            Some(istiod::Scope::Namespace) => self.key.namespace == namespace,
            Some(istiod::Scope::WorkloadSelector) => bound
                .iter()
                .any(|b| b.split_once('/') == Some((&self.key.namespace, &self.key.name))),
        }
    }

    fn matches(&self, conn: &Connection) -> bool {
        self.rules.iter().any(|rule| rule.matches(conn))
    }

    /// The ports any of its rules can match, if every rule restricts them.
    fn required_ports(&self) -> Option<Vec<u16>> {
        let mut ports = Vec::new();
        for rule in &self.rules {
            ports.extend(rule.required_ports()?);
        }
        ports.sort_unstable();
        ports.dedup();
        Some(ports)
    }

    /// The peer namespaces any of its rules can match, if every rule pins them.
    fn required_namespaces(&self) -> Option<Vec<String>> {
        let mut namespaces = Vec::new();
        for rule in &self.rules {
            namespaces.extend(rule.required_namespaces()?);
        }
        namespaces.sort_unstable();
        namespaces.dedup();
        Some(namespaces)
    }
}

/// Policy indices by what every one of their rules requires: a destination port and/or a peer
/// namespace. Each policy sits in exactly one list that can hold a given connection, so
/// candidates never repeat.
#[derive(Debug, Clone, Default)]
struct CandidateIndex {
    any: Vec<u32>,
    /// `None` until a policy is filed by port or peer namespace: most buckets hold a few
    /// policies (istiod's bound ones, one), and three empty maps are ~120 bytes each time.
    keyed: Option<Box<Keyed>>,
}

#[derive(Debug, Clone, Default)]
struct Keyed {
    by_port: HashMap<u16, Vec<u32>>,
    by_namespace: HashMap<String, Vec<u32>>,
    by_port_namespace: HashMap<u16, HashMap<String, Vec<u32>>>,
}

impl Keyed {
    /// Files a policy under every port and/or peer namespace it requires.
    fn file(&mut self, index: u32, ports: Option<Vec<u16>>, namespaces: Option<Vec<String>>) {
        match (ports, namespaces) {
            (Some(ports), Some(namespaces)) => {
                for port in ports {
                    let by_namespace = self.by_port_namespace.entry(port).or_default();
                    for namespace in &namespaces {
                        by_namespace
                            .entry(namespace.clone())
                            .or_default()
                            .push(index);
                    }
                }
            }
            (Some(ports), None) => {
                for port in ports {
                    self.by_port.entry(port).or_default().push(index);
                }
            }
            (None, Some(namespaces)) => {
                for namespace in namespaces {
                    self.by_namespace.entry(namespace).or_default().push(index);
                }
            }
            // Requires neither: the caller files it in `any`.
            (None, None) => {}
        }
    }
}

impl CandidateIndex {
    fn insert(&mut self, index: u32, policy: &CompiledPolicy, indexed: bool) {
        if policy.rules.is_empty() {
            return; // matches nothing: an allow-nothing ALLOW only counts as applying
        }
        if !indexed {
            self.any.push(index);
            return;
        }
        match (policy.required_ports(), policy.required_namespaces()) {
            (None, None) => self.any.push(index),
            (ports, namespaces) => {
                let keyed = self.keyed.get_or_insert_with(Box::default);
                keyed.file(index, ports, namespaces);
            }
        }
    }

    fn candidates<'a>(
        &'a self,
        port: u16,
        peer_namespace: Option<&str>,
    ) -> impl Iterator<Item = u32> + 'a {
        let keyed = self.keyed.as_deref();
        let by_port = keyed.and_then(|k| k.by_port.get(&port));
        let by_namespace = peer_namespace.and_then(|ns| keyed?.by_namespace.get(ns));
        let by_both = peer_namespace.and_then(|ns| keyed?.by_port_namespace.get(&port)?.get(ns));
        self.any
            .iter()
            .chain(by_port.into_iter().flatten())
            .chain(by_namespace.into_iter().flatten())
            .chain(by_both.into_iter().flatten())
            .copied()
    }
}

/// The policies of one scope, split by what they can do to a decision.
#[derive(Debug, Clone, Default)]
struct Bucket {
    /// DENY and CUSTOM.
    deny: CandidateIndex,
    /// ALLOW, for matching.
    allow: CandidateIndex,
    /// Every ALLOW, to know whether one applies at all (whatever the port).
    allow_all: Vec<u32>,
    /// AUDIT and dry-run policies: evaluated for reporting only.
    report: Vec<(u32, bool)>,
}

impl Bucket {
    /// Files the policy at `index` by what it can do to a decision.
    fn insert(&mut self, index: u32, policy: &CompiledPolicy, dry_run: bool, indexed: bool) {
        match (policy.action, dry_run) {
            (Action::Audit, _) | (_, true) => self.report.push((index, dry_run)),
            (Action::Deny | Action::Custom, false) => self.deny.insert(index, policy, indexed),
            (Action::Allow, false) => {
                self.allow.insert(index, policy, indexed);
                self.allow_all.push(index);
            }
        }
    }
}

/// Selector policies by their first label, so a workload only meets those that could select it.
#[derive(Debug, Clone, Default)]
struct SelectorIndex(HashMap<String, HashMap<String, Bucket>>);

impl SelectorIndex {
    fn bucket(&mut self, selector: &Labels) -> &mut Bucket {
        let (k, v) = selector
            .iter()
            .next()
            .map_or(("", ""), |(k, v)| (k.as_str(), v.as_str()));
        self.0
            .entry(k.to_string())
            .or_default()
            .entry(v.to_string())
            .or_default()
    }

    fn buckets<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a Bucket> + 'a {
        labels
            .iter()
            .filter_map(|(k, v)| self.0.get(k.as_str()).and_then(|m| m.get(v.as_str())))
    }
}

#[derive(Debug, Clone, Default)]
struct NamespaceIndex {
    wide: Bucket,
    selected: SelectorIndex,
}

/// A compiled snapshot of AuthorizationPolicies and PeerAuthentications.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    policies: Vec<CompiledPolicy>,
    global: Bucket,
    root_selected: SelectorIndex,
    namespaces: HashMap<String, NamespaceIndex>,
    /// istiod's WORKLOAD_SELECTOR policies by `<namespace>/<name>`, met only by destinations
    /// that list them.
    bound: HashMap<String, Bucket>,
    peer_authn: PeerAuthnIndex,
    skipped: Vec<PolicyKey>,
    root_namespace: String,
}

impl Engine {
    /// Compiles validated policies. `targetRef(s)` policies are kept aside as skipped
    /// (waypoint-only); dry-run policies are evaluated for reporting only.
    pub fn compile<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
        peer_authentications: impl IntoIterator<Item = &'a PeerAuthentication>,
        root_namespace: &str,
    ) -> Self {
        Self::compile_with(policies, peer_authentications, [], root_namespace, true)
    }

    /// Compiles the files' policies and istiod's together: one engine, one decision order, keys
    /// apart by source (see the crate documentation for how istiod's scopes bind).
    pub fn compile_all<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
        peer_authentications: impl IntoIterator<Item = &'a PeerAuthentication>,
        istiod: impl IntoIterator<Item = &'a Authorization>,
        root_namespace: &str,
    ) -> Self {
        Self::compile_with(policies, peer_authentications, istiod, root_namespace, true)
    }

    /// Like [`Engine::compile`] but every policy of a scope is a candidate for every
    /// connection: the oracle tests compare the index against.
    #[doc(hidden)]
    pub fn compile_unindexed<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
        peer_authentications: impl IntoIterator<Item = &'a PeerAuthentication>,
        root_namespace: &str,
    ) -> Self {
        Self::compile_with(policies, peer_authentications, [], root_namespace, false)
    }

    /// [`Engine::compile_all`] without the candidate index, as [`Engine::compile_unindexed`].
    #[doc(hidden)]
    pub fn compile_all_unindexed<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
        peer_authentications: impl IntoIterator<Item = &'a PeerAuthentication>,
        istiod: impl IntoIterator<Item = &'a Authorization>,
        root_namespace: &str,
    ) -> Self {
        Self::compile_with(
            policies,
            peer_authentications,
            istiod,
            root_namespace,
            false,
        )
    }

    fn compile_with<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
        peer_authentications: impl IntoIterator<Item = &'a PeerAuthentication>,
        istiod: impl IntoIterator<Item = &'a Authorization>,
        root_namespace: &str,
        indexed: bool,
    ) -> Self {
        let mut engine = Engine {
            peer_authn: PeerAuthnIndex::build(peer_authentications, root_namespace),
            root_namespace: root_namespace.to_string(),
            ..Engine::default()
        };
        let mut sorted: Vec<&AuthorizationPolicy> = policies.into_iter().collect();
        // Index order is key order, so reports do not depend on file order.
        sorted.sort_by(|a, b| {
            (a.metadata.namespace(), a.metadata.name())
                .cmp(&(b.metadata.namespace(), b.metadata.name()))
        });
        for policy in sorted {
            let key = PolicyKey::new(policy.metadata.namespace(), policy.metadata.name());
            if policy.spec.has_target_refs() {
                engine.skipped.push(key);
                continue;
            }
            let dry_run = policy.metadata.is_dry_run();
            let compiled = CompiledPolicy {
                key,
                action: policy.spec.action(),
                selector: policy
                    .spec
                    .selector
                    .as_ref()
                    .map(|s| s.match_labels.clone())
                    .unwrap_or_default(),
                istiod_scope: None,
                rules: compile_rules(policy),
            };
            let ns = policy.metadata.namespace();
            let bucket = match (ns == root_namespace, compiled.selector.is_empty()) {
                (true, true) => &mut engine.global,
                (true, false) => engine.root_selected.bucket(&compiled.selector),
                (false, true) => &mut engine.namespaces.entry(ns.to_string()).or_default().wide,
                (false, false) => engine
                    .namespaces
                    .entry(ns.to_string())
                    .or_default()
                    .selected
                    .bucket(&compiled.selector),
            };
            let index = u32::try_from(engine.policies.len()).unwrap_or(u32::MAX);
            bucket.insert(index, &compiled, dry_run, indexed);
            engine.policies.push(compiled);
        }
        engine.add_istiod(istiod, indexed);
        engine
    }

    /// Adds istiod's policies after the files', in key order.
    fn add_istiod<'a>(
        &mut self,
        istiod: impl IntoIterator<Item = &'a Authorization>,
        indexed: bool,
    ) {
        let mut sorted: Vec<&Authorization> = istiod.into_iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for policy in sorted {
            let compiled = CompiledPolicy {
                key: PolicyKey::istiod(&policy.namespace, &policy.name),
                action: match policy.action {
                    istiod::Action::Allow => Action::Allow,
                    istiod::Action::Deny => Action::Deny,
                },
                selector: Labels::new(),
                istiod_scope: Some(policy.scope),
                rules: compile_istiod_rules(policy),
            };
            let bucket = match policy.scope {
                istiod::Scope::Global => &mut self.global,
                istiod::Scope::Namespace => {
                    &mut self
                        .namespaces
                        .entry(policy.namespace.clone())
                        .or_default()
                        .wide
                }
                istiod::Scope::WorkloadSelector => self.bound.entry(policy.key()).or_default(),
            };
            let index = u32::try_from(self.policies.len()).unwrap_or(u32::MAX);
            // A bound policy's bucket holds that policy alone: an index in it buys nothing.
            let indexed = indexed && policy.scope != istiod::Scope::WorkloadSelector;
            bucket.insert(index, &compiled, policy.dry_run, indexed);
            self.policies.push(compiled);
        }
    }

    /// Policies loaded but not enforced because they use `targetRef(s)`.
    pub fn skipped(&self) -> &[PolicyKey] {
        &self.skipped
    }

    /// How many policies are enforced or reported.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// True when no policy is loaded.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The effective PeerAuthentication mode of a destination port.
    pub fn mtls_mode(&self, namespace: &str, labels: &Labels, port: u16) -> EffectiveMode {
        self.peer_authn.effective(namespace, labels, port)
    }

    /// The AuthorizationPolicies (enforced, AUDIT and dry-run) that apply to a workload, in
    /// key order: mesh-wide and namespace-wide ones, and those whose selector matches. For
    /// operators' views; decisions go through [`Engine::decide`].
    pub fn policies_for(&self, namespace: &str, labels: &Labels) -> Vec<(&PolicyKey, Action)> {
        self.policies_for_workload(namespace, labels, &[])
    }

    /// [`Engine::policies_for`] a workload istiod bound policies to (`bound`, its
    /// `authorization_policies`): files' policies first, then istiod's, each in key order.
    pub fn policies_for_workload(
        &self,
        namespace: &str,
        labels: &Labels,
        bound: &[Sym],
    ) -> Vec<(&PolicyKey, Action)> {
        self.policies
            .iter()
            .filter(|p| p.applies_to(&self.root_namespace, namespace, labels, bound))
            .map(|p| (&p.key, p.action))
            .collect()
    }

    /// The PeerAuthentication requiring mTLS (STRICT) on at least one port of a workload, if
    /// any: such a workload needs inbound capture for the requirement to hold.
    pub fn strict_anywhere(&self, namespace: &str, labels: &Labels) -> Option<PolicyKey> {
        self.peer_authn.strict_anywhere(namespace, labels)
    }

    /// Decides one connection: PeerAuthentication and DENY (and CUSTOM) first, then ALLOW.
    pub fn decide(&self, conn: &Connection) -> Decision {
        let dst = &conn.destination;
        let mut decision = Decision {
            reason: Reason::NoAllowPolicies,
            audited: Vec::new(),
            dry_run: Vec::new(),
        };
        if conn.peer.is_none() {
            let mode = self
                .peer_authn
                .effective(&dst.namespace, &dst.labels, dst.port);
            if let (true, Some(source)) = (mode.strict, mode.source) {
                decision.reason = Reason::PlaintextRefused {
                    peer_authentication: source,
                    port: dst.port,
                };
                return decision;
            }
        }
        let peer_namespace = conn.peer.as_ref().map(|p| p.namespace());
        let ns = self.namespaces.get(&dst.namespace);
        // (bucket, whether its policies need a selector check), in reporting order.
        let scopes = || {
            std::iter::once((&self.global, false))
                .chain(ns.map(|n| (&n.wide, false)))
                .chain(
                    ns.into_iter()
                        .flat_map(|n| n.selected.buckets(&dst.labels))
                        .map(|b| (b, true)),
                )
                .chain(self.root_selected.buckets(&dst.labels).map(|b| (b, true)))
                .chain(
                    dst.bound_policies
                        .iter()
                        .filter_map(|key| self.bound.get(key.as_str()))
                        .map(|b| (b, false)),
                )
        };
        let applies = |index: u32, check: bool| {
            let policy = &self.policies[index as usize];
            (!check || policy.selects(&dst.labels)).then_some(policy)
        };

        self.report(scopes(), conn, &mut decision);
        for (bucket, check) in scopes() {
            for index in bucket.deny.candidates(dst.port, peer_namespace) {
                if let Some(policy) = applies(index, check).filter(|p| p.matches(conn)) {
                    decision.reason = match policy.action {
                        Action::Custom => Reason::CustomDenied(policy.key.clone()),
                        _ => Reason::Denied(policy.key.clone()),
                    };
                    return decision;
                }
            }
        }
        let mut any_allow = false;
        for (bucket, check) in scopes() {
            for index in bucket.allow.candidates(dst.port, peer_namespace) {
                if let Some(policy) = applies(index, check) {
                    any_allow = true;
                    if policy.matches(conn) {
                        decision.reason = Reason::Allowed(policy.key.clone());
                        return decision;
                    }
                }
            }
            any_allow = any_allow
                || bucket
                    .allow_all
                    .iter()
                    .any(|i| applies(*i, check).is_some());
        }
        if any_allow {
            decision.reason = Reason::NotAllowed;
        }
        decision
    }

    fn report<'a>(
        &self,
        scopes: impl Iterator<Item = (&'a Bucket, bool)>,
        conn: &Connection,
        decision: &mut Decision,
    ) {
        for (bucket, check) in scopes {
            for (index, dry_run) in &bucket.report {
                let policy = &self.policies[*index as usize];
                if (check && !policy.selects(&conn.destination.labels)) || !policy.matches(conn) {
                    continue;
                }
                match (dry_run, policy.action) {
                    (false, _) => decision.audited.push(policy.key.clone()),
                    (true, action) => decision
                        .dry_run
                        .push((policy.key.clone(), action == Action::Allow)),
                }
            }
        }
    }
}
