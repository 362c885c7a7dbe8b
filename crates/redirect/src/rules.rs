//! What to capture ([`RedirectConfig`]) and the nftables script that does it ([`render`]).

use std::fmt::Write as _;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::nft::TABLE_NAME;
use crate::origsrc;

/// Only a connection's first packet is redirected. A connection established before the rules
/// existed has no conntrack entry in a namespace that had no nat rules; once they exist the
/// kernel picks it up mid-stream (its next packet looks new) and, without this match, sends it
/// to meshd's port, which resets it: `meshd redirect install` under a running meshd would
/// break the connections already open, meshd's own stream to istiod among them.
const FIRST_SYN: &str = "tcp flags & (syn | ack) == syn";

/// Outbound capture port, as ztunnel (REDIRECT target for the applications' connections).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Plaintext inbound capture port, as ztunnel.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// HBONE (mTLS) inbound port, as ztunnel; never captured, meshd listens on it directly.
pub const DEFAULT_HBONE_PORT: u16 = 15008;
/// meshd's well-known ports, always its own whether or not this configuration listens on them:
/// ztunnel's admin 15000, captured outbound 15001, captured inbound 15006, HBONE 15008,
/// metrics 15020, readiness 15021, and meshd's SOCKS5 15080. The one home of this list: the
/// capture rules never divert them, and meshd-proxy's `OwnPorts` never relays to them.
pub const WELL_KNOWN_PORTS: [u16; 7] = [15000, 15001, 15006, 15008, 15020, 15021, 15080];
/// Mark on meshd's own sockets: 1337 (0x539), ztunnel's `DEFAULT_INPOD_MARK`.
pub const DEFAULT_MARK: u32 = 0x539;
/// Bits of the packet mark the rules compare, as ztunnel's `--mark 0x539/0xfff`, so other
/// users of the upper mark bits (e.g. Calico, Cilium) do not defeat the exemption.
pub const DEFAULT_MARK_MASK: u32 = 0xfff;
/// Inbound ports never captured by default: ssh, so enabling inbound capture cannot lock the
/// operator out of the machine.
const DEFAULT_EXCLUDE_INBOUND_PORTS: [u16; 1] = [22];

/// Which TCP traffic the kernel redirects to meshd; a section of the daemon config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Port meshd's outbound capture listener accepts redirected connections on.
    pub outbound_port: u16,
    /// Port for captured plaintext inbound connections; `None` (the default) captures no
    /// inbound traffic.
    pub inbound_port: Option<u16>,
    /// meshd's HBONE port: inbound traffic to it is never captured.
    pub hbone_port: u16,
    /// Packet mark of meshd's own sockets; marked traffic is never captured.
    pub mark: u32,
    /// Bits of the packet mark compared with `mark`.
    pub mark_mask: u32,
    /// Outbound destinations never captured (e.g. the machine's management network).
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Local ports whose inbound traffic is never captured (default: 22).
    pub exclude_inbound_ports: Vec<u16>,
    /// Capture outbound connections to loopback too (default false, as ztunnel: traffic
    /// leaving through `lo` stays on the machine and is not meshd's).
    pub capture_loopback: bool,
    /// Connect to local workloads from the client's address instead of meshd's (ztunnel's
    /// `ENABLE_ORIG_SRC`; default false): meshd then needs `CAP_NET_ADMIN` for
    /// `IP_TRANSPARENT`, and install adds the routing that brings the workloads' replies back
    /// to meshd (see the `origsrc` module).
    pub original_source: bool,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: None,
            hbone_port: DEFAULT_HBONE_PORT,
            mark: DEFAULT_MARK,
            mark_mask: DEFAULT_MARK_MASK,
            exclude_outbound_cidrs: Vec::new(),
            exclude_inbound_ports: DEFAULT_EXCLUDE_INBOUND_PORTS.to_vec(),
            capture_loopback: false,
            original_source: false,
        }
    }
}

