//! From AuthorizationPolicy rules to matchers: istiod's conversion, with meshd's fail-closed
//! choices for L7 attributes (decisions M1, M2, M6 of lib.rs).

use std::net::IpAddr;

use ipnet::IpNet;
use meshd_policy::authz::{Condition, Operation, Rule, Source};
use meshd_policy::values::{
    StringPattern, WhenKey, parse_ip_block, parse_port, split_service_account,
};
use meshd_policy::{Action, AuthorizationPolicy};

use crate::connection::Connection;

/// A positive list: `None` when the field is unset (no restriction). `Some(values)` holds when
/// any value hits, so `Some(empty)` (an empty list, or one whose every value failed to parse)
/// matches nothing: in an ALLOW rule an emptied list never widens the rule. In a DENY rule the
/// list is dropped instead ([`FailClosed::Everything`]), so it never narrows the denial.
pub(crate) type Positive<T> = Option<Vec<T>>;

/// What a part of a rule that validation would have rejected compiles to (an empty list, a
/// list whose every value is malformed, a source or operation that restricts nothing): the
/// reading that can only refuse more. Validation rejects these shapes; this is the defence in
/// depth SECURITY.md promises if it were bypassed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailClosed {
    /// ALLOW and AUDIT rules: the part matches nothing, so the rule allows nothing.
    Nothing,
    /// DENY and CUSTOM rules: an emptied list is no restriction, and a part left with none
    /// matches every connection, so the rule denies on what remains (as an L7 part does, M1).
    Everything,
}

impl FailClosed {
    fn of(action: Action) -> FailClosed {
        match action {
            Action::Allow | Action::Audit => FailClosed::Nothing,
            // CUSTOM denies what it matches: meshd has no external authorizer at L4.
            Action::Deny | Action::Custom => FailClosed::Everything,
        }
    }
}

/// One `from` source, `to` operation or `when` condition, compiled: every set field must hold.
/// Negative lists exclude what they hit (an empty one excludes nothing).
///
/// A matcher with no restriction left matches every connection. meshd builds one only in a
/// DENY-like rule: for an L7-only part (M1) or a part left without restriction by empty or
/// malformed lists ([`FailClosed::Everything`]); in an ALLOW rule such a part compiles to
/// [`Matcher::nothing`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Matcher {
    pub(crate) principals: Positive<StringPattern>,
    pub(crate) not_principals: Vec<StringPattern>,
    pub(crate) namespaces: Positive<StringPattern>,
    pub(crate) not_namespaces: Vec<StringPattern>,
    pub(crate) service_accounts: Positive<(String, String)>,
    pub(crate) not_service_accounts: Vec<(String, String)>,
    pub(crate) trust_domains: Positive<StringPattern>,
    pub(crate) not_trust_domains: Vec<StringPattern>,
    pub(crate) source_ips: Positive<IpNet>,
    pub(crate) not_source_ips: Vec<IpNet>,
    pub(crate) destination_ips: Positive<IpNet>,
    pub(crate) not_destination_ips: Vec<IpNet>,
    pub(crate) ports: Positive<u16>,
    pub(crate) not_ports: Vec<u16>,
}

/// A positive list holds when unset or when any value hits; a negative one when no value hits.
fn check<T>(positive: &Positive<T>, negative: &[T], hit: impl Fn(&T) -> bool) -> bool {
    positive.as_ref().is_none_or(|p| p.iter().any(&hit)) && !negative.iter().any(hit)
}

fn contains(nets: &IpNet, ip: &IpAddr) -> bool {
    nets.contains(ip)
}

impl Matcher {
    /// Matches every connection: only for the L7-only part of a DENY rule (M1).
    pub(crate) fn everything() -> Self {
        Matcher::default()
    }

    /// Matches no connection. Spelt as "no destination port", so the candidate index, which
    /// reads required ports, never even offers a rule that needs it.
    pub(crate) fn nothing() -> Self {
        Matcher {
            ports: Some(Vec::new()),
            ..Matcher::default()
        }
    }

    /// True when no field restricts anything (so it would match every connection).
    fn is_unrestricted(&self) -> bool {
        self.principals.is_none()
            && self.namespaces.is_none()
            && self.service_accounts.is_none()
            && self.trust_domains.is_none()
            && self.source_ips.is_none()
            && self.destination_ips.is_none()
            && self.ports.is_none()
            && self.not_principals.is_empty()
            && self.not_namespaces.is_empty()
            && self.not_service_accounts.is_empty()
            && self.not_trust_domains.is_empty()
            && self.not_source_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.not_ports.is_empty()
    }

    /// The matcher as `mode` reads what validation would have rejected: in a DENY-like rule
    /// emptied positive lists are dropped, and a matcher that then restricts nothing (an L7
    /// part, only kept in DENY-like rules, or empty lists) is [`Matcher::everything`]; in an
    /// ALLOW rule it is [`Matcher::nothing`].
    fn or_fail_closed(self, mode: FailClosed) -> Self {
        let matcher = match mode {
            FailClosed::Nothing => self,
            FailClosed::Everything => self.without_empty_lists(),
        };
        match (matcher.is_unrestricted(), mode) {
            (false, _) => matcher,
            (true, FailClosed::Everything) => Matcher::everything(),
            (true, FailClosed::Nothing) => Matcher::nothing(),
        }
    }

