//! meshd's identity from a SPIRE agent, through either of its two APIs:
//! - `identity.spire` ([`SpireSource`], `workload.rs`): the SPIFFE Workload API, meshd's own
//!   SVID (the agent attests meshd's process);
//! - `identity.spireDelegated` ([`SpireDelegatedSource`], `delegated.rs`): SPIRE's Delegated
//!   Identity API on the agent's admin socket, the SVID of the workload named by selectors
//!   (meshd must be one of the agent's `authorized_delegates`; the agent checks that).
//!
//! Both give a stream of [`CredentialSet`]s that this module follows into the same swap as
//! the file sources: each set is validated and swapped in; one that does not validate is
//! logged and counted, and the previous set stays. A broken stream (the agent stopped or
//! restarted) keeps the current set and reconnects with backoff.

mod delegated;
mod proto;
mod workload;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::credentials::CredentialSet;
use crate::expiry::ExpiryAlarm;
use crate::watch::{IdentityManager, ManagerOptions, RotationStats, log_loaded, spawn};
use crate::{Error, IdentityHandle};

pub use delegated::{Selector, SpireDelegatedSource};
pub use workload::SpireSource;

/// How long one attempt may wait for the agent's first SVID: an agent that accepts and never
/// answers must not hold start-up (the daemon retries every second, not ready).
const FIRST_SET_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnection backoff after the stream broke: from one second (the daemon's identity retry)
/// doubling to 30 s, so a long outage costs a connection attempt every half minute.
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// What an agent's stream yields: a set (or why an update was refused: the previous set
/// stays), or `Err(reason)` when the stream broke and must be reopened.
type Update = Result<Result<CredentialSet, Error>, String>;

/// The stream of [`Update`]s one connection to the agent gives.
type Updates = Pin<Box<dyn Stream<Item = Update> + Send>>;

/// One of the agent's APIs, as the follow loop sees it.
trait Agent: Send + Sync + 'static {
    /// The socket, for logs.
    fn socket(&self) -> &str;
    /// Connects and opens the stream(s); an error names the socket and what was refused.
    fn open(&self) -> impl Future<Output = Result<Updates, Error>> + Send;
    /// An error about this agent (its socket named).
    fn error(&self, reason: String) -> Error;
}

/// Connects, takes the first set (failing if there is none or it does not validate), then
/// follows the stream in a task.
async fn start<A: Agent>(agent: A, options: ManagerOptions) -> Result<IdentityManager, Error> {
    let (set, updates) = first_set(&agent).await?;
    log_loaded(&set, "loaded identity from the SPIRE agent");
    let (tx, rx) = watch::channel(Arc::new(set));
    let stats = Arc::new(RotationStats::default());
    let task = spawn(follow(agent, updates, tx, stats.clone(), options))?;
    Ok(IdentityManager {
        handle: IdentityHandle::from_watch(rx),
        stats,
        // Nothing to re-read: the agent pushes every change.
        reload: Arc::new(Notify::new()),
        task,
        _watcher: None,
    })
}

/// One attempt: connect, open the stream, validate its first set.
async fn first_set<A: Agent>(agent: &A) -> Result<(CredentialSet, Updates), Error> {
    let attempt = async {
        let mut updates = agent.open().await?;
        match updates.next().await {
            Some(Ok(Ok(set))) => Ok((set, updates)),
            Some(Ok(Err(refused))) => Err(refused),
            Some(Err(reason)) => Err(agent.error(reason)),
            None => Err(agent.error("the agent closed the stream".into())),
        }
    };
    tokio::time::timeout(FIRST_SET_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(agent.error(format!("no X.509-SVID within {FIRST_SET_TIMEOUT:?}"))))
}

/// Swaps in each valid set; on a broken stream keeps the set and reconnects.
async fn follow<A: Agent>(
    agent: A,
    mut updates: Updates,
    tx: watch::Sender<Arc<CredentialSet>>,
    stats: Arc<RotationStats>,
    options: ManagerOptions,
) {
    let mut expiry = ExpiryAlarm::new(options.warn_before_expiry);
    let mut backoff = RECONNECT_MIN;
    loop {
        let deadline = expiry.next_deadline(&tx.borrow());
        let next = tokio::select! {
            next = updates.next() => next,
            () = crate::watch::sleep_until_opt(deadline) => {
                expiry.fire(&tx.borrow());
                continue;
            }
        };
        match next {
            Some(Ok(Ok(set))) if set.same_as(&tx.borrow()) => {
                // The agent sends its current set again after every reconnect: nothing
                // rotated, and live peers need no re-verification.
                backoff = RECONNECT_MIN;
                debug!(socket = %agent.socket(), "the SPIRE agent sent the current SVID again");
            }
            Some(Ok(Ok(set))) => {
                backoff = RECONNECT_MIN;
                log_loaded(&set, "rotated identity from the SPIRE agent");
                stats.rotations.fetch_add(1, Ordering::Relaxed);
                tx.send_replace(Arc::new(set));
            }
            Some(Ok(Err(e))) => {
                backoff = RECONNECT_MIN;
                stats.failed_rotations.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "refused an SVID from the SPIRE agent; keeping the current one");
            }
            broken => {
                let reason = match broken {
                    Some(Err(reason)) => reason,
                    _ => "the agent closed the stream".to_string(),
                };
                warn!(socket = %agent.socket(), %reason, "SPIRE agent stream broke; keeping the current SVID until it expires, reconnecting");
                updates = reconnect(&agent, &mut backoff).await;
            }
        }
    }
}