impl RedirectConfig {
    /// Checks that the config yields a ruleset that cannot loop or capture everything.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, message: &str| {
            Err(Error::InvalidConfig {
                field,
                message: message.to_owned(),
            })
        };
        if self.outbound_port == 0 {
            return invalid("outboundPort", "must not be 0");
        }
        if self.hbone_port == 0 {
            return invalid("hbonePort", "must not be 0");
        }
        if self.outbound_port == self.hbone_port {
            return invalid("hbonePort", "must differ from outboundPort");
        }
        if let Some(inbound) = self.inbound_port {
            if inbound == 0 {
                return invalid("inboundPort", "must not be 0");
            }
            if inbound == self.outbound_port || inbound == self.hbone_port {
                return invalid("inboundPort", "must differ from outboundPort and hbonePort");
            }
        }
        if self.mark_mask == 0 {
            return invalid("markMask", "must not be 0");
        }
        // Unmarked packets carry mark 0; exempting it would exempt everything.
        if self.mark & self.mark_mask == 0 {
            return invalid("mark", "must have a bit set inside markMask");
        }
        if self.mark & !self.mark_mask != 0 {
            return Err(Error::InvalidConfig {
                field: "mark",
                message: format!(
                    "{:#x} has bits outside markMask {:#x}",
                    self.mark, self.mark_mask
                ),
            });
        }
        // Every packet of meshd's would be routed back to this machine, not only the replies.
        if self.original_source && self.mark & origsrc::MASK == origsrc::MARK {
            return Err(Error::InvalidConfig {
                field: "mark",
                message: format!(
                    "{:#x} carries {:#x} under {:#x}, the mark of replies redirect.originalSource routes back to meshd",
                    self.mark,
                    origsrc::MARK,
                    origsrc::MASK
                ),
            });
        }
        if self.exclude_inbound_ports.contains(&0) {
            return invalid("excludeInboundPorts", "port 0 is not a port");
        }
        Ok(())
    }
}

/// Renders the nftables script that atomically replaces table `inet meshd` with `cfg`'s rules.
///
/// The script is meant for `nft -f`; it does not validate `cfg` (see
/// [`RedirectConfig::validate`], which [`crate::install`] calls).
pub fn render(cfg: &RedirectConfig) -> String {
    let mut s = String::new();
    let mark = format!(
        "meta mark & {:#010x} == {:#010x}",
        cfg.mark_mask,
        cfg.mark & cfg.mark_mask
    );
    // `writeln!` into a String cannot fail; the results are ignored deliberately.
    let _ = writeln!(
        s,
        "# Generated by meshd-redirect; `meshd redirect install` replaces it."
    );
    // Declaring the table before deleting it makes the delete succeed whether or not the table
    // exists, and all three statements commit as one transaction: no window without rules.
    let _ = writeln!(s, "table inet {TABLE_NAME} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE_NAME}");
    let _ = writeln!(s, "table inet {TABLE_NAME} {{");

    // Outbound: locally generated connections, NAT hook `output`. Priority -100 is `dstnat`;
    // nftables 1.0.6 (Debian 12) rejects the name on the output hook, so it is spelled out.
    let _ = writeln!(s, "\tchain output {{");
    let _ = writeln!(s, "\t\ttype nat hook output priority -100; policy accept;");
    let _ = writeln!(s, "\t\tmeta l4proto != tcp return");
    let _ = writeln!(s, "\t\t{mark} return");
    if cfg.capture_loopback {
        // Even when capturing loopback, connections to meshd's own listeners must reach them.
        let ports = port_set(own_ports(cfg));
        let _ = writeln!(s, "\t\toifname \"lo\" tcp dport {ports} return");
    } else {
        let _ = writeln!(s, "\t\toifname \"lo\" return");
    }
    // Tunnels to peers' HBONE port are meshd's own traffic; meshd marks those sockets too, and
    // this keeps an unmarked HBONE client (another proxy, a test tool) from being looped back.
    let _ = writeln!(s, "\t\ttcp dport {} return", cfg.hbone_port);
    let (v4, v6) = split_cidrs(&cfg.exclude_outbound_cidrs);
    if !v4.is_empty() {
        let _ = writeln!(s, "\t\tip daddr {} return", set(&v4));
    }
    if !v6.is_empty() {
        let _ = writeln!(s, "\t\tip6 daddr {} return", set(&v6));
    }
    let _ = writeln!(s, "\t\t{FIRST_SYN} redirect to :{}", cfg.outbound_port);
    let _ = writeln!(s, "\t}}");

    // Inbound: connections arriving from the network, NAT hook `prerouting`.
    if let Some(inbound) = cfg.inbound_port {
        let mut exempt = own_ports(cfg);
        exempt.extend(&cfg.exclude_inbound_ports);
        let _ = writeln!(s, "\tchain prerouting {{");
        let _ = writeln!(
            s,
            "\t\ttype nat hook prerouting priority -100; policy accept;"
        );
        let _ = writeln!(s, "\t\tmeta l4proto != tcp return");
        let _ = writeln!(s, "\t\t{mark} return");
        // Loopback traffic was generated here; the output chain already decided about it.
        let _ = writeln!(s, "\t\tiifname \"lo\" return");
        // Only traffic addressed to this machine is inbound; packets it merely routes (e.g. for
        // containers or VMs behind it) are not meshd's to capture.
        let _ = writeln!(s, "\t\tfib daddr type != local return");
        let _ = writeln!(s, "\t\ttcp dport {} return", port_set(exempt));
        let _ = writeln!(s, "\t\t{FIRST_SYN} redirect to :{inbound}");
        let _ = writeln!(s, "\t}}");
    }
    if cfg.original_source {
        origsrc::render_chains(cfg, &mut s);
    }
    let _ = writeln!(s, "}}");
    s
}

