//! The one allocator of loopback address ranges for the end-to-end tests.
//!
//! Every test that puts meshd processes on loopback takes a [`Loopback`]: a /24 of
//! 127.0.0.0/8 (`127.S.T.0/24`, S in [`SECOND_OCTETS`]) that no other test of any test
//! process uses while it is held. Tests run in parallel threads of one process (`cargo test`)
//! and in parallel processes (`cargo nextest` runs each test in its own, and several test
//! binaries run at once), so a per-process counter is not enough: a range is claimed by an
//! exclusive lock on a file named after it (`<tmp>/meshd-test-loopback/127.S.T.lock`), held
//! until the [`Loopback`] is dropped. The kernel drops the lock when a process dies, so a
//! killed test never leaks a range.
//!
//! Hosts of a range are machines: `.1` is the first node, `.2` the second, and so on
//! ([`Loopback::host`]). Addresses elsewhere in 127.0.0.0/8 are not handed out (127.0.0.1 is
//! the host's own; benches and the network-namespace suites use their own networks).

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The second octets handed out: 127.128.0.0/10's first quarter, away from the ranges that
/// addresses written by hand used before this allocator (127.0–127.20).
pub const SECOND_OCTETS: RangeInclusive<u8> = 128..=191;

/// How many /24 ranges there are to hand out.
const RANGES: u32 = (*SECOND_OCTETS.end() as u32 - *SECOND_OCTETS.start() as u32 + 1) * 256;

/// A /24 of loopback addresses held by one test; released on drop.
#[derive(Debug)]
pub struct Loopback {
    base: [u8; 3],
    _lock: File,
}

impl Loopback {
    /// Claims a range no other test holds. Each process starts its search at its own offset
    /// (from its process id) and walks on, so ranges are seldom reused soon after release
    /// (a released range may still have sockets in TIME_WAIT).
    ///
    /// # Panics
    /// When the lock directory cannot be created or every range is taken.
    pub fn take() -> Loopback {
        static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
        // First use in this process: start at an offset of its own.
        let _ = NEXT.compare_exchange(
            u32::MAX,
            std::process::id().wrapping_mul(97) % RANGES,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for _ in 0..RANGES {
            let i = NEXT.fetch_add(1, Ordering::SeqCst) % RANGES;
            let base = [
                127,
                SECOND_OCTETS.start() + (i / 256) as u8,
                (i % 256) as u8,
            ];
            let path = dir.join(format!("{}.{}.{}.lock", base[0], base[1], base[2]));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            if file.try_lock().is_ok() {
                return Loopback { base, _lock: file };
            }
        }
        panic!("every loopback range in 127.{SECOND_OCTETS:?}.0.0 is held by a test");
    }

    /// Host `n` of the range: `127.S.T.n`.
    pub fn host(&self, n: u8) -> IpAddr {
        IpAddr::V4(self.v4(n))
    }

    /// Host `n` of the range, as an IPv4 address.
    pub fn v4(&self, n: u8) -> Ipv4Addr {
        let [a, b, c] = self.base;
        Ipv4Addr::new(a, b, c, n)
    }

    /// The range's index among all ranges (`(S - 128) * 256 + T`), for tests that need
    /// another distinct number per range (e.g. a ServiceEntry VIP).
    pub fn index(&self) -> u16 {
        u16::from(self.base[1] - SECOND_OCTETS.start()) * 256 + u16::from(self.base[2])
    }
}

/// Where the lock files live (shared by every test process of this machine).
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("meshd-test-loopback")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_held_at_once_are_distinct() {
        let held: Vec<Loopback> = (0..20).map(|_| Loopback::take()).collect();
        let mut bases: Vec<[u8; 3]> = held.iter().map(|l| l.base).collect();
        bases.sort_unstable();
        bases.dedup();
        assert_eq!(bases.len(), held.len());
    }

    #[test]
    fn a_held_range_is_not_handed_out_again_by_another_process_lock() {
        // Another process's lock is another open file description: a second open of the same
        // lock file must not get the lock while the first holds it.
        let first = Loopback::take();
        let [a, b, c] = first.base;
        let path = lock_dir().join(format!("{a}.{b}.{c}.lock"));
        let other = OpenOptions::new().write(true).open(&path).expect("open");
        assert!(other.try_lock().is_err(), "{} taken twice", path.display());
        drop(first);
        assert!(other.try_lock().is_ok(), "released on drop");
    }
}
