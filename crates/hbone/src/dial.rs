//! One dial in flight per pool key, shared by every request that needs it.
//!
//! A request that finds no usable connection joins the dial already under way, or starts one;
//! everyone waiting gets its result, success or failure, at the same moment. So a burst to a new
//! peer opens one connection, and N requests to a dead peer fail together after one connect
//! timeout instead of one after another (N × the timeouts, which a lock around the dial gave).
//! Keys are independent: a dead peer never delays a request to another.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::Error;

type SharedDial<T> = Shared<BoxFuture<'static, Result<T, Error>>>;

/// The dial in flight for one key, if any.
pub(crate) struct DialSlot<T: Clone> {
    current: Mutex<Option<(u64, SharedDial<T>)>>,
    next_id: AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> DialSlot<T> {
    pub(crate) fn new() -> Arc<DialSlot<T>> {
        Arc::new(DialSlot {
            current: Mutex::new(None),
            next_id: AtomicU64::new(0),
        })
    }

    /// Waits for the dial in flight, or starts `start()` as it.
    ///
    /// The dial runs as long as anyone waits for it; if every waiter gives up, the next caller
    /// resumes it rather than starting over. `start`'s future must not hold the slot's owner
    /// strongly (it is stored inside it).
    pub(crate) async fn join_or_start<F, Fut>(self: &Arc<Self>, start: F) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let dial = {
            let mut current = lock(&self.current);
            match &*current {
                Some((_, dial)) => dial.clone(),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let slot: Weak<DialSlot<T>> = Arc::downgrade(self);
                    let attempt = start();
                    let dial = async move {
                        let result = attempt.await;
                        // Finished: whoever comes next dials afresh (a failure is not cached).
                        if let Some(slot) = slot.upgrade() {
                            let mut current = lock(&slot.current);
                            if current.as_ref().is_some_and(|(cur, _)| *cur == id) {
                                *current = None;
                            }
                        }
                        result
                    }
                    .boxed()
                    .shared();
                    *current = Some((id, dial.clone()));
                    dial
                }
            }
        };
        dial.await
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_attempt_and_its_failure() {
        // Ten callers, one attempt, the same error for all; the next caller starts afresh.
        let slot = DialSlot::<u32>::new();
        let started = Arc::new(AtomicUsize::new(0));
        let call = || {
            let (slot, started) = (Arc::clone(&slot), Arc::clone(&started));
            async move {
                slot.join_or_start(|| {
                    started.fetch_add(1, Ordering::Relaxed);
                    async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(Error::Pool("dead".into()))
                    }
                })
                .await
            }
        };
        let results = futures::future::join_all((0..10).map(|_| call())).await;
        assert!(
            results
                .iter()
                .all(|r| r == &Err(Error::Pool("dead".into())))
        );
        assert_eq!(started.load(Ordering::Relaxed), 1);
        let _ = call().await;
        assert_eq!(started.load(Ordering::Relaxed), 2);
    }
}
