//! The CONNECT request's headers as ztunnel sends them: `baggage`, `forwarded`, `traceparent`.
//!
//! The server never rejects a request for a malformed optional header (ztunnel does not
//! either): an unparseable `forwarded` or `traceparent` is exposed as `None`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};

/// `baggage` header name (W3C Baggage; ztunnel puts workload metadata in it).
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `forwarded` header name (RFC 7239).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `traceparent` header name (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The metadata an HBONE CONNECT carries besides its authority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    /// Raw `baggage` value, e.g. `k8s.namespace.name=default,service.name=web`.
    pub baggage: Option<String>,
    /// The original client and, when the destination was a service, its hostname.
    pub forwarded: Option<Forwarded>,
    /// Trace context; the client generates a random one when none is given.
    pub traceparent: Option<TraceParent>,
}

impl RequestHeaders {
    /// Appends the headers in ztunnel's order (baggage, forwarded, traceparent).
    pub(crate) fn write_to(&self, map: &mut HeaderMap) {
        if let Some(baggage) = &self.baggage {
            // A value with control characters cannot be sent; dropping it beats failing the
            // tunnel over telemetry.
            if let Ok(value) = HeaderValue::from_str(baggage) {
                map.append(BAGGAGE, value);
            }
        }
        if let Some(forwarded) = &self.forwarded
            && let Ok(value) = HeaderValue::from_str(&forwarded.to_string())
        {
            map.append(FORWARDED, value);
        }
        if let Some(traceparent) = &self.traceparent
            && let Ok(value) = HeaderValue::from_str(&traceparent.to_string())
        {
            map.append(TRACEPARENT, value);
        }
    }

    /// Reads the headers of a received CONNECT.
    pub fn from_headers(map: &HeaderMap) -> RequestHeaders {
        let text = |name: &HeaderName| map.get(name).and_then(|v| v.to_str().ok());
        RequestHeaders {
            baggage: text(&BAGGAGE).map(str::to_owned),
            forwarded: text(&FORWARDED).and_then(|v| v.parse().ok()),
            traceparent: text(&TRACEPARENT).and_then(|v| v.parse().ok()),
        }
    }
}

/// The `forwarded` header as ztunnel writes it: `for="<ip:port>"` plus `;host=<hostname>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The application client's address (`for=`).
    pub client: SocketAddr,
    /// The service hostname the client addressed, when the destination was a service.
    pub host: Option<String>,
}

impl fmt::Display for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SocketAddr's Display brackets IPv6 ("[::1]:80"), which RFC 7239 requires quoted.
        write!(f, "for=\"{}\"", self.client)?;
        if let Some(host) = &self.host {
            write!(f, ";host={host}")?;
        }
        Ok(())
    }
}

/// Why a `forwarded` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseForwardedError;

impl fmt::Display for ParseForwardedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("forwarded header has no for=\"ip:port\"")
    }
}

impl FromStr for Forwarded {
    type Err = ParseForwardedError;

    /// Parses the first element of the list (the hop nearest the original client).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let first = s.split(',').next().unwrap_or_default();
        let mut client = None;
        let mut host = None;
        for pair in first.split(';') {
            let Some((key, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            if key.trim().eq_ignore_ascii_case("for") {
                client = value.parse::<SocketAddr>().ok();
            } else if key.trim().eq_ignore_ascii_case("host") && !value.is_empty() {
                host = Some(value.to_owned());
            }
        }
        Ok(Forwarded {
            client: client.ok_or(ParseForwardedError)?,
            host,
        })
    }
}

/// W3C `traceparent`, version 00: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// 128-bit trace id (never zero).
    pub trace_id: u128,
    /// 64-bit parent (span) id (never zero).
    pub parent_id: u64,
    /// Trace flags; ztunnel sends `00` (not sampled).
    pub flags: u8,
}

