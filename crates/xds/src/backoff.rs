//! Exponential backoff with jitter for reconnects and renewals.

use std::time::Duration;

use rand::RngExt;

/// Doubles from `min` to `max`; each delay is drawn uniformly from [base/2, base] so that
/// many VMs cut off together do not return together ("equal jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    /// A backoff starting at `min`, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            base: min,
        }
    }

    /// The next delay, then doubles the base.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (base * 2).min(self.max);
        let half = base / 2;
        let extra = rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(extra)
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.base = self.min;
    }

    /// The base of the next delay.
    #[cfg(test)]
    pub fn base(&self) -> Duration {
        self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_bound_with_jitter_and_resets() {
        let (min, max) = (Duration::from_millis(10), Duration::from_secs(15));
        let mut b = Backoff::new(min, max);
        let mut base = min;
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
            assert!(d <= max);
            base = (base * 2).min(max);
        }
        assert_eq!(b.base(), max);
        b.reset();
        assert!(b.next_delay() <= min);
        // Jitter: many draws at the cap are not all equal.
        let mut b = Backoff::new(max, max);
        let draws: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 1);
    }
}
