//! The proxy sections' checks that serde cannot make: outbound entries reachable from other
//! machines, and meshd's own ports. (The admin section's are in crates/daemon/tests/schema.rs.)

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_proxy::config::{ConfigError, ExplicitListener};
use meshd_proxy::{OwnPorts, ProxyConfig};

fn listener(listen: &str, allow_remote: bool) -> ExplicitListener {
    ExplicitListener {
        listen: listen.parse().unwrap(),
        target: "web.shop:80".into(),
        allow_remote,
        workload: None,
    }
}

#[test]
fn socks5_on_a_remote_address_is_refused_by_default() {
    // Anyone who reaches a SOCKS5 port connects with this machine's identity.
    let mut config = ProxyConfig::default();
    config.listen.socks5 = Some("0.0.0.0:15080".parse().unwrap());
    let err = config.check().unwrap_err();
    assert_eq!(
        err,
        ConfigError::RemoteEntry {
            field: "listen.socks5".into(),
            addr: "0.0.0.0:15080".parse().unwrap(),
            allow: "socks5.allowRemote: true".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "listen.socks5: 0.0.0.0:15080 is not a loopback address: anyone who reaches it borrows this machine's identity; set socks5.allowRemote: true to allow it"
    );
}

#[test]
fn socks5_on_a_remote_address_is_allowed_with_a_warning() {
    // allowRemote is an explicit choice, and still said out loud at start.
    let mut config = ProxyConfig::default();
    config.listen.socks5 = Some("[::]:15080".parse().unwrap());
    config.socks5.allow_remote = true;
    let warnings = config.check().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .starts_with("listen.socks5: [::]:15080 accepts connections from other machines"),
        "{}",
        warnings[0]
    );
}

#[test]
fn explicit_listener_on_a_remote_address_is_refused_by_default() {
    // An explicit listener lends the machine's identity just like SOCKS5.
    let mut config = ProxyConfig {
        listeners: vec![
            listener("127.0.0.1:9080", false),
            listener("10.1.2.3:9080", false),
        ],
        ..ProxyConfig::default()
    };
    assert_eq!(
        config.check().unwrap_err(),
        ConfigError::RemoteEntry {
            field: "listeners[1].listen".into(),
            addr: "10.1.2.3:9080".parse().unwrap(),
            allow: "listeners[1].allowRemote: true".into(),
        }
    );
    config.listeners[1].allow_remote = true;
    assert_eq!(config.check().unwrap().len(), 1);
}

#[test]
fn loopback_entries_pass_without_warnings() {
    // The default: v4 and v6 loopback, and a v4-mapped loopback address.
    let mut config = ProxyConfig::default();
    config.listen.socks5 = Some("127.0.0.1:15080".parse().unwrap());
    config.listeners = vec![
        listener("[::1]:9080", false),
        listener("[::ffff:127.0.0.1]:9081", false),
    ];
    assert_eq!(config.check().unwrap(), Vec::<String>::new());
}

#[test]
fn own_ports_cover_every_configured_listener() {
    // The defaults name admin, metrics and readiness; all are meshd's.
    let config = ProxyConfig::default();
    let own = OwnPorts::new(config.listen.configured_ports().collect::<Vec<_>>());
    for port in [15000, 15008, 15020, 15021] {
        assert!(own.contains(port), "{port}");
    }
}

#[test]
fn metrics_and_readiness_default_to_loopback() {
    // 15020 names every peer identity and policy: not for the whole network by default.
    let config = ProxyConfig::default();
    for addr in [
        config.listen.metrics,
        config.listen.readiness,
        config.listen.admin,
    ] {
        assert!(addr.unwrap().ip().is_loopback(), "{addr:?}");
    }
}