impl TraceParent {
    /// A fresh random trace context with flags `00`, as ztunnel makes per connection.
    pub fn random() -> TraceParent {
        // All-zero ids are invalid per the W3C spec; `| 1` keeps the value random otherwise.
        TraceParent {
            trace_id: rand::random::<u128>() | 1,
            parent_id: rand::random::<u64>() | 1,
            flags: 0,
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Why a `traceparent` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTraceParentError;

impl fmt::Display for ParseTraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("traceparent is not 00-<32 hex>-<16 hex>-<2 hex> with non-zero ids")
    }
}

impl FromStr for TraceParent {
    type Err = ParseTraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ParseTraceParentError);
        };
        let hex = |s: &str, len: usize| {
            (s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then_some(())
                .ok_or(ParseTraceParentError)
        };
        hex(version, 2)?;
        hex(trace, 32)?;
        hex(parent, 16)?;
        hex(flags, 2)?;
        if version != "00" {
            return Err(ParseTraceParentError);
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| ParseTraceParentError)?;
        let parent_id = u64::from_str_radix(parent, 16).map_err(|_| ParseTraceParentError)?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| ParseTraceParentError)?;
        if trace_id == 0 || parent_id == 0 {
            return Err(ParseTraceParentError);
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }
}

/// The `:authority` for a destination: `ip:port`, IPv6 in brackets.
pub fn authority_string(addr: SocketAddr) -> String {
    // Normalise an IPv4-mapped IPv6 address so the server compares like with like.
    SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string()
}

/// Parses an HBONE `:authority` (`ip:port` or `[v6]:port`); hostnames are not supported (ztunnel
/// only sends them through east-west gateways, which meshd does not implement).
pub fn parse_authority(authority: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = authority.parse().ok()?;
    if addr.port() == 0 {
        return None;
    }
    Some(SocketAddr::new(canonical(addr.ip()), addr.port()))
}

/// An IP with IPv4-mapped IPv6 turned back into IPv4 (a dual-stack listener reports IPv4
/// clients and local addresses as `::ffff:a.b.c.d`).
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let tp = TraceParent::random();
        let text = tp.to_string();
        assert_eq!(text.len(), 55);
        assert!(text.starts_with("00-") && text.ends_with("-00"));
        assert_eq!(text.parse::<TraceParent>(), Ok(tp));
    }

    #[test]
    fn traceparent_rejects_malformed() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "00-00000000000000000000000000000000-b7ad6b7169203331-00",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-00",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-00",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        ] {
            assert_eq!(
                bad.parse::<TraceParent>(),
                Err(ParseTraceParentError),
                "{bad}"
            );
        }
    }

    #[test]
    fn forwarded_formats_like_ztunnel() {
        let f = Forwarded {
            client: "10.0.0.1:4242".parse().unwrap(),
            host: None,
        };
        assert_eq!(f.to_string(), r#"for="10.0.0.1:4242""#);
        let f = Forwarded {
            client: "[fd00::1]:80".parse().unwrap(),
            host: Some("web.default.svc.cluster.local".into()),
        };
        assert_eq!(
            f.to_string(),
            r#"for="[fd00::1]:80";host=web.default.svc.cluster.local"#
        );
        assert_eq!(f.to_string().parse::<Forwarded>(), Ok(f));
    }

    #[test]
    fn forwarded_without_client_is_rejected() {
        assert!("host=a".parse::<Forwarded>().is_err());
        assert!(r#"for="unknown""#.parse::<Forwarded>().is_err());
    }

    #[test]
    fn headers_are_written_in_ztunnel_order() {
        let h = RequestHeaders {
            baggage: Some("k8s.namespace.name=default".into()),
            forwarded: Some(Forwarded {
                client: "10.0.0.1:1".parse().unwrap(),
                host: None,
            }),
            traceparent: Some(TraceParent::random()),
        };
        let mut map = HeaderMap::new();
        h.write_to(&mut map);
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["baggage", "forwarded", "traceparent"]);
        assert_eq!(RequestHeaders::from_headers(&map), h);
    }

    #[test]
    fn authority_parsing() {
        assert_eq!(
            parse_authority("10.1.2.3:8080"),
            Some("10.1.2.3:8080".parse().unwrap())
        );
        assert_eq!(
            parse_authority("[fd00::2]:80"),
            Some("[fd00::2]:80".parse().unwrap())
        );
        assert_eq!(
            parse_authority("[::ffff:10.0.0.1]:80"),
            Some("10.0.0.1:80".parse().unwrap())
        );
        for bad in [
            "",
            "10.1.2.3",
            "web:80",
            "10.1.2.3:0",
            "10.1.2.3:99999",
            "fd00::2:80",
        ] {
            assert_eq!(parse_authority(bad), None, "{bad}");
        }
        assert_eq!(authority_string("[::1]:9".parse().unwrap()), "[::1]:9");
    }
}