/// Reconnects with backoff until a stream opens; its first set arrives through `follow`.
async fn reconnect<A: Agent>(agent: &A, backoff: &mut Duration) -> Updates {
    loop {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(RECONNECT_MAX);
        match agent.open().await {
            Ok(updates) => {
                info!(socket = %agent.socket(), "reconnected to the SPIRE agent");
                return updates;
            }
            Err(e) => warn!(socket = %agent.socket(), error = %e, "SPIRE agent still unreachable"),
        }
    }
}

/// The path of a `unix:///absolute/path` endpoint, or `None`.
fn unix_socket_path(endpoint: &str) -> Option<&str> {
    endpoint
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/'))
}

/// Starts a manager following the Workload API.
pub(crate) async fn start_spire(
    source: SpireSource,
    options: ManagerOptions,
) -> Result<IdentityManager, Error> {
    start(source, options).await
}

/// Starts a manager following the Delegated Identity API.
pub(crate) async fn start_spire_delegated(
    source: SpireDelegatedSource,
    options: ManagerOptions,
) -> Result<IdentityManager, Error> {
    start(delegated::Delegated::new(source), options).await
}

pub(crate) use delegated::check_delegated;
pub(crate) use workload::check_socket;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevCa;

    /// An agent whose one stream yields `sets` in order, then stays open.
    struct Scripted(std::sync::Mutex<Option<Vec<CredentialSet>>>);

    impl Agent for Scripted {
        fn socket(&self) -> &str {
            "unix:///scripted"
        }
        fn open(&self) -> impl Future<Output = Result<Updates, Error>> + Send {
            let sets = self
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            let updates: Updates = Box::pin(
                futures::stream::iter(sets.into_iter().map(|s| Ok(Ok(s))))
                    .chain(futures::stream::pending()),
            );
            async move { Ok(updates) }
        }
        fn error(&self, reason: String) -> Error {
            Error::Config {
                field: "scripted".into(),
                reason,
            }
        }
    }

    // After a reconnect the agent repeats its current SVID: no rotation is counted and nothing
    // is swapped; a new SVID still rotates.
    #[tokio::test]
    async fn the_same_set_again_is_not_a_rotation() {
        let ca = DevCa::generate("spire.test").expect("CA");
        let issue = || {
            ca.issue("mesh", "meshd", Duration::from_secs(3600))
                .and_then(|svid| svid.credential_set())
                .expect("SVID")
        };
        let (first, renewed) = (issue(), issue());
        assert!(first.same_as(&first.clone()));
        assert!(!first.same_as(&renewed), "a new key and certificate");
        let agent = Scripted(std::sync::Mutex::new(Some(vec![
            first.clone(),
            first.clone(),
            renewed.clone(),
        ])));
        let manager = start(agent, ManagerOptions::default())
            .await
            .expect("start");
        let handle = manager.handle();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !handle.current().same_as(&renewed) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "renewed set never swapped in"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            manager.stats().rotations(),
            1,
            "the repeated set is not counted"
        );
    }

    // A changed bundle alone (same SVID, new roots for a trust domain) is a change.
    #[test]
    fn a_changed_bundle_is_not_the_same_set() {
        let ca = DevCa::generate("spire.test").expect("CA");
        let other = DevCa::generate("other.test").expect("second CA");
        let svid = ca
            .issue("mesh", "meshd", Duration::from_secs(3600))
            .expect("SVID");
        let set = svid.credential_set().expect("set");
        let mut bundle = set.bundle().clone();
        let td = crate::TrustDomain::new("other.test").expect("trust domain");
        let roots = other.bundle().expect("bundle");
        let federated = roots.roots(&td).expect("roots").to_vec();
        bundle.insert(td, federated).expect("insert");
        let widened =
            CredentialSet::new(set.credentials().clone(), bundle, None).expect("still valid");
        assert!(!set.same_as(&widened));
    }
}
