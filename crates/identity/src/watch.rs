//! The identity manager: loads the set, watches for rotations, swaps atomically, keeps stats.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::credentials::CredentialSet;
use crate::expiry::ExpiryAlarm;
use crate::source::{DevCaSource, FilesSource, IdentitySource};
use crate::{DevCa, Error, dev_ca};

/// Default debounce: ztunnel waits 2 s after the last event for certificate files, long enough
/// for an agent to finish writing cert, key and bundle one after the other.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(2);
/// Default full re-read interval, a safety net for lost inotify events (queue overflow, NFS).
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(60);

/// A cheap, cloneable view of the current credential set; TLS configs read it per handshake.
#[derive(Debug, Clone)]
pub struct IdentityHandle {
    rx: watch::Receiver<Arc<CredentialSet>>,
}

impl IdentityHandle {
    /// A handle that always returns `set` (tests, benches, one-shot tools).
    pub fn fixed(set: CredentialSet) -> Self {
        // A receiver keeps the last value after its sender is dropped.
        let (_tx, rx) = watch::channel(Arc::new(set));
        IdentityHandle { rx }
    }

    /// A handle that follows `rx`: whoever holds its sender rotates the set (tests that rotate
    /// roots or certificates without files, or another identity source).
    pub fn from_watch(rx: watch::Receiver<Arc<CredentialSet>>) -> Self {
        IdentityHandle { rx }
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<CredentialSet> {
        self.rx.borrow().clone()
    }

    /// A receiver that is notified on every rotation (e.g. to re-key pooled connections).
    pub fn subscribe(&self) -> watch::Receiver<Arc<CredentialSet>> {
        self.rx.clone()
    }

    /// When the current SVID expires, for metrics.
    pub fn not_after(&self) -> OffsetDateTime {
        self.rx.borrow().not_after()
    }
}

/// Rotation counters, for metrics.
#[derive(Debug, Default)]
pub struct RotationStats {
    pub(crate) rotations: AtomicU64,
    pub(crate) failed_rotations: AtomicU64,
}

impl RotationStats {
    /// Sets swapped in since start (the initial load not included).
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// Changed sets that failed validation and were rejected (the old set stayed in force).
    pub fn failed_rotations(&self) -> u64 {
        self.failed_rotations.load(Ordering::Relaxed)
    }
}

/// Tunables of the [`IdentityManager`].
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Quiet period after the last file event before reloading.
    pub debounce: Duration,
    /// Interval of the safety-net re-read of the files.
    pub rescan: Duration,
    /// Warn when less than this remains; `None` = a quarter of the SVID's lifetime, which
    /// suits both 1 h SPIRE SVIDs and 90 d cert-manager ones (both renew well before that).
    pub warn_before_expiry: Option<Duration>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            debounce: DEFAULT_DEBOUNCE,
            rescan: DEFAULT_RESCAN,
            warn_before_expiry: None,
        }
    }
}

/// Owns the current identity: loads it at start (failing if it is invalid), then keeps it
/// fresh from its source. Dropping the manager stops watching; handles keep the last set.
pub struct IdentityManager {
    pub(crate) handle: IdentityHandle,
    pub(crate) stats: Arc<RotationStats>,
    pub(crate) reload: Arc<Notify>,
    pub(crate) task: tokio::task::JoinHandle<()>,
    pub(crate) _watcher: Option<Debouncer<notify::RecommendedWatcher, RecommendedCache>>,
}

impl IdentityManager {
    /// Starts with default options; must be called within a tokio runtime.
    pub async fn start(source: &IdentitySource) -> Result<Self, Error> {
        IdentityManager::start_with(source, ManagerOptions::default()).await
    }

    /// Starts with explicit options; must be called within a tokio runtime.
    pub async fn start_with(
        source: &IdentitySource,
        options: ManagerOptions,
    ) -> Result<Self, Error> {
        match source {
            IdentitySource::Files(files) => start_files(files.clone(), options),
            IdentitySource::SpiffeHelper(helper) => start_files(FilesSource::from(helper), options),
            IdentitySource::IstioCa(ca) => start_files(FilesSource::from(ca), options),
            IdentitySource::DevCa(dev) => start_dev_ca(dev.clone(), options),
            IdentitySource::Spire(spire) => crate::spire::start_spire(spire.clone(), options).await,
            IdentitySource::SpireDelegated(delegated) => {
                crate::spire::start_spire_delegated(delegated.clone(), options).await
            }
        }
    }

    /// The handle TLS configs read from.
    pub fn handle(&self) -> IdentityHandle {
        self.handle.clone()
    }

    /// Rotation counters.
    pub fn stats(&self) -> Arc<RotationStats> {
        self.stats.clone()
    }

    /// When the current SVID expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.handle.not_after()
    }

    /// Re-reads the source now (for SIGHUP); a dev CA re-issues.
    pub fn reload(&self) {
        self.reload.notify_one();
    }
}

