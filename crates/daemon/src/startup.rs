//! Start-up conditions that time or another agent cures: meshd waits for them, not ready,
//! instead of exiting. A certificate not valid yet (clock skew at boot), expired or
//! half-rotated is waited for until valid files appear; a port another process holds is
//! retried with backoff until it is free. Meanwhile readiness answers 500 with the reason and
//! systemd's STATUS says it, and nothing is served: the proxy's listeners are bound only once
//! the identity is valid, and none stays bound after a failed attempt.
//!
//! What only a person can fix (bad YAML, unknown keys, an unsafe listener, an unknown plugin,
//! an identity path below a regular file, a port that is not ours to bind) still ends start-up
//! with [`Exit::Config`](crate::Exit::Config), status 78, which systemd does not restart.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::schema::MeshdConfig;
use meshd_admin::Readiness;
use meshd_proxy::plugins::PluginRegistry;
use tokio::net::TcpListener;

use crate::{StartupError, systemd};

/// First pause after a port found in use; doubled after each further failure.
pub(crate) const BIND_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between tries for a port in use: a freed port is taken within 5 s, and a
/// port held for hours costs a bind attempt every 5 s.
pub(crate) const BIND_RETRY_MAX: Duration = Duration::from_secs(5);
/// Pause between tries for identity files that cannot be used yet: a certificate's validity
/// is in whole seconds, and the files' parse costs little.
pub(crate) const IDENTITY_RETRY: Duration = Duration::from_secs(1);
/// While waiting, how often systemd is told the start is still making progress
/// (`EXTEND_TIMEOUT_USEC`), so its start timeout (90 s by default) does not kill a meshd that
/// waits on purpose.
const EXTEND_EVERY: Duration = Duration::from_secs(10);
/// How much each of those messages grants: three periods, so one late tick is harmless.
const EXTEND_BY: Duration = Duration::from_secs(30);

/// Why start-up has not finished, shared with readiness: `None` once nothing is awaited.
#[derive(Clone, Default)]
pub(crate) struct Waiting {
    reason: Arc<Mutex<Option<String>>>,
    /// Whether start-up waited at all (so what was read before may be stale).
    waited: Arc<AtomicBool>,
}

impl Waiting {
    /// A waiting state whose reason makes `readiness` answer 500.
    pub(crate) fn new(readiness: &Readiness) -> Waiting {
        let waiting = Waiting::default();
        let reason = waiting.reason.clone();
        readiness.add_check(move || {
            reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|r| format!("waiting: {r}"))
        });
        waiting
    }

    /// Now waiting for `reason`; logged and sent to systemd when it differs from the last one,
    /// so a retry every second does not repeat itself.
    fn set(&self, reason: String) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        self.waited.store(true, Ordering::Relaxed);
        if current.as_deref() != Some(reason.as_str()) {
            tracing::warn!("not ready, retrying: {reason}");
            systemd::waiting(&reason, EXTEND_BY);
            *current = Some(reason);
        }
    }

    /// Nothing awaited any more.
    fn clear(&self) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = current.take() {
            tracing::info!("no longer waiting: {reason}");
        }
    }

    /// Whether start-up had to wait for anything.
    pub(crate) fn waited(&self) -> bool {
        self.waited.load(Ordering::Relaxed)
    }

    fn is_waiting(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// While start-up lasts (until the returned guard is dropped), keeps systemd's start
    /// timeout from expiring whenever something is awaited.
    pub(crate) fn extend_start_timeout(&self) -> AbortOnDrop {
        let waiting = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(EXTEND_EVERY);
            loop {
                ticker.tick().await;
                if waiting.is_waiting() {
                    systemd::extend_start(EXTEND_BY);
                }
            }
        }))
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a failed attempt ends start-up.
pub(crate) enum Failure {
    /// Time or another agent can cure it: say why, pause, try again.
    Wait(StartupError),
    /// Only a person can: exit 78 with this error.
    Fatal(StartupError),
}

/// The pauses between tries: doubling from `first` up to `max` (equal for a fixed period).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pauses {
    next: Duration,
    max: Duration,
}

impl Pauses {
    /// Backoff for a port in use.
    pub(crate) fn bind() -> Pauses {
        Pauses {
            next: BIND_RETRY_FIRST,
            max: BIND_RETRY_MAX,
        }
    }

    /// A fixed period.
    pub(crate) fn every(period: Duration) -> Pauses {
        Pauses {
            next: period,
            max: period,
        }
    }

    fn next(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }
}

/// Runs `attempt` until it succeeds or fails fatally, pausing after each curable failure with
/// its reason on readiness and in systemd's STATUS.
pub(crate) async fn until_ready<T, F, Fut>(
    waiting: &Waiting,
    mut pauses: Pauses,
    mut attempt: F,
) -> Result<T, StartupError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    loop {
        match attempt().await {
            Ok(value) => {
                waiting.clear();
                return Ok(value);
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Wait(reason)) => {
                waiting.set(reason.to_string());
                tokio::time::sleep(pauses.next()).await;
            }
        }
    }
}