    /// Every emptied positive list read as unset: no restriction rather than "matches none".
    fn without_empty_lists(self) -> Self {
        fn unset_if_empty<T>(list: Positive<T>) -> Positive<T> {
            list.filter(|values| !values.is_empty())
        }
        Matcher {
            principals: unset_if_empty(self.principals),
            namespaces: unset_if_empty(self.namespaces),
            service_accounts: unset_if_empty(self.service_accounts),
            trust_domains: unset_if_empty(self.trust_domains),
            source_ips: unset_if_empty(self.source_ips),
            destination_ips: unset_if_empty(self.destination_ips),
            ports: unset_if_empty(self.ports),
            ..self
        }
    }

    pub(crate) fn matches(&self, conn: &Connection) -> bool {
        let principal = conn.principal();
        let peer = conn.peer.as_ref();
        let namespace = peer.map_or("", |p| p.namespace());
        let trust_domain = peer.map_or("", |p| p.trust_domain());
        let source_ip = conn.source_ip.to_canonical();
        let destination_ip = conn.destination.ip.to_canonical();
        check(&self.ports, &self.not_ports, |p| {
            *p == conn.destination.port
        }) && check(&self.principals, &self.not_principals, |p| {
            p.matches(principal)
        }) && check(&self.namespaces, &self.not_namespaces, |p| {
            p.matches(namespace)
        }) && check(
            &self.service_accounts,
            &self.not_service_accounts,
            |(ns, sa)| peer.is_some_and(|p| p.namespace() == ns && p.service_account() == sa),
        ) && check(&self.trust_domains, &self.not_trust_domains, |p| {
            p.matches(trust_domain)
        }) && check(&self.source_ips, &self.not_source_ips, |n| {
            contains(n, &source_ip)
        }) && check(&self.destination_ips, &self.not_destination_ips, |n| {
            contains(n, &destination_ip)
        })
    }

    /// The destination ports this matcher can match, if it restricts them positively (none at
    /// all for an empty list: it matches nothing).
    fn required_ports(&self) -> Option<&[u16]> {
        self.ports.as_deref()
    }

    /// The peer namespaces this matcher can match, if exact principals, exact namespaces or
    /// service accounts pin them (a plaintext peer has none, so it matches none of these; an
    /// empty list pins none at all).
    fn required_namespaces(&self) -> Option<Vec<&str>> {
        fn exact(patterns: &[StringPattern]) -> Option<Vec<&str>> {
            patterns
                .iter()
                .map(|p| match p {
                    StringPattern::Exact(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect()
        }
        if let Some(principals) = self.principals.as_deref().and_then(exact) {
            return principals.iter().map(|p| principal_namespace(p)).collect();
        }
        if let Some(namespaces) = self.namespaces.as_deref().and_then(exact) {
            return Some(namespaces);
        }
        if let Some(accounts) = &self.service_accounts {
            return Some(accounts.iter().map(|(ns, _)| ns.as_str()).collect());
        }
        None
    }
}

/// The namespace of an exact principal `<td>/ns/<ns>/sa/<sa>`; other shapes match no peer, and
/// the empty namespace (which no mTLS peer has) keeps them out of every real bucket.
fn principal_namespace(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(_), Some("ns"), Some(ns), Some("sa"), Some(_), None) => Some(ns),
        _ => Some(""),
    }
}

/// A rule: every clause must match. No clause at all matches everything (`rules: [{}]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CompiledRule {
    /// Each clause matches when any of its matchers does.
    pub(crate) clauses: Vec<Vec<Matcher>>,
}

impl CompiledRule {
    pub(crate) fn matches(&self, conn: &Connection) -> bool {
        self.clauses
            .iter()
            .all(|clause| clause.iter().any(|m| m.matches(conn)))
    }

    /// The ports the rule can match, when some clause restricts them in every matcher.
    pub(crate) fn required_ports(&self) -> Option<Vec<u16>> {
        self.clauses.iter().find_map(|clause| {
            let mut ports = Vec::new();
            for matcher in clause {
                ports.extend_from_slice(matcher.required_ports()?);
            }
            Some(ports)
        })
    }

    /// The peer namespaces the rule can match, when some clause pins them in every matcher.
    pub(crate) fn required_namespaces(&self) -> Option<Vec<String>> {
        self.clauses.iter().find_map(|clause| {
            let mut namespaces = Vec::new();
            for matcher in clause {
                namespaces.extend(
                    matcher
                        .required_namespaces()?
                        .into_iter()
                        .map(str::to_string),
                );
            }
            Some(namespaces)
        })
    }
}

