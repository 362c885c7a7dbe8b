//! `identity.spire`: the SVID and bundles from a SPIRE agent's SPIFFE Workload API (gRPC over
//! the agent's Unix socket), streamed into the same swap as the file sources: each X.509
//! context the agent sends is validated as a [`CredentialSet`] and swapped in; one that does
//! not validate is logged and counted, and the previous set stays. A broken stream (the agent
//! stopped or restarted) keeps the current set and reconnects with backoff.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::credentials::{CredentialSet, Credentials};
use crate::expiry::ExpiryAlarm;
use crate::watch::{IdentityManager, ManagerOptions, RotationStats, log_loaded, spawn};
use crate::{Error, IdentityHandle, SpiffeId, TrustBundle, TrustDomain};

/// A SPIRE agent's Workload API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpireSource {
    /// The agent's Workload API socket, `unix:///run/spire/agent.sock` (SPIFFE's endpoint form).
    pub socket: String,
    /// The SPIFFE ID to use among those the agent issues to meshd; if unset, the first (the
    /// Workload API's default SVID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
}

/// How long one attempt may wait for the agent's first X.509 context: an agent that accepts
/// and never answers must not hold start-up (the daemon retries every second, not ready).
const FIRST_CONTEXT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnection backoff after the stream broke: from one second (the daemon's identity retry)
/// doubling to 30 s, so a long outage costs a connection attempt every half minute.
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

type ContextStream = Pin<Box<dyn Stream<Item = Result<X509Context, WorkloadApiError>> + Send>>;

/// Connects, takes the first X.509 context (failing if there is none or it does not
/// validate), then follows the stream in a task.
pub(crate) async fn start_spire(
    source: SpireSource,
    options: ManagerOptions,
) -> Result<IdentityManager, Error> {
    let (set, stream) = first_context(&source).await?;
    log_loaded(&set, "loaded identity from the SPIRE agent");
    let (tx, rx) = watch::channel(Arc::new(set));
    let stats = Arc::new(RotationStats::default());
    let task = spawn(follow(source, stream, tx, stats.clone(), options))?;
    Ok(IdentityManager {
        handle: IdentityHandle::from_watch(rx),
        stats,
        // Nothing to re-read: the agent pushes every change.
        reload: Arc::new(Notify::new()),
        task,
        _watcher: None,
    })
}

/// One attempt: connect, open the stream, validate its first context.
async fn first_context(source: &SpireSource) -> Result<(CredentialSet, ContextStream), Error> {
    let attempt = async {
        let client = WorkloadApiClient::connect_to(&source.socket)
            .await
            .map_err(|e| agent_error(source, &e))?;
        let mut stream: ContextStream = Box::pin(
            client
                .stream_x509_contexts()
                .await
                .map_err(|e| agent_error(source, &e))?,
        );
        match stream.next().await {
            Some(Ok(context)) => Ok((to_set(&context, source)?, stream)),
            Some(Err(e)) => Err(agent_error(source, &e)),
            None => Err(workload_api(source, "the agent closed the stream".into())),
        }
    };
    tokio::time::timeout(FIRST_CONTEXT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(workload_api(
                source,
                format!("no X.509-SVID within {FIRST_CONTEXT_TIMEOUT:?}"),
            ))
        })
}

/// Swaps in each valid context; on a broken stream keeps the set and reconnects.
async fn follow(
    source: SpireSource,
    mut stream: ContextStream,
    tx: watch::Sender<Arc<CredentialSet>>,
    stats: Arc<RotationStats>,
    options: ManagerOptions,
) {
    let mut expiry = ExpiryAlarm::new(options.warn_before_expiry);
    let mut backoff = RECONNECT_MIN;
    loop {
        let deadline = expiry.next_deadline(&tx.borrow());
        let next = tokio::select! {
            next = stream.next() => next,
            () = crate::watch::sleep_until_opt(deadline) => {
                expiry.fire(&tx.borrow());
                continue;
            }
        };
        match next {
            Some(Ok(context)) => {
                backoff = RECONNECT_MIN;
                match to_set(&context, &source) {
                    Ok(set) => {
                        log_loaded(&set, "rotated identity from the SPIRE agent");
                        stats.rotations.fetch_add(1, Ordering::Relaxed);
                        tx.send_replace(Arc::new(set));
                    }
                    Err(e) => {
                        stats.failed_rotations.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "refused an SVID from the SPIRE agent; keeping the current one");
                    }
                }
            }
            broken => {
                let reason = match broken {
                    Some(Err(e)) => e.to_string(),
                    _ => "the agent closed the stream".to_string(),
                };
                warn!(socket = %source.socket, %reason, "SPIRE agent stream broke; keeping the current SVID until it expires, reconnecting");
                stream = reconnect(&source, &mut backoff).await;
            }
        }
    }
}

/// Reconnects with backoff until a stream opens; its first context arrives through `follow`.
async fn reconnect(source: &SpireSource, backoff: &mut Duration) -> ContextStream {
    loop {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(RECONNECT_MAX);
        let opened = async {
            let client = WorkloadApiClient::connect_to(&source.socket).await?;
            client.stream_x509_contexts().await
        };
        match opened.await {
            Ok(stream) => {
                info!(socket = %source.socket, "reconnected to the SPIRE agent");
                return Box::pin(stream);
            }
            Err(e) => warn!(socket = %source.socket, error = %e, "SPIRE agent still unreachable"),
        }
    }
}

/// The context's SVID (the configured ID's, or the default) and all its bundles, validated.
fn to_set(context: &X509Context, source: &SpireSource) -> Result<CredentialSet, Error> {
    let svid = match &source.spiffe_id {
        Some(want) => context
            .svids()
            .iter()
            .find(|svid| svid.spiffe_id().to_string() == want.to_string()),
        None => context.default_svid(),
    }
    .ok_or_else(|| {
        let ids: Vec<String> = context
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        workload_api(
            source,
            format!("no X.509-SVID with the wanted ID among {ids:?}"),
        )
    })?;
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let credentials = Credentials::new(chain, key)?;
    let mut bundle = TrustBundle::default();
    for (trust_domain, roots) in context.bundle_set().iter() {
        let roots = roots
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        bundle.insert(TrustDomain::new(trust_domain.as_str())?, roots)?;
    }
    CredentialSet::new(credentials, bundle, source.spiffe_id.as_ref())
}

fn agent_error(source: &SpireSource, e: &WorkloadApiError) -> Error {
    workload_api(source, e.to_string())
}

fn workload_api(source: &SpireSource, reason: String) -> Error {
    Error::WorkloadApi {
        socket: source.socket.clone(),
        reason,
    }
}