/// The ports meshd itself listens on or reserves, which redirection must never divert: the
/// configured capture ports and every well-known one (a metrics scrape or an admin call must
/// reach meshd, not be captured into it).
fn own_ports(cfg: &RedirectConfig) -> Vec<u16> {
    let mut ports = WELL_KNOWN_PORTS.to_vec();
    ports.extend([cfg.outbound_port, cfg.hbone_port]);
    ports.extend(cfg.inbound_port);
    ports
}

/// An nft anonymous set of ports, sorted and deduplicated for a stable rendering.
fn port_set(mut ports: Vec<u16>) -> String {
    ports.sort_unstable();
    ports.dedup();
    set(&ports)
}

/// An nft anonymous set literal, `{ a, b }`.
fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// Splits CIDRs by family and merges overlaps: nft rejects overlapping intervals in a set.
fn split_cidrs(cidrs: &[IpNet]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in cidrs {
        match net {
            IpNet::V4(n) => v4.push(*n),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    (Ipv4Net::aggregate(&v4), Ipv6Net::aggregate(&v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    // The default config captures outbound TCP only, exempting marked traffic and loopback.
    #[test]
    fn default_outbound_only() {
        let script = render(&RedirectConfig::default());
        assert!(
            script.contains("table inet meshd {}\ndelete table inet meshd\ntable inet meshd {")
        );
        assert!(script.contains("type nat hook output priority -100; policy accept;"));
        assert!(script.contains("meta mark & 0x00000fff == 0x00000539 return"));
        assert!(script.contains("oifname \"lo\" return"));
        assert!(script.contains("tcp flags & (syn | ack) == syn redirect to :15001"));
        assert!(!script.contains("prerouting"), "{script}");
        // The exemptions come before the redirect, or they would never be reached.
        let redirect = script.find("redirect to").unwrap();
        assert!(script.find("meta mark").unwrap() < redirect);
        assert!(script.find("oifname").unwrap() < redirect);
    }

    // Excluded destinations land in per-family sets, overlaps merged, v6 as `ip6 daddr`.
    #[test]
    fn excluded_cidrs_per_family() {
        let cfg = RedirectConfig {
            exclude_outbound_cidrs: vec![
                net("10.0.0.0/8"),
                net("10.1.0.0/16"),
                net("192.168.1.0/24"),
                net("fd00::/8"),
                net("2001:db8::1/64"),
            ],
            ..RedirectConfig::default()
        };
        let script = render(&cfg);
        assert!(
            script.contains("ip daddr { 10.0.0.0/8, 192.168.1.0/24 } return"),
            "{script}"
        );
        assert!(
            script.contains("ip6 daddr { 2001:db8::/64, fd00::/8 } return"),
            "{script}"
        );
        assert!(script.find("ip6 daddr").unwrap() < script.find("redirect to").unwrap());
    }

    // Inbound capture exempts meshd's own ports, excluded ports and marked traffic.
    #[test]
    fn inbound_exemptions() {
        let cfg = RedirectConfig {
            inbound_port: Some(DEFAULT_INBOUND_PORT),
            exclude_inbound_ports: vec![22, 15008, 9090],
            ..RedirectConfig::default()
        };
        let script = render(&cfg);
        let pre = &script[script.find("chain prerouting").unwrap()..];
        assert!(pre.contains("type nat hook prerouting priority -100; policy accept;"));
        assert!(pre.contains("meta mark & 0x00000fff == 0x00000539 return"));
        assert!(pre.contains("iifname \"lo\" return"));
        assert!(pre.contains("fib daddr type != local return"));
        assert!(
            pre.contains(
                "tcp dport { 22, 9090, 15000, 15001, 15006, 15008, 15020, 15021, 15080 } return"
            ),
            "{pre}"
        );
        assert!(pre.contains("tcp flags & (syn | ack) == syn redirect to :15006"));
    }

    // With loopback capture, only meshd's own ports on lo stay exempt.
    #[test]
    fn capture_loopback() {
        let cfg = RedirectConfig {
            capture_loopback: true,
            ..RedirectConfig::default()
        };
        let script = render(&cfg);
        assert!(
            script.contains(
                "oifname \"lo\" tcp dport { 15000, 15001, 15006, 15008, 15020, 15021, 15080 } return"
            ),
            "{script}"
        );
        assert!(!script.contains("oifname \"lo\" return"));
    }

    // Every well-known port is exempt wherever meshd's own ports are, also with capture ports
    // moved elsewhere: the rules and meshd's refusal of its own ports read one list.
    #[test]
    fn every_well_known_port_is_exempt() {
        let cfg = RedirectConfig {
            outbound_port: 25001,
            inbound_port: Some(25006),
            hbone_port: 25008,
            capture_loopback: true,
            ..RedirectConfig::default()
        };
        let script = render(&cfg);
        let (output, prerouting) = script.split_at(script.find("chain prerouting").unwrap());
        let exempt = |chain: &str, prefix: &str| -> Vec<u16> {
            let line = chain
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with(prefix) && l.ends_with("} return"))
                .unwrap_or_else(|| panic!("no `{prefix}` exemption in\n{chain}"));
            let set = &line[line.find('{').unwrap() + 1..line.find('}').unwrap()];
            set.split(',').map(|p| p.trim().parse().unwrap()).collect()
        };
        let lo = exempt(output, "oifname \"lo\" tcp dport {");
        let inbound = exempt(prerouting, "tcp dport {");
        for port in WELL_KNOWN_PORTS.into_iter().chain([25001, 25006, 25008]) {
            assert!(lo.contains(&port), "{port} captured on loopback: {lo:?}");
            assert!(
                inbound.contains(&port),
                "{port} captured inbound: {inbound:?}"
            );
        }
    }

    // A custom mark is rendered under its mask.
    #[test]
    fn custom_mark() {
        let cfg = RedirectConfig {
            mark: 0x10000,
            mark_mask: 0xff0000,
            ..RedirectConfig::default()
        };
        assert!(render(&cfg).contains("meta mark & 0x00ff0000 == 0x00010000 return"));
    }

    // Each unsound config is rejected with the field at fault.
    #[test]
    fn validate_rejections() {
        let ok = RedirectConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let field = |cfg: RedirectConfig| match cfg.validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let c = |f: fn(&mut RedirectConfig)| {
            let mut cfg = RedirectConfig::default();
            f(&mut cfg);
            cfg
        };
        assert_eq!(field(c(|c| c.outbound_port = 0)), "outboundPort");
        assert_eq!(field(c(|c| c.hbone_port = 0)), "hbonePort");
        assert_eq!(field(c(|c| c.hbone_port = 15001)), "hbonePort");
        assert_eq!(field(c(|c| c.inbound_port = Some(0))), "inboundPort");
        assert_eq!(field(c(|c| c.inbound_port = Some(15008))), "inboundPort");
        assert_eq!(field(c(|c| c.mark = 0)), "mark");
        assert_eq!(field(c(|c| c.mark = 0x1000)), "mark");
        assert_eq!(field(c(|c| c.mark_mask = 0)), "markMask");
        assert_eq!(
            field(c(|c| c.exclude_inbound_ports = vec![0])),
            "excludeInboundPorts"
        );
        assert_eq!(
            c(|c| c.mark = 0x1539).validate(),
            Err(Error::InvalidConfig {
                field: "mark",
                message: "0x1539 has bits outside markMask 0xfff".into()
            })
        );
    }

    // Original source adds its two chains to the same table; off, the table has neither.
    #[test]
    fn original_source_chains() {
        assert!(!render(&RedirectConfig::default()).contains("origsrc"));
        let cfg = RedirectConfig {
            original_source: true,
            ..RedirectConfig::default()
        };
        let script = render(&cfg);
        let chains = &script[script.find("chain origsrc_prerouting").unwrap()..];
        assert!(chains.contains("chain origsrc_output"), "{script}");
        assert!(
            chains.contains("iifname \"lo\" meta mark & 0x00000fff == 0x00000539 ct mark set"),
            "{script}"
        );
        assert!(script.trim_end().ends_with('}'), "{script}");
    }

    // With original source, meshd's own mark may not be the one replies are routed back by.
    #[test]
    fn original_source_mark_clash() {
        let cfg = RedirectConfig {
            original_source: true,
            mark: 0x111,
            ..RedirectConfig::default()
        };
        match cfg.validate() {
            Err(Error::InvalidConfig { field, message }) => {
                assert_eq!(field, "mark");
                assert!(message.contains("redirect.originalSource"), "{message}");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
        let off = RedirectConfig {
            original_source: false,
            ..cfg
        };
        assert_eq!(off.validate(), Ok(()));
    }

    // The config reads from camelCase JSON with defaults and rejects unknown fields.
    #[test]
    fn serde_camel_case() {
        let cfg: RedirectConfig = serde_json::from_str(
            r#"{"inboundPort": 15006, "excludeOutboundCidrs": ["10.0.0.0/8"], "captureLoopback": true}"#,
        )
        .unwrap();
        assert_eq!(cfg.inbound_port, Some(15006));
        assert_eq!(cfg.outbound_port, 15001);
        assert_eq!(cfg.exclude_inbound_ports, vec![22]);
        assert_eq!(cfg.exclude_outbound_cidrs, vec![net("10.0.0.0/8")]);
        assert!(cfg.capture_loopback);
        assert!(!cfg.original_source);
        let on: RedirectConfig = serde_json::from_str(r#"{"originalSource": true}"#).unwrap();
        assert!(on.original_source);
        let err = serde_json::from_str::<RedirectConfig>(r#"{"outbound_port": 1}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `outbound_port`"),
            "{err}"
        );
    }
}
