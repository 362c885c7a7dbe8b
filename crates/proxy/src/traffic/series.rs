//! Connections, denials and bytes over the last minutes: a fixed ring of time buckets.
//!
//! Memory is bounded by construction: [`BUCKETS`] buckets of four integers (under 2 KiB),
//! whatever the traffic. Time is whole seconds since the Unix epoch, given by the caller, so
//! tests say what time it is.

use std::collections::VecDeque;

use meshd_view as view;

/// Seconds per bucket: fine enough to see a burst of denials as it happens, coarse enough that
/// the chart of [`BUCKETS`] buckets stays short.
pub const BUCKET_SECONDS: u64 = 10;

/// Buckets kept: ten minutes of 10-second buckets, the "last minutes" an operator looks back
/// over on the admin page.
pub const BUCKETS: usize = 60;

/// The window the series covers, in seconds (also how long an idle graph edge is kept).
pub const WINDOW_SECONDS: u64 = BUCKET_SECONDS * BUCKETS as u64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Seconds since the epoch divided by [`BUCKET_SECONDS`].
    index: u64,
    connections: u64,
    denials: u64,
    bytes: u64,
}

/// The ring: contiguous buckets, oldest first, the newest the one now fills.
#[derive(Debug)]
pub(crate) struct Series {
    buckets: VecDeque<Bucket>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            buckets: VecDeque::with_capacity(BUCKETS),
        }
    }
}

impl Series {
    /// The bucket of `now`, moving the ring forward (zero buckets for the quiet ones between).
    /// A clock that went back counts into the newest bucket: the ring never goes out of order.
    fn at(&mut self, now: u64) -> &mut Bucket {
        let index = now / BUCKET_SECONDS;
        let newest = self.buckets.back().map(|b| b.index);
        match newest {
            Some(newest) if index <= newest => {}
            Some(newest) if index - newest < BUCKETS as u64 => {
                for i in newest + 1..=index {
                    if self.buckets.len() == BUCKETS {
                        self.buckets.pop_front();
                    }
                    self.buckets.push_back(Bucket {
                        index: i,
                        ..Bucket::default()
                    });
                }
            }
            // Nothing yet, or everything kept is older than the window.
            _ => {
                self.buckets.clear();
                self.buckets.push_back(Bucket {
                    index,
                    ..Bucket::default()
                });
            }
        }
        // Never empty here: a bucket was pushed or the newest was kept.
        let last = self.buckets.len() - 1;
        &mut self.buckets[last]
    }

    /// A connection was accepted at `now`.
    pub(crate) fn opened(&mut self, now: u64) {
        self.at(now).connections += 1;
    }

    /// A connection was refused or denied at `now`.
    pub(crate) fn denied(&mut self, now: u64) {
        self.at(now).denials += 1;
    }

    /// `bytes` were counted at `now`.
    pub(crate) fn bytes(&mut self, now: u64, bytes: u64) {
        let bucket = self.at(now);
        bucket.bytes = bucket.bytes.saturating_add(bytes);
    }

    /// The bucket index `now` falls in (for callers that act once per bucket).
    pub(crate) fn index(now: u64) -> u64 {
        now / BUCKET_SECONDS
    }

    /// Exactly [`BUCKETS`] buckets, oldest first, ending with the one `now` falls in (or the
    /// newest, if the clock went back); `start` renders a bucket's start time.
    pub(crate) fn view(&self, now: u64, start: impl Fn(u64) -> String) -> Vec<view::TrafficBucket> {
        let newest = self
            .buckets
            .back()
            .map_or(now / BUCKET_SECONDS, |b| b.index.max(now / BUCKET_SECONDS));
        let first = newest.saturating_sub(BUCKETS as u64 - 1);
        (first..=newest)
            .map(|index| {
                let b = self
                    .buckets
                    .iter()
                    .find(|b| b.index == index)
                    .copied()
                    .unwrap_or_default();
                view::TrafficBucket {
                    start: start(index * BUCKET_SECONDS),
                    connections: b.connections,
                    denials: b.denials,
                    bytes: b.bytes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: u64 = 1_800_000_000;

    fn counts(s: &Series, now: u64) -> Vec<(u64, u64, u64)> {
        s.view(now, |t| t.to_string())
            .iter()
            .map(|b| (b.connections, b.denials, b.bytes))
            .collect()
    }

    #[test]
    fn events_land_in_their_ten_second_bucket_and_the_view_ends_now() {
        let mut s = Series::default();
        s.opened(T0);
        s.opened(T0 + 9);
        s.denied(T0 + 9);
        s.bytes(T0 + 10, 500);
        s.opened(T0 + 35);
        let view = s.view(T0 + 35, |t| t.to_string());
        assert_eq!(view.len(), BUCKETS);
        assert_eq!(view[BUCKETS - 1].start, (T0 + 30).to_string());
        let c = counts(&s, T0 + 35);
        assert_eq!(
            &c[BUCKETS - 4..],
            &[(2, 1, 0), (0, 0, 500), (0, 0, 0), (1, 0, 0)]
        );
        assert!(c[..BUCKETS - 4].iter().all(|b| *b == (0, 0, 0)));
    }

    // Bounded: an hour of traffic keeps 60 buckets; the ones past the window are gone.
    #[test]
    fn the_ring_keeps_the_last_ten_minutes_only() {
        let mut s = Series::default();
        for t in (T0..T0 + 3600).step_by(5) {
            s.opened(t);
        }
        assert_eq!(s.buckets.len(), BUCKETS);
        assert_eq!(s.buckets.capacity(), BUCKETS);
        let c = counts(&s, T0 + 3595);
        assert!(c.iter().all(|b| *b == (2, 0, 0)), "{c:?}");
        // Read later, without new events: the old buckets slide out of the view.
        let later = counts(&s, T0 + 3590 + 300);
        assert_eq!(later.iter().filter(|b| b.0 == 2).count(), BUCKETS - 30);
    }

    // A jump past the window (a suspended machine) starts afresh rather than filling 60 zeros
    // per missed window.
    #[test]
    fn a_jump_forward_past_the_window_drops_everything() {
        let mut s = Series::default();
        s.denied(T0);
        s.denied(T0 + WINDOW_SECONDS * 100);
        assert_eq!(s.buckets.len(), 1);
        let c = counts(&s, T0 + WINDOW_SECONDS * 100);
        assert_eq!(c.iter().map(|b| b.1).sum::<u64>(), 1);
    }

    // A clock set back counts into the newest bucket: nothing is lost, nothing out of order.
    #[test]
    fn a_clock_that_goes_back_counts_into_the_newest_bucket() {
        let mut s = Series::default();
        s.opened(T0 + 100);
        s.opened(T0);
        s.bytes(T0 - 5000, u64::MAX);
        s.bytes(T0, 7);
        assert_eq!(s.buckets.len(), 1);
        let view = s.view(T0, |t| t.to_string());
        let last = view.last().unwrap();
        assert_eq!(last.start, (T0 + 100).to_string());
        // Saturates rather than wrapping.
        assert_eq!((last.connections, last.bytes), (2, u64::MAX));
    }

    #[test]
    fn an_empty_series_shows_a_window_of_zeros() {
        let s = Series::default();
        let c = counts(&s, T0);
        assert_eq!(c.len(), BUCKETS);
        assert!(c.iter().all(|b| *b == (0, 0, 0)));
        assert_eq!(Series::index(T0 + 19), Series::index(T0 + 10));
    }
}