impl Drop for IdentityManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_files(source: FilesSource, options: ManagerOptions) -> Result<IdentityManager, Error> {
    // Watch before the first read, so a change landing in between is not missed.
    let reload = Arc::new(Notify::new());
    let watcher = watch_dirs(&source.watch_dirs(), options.debounce, reload.clone())?;
    let raw = source.read()?;
    let mut last_seen = LastSeen {
        fingerprint: raw.fingerprint(),
        valid_from: None,
    };
    let set = source.validate(raw)?;
    log_loaded(&set, "loaded identity");
    let (tx, rx) = watch::channel(Arc::new(set));
    let stats = Arc::new(RotationStats::default());

    let task_stats = stats.clone();
    let task_reload = reload.clone();
    let (source, tx) = (Arc::new(source), Arc::new(tx));
    let task = spawn(async move {
        let mut expiry = ExpiryAlarm::new(options.warn_before_expiry);
        loop {
            let deadline = expiry.next_deadline(&tx.borrow());
            tokio::select! {
                () = task_reload.notified() => {}
                () = tokio::time::sleep(options.rescan) => {}
                () = sleep_until_opt(last_seen.retry_deadline()) => {}
                () = sleep_until_opt(deadline) => {
                    expiry.fire(&tx.borrow());
                    continue;
                }
            }
            last_seen = reload_off_runtime(&source, last_seen, &tx, &task_stats).await;
        }
    })?;
    Ok(IdentityManager {
        handle: IdentityHandle { rx },
        stats,
        reload,
        task,
        _watcher: Some(watcher),
    })
}

/// Re-checks a set that was refused as not yet valid no sooner than this after the previous
/// check: validity is in whole seconds, so waking a moment early must not become a busy loop.
const NOT_YET_VALID_RETRY_FLOOR: Duration = Duration::from_secs(1);

/// What the last look at the files found, so that repeats are cheap and quiet.
struct LastSeen {
    fingerprint: u64,
    /// Set when that state was refused for a reason time alone cures (a certificate not valid
    /// yet: clock skew between the issuer and this host). Such a state is re-validated on every
    /// wake-up and at the moment it becomes valid, where a permanently bad one is not looked at
    /// again until the files change.
    valid_from: Option<OffsetDateTime>,
}

impl LastSeen {
    /// When to re-validate a not-yet-valid set without waiting for the rescan.
    fn retry_deadline(&self) -> Option<Instant> {
        let valid_from = self.valid_from?;
        let wait = Duration::try_from(valid_from - OffsetDateTime::now_utc())
            .unwrap_or(Duration::ZERO)
            .max(NOT_YET_VALID_RETRY_FLOOR);
        // Far beyond any Instant (a certificate dated year 9999): the rescan still retries.
        Instant::now().checked_add(wait)
    }
}

/// [`reload_files`] on tokio's blocking pool: it reads files (a slow or hung filesystem) and
/// verifies signatures, which must not stall the data plane's workers it shares a runtime with.
async fn reload_off_runtime(
    source: &Arc<FilesSource>,
    last_seen: LastSeen,
    tx: &Arc<watch::Sender<Arc<CredentialSet>>>,
    stats: &Arc<RotationStats>,
) -> LastSeen {
    let (source, tx, stats) = (source.clone(), tx.clone(), stats.clone());
    let attempt = tokio::task::spawn_blocking(move || {
        let mut seen = last_seen;
        reload_files(&source, &mut seen, &tx, &stats);
        seen
    });
    attempt.await.unwrap_or_else(|e| {
        warn!(error = %e, "identity reload failed; the files are read again on the next change");
        // Nothing seen: the next wake-up reads and validates the files afresh.
        LastSeen {
            fingerprint: 0,
            valid_from: None,
        }
    })
}

/// One reload attempt: skip if nothing changed (unless the unchanged state is waiting to become
/// valid), else validate the whole set and swap or reject.
fn reload_files(
    source: &FilesSource,
    last_seen: &mut LastSeen,
    tx: &watch::Sender<Arc<CredentialSet>>,
    stats: &RotationStats,
) {
    let read = source.read();
    let fingerprint = match &read {
        Ok(raw) => raw.fingerprint(),
        Err(e) => hash_error(e),
    };
    // Events for unrelated files, and repeats of a rejected state, change nothing: no log spam,
    // no double-counted failures. A state refused only for its dates is the exception.
    let repeat = fingerprint == last_seen.fingerprint;
    if repeat && last_seen.valid_from.is_none() {
        return;
    }
    match read.and_then(|raw| source.validate(raw)) {
        Ok(set) => {
            log_loaded(&set, "rotated identity");
            stats.rotations.fetch_add(1, Ordering::Relaxed);
            tx.send_replace(Arc::new(set));
            *last_seen = LastSeen {
                fingerprint,
                valid_from: None,
            };
        }
        Err(e) => {
            let valid_from = e.valid_from();
            *last_seen = LastSeen {
                fingerprint,
                valid_from,
            };
            if repeat {
                // Counted and logged when first seen; this is only the retry.
                debug!(error = %e, "changed identity files still not valid");
                return;
            }
            stats.failed_rotations.fetch_add(1, Ordering::Relaxed);
            let current = tx.borrow();
            match valid_from {
                Some(at) => warn!(
                    error = %e,
                    keeping = %current.id(),
                    keeping_not_after = %current.not_after(),
                    retry_at = %at,
                    "changed identity files are not valid yet (clock skew?); the previous \
                     certificate stays in force and the new one is retried until it is valid"
                ),
                None => warn!(
                    error = %e,
                    keeping = %current.id(),
                    keeping_not_after = %current.not_after(),
                    "rejected changed identity files; the previous certificate stays in force \
                     (retried on the next change)"
                ),
            }
        }
    }
}

