//! SPIFFE IDs and trust domains, validated per the SPIFFE ID specification.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The scheme prefix every SPIFFE ID starts with.
pub const SPIFFE_PREFIX: &str = "spiffe://";

/// Longest SPIFFE ID accepted: the spec says implementations "MUST support SPIFFE URIs up to
/// 2048 bytes" and "SHOULD NOT generate" longer ones, so anything longer is refused on input too.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// A SPIFFE trust domain name (lower-case, validated).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(spiffe::TrustDomain);

impl TrustDomain {
    /// Parses a trust domain name such as `cluster.local` (no scheme, no path).
    pub fn new(name: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidTrustDomain {
            name: name.to_string(),
            reason,
        };
        // spiffe::TrustDomain also accepts a whole SPIFFE ID and keeps its authority; a config
        // field that names a trust domain should hold just the name, so refuse the URI form.
        if name.contains('/') || name.contains(':') {
            return Err(invalid(
                "expected a bare trust domain name such as cluster.local".into(),
            ));
        }
        spiffe::TrustDomain::new(name)
            .map(TrustDomain)
            .map_err(|e| invalid(e.to_string()))
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TrustDomain::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated SPIFFE ID such as `spiffe://cluster.local/ns/default/sa/web`.
///
/// Parsing follows the SPIFFE ID spec (via the `spiffe` crate): scheme `spiffe`, trust domain of
/// `[a-z0-9._-]` (upper-case is folded to lower-case), path segments of `[A-Za-z0-9._-]`, no
/// empty or dot segments, no trailing slash, and therefore no port, userinfo, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId(spiffe::SpiffeId);

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(id: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidSpiffeId {
            id: id.to_string(),
            reason,
        };
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(invalid(format!("longer than {MAX_SPIFFE_ID_LEN} bytes")));
        }
        spiffe::SpiffeId::new(id)
            .map(SpiffeId)
            .map_err(|e| invalid(e.to_string()))
    }