/// Compiles a policy's rules. ALLOW (and AUDIT) rules that use L7 attributes are dropped, as
/// ztunnel drops them; DENY and CUSTOM rules keep their L4 parts and their L7-only parts match
/// everything (meshd's fail-closed choice, where ztunnel fails open).
pub(crate) fn compile_rules(policy: &AuthorizationPolicy) -> Vec<CompiledRule> {
    let action = policy.spec.action();
    let namespace = policy.metadata.namespace();
    let drop_l7_rules = matches!(action, Action::Allow | Action::Audit);
    let mode = FailClosed::of(action);
    policy
        .spec
        .rules
        .iter()
        .flatten()
        .filter(|rule| !drop_l7_rules || rule.l7_attributes().is_empty())
        .map(|rule| compile_rule(rule, namespace, mode))
        .collect()
}

fn compile_rule(rule: &Rule, namespace: &str, mode: FailClosed) -> CompiledRule {
    let mut clauses = Vec::new();
    if let Some(from) = &rule.from {
        clauses.push(
            from.iter()
                .filter_map(|f| f.source.as_ref())
                .map(|s| source_matcher(s, namespace, mode))
                .collect(),
        );
    }
    if let Some(to) = &rule.to {
        clauses.push(
            to.iter()
                .filter_map(|t| t.operation.as_ref())
                .map(|o| operation_matcher(o, mode))
                .collect(),
        );
    }
    for condition in rule.when.iter().flatten() {
        clauses.push(vec![condition_matcher(condition, mode)]);
    }
    if mode == FailClosed::Everything {
        // `from: []` (or only entries without a source) would make the clause match nothing:
        // in a DENY-like rule it restricts nothing instead.
        clauses.retain(|clause: &Vec<Matcher>| !clause.is_empty());
    }
    CompiledRule { clauses }
}

/// Values that do not parse were rejected by validation; they are skipped here, and a list left
/// empty by that matches nothing (see [`Positive`]).
fn patterns(values: &Option<Vec<String>>) -> Option<Vec<StringPattern>> {
    values
        .as_ref()
        .map(|v| v.iter().map(|v| StringPattern::parse(v)).collect())
}

fn nets(values: &Option<Vec<String>>) -> Option<Vec<IpNet>> {
    values
        .as_ref()
        .map(|v| v.iter().filter_map(|v| parse_ip_block(v).ok()).collect())
}

fn ports(values: &Option<Vec<String>>) -> Option<Vec<u16>> {
    values
        .as_ref()
        .map(|v| v.iter().filter_map(|v| parse_port(v).ok()).collect())
}

fn service_accounts(
    values: &Option<Vec<String>>,
    namespace: &str,
) -> Option<Vec<(String, String)>> {
    values.as_ref().map(|v| {
        v.iter()
            .map(|v| {
                let (ns, sa) = split_service_account(v, namespace);
                (ns.to_string(), sa.to_string())
            })
            .collect()
    })
}

/// A negative list: unset and empty exclude nothing alike.
fn negative<T>(values: Option<Vec<T>>) -> Vec<T> {
    values.unwrap_or_default()
}

fn source_matcher(source: &Source, namespace: &str, mode: FailClosed) -> Matcher {
    Matcher {
        principals: patterns(&source.principals),
        not_principals: negative(patterns(&source.not_principals)),
        namespaces: patterns(&source.namespaces),
        not_namespaces: negative(patterns(&source.not_namespaces)),
        service_accounts: service_accounts(&source.service_accounts, namespace),
        not_service_accounts: negative(service_accounts(&source.not_service_accounts, namespace)),
        trust_domains: patterns(&source.trust_domains),
        not_trust_domains: negative(patterns(&source.not_trust_domains)),
        source_ips: nets(&source.ip_blocks),
        not_source_ips: negative(nets(&source.not_ip_blocks)),
        ..Matcher::default()
    }
    .or_fail_closed(mode)
}

fn operation_matcher(operation: &Operation, mode: FailClosed) -> Matcher {
    Matcher {
        ports: ports(&operation.ports),
        not_ports: negative(ports(&operation.not_ports)),
        ..Matcher::default()
    }
    .or_fail_closed(mode)
}

fn condition_matcher(condition: &Condition, mode: FailClosed) -> Matcher {
    let key = WhenKey::parse(condition.key.as_deref().unwrap_or_default());
    let (values, not_values) = (&condition.values, &condition.not_values);
    let matcher = match key {
        WhenKey::SourceIp => Matcher {
            source_ips: nets(values),
            not_source_ips: negative(nets(not_values)),
            ..Matcher::default()
        },
        WhenKey::SourceNamespace => Matcher {
            namespaces: patterns(values),
            not_namespaces: negative(patterns(not_values)),
            ..Matcher::default()
        },
        WhenKey::SourcePrincipal => Matcher {
            principals: patterns(values),
            not_principals: negative(patterns(not_values)),
            ..Matcher::default()
        },
        WhenKey::DestinationIp => Matcher {
            destination_ips: nets(values),
            not_destination_ips: negative(nets(not_values)),
            ..Matcher::default()
        },
        WhenKey::DestinationPort => Matcher {
            ports: ports(values),
            not_ports: negative(ports(not_values)),
            ..Matcher::default()
        },
        // Reached only in DENY/CUSTOM/… rules: an L7 condition matches everything (M1).
        WhenKey::Layer7(_) => return Matcher::everything(),
    };
    matcher.or_fail_closed(mode)
}
