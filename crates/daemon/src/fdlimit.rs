//! The open-file limit. Every proxied connection holds file descriptors, and the usual soft
//! limit (1024) would refuse connections long before memory or CPU run out, so meshd raises its
//! soft `RLIMIT_NOFILE` to the hard limit at start, and warns when even the hard limit is below
//! what its listeners could need.

use crate::schema::MeshdConfig;
use rlimit::Resource;

/// Concurrent tunnelled connections assumed when no `connection_limit` plugin bounds them,
/// inbound and outbound together: 10 000 (benches/e2e holds 19 000 through one node pair).
const ASSUMED_CONNECTIONS: u64 = 10_000;
/// What meshd holds besides its connections: listeners, the configuration watcher, the runtime,
/// logs, certificate files being read, admin and metrics clients, xDS and SPIRE streams. An idle
/// meshd holds about 30 (benches/e2e: 19 216 descriptors a side for 19 000 tunnels over 190
/// HBONE connections); the rest is headroom.
const RESERVE: u64 = 128;

/// What meshd's connections could need, and why. A tunnelled connection holds one descriptor
/// on each node (the application's socket on the client's, the socket to the workload on the
/// server's) plus its share of an HBONE connection, which carries up to
/// `pool.maxStreamsPerConnection` of them (measured: 19 000 tunnels, 19 216 descriptors on each
/// side). A connection meshd does not tunnel (passthrough to a destination outside the mesh, or
/// a captured inbound one without HBONE) holds two; the figure assumes tunnels, meshd's case.
///
/// With a `connection_limit` plugin's `maxTotal`, that many connections in each direction
/// (inbound and outbound have their own instance); otherwise [`ASSUMED_CONNECTIONS`].
pub(crate) fn needed(config: &MeshdConfig) -> (u64, String) {
    let max_total = config
        .plugins
        .iter()
        .filter(|p| p.name == "connection_limit")
        .filter_map(|p| p.config.get("maxTotal").and_then(serde_json::Value::as_u64))
        .min();
    let streams = u64::from(config.pool.max_streams_per_connection.get());
    let (connections, why) = match max_total {
        Some(max) => (
            max.saturating_mul(2),
            format!("connection_limit maxTotal {max} in each direction"),
        ),
        None => (
            ASSUMED_CONNECTIONS,
            format!(
                "{ASSUMED_CONNECTIONS} concurrent tunnelled connections, as no connection_limit maxTotal is set"
            ),
        ),
    };
    let needed = connections
        .saturating_add(connections.div_ceil(streams))
        .saturating_add(RESERVE);
    (
        needed,
        format!("{why}: one descriptor each, one per {streams} for their HBONE connections"),
    )
}

/// Raises the soft open-file limit to the hard limit and logs what it did; a hard limit below
/// [`needed`] is a warning, not an error: meshd still works, up to that many connections.
pub(crate) fn raise(config: &MeshdConfig) {
    let (soft, hard) = match rlimit::getrlimit(Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return;
        }
    };
    // increase_nofile_limit knows the platform's ceiling (fs.nr_open when the hard limit is
    // unlimited); it returns the soft limit now in force.
    let now = match rlimit::increase_nofile_limit(hard) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(soft, hard, "cannot raise the open-file soft limit: {e}");
            soft
        }
    };
    if now != soft {
        tracing::info!(
            from = soft,
            to = now,
            "raised the open-file soft limit to the hard limit"
        );
    }
    let (needed, why) = needed(config);
    if now < needed {
        tracing::warn!(
            limit = now,
            needed,
            "open-file limit {now} is below the {needed} descriptors meshd could need ({why}); \
             connections past it will be refused: raise the hard limit (LimitNOFILE= in the \
             systemd unit, `ulimit -Hn` in a shell)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(plugins: &str) -> MeshdConfig {
        serde_json::from_str(&format!("{{\"plugins\": {plugins}}}")).unwrap()
    }

    // Without a total bound the assumed load sets the figure: 10 000 tunnels, 100 HBONE
    // connections for them at 100 streams each, and the reserve. The 20 000 hard limit of a
    // typical machine holds it (the old figure, two per connection, warned there at every start).
    #[test]
    fn needed_follows_connection_limit() {
        let (n, why) = needed(&config("[]"));
        assert_eq!(n, 10_000 + 100 + 128);
        assert!(why.contains("one per 100"), "{why}");
        let limited = config(
            r#"[{"name": "connection_limit", "config": {"maxPerSource": 10, "maxTotal": 1000}}]"#,
        );
        let (n, why) = needed(&limited);
        assert_eq!(n, 2_000 + 20 + 128);
        assert!(why.contains("maxTotal 1000"), "{why}");
        let per_source_only =
            config(r#"[{"name": "connection_limit", "config": {"maxPerSource": 10}}]"#);
        assert_eq!(needed(&per_source_only).0, 10_228);
    }

    // Fewer streams per HBONE connection, more of them.
    #[test]
    fn needed_follows_the_pool_s_streams_per_connection() {
        let mut few = config("[]");
        few.pool.max_streams_per_connection = std::num::NonZeroU32::MIN;
        assert_eq!(needed(&few).0, 20_000 + 128);
        let huge = config(
            r#"[{"name": "connection_limit", "config": {"maxTotal": 18446744073709551615}}]"#,
        );
        assert_eq!(
            needed(&huge).0,
            u64::MAX,
            "saturates, never wraps to a small figure"
        );
    }
}
