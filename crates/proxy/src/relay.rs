//! What a stack hands back: a connection every stage allowed and connected, ready to be
//! relayed.
//!
//! A stack decides and connects; it does not copy. Its layers' futures (each sized for the
//! largest state it passes through: resolution, authorization, the dial, the TLS handshake)
//! therefore end when the connection is established, and a held connection costs only what
//! the relay needs: its two streams, its record and this struct. While the copy ran inside the
//! terminal stage, every layer's future stayed allocated for the connection's lifetime (about
//! 4.5 KB of each held connection on the receiving side, measured with heaptrack in
//! benches/e2e).
//!
//! What a stage needs to keep until the connection ends it puts here: a guard to drop at the
//! end ([`Relay::hold`], as the connection limit's slot), or a re-check under each new
//! configuration ([`Relay::recheck`], as inbound authorization).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use meshd_record::{Meters, RecordHandle};
use tokio::sync::watch;

use crate::conn::{BoxIo, Io};
use crate::error::ProxyError;
use crate::metered::{Metered, Side};
use crate::state::ProxyState;

/// Decides whether an established connection may stay open under a new configuration: `Err`
/// closes it with that error.
pub type Check = Box<dyn Fn(&ProxyState) -> Result<(), ProxyError> + Send + Sync>;

/// An established connection, not yet relayed. Dropping it closes both sides.
pub struct Relay {
    downstream: BoxIo,
    upstream: BoxIo,
    record: RecordHandle,
    meters: Meters,
    recheck: Option<(watch::Receiver<Arc<ProxyState>>, Check)>,
    held: Vec<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("rechecked", &self.recheck.is_some())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Both accepted sides of a connection; the record is marked established here, which hands
    /// out the sinks' byte meters.
    pub fn new(downstream: BoxIo, upstream: BoxIo, record: RecordHandle) -> Relay {
        let meters = record.established();
        Relay {
            downstream,
            upstream,
            record,
            meters,
            recheck: None,
            held: Vec::new(),
        }
    }

    /// Counts `bytes` the downstream side sent that went upstream before the relay: an
    /// outbound tunnel's first bytes, sent with its CONNECT.
    pub fn sent_ahead(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        for meter in self.meters.iter() {
            meter.downstream_bytes(bytes);
        }
        self.record.update(|r| r.bytes_in += bytes);
    }

    /// Keeps `guard` until the connection ends (however it ends), then drops it.
    pub fn hold(&mut self, guard: impl Any + Send + Sync) {
        self.held.push(Box::new(guard));
    }

    /// Re-checks the connection with `check` under every configuration `updates` delivers,
    /// and closes it on the first `Err`.
    pub fn recheck(&mut self, updates: watch::Receiver<Arc<ProxyState>>, check: Check) {
        self.recheck = Some((updates, check));
    }

    /// Copies both ways until both sides are done, a side fails, or a re-check closes the
    /// connection; records the bytes or the failure.
    ///
    /// The returned future is what a held connection costs beyond its streams, so it is kept
    /// lean: one copy state (always metered; no meters is an empty loop per read) rather than
    /// one per kind of stream, and the fields moved out of the struct rather than borrowed.
    /// (Not an `async fn`: its future would keep the whole struct as well as the parts moved
    /// out of it.)
    pub fn run(self) -> impl Future<Output = Result<(), ProxyError>> + Send + 'static {
        let Relay {
            downstream,
            upstream,
            record,
            meters,
            recheck,
            held,
        } = self;
        let mut downstream = Metered::new(downstream, Side::Downstream, meters.clone());
        let mut upstream = Metered::new(upstream, Side::Upstream, meters);
        async move {
            let copy = crate::copy::copy_bidirectional(&mut downstream, &mut upstream);
            let copied = match recheck {
                None => copy.await.map_err(ProxyError::Copy),
                Some((mut updates, check)) => {
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            copied = &mut copy => break copied.map_err(ProxyError::Copy),
                            changed = updates.changed() => {
                                if changed.is_err() {
                                    // No more configurations will come.
                                    break copy.await.map_err(ProxyError::Copy);
                                }
                                let state = updates.borrow_and_update().clone();
                                if let Err(error) = check(&state) {
                                    // Returning drops the copy and both streams: both sides close.
                                    break Err(error);
                                }
                            }
                        }
                    }
                }
            };
            let result = match copied {
                Ok((bytes_in, bytes_out)) => {
                    record.update(|r| {
                        r.bytes_in += bytes_in;
                        r.bytes_out += bytes_out;
                    });
                    Ok(())
                }
                Err(error) => {
                    if matches!(error, ProxyError::Copy(_)) {
                        // One side failed (a reset, an I/O error): the other side's application
                        // must see the cut as an error too, not as a clean end of a shorter stream.
                        downstream.reset_on_close();
                        upstream.reset_on_close();
                    }
                    record.fail(&error);
                    Err(error)
                }
            };
            drop(held);
            result
        }
    }
}