fn start_dev_ca(source: DevCaSource, options: ManagerOptions) -> Result<IdentityManager, Error> {
    let cert_path = source.dir.join(dev_ca::CA_CERT_FILE);
    let ca = if cert_path.exists() {
        DevCa::load(&source.dir)?
    } else {
        info!(dir = %source.dir.display(), trust_domain = %source.trust_domain,
            "creating a development CA (not for production)");
        DevCa::init(source.trust_domain.as_str(), &source.dir)?
    };
    if ca.trust_domain() != &source.trust_domain {
        return Err(Error::Config {
            field: "devCa.trustDomain".into(),
            reason: format!(
                "{} but the CA in {} is for {}",
                source.trust_domain,
                cert_path.display(),
                ca.trust_domain()
            ),
        }
        .in_file(&cert_path));
    }
    let issue = {
        let (ns, sa, ttl) = (
            source.namespace.clone(),
            source.service_account.clone(),
            source.ttl,
        );
        move |ca: &DevCa| {
            ca.issue(&ns, &sa, ttl)
                .and_then(|svid| svid.credential_set())
        }
    };
    let set = issue(&ca)?;
    log_loaded(&set, "issued identity from the development CA");
    let (tx, rx) = watch::channel(Arc::new(set));
    let stats = Arc::new(RotationStats::default());
    let reload = Arc::new(Notify::new());

    // Half-life renewal, as ztunnel's SecretManager; retry sooner after a failure.
    let renew_after = source.ttl / 2;
    let retry_after = (source.ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let task_stats = stats.clone();
    let task_reload = reload.clone();
    let task = spawn(async move {
        let mut expiry = ExpiryAlarm::new(options.warn_before_expiry);
        // `None`: a TTL so long that half of it lies beyond Instant's range; never renewed.
        let mut renew_at = Instant::now().checked_add(renew_after);
        loop {
            let deadline = expiry.next_deadline(&tx.borrow());
            tokio::select! {
                () = task_reload.notified() => {}
                () = sleep_until_opt(renew_at) => {}
                () = sleep_until_opt(deadline) => {
                    expiry.fire(&tx.borrow());
                    continue;
                }
            }
            match issue(&ca) {
                Ok(set) => {
                    log_loaded(&set, "re-issued identity from the development CA");
                    task_stats.rotations.fetch_add(1, Ordering::Relaxed);
                    tx.send_replace(Arc::new(set));
                    renew_at = Instant::now().checked_add(renew_after);
                }
                Err(e) => {
                    task_stats.failed_rotations.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "development CA could not re-issue; keeping the current certificate");
                    renew_at = Instant::now().checked_add(retry_after);
                }
            }
        }
    })?;
    Ok(IdentityManager {
        handle: IdentityHandle { rx },
        stats,
        reload,
        task,
        _watcher: None,
    })
}

/// Watches each directory non-recursively and turns any debounced batch into a reload.
fn watch_dirs(
    dirs: &[PathBuf],
    debounce: Duration,
    reload: Arc<Notify>,
) -> Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>, Error> {
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        // Event kinds are not interpreted: renames, symlink swaps and writes all mean "look
        // again", and the fingerprint makes a needless look cheap.
        if let Err(errors) = result {
            for e in errors {
                warn!(error = %e, "file watch error; relying on the periodic rescan");
            }
        }
        reload.notify_one();
    })
    .map_err(|e| Error::Manager {
        reason: format!("cannot create file watcher: {e}"),
    })?;
    for dir in dirs {
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| Error::Io {
                path: dir.clone(),
                message: format!("cannot watch directory: {e}"),
            })?;
    }
    Ok(debouncer)
}

pub(crate) fn spawn<F>(future: F) -> Result<tokio::task::JoinHandle<()>, Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Handle::try_current().map_err(|e| Error::Manager {
        reason: format!("needs a tokio runtime: {e}"),
    })?;
    Ok(rt.spawn(future))
}

fn hash_error(e: &Error) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    e.to_string().hash(&mut h);
    h.finish()
}

pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn log_loaded(set: &CredentialSet, msg: &'static str) {
    let domains: Vec<&str> = set.bundle().trust_domains().map(|td| td.as_str()).collect();
    info!(
        id = %set.id(),
        serial = %hex(set.credentials().serial()),
        not_after = %set.not_after(),
        trust_domains = ?domains,
        "{msg}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