    /// Builds the Istio form `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn istio(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, Error> {
        let td = TrustDomain::new(trust_domain)?;
        let id = spiffe::SpiffeId::from_segments(
            td.0.clone(),
            &["ns", namespace, "sa", service_account],
        )
        .map_err(|e| Error::InvalidSpiffeId {
            id: format!("{SPIFFE_PREFIX}{td}/ns/{namespace}/sa/{service_account}"),
            reason: e.to_string(),
        })?;
        Ok(SpiffeId(id))
    }

    /// The trust domain (the URI authority).
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.0.trust_domain().clone())
    }

    /// The trust domain name, without allocating.
    pub fn trust_domain_name(&self) -> &str {
        self.0.trust_domain_name()
    }

    /// The path, including its leading `/` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        self.0.path()
    }

    /// The Istio namespace, if this is exactly `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The Istio service account, if this is exactly `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }

    /// The Istio principal: the ID without `spiffe://`, as AuthorizationPolicy `principals` use.
    pub fn principal(&self) -> String {
        format!("{}{}", self.trust_domain_name(), self.path())
    }

    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        SpiffeId::new(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn istio_form_accessors() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain_name(), "cluster.local");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("web"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(
            SpiffeId::istio("cluster.local", "default", "web").unwrap(),
            id
        );
    }

    #[test]
    fn non_istio_paths_have_no_namespace() {
        for s in [
            "spiffe://td",
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/ns/a/xx/b",
            "spiffe://td/workload/web",
        ] {
            let id = SpiffeId::new(s).unwrap();
            assert_eq!(id.namespace(), None, "{s}");
            assert_eq!(id.service_account(), None, "{s}");
        }
    }

    #[test]
    fn trust_domain_is_case_folded() {
        let id = SpiffeId::new("spiffe://Cluster.LOCAL/ns/A/sa/B").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/A/sa/B");
    }

    #[test]
    fn spec_rejections() {
        // One per rule of the SPIFFE ID spec; each must be refused with InvalidSpiffeId.
        for s in [
            "",
            "cluster.local/ns/a/sa/b",
            "https://cluster.local/ns/a/sa/b",
            "spiffe:///ns/a",
            "spiffe://cluster.local:8080/ns/a",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local/ns/a?x=1",
            "spiffe://cluster.local/ns/a#frag",
            "spiffe://cluster.local/ns//a",
            "spiffe://cluster.local/ns/./a",
            "spiffe://cluster.local/ns/../a",
            "spiffe://cluster.local/ns/a/",
            "spiffe://cluster.local/ns/a%20b",
            "spiffe://clüster.local/ns/a",
        ] {
            let err = SpiffeId::new(s).unwrap_err();
            assert!(matches!(err, Error::InvalidSpiffeId { .. }), "{s}: {err}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(matches!(
            SpiffeId::new(&long),
            Err(Error::InvalidSpiffeId { .. })
        ));
    }

    #[test]
    fn istio_constructor_validates_segments() {
        assert!(SpiffeId::istio("cluster.local", "a/b", "sa").is_err());
        assert!(SpiffeId::istio("cluster.local", "ns", "").is_err());
        assert!(SpiffeId::istio("bad domain", "ns", "sa").is_err());
    }

    #[test]
    fn trust_domain_rejects_what_a_spiffe_id_would_refuse() {
        // The same rules whether the name arrives alone (meshd.yaml, a bundle's TRUST_DOMAIN)
        // or inside an ID: spaces, `@`, `%`, non-ASCII and the empty name are refused.
        for bad in ["Not Valid", "bad td", "a@b", "a%20b", "é.local", "", " "] {
            assert!(TrustDomain::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn trust_domain_rejects_uri_form() {
        assert!(TrustDomain::new("spiffe://cluster.local").is_err());
        assert_eq!(
            TrustDomain::new("cluster.local").unwrap().as_str(),
            "cluster.local"
        );
    }

    #[test]
    fn serde_uses_the_uri_string() {
        let id = SpiffeId::istio("td", "ns", "sa").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/ns/ns/sa/sa\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/a/\"").is_err());
    }

    fn trust_domain() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,30}"
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn parse_print_round_trip(td in trust_domain(), segs in prop::collection::vec(segment(), 0..6)) {
            let text = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
            let id = SpiffeId::new(&text).unwrap();
            prop_assert_eq!(id.to_string(), text.clone());
            prop_assert_eq!(SpiffeId::new(&id.to_string()).unwrap(), id.clone());
            prop_assert_eq!(id.principal(), text.trim_start_matches(SPIFFE_PREFIX));
        }

        #[test]
        fn istio_round_trip(td in trust_domain(), ns in segment(), sa in segment()) {
            let id = SpiffeId::istio(&td, &ns, &sa).unwrap();
            let parsed = SpiffeId::new(&id.to_string()).unwrap();
            prop_assert_eq!(parsed.namespace(), Some(ns.as_str()));
            prop_assert_eq!(parsed.service_account(), Some(sa.as_str()));
            prop_assert_eq!(parsed, id);
        }

        #[test]
        fn bad_path_characters_are_rejected(
            td in trust_domain(),
            seg in segment(),
            bad in prop::sample::select(vec!['?', '#', '%', ' ', ':', '@', '!', '~', '*', '\\', 'é']),
        ) {
            let text = format!("spiffe://{td}/{seg}{bad}{seg}");
            prop_assert!(SpiffeId::new(&text).is_err(), "{} accepted", text);
        }

        #[test]
        fn bad_trust_domain_characters_are_rejected(
            td in trust_domain(),
            bad in prop::sample::select(vec![':', '@', '%', ' ', '!', '*', 'é', '?']),
        ) {
            let text = format!("spiffe://{td}{bad}x/ns/a/sa/b");
            prop_assert!(SpiffeId::new(&text).is_err(), "{} accepted", text);
        }

        #[test]
        fn wrong_scheme_is_rejected(scheme in "[a-z]{1,8}", td in trust_domain()) {
            prop_assume!(scheme != "spiffe");
            let text = format!("{scheme}://{td}/ns/a/sa/b");
            prop_assert!(SpiffeId::new(&text).is_err(), "{} accepted", text);
        }

        #[test]
        fn anything_accepted_round_trips(s in "(spiffe://)?.{0,48}") {
            if let Ok(id) = SpiffeId::new(&s) {
                prop_assert_eq!(SpiffeId::new(&id.to_string()).unwrap(), id);
            }
        }
    }
}