/// Checks everything in `config` that only a person can fix and that would otherwise surface
/// only after a wait (for a certificate, a port): unsafe listeners, plugins, identity paths
/// that can never exist, original source without the capability it needs (found now rather
/// than as every inbound connection failing). Warnings are left to the proxy's start, which
/// logs them once.
pub(crate) fn check_config(config: &MeshdConfig) -> Result<(), StartupError> {
    config.check()?;
    PluginRegistry::builtin().build(&config.plugins)?;
    if config.redirect.original_source {
        meshd_redirect::verify_can_be_transparent(config.redirect.mark)
            .map_err(StartupError::OriginalSource)?;
    }
    config
        .identity
        .check_paths()
        .map_err(StartupError::Identity)?;
    crate::identities::workload_sources(config).map_err(StartupError::Identity)?;
    Ok(())
}

/// Whether a failed bind may succeed later without a configuration change: the port is held
/// by another socket. Anything else (an address this machine does not have, a privileged port)
/// needs a person.
pub(crate) fn port_in_use(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrInUse
}

/// Binds `addr` for `what`, retrying with backoff while the port is in use.
pub(crate) async fn bind(
    waiting: &Waiting,
    addr: SocketAddr,
    what: &str,
) -> Result<TcpListener, StartupError> {
    until_ready(waiting, Pauses::bind(), || async move {
        TcpListener::bind(addr).await.map_err(|source| {
            let in_use = port_in_use(&source);
            let error = StartupError::Listen {
                addr,
                what: what.to_string(),
                source,
            };
            if in_use {
                Failure::Wait(error)
            } else {
                Failure::Fatal(error)
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_five_seconds() {
        let mut pauses = Pauses::bind();
        let seen: Vec<u64> = (0..8).map(|_| pauses.next().as_millis() as u64).collect();
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        let mut fixed = Pauses::every(IDENTITY_RETRY);
        assert_eq!(
            (fixed.next(), fixed.next()),
            (IDENTITY_RETRY, IDENTITY_RETRY)
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_retried_until_freed_and_readiness_says_so() {
        let readiness = Readiness::default();
        let waiting = Waiting::new(&readiness);
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let bound = tokio::spawn({
            let waiting = waiting.clone();
            async move { bind(&waiting, addr, "test").await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while readiness.blockers().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never waited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let blockers = readiness.blockers();
        assert!(
            blockers[0].starts_with(&format!("waiting: cannot listen on {addr} (test): ")),
            "{blockers:?}"
        );
        drop(held);
        let listener = bound.await.unwrap().unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
        assert!(readiness.blockers().is_empty());
    }

    #[tokio::test]
    async fn an_address_not_ours_is_fatal_at_once() {
        let waiting = Waiting::default();
        // TEST-NET-1 (RFC 5737) is assigned to no interface here: EADDRNOTAVAIL.
        let addr: SocketAddr = "192.0.2.1:0".parse().unwrap();
        let e = bind(&waiting, addr, "test").await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot listen on 192.0.2.1:0 (test): "),
            "{e}"
        );
        // The OS error is kept as the cause, not only as text.
        let StartupError::Listen { source, .. } = &e else {
            panic!("expected a listen error, got {e:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::AddrNotAvailable);
        assert!(!waiting.is_waiting());
    }
}

#[cfg(test)]
mod error_tests {
    use std::error::Error as _;

    use crate::{MeshdConfig, StartupError, load_state};

    #[test]
    fn a_directory_that_does_not_load_keeps_its_problems() {
        // Bad YAML: the load error itself (with the file and line) is what start-up ends with,
        // and its message is unchanged.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: [unclosed\n").unwrap();
        let config = MeshdConfig {
            config_dir: dir.path().to_path_buf(),
            ..MeshdConfig::default()
        };
        let Err(load) = load_state(&config, 1, &Default::default()) else {
            panic!("a broken file loaded");
        };
        assert!(load.errors().next().is_some(), "{load}");
        let shown = load.to_string();
        assert!(shown.contains("bad.yaml"), "{shown}");
        let startup = StartupError::from(load.clone());
        assert_eq!(startup.to_string(), shown);
        assert!(matches!(&startup, StartupError::Load(l) if *l == load));
    }

    #[test]
    fn an_identity_failure_keeps_the_identity_error_as_its_source() {
        // What `start_identity` and `check_config` end with: the message says "identity: …",
        // and the identity crate's error is there to match on.
        let cause = meshd_identity::Error::NoPeerCertificate;
        let startup = StartupError::Identity(cause.clone());
        assert_eq!(startup.to_string(), format!("identity: {cause}"));
        let source = startup.source().map(ToString::to_string);
        assert_eq!(source, Some(cause.to_string()));
    }
}
