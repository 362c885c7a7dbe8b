//! `istio.security.Authorization` into the model. The shape is kept as istiod sent it (groups →
//! rules → matches, empty matches included); what an empty match means is the engine's
//! business (meshd-rbac), because it depends on the action.

use ipnet::IpNet;

use crate::convert::{exact, known, net, port, required};
use crate::error::{DecodeError, Problem};
use crate::model::{
    Action, Authorization, Group, Match, Rule, Scope, ServiceAccount, StringPattern,
};
use crate::proto::security as pb;

/// An Authorization, decoded and validated.
pub fn authorization(a: pb::Authorization) -> Result<Authorization, DecodeError> {
    required(&a.name, "name")?;
    required(&a.namespace, "namespace")?;
    let scope = match known::<pb::Scope>(a.scope, "scope")? {
        pb::Scope::Global => Scope::Global,
        pb::Scope::Namespace => Scope::Namespace,
        pb::Scope::WorkloadSelector => Scope::WorkloadSelector,
    };
    let action = match known::<pb::Action>(a.action, "action")? {
        pb::Action::Allow => Action::Allow,
        pb::Action::Deny => Action::Deny,
    };
    let groups = exact(a.groups.iter().enumerate().map(|(g, group)| {
        let rules = exact(group.rules.iter().enumerate().map(|(r, rule)| {
            let matches =
                exact(rule.matches.iter().enumerate().map(|(m, one)| {
                    matcher(one, &format!("groups[{g}].rules[{r}].matches[{m}]"))
                }))?;
            Ok(Rule { matches })
        }))?;
        Ok(Group { rules })
    }))?;
    Ok(Authorization {
        name: a.name,
        namespace: a.namespace,
        scope,
        action,
        dry_run: a.dry_run,
        groups,
        extensions: !a.extensions.is_empty(),
    })
}

fn matcher(m: &pb::Match, at: &str) -> Result<Match, DecodeError> {
    Ok(Match {
        namespaces: strings(&m.namespaces, at, "namespaces")?,
        not_namespaces: strings(&m.not_namespaces, at, "not_namespaces")?,
        service_accounts: accounts(&m.service_accounts, at, "service_accounts")?,
        not_service_accounts: accounts(&m.not_service_accounts, at, "not_service_accounts")?,
        principals: strings(&m.principals, at, "principals")?,
        not_principals: strings(&m.not_principals, at, "not_principals")?,
        source_ips: nets(&m.source_ips, at, "source_ips")?,
        not_source_ips: nets(&m.not_source_ips, at, "not_source_ips")?,
        destination_ips: nets(&m.destination_ips, at, "destination_ips")?,
        not_destination_ips: nets(&m.not_destination_ips, at, "not_destination_ips")?,
        destination_ports: ports(&m.destination_ports, at, "destination_ports")?,
        not_destination_ports: ports(&m.not_destination_ports, at, "not_destination_ports")?,
        extensions: !m.extensions.is_empty(),
    })
}

fn strings(
    values: &[pb::StringMatch],
    at: &str,
    field: &str,
) -> Result<Vec<StringPattern>, DecodeError> {
    exact(values.iter().enumerate().map(|(i, v)| match &v.match_type {
        Some(pb::string_match::MatchType::Exact(s)) => Ok(StringPattern::Exact(s.clone())),
        Some(pb::string_match::MatchType::Prefix(s)) => Ok(StringPattern::Prefix(s.clone())),
        Some(pb::string_match::MatchType::Suffix(s)) => Ok(StringPattern::Suffix(s.clone())),
        Some(pb::string_match::MatchType::Presence(())) => Ok(StringPattern::Presence),
        None => Err(DecodeError::field(
            format!("{at}.{field}[{i}]"),
            Problem::EmptyOneof,
        )),
    }))
}

fn accounts(
    values: &[pb::ServiceAccountMatch],
    at: &str,
    field: &str,
) -> Result<Vec<ServiceAccount>, DecodeError> {
    exact(values.iter().enumerate().map(|(i, v)| {
        required(&v.namespace, &format!("{at}.{field}[{i}].namespace"))?;
        required(
            &v.service_account,
            &format!("{at}.{field}[{i}].serviceAccount"),
        )?;
        Ok(ServiceAccount {
            namespace: v.namespace.clone(),
            name: v.service_account.clone(),
        })
    }))
}

/// Address blocks: `length` is always sent by istiod (32 or 128 for a single address; 0 is a
/// real `/0`, as ztunnel reads it).
fn nets(values: &[pb::Address], at: &str, field: &str) -> Result<Vec<IpNet>, DecodeError> {
    exact(
        values
            .iter()
            .enumerate()
            .map(|(i, a)| net(&a.address, Some(a.length), &|| format!("{at}.{field}[{i}]"))),
    )
}

fn ports(values: &[u32], at: &str, field: &str) -> Result<Vec<u16>, DecodeError> {
    exact(
        values
            .iter()
            .enumerate()
            .map(|(i, p)| port(*p, || format!("{at}.{field}[{i}]"))),
    )
}
