//! The open-file limit. Every proxied connection holds file descriptors, and the usual soft
//! limit (1024) would refuse connections long before memory or CPU run out, so meshd raises its
//! soft `RLIMIT_NOFILE` to the hard limit at start, and warns when even the hard limit is below
//! what its listeners could need.

use crate::schema::MeshdConfig;
use rlimit::Resource;

/// Descriptors a proxied connection holds in meshd: the application's socket and the one meshd
/// connects onward. (The HBONE side of a tunnel shares a pooled connection, so counting one
/// per connection there is an overestimate that covers the pool.)
const PER_CONNECTION: u64 = 2;
/// Concurrent connections assumed when no `connection_limit` plugin bounds them: the figure
/// meshd is load-tested at (10 000 concurrent tunneled connections).
const ASSUMED_CONNECTIONS: u64 = 10_000;
/// Listeners, the configuration watcher, certificate files, logs, the pool's HBONE
/// connections, the runtime's own descriptors.
const RESERVE: u64 = 256;

/// What meshd's listeners could need, and why: with a `connection_limit` plugin's `maxTotal`,
/// that many connections in each direction (inbound and outbound have their own instance);
/// otherwise [`ASSUMED_CONNECTIONS`].
pub(crate) fn needed(config: &MeshdConfig) -> (u64, String) {
    let max_total = config
        .plugins
        .iter()
        .filter(|p| p.name == "connection_limit")
        .filter_map(|p| p.config.get("maxTotal").and_then(serde_json::Value::as_u64))
        .min();
    match max_total {
        Some(max) => (
            2 * max * PER_CONNECTION + RESERVE,
            format!("connection_limit maxTotal {max} in each direction"),
        ),
        None => (
            ASSUMED_CONNECTIONS * PER_CONNECTION + RESERVE,
            format!(
                "{ASSUMED_CONNECTIONS} concurrent connections, as no connection_limit maxTotal is set"
            ),
        ),
    }
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

    // Without a total bound the assumed load sets the figure; a bound replaces it, per direction.
    #[test]
    fn needed_follows_connection_limit() {
        assert_eq!(needed(&config("[]")).0, 20_256);
        let limited = config(
            r#"[{"name": "connection_limit", "config": {"maxPerSource": 10, "maxTotal": 1000}}]"#,
        );
        let (n, why) = needed(&limited);
        assert_eq!(n, 4_256);
        assert!(why.contains("maxTotal 1000"), "{why}");
        let per_source_only =
            config(r#"[{"name": "connection_limit", "config": {"maxPerSource": 10}}]"#);
        assert_eq!(needed(&per_source_only).0, 20_256);
    }
}
