//! Parsers for the values inside policies (IP blocks, ports, string patterns, `when` keys), shared
//! by validation and by the authorization engine so both read a value the same way.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses an `ipBlocks` / `source.ip` value: a bare address (a host route) or a CIDR prefix.
/// Host bits are allowed, as Go's `netip.ParsePrefix` allows them; containment ignores them.
pub fn parse_ip_block(value: &str) -> Result<IpNet, String> {
    if value.contains('/') {
        value
            .parse::<IpNet>()
            .map_err(|_| format!("bad CIDR range {value:?}"))
    } else {
        value
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("bad IP address {value:?}"))
    }
}

/// Parses a `ports` / `destination.port` value: a decimal number 0..=65535 (0 is accepted, as
/// Istio's validator accepts it, and matches nothing in practice).
pub fn parse_port(value: &str) -> Result<u16, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "bad port {value:?}: want a decimal number 0..65535"
        ));
    }
    value
        .parse::<u16>()
        .map_err(|_| format!("bad port {value:?}: out of range 0..65535"))
}

/// A string value with Istio's wildcard forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringPattern {
    /// `abc`: equal, case-sensitive.
    Exact(String),
    /// `abc*`: starts with `abc`.
    Prefix(String),
    /// `*abc`: ends with `abc`.
    Suffix(String),
    /// `*`: any non-empty value.
    Presence,
}

impl StringPattern {
    /// Reads a value: `*` alone is presence, a leading `*` a suffix match, else a trailing `*` a
    /// prefix match, else exact (a `*` in the middle is a literal, as in ztunnel).
    pub fn parse(value: &str) -> Self {
        if value == "*" {
            StringPattern::Presence
        } else if let Some(rest) = value.strip_prefix('*') {
            StringPattern::Suffix(rest.to_string())
        } else if let Some(rest) = value.strip_suffix('*') {
            StringPattern::Prefix(rest.to_string())
        } else {
            StringPattern::Exact(value.to_string())
        }
    }

    /// True when `candidate` matches; the empty string (a plaintext peer's principal) matches
    /// only an exact empty pattern, which validation never lets through.
    pub fn matches(&self, candidate: &str) -> bool {
        match self {
            StringPattern::Exact(s) => candidate == s,
            StringPattern::Prefix(s) => !candidate.is_empty() && candidate.starts_with(s.as_str()),
            StringPattern::Suffix(s) => !candidate.is_empty() && candidate.ends_with(s.as_str()),
            StringPattern::Presence => !candidate.is_empty(),
        }
    }
}

/// A `when` condition key, classified for meshd.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WhenKey {
    /// `source.ip` (L4).
    SourceIp,
    /// `source.namespace` (L4).
    SourceNamespace,
    /// `source.principal` (L4).
    SourcePrincipal,
    /// `destination.ip` (L4).
    DestinationIp,
    /// `destination.port` (L4).
    DestinationPort,
    /// A valid key that meshd, like ztunnel, cannot evaluate at L4.
    Layer7(String),
}

impl WhenKey {
    /// Classifies a key; unknown keys are classified as L7 here and rejected by validation.
    pub fn parse(key: &str) -> Self {
        match key {
            "source.ip" => WhenKey::SourceIp,
            "source.namespace" => WhenKey::SourceNamespace,
            "source.principal" => WhenKey::SourcePrincipal,
            "destination.ip" => WhenKey::DestinationIp,
            "destination.port" => WhenKey::DestinationPort,
            other => WhenKey::Layer7(other.to_string()),
        }
    }

    /// True for the five keys meshd enforces.
    pub fn is_l4(&self) -> bool {
        !matches!(self, WhenKey::Layer7(_))
    }
}

/// Source fields meshd cannot evaluate at L4 (they need a waypoint).
pub const L7_SOURCE_FIELDS: [&str; 4] = [
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];

/// Operation fields meshd cannot evaluate at L4.
pub const L7_OPERATION_FIELDS: [&str; 6] = [
    "hosts",
    "notHosts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

/// Splits a `serviceAccounts` value (`ns/sa`, or `sa` meaning the policy's own namespace).
pub fn split_service_account<'a>(value: &'a str, policy_namespace: &'a str) -> (&'a str, &'a str) {
    match value.split_once('/') {
        Some((ns, sa)) => (ns, sa),
        None => (policy_namespace, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_blocks_accept_addresses_and_prefixes_with_host_bits() {
        assert_eq!(
            parse_ip_block("10.0.0.1"),
            Ok("10.0.0.1/32".parse().unwrap())
        );
        assert_eq!(parse_ip_block("::1"), Ok("::1/128".parse().unwrap()));
        let with_host_bits = parse_ip_block("10.0.0.1/24").unwrap();
        assert!(with_host_bits.contains(&"10.0.0.200".parse::<IpAddr>().unwrap()));
        assert!(parse_ip_block("10.0.0.0/33").is_err());
        assert!(parse_ip_block("10.0.0").is_err());
        assert!(parse_ip_block("example.com").is_err());
    }

    #[test]
    fn ports_are_decimal_and_in_range() {
        assert_eq!(parse_port("0"), Ok(0));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("65536").is_err());
        assert!(parse_port("-1").is_err());
        assert!(parse_port("+80").is_err());
        assert!(parse_port("http").is_err());
        assert!(parse_port("").is_err());
    }

    #[test]
    fn string_patterns_follow_ztunnel() {
        // The 11 cases of ztunnel's `string_match` test.
        let exact = StringPattern::parse("foo");
        assert!(exact.matches("foo") && !exact.matches("not") && !exact.matches(""));
        let prefix = StringPattern::parse("foo*");
        assert!(prefix.matches("foobar") && !prefix.matches("notfoo") && !prefix.matches(""));
        let suffix = StringPattern::parse("*foo");
        assert!(suffix.matches("barfoo") && !suffix.matches("foonot") && !suffix.matches(""));
        let presence = StringPattern::parse("*");
        assert!(presence.matches("foo") && !presence.matches(""));
        // A middle star is literal.
        assert!(StringPattern::parse("a/*/b").matches("a/*/b"));
        assert!(!StringPattern::parse("a/*/b").matches("a/x/b"));
        // `*abc*` is a suffix match on `abc*`.
        assert_eq!(
            StringPattern::parse("*abc*"),
            StringPattern::Suffix("abc*".into())
        );
    }
}
