//! Gives the heap memory freed after a burst of connections back to the kernel.
//!
//! meshd keeps glibc's malloc, chosen on benches/e2e (`PHASES="idle hold"`, 3 runs, client side
//! medians in MiB, 2 CPUs; the commit that added this module has both sides and the ranges):
//!
//! | allocator                         | idle | 1 000 held | 30 s after close |
//! |-----------------------------------|------|------------|------------------|
//! | glibc                             | 13.1 | 23.3       | 23.4 (the peak)  |
//! | glibc + this trim                 | 13.1 | 23.3       | 18.7             |
//! | jemalloc, background threads      | 14.9 | 25.1       | 20.4             |
//! | mimalloc 3 (crate defaults)       | 22.9 | 39.9       | 39.6             |
//!
//! glibc alone never returns the pages that 1 000 closed connections leave free inside its
//! arenas: `free` only shrinks an arena from its top, and the top is pinned by whatever live
//! allocation came last. `malloc_trim(0)` walks every arena and hands each whole free page back
//! (`MADV_DONTNEED`). A plain thread does it, at most every [`INTERVAL`], and only when there is
//! at least [`THRESHOLD`] to return (see [`Trimmer`]), so an idle meshd never trims.
//!
//! The FFI calls are the only unsafe code in meshd besides `pages.rs`'s `madvise`; all are
//! plain glibc calls without arguments that point anywhere.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::Stats;

/// How often the heap's figures are read. `mallinfo2` takes each arena's lock while it walks the
/// free lists: 0.4 ms measured right after the 1 000 connections closed, less when idle. The
/// trim itself took 1.5–1.7 ms there, once per burst. The benchmark reads RSS 30 s after the
/// close, well after the next tick.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// How much memory a trim must be able to return before it pays, both as free bytes in glibc's
/// arenas and as anonymous resident memory grown since the last trim: one held connection is
/// ~3–4 KB, so 1 MiB is a few hundred connections gone.
pub const THRESHOLD: usize = 1 << 20;

/// Decides when to trim: when glibc holds at least [`THRESHOLD`] free, and either this is the
/// first tick (nothing to compare with yet), or the process's anonymous resident memory grew
/// by as much since the last trim (a burst came and went), or glibc's free bytes did (memory
/// freed after the last trim: a trim one second after 1 000 connections closed came before the
/// server had released them all).
///
/// Neither figure alone will do. The bytes in use, sampled every [`INTERVAL`], miss a burst
/// shorter than that (1 000 connections opened, held 3 s, closed). The free bytes do not fall
/// when a trim hands pages back (the chunks stay free in glibc's bins), so they cannot tell
/// returned free memory from free memory a later burst made resident again. Resident memory
/// can: it grew while the burst ran and stays up after it only because of what glibc keeps.
#[derive(Debug, Default)]
pub struct Trimmer {
    low: Option<usize>,
    free_low: Option<usize>,
}

/// What a trim found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Bytes free in glibc's arenas before the trim.
    pub free: usize,
    /// Anonymous resident bytes before the trim.
    pub resident: usize,
    /// The lowest anonymous resident figure since the previous trim.
    pub low: usize,
    /// Whether glibc gave any memory back.
    pub released: bool,
    /// Anonymous resident bytes right after the trim (0 if they could not be read).
    pub resident_after: usize,
}

impl Trimmer {
    /// Reads the figures and trims when it pays (see [`Trimmer`]); `None` when it did not.
    pub fn tick(&mut self) -> Option<Trimmed> {
        self.tick_with(THRESHOLD)
    }

    fn tick_with(&mut self, threshold: usize) -> Option<Trimmed> {
        let resident = anon_resident()?;
        let free = heap_free();
        // The first tick has no baseline to compare with: what is free then (start-up's
        // garbage, or a burst that came and went in the first seconds, as when every client
        // reconnects after a restart) is returned once; taking it as the baseline instead
        // would keep it resident for good.
        let first = self.low.is_none();
        let low = self.low.map_or(resident, |low| low.min(resident));
        self.low = Some(low);
        let free_low = self.free_low.map_or(free, |f| f.min(free));
        self.free_low = Some(free_low);
        let burst_came_and_went = first || resident >= low + threshold;
        let freed_since_trim = free >= free_low + threshold;
        if free < threshold || !(burst_came_and_went || freed_since_trim) {
            return None;
        }
        let released = trim();
        self.low = anon_resident();
        self.free_low = Some(heap_free());
        Some(Trimmed {
            free,
            resident,
            low,
            released,
            resident_after: self.low.unwrap_or(0),
        })
    }
}

/// Anonymous resident memory of this process: resident minus file-backed (`/proc/self/statm`,
/// in pages). `None` if it cannot be read (then nothing is trimmed).
fn anon_resident() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_ascii_whitespace().skip(1);
    let resident: usize = fields.next()?.parse().ok()?;
    let shared: usize = fields.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared) * PAGE)
}

/// The page size `/proc/self/statm` counts in on the platforms meshd runs on (x86-64, arm64
/// with 4 KiB pages); a larger page only makes the trim less eager.
const PAGE: usize = 4096;

/// How much free memory glibc may keep at the top of an arena before it shrinks the heap by
/// itself, and the size from which it maps allocations separately. With glibc's defaults
/// (128 KiB, with a threshold that adapts), bulk traffic's 16–64 KiB buffers, freed and taken
/// again every few microseconds, made glibc give the heap top back and take it again: under
/// benches/e2e's 1-stream bulk a perf profile of the client meshd spent ~12 % in page faults,
/// clearing fresh pages and memory-cgroup charging. The trim thread gives memory back after a
/// burst instead, on its own schedule.
pub const KEEP_FREE: usize = 32 << 20;
const MMAP_FROM: usize = 4 << 20;

/// Stops glibc from handing the heap top back and mapping large buffers on every cycle (see
/// [`KEEP_FREE`]); the trim thread returns memory instead. Call once, before the runtime starts.
pub fn keep_freed_pages() {
    // Both are plain integer settings; glibc returns 0 when it refuses one, which leaves its
    // default in force (slower, not wrong).
    let set = |param, value: usize| unsafe { libc::mallopt(param, value as libc::c_int) } == 1;
    if !(set(libc::M_TRIM_THRESHOLD, KEEP_FREE) && set(libc::M_MMAP_THRESHOLD, MMAP_FROM)) {
        tracing::debug!("glibc refused a malloc setting; its defaults stay in force");
    }
}

/// Makes every thread allocate from glibc's main arena (`M_ARENA_MAX` 1); false if glibc
/// refused. Call before the threads that allocate start: a thread keeps the arena it has.
///
/// `malloc_trim` shrinks the main arena from its top but never a thread arena's (glibc only
/// shrinks those on `free`, once their top passes M_TRIM_THRESHOLD, which [`KEEP_FREE`] sets
/// to 32 MiB): the free top of the worker thread's arena stayed resident after a burst, 0.6 and
/// 0.9 MiB of the 2.3 and 2.6 MiB meshd's two sides kept 60 s after 5 000 held connections
/// closed (benches/e2e `PROFILE=smaps`). In the main arena the trim returns it.
pub fn one_arena() -> bool {
    // SAFETY: a plain integer setting, as in `keep_freed_pages`.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
}

/// What the trimming thread has done, for [`crate::stats`]: process-wide, as the heap is.
static STARTED: AtomicBool = AtomicBool::new(false);
static TRIMS: AtomicU64 = AtomicU64::new(0);
static RETURNED: AtomicU64 = AtomicU64::new(0);
static FREE: AtomicU64 = AtomicU64::new(0);

/// Starts the trimming thread once; it runs until the process exits. A second call does
/// nothing (one thread per process is the policy: the heap is the process's).
pub fn spawn() -> std::io::Result<()> {
    if STARTED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            let mut trimmer = Trimmer::default();
            loop {
                std::thread::sleep(INTERVAL);
                let trimmed = trimmer.tick();
                FREE.store(heap_free() as u64, Ordering::Relaxed);
                if let Some(t) = trimmed {
                    account(&t);
                    tracing::debug!(
                        free = t.free,
                        resident = t.resident,
                        low = t.low,
                        released = t.released,
                        resident_after = t.resident_after,
                        "heap trimmed"
                    );
                }
            }
        });
    if spawned.is_err() {
        STARTED.store(false, Ordering::SeqCst);
    }
    spawned.map(drop)
}

/// Adds one trim to the process's figures.
fn account(t: &Trimmed) {
    TRIMS.fetch_add(1, Ordering::Relaxed);
    let returned = t.resident.saturating_sub(t.resident_after);
    RETURNED.fetch_add(returned as u64, Ordering::Relaxed);
}

/// The figures so far; `None` until [`spawn`] ran.
pub(crate) fn stats() -> Option<Stats> {
    STARTED.load(Ordering::Relaxed).then(|| Stats {
        trims: TRIMS.load(Ordering::Relaxed),
        returned_bytes: RETURNED.load(Ordering::Relaxed),
        free_bytes: FREE.load(Ordering::Relaxed),
    })
}

/// Bytes free in glibc's arenas (chunks glibc mmapped on their own are returned on `free`
/// and not counted).
fn heap_free() -> usize {
    // SAFETY: mallinfo2 takes no arguments and returns a struct by value; it only reads
    // glibc's own state, under its arena locks.
    unsafe { libc::mallinfo2() }.fordblks
}

/// `malloc_trim(0)`: true if memory was given back.
fn trim() -> bool {
    // SAFETY: malloc_trim takes a plain size (0: keep no padding at the top of the main arena)
    // and only touches glibc's own arenas, under their locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MIB: usize = 1 << 20;

    /// Resident set size of this process (`VmRSS` of /proc/self/status), in bytes.
    fn rss() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim();
        kib.parse::<usize>().unwrap() * 1024
    }

    /// Runs a test's body in a fresh process of this test binary (the test filtered by its
    /// exact name). `mallinfo2` and RSS are figures of the whole process, and the free chunks a
    /// test leaves in its thread's arena stay free for good: a test that ran before made
    /// "nothing was freed yet" read 32 MB free in the next (seen on two CPUs, in either order).
    fn alone(name: &str, body: impl FnOnce()) {
        const CHILD: &str = "MESHD_TRIM_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            body();
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{name} in its own process:\n{printed}"
        );
        assert!(
            printed.contains("1 passed"),
            "{name} did not run:\n{printed}"
        );
    }

    /// 32 MB in 8 192 blocks of 4 000 bytes, as many per-connection buffers are.
    fn burst() -> Vec<Box<[u8]>> {
        (0..8 * 1024)
            // Not zeros: calloc may leave fresh pages untouched.
            .map(|i| vec![i as u8 | 1; 4000].into_boxed_slice())
            .collect()
    }

    /// The burst meshd sees: many small per-connection buffers, then all freed but one that
    /// came last and pins the top of the arena, so `free` alone cannot shrink it.
    #[test]
    fn trims_what_a_burst_leaves_free_and_nothing_when_nothing_was_freed() {
        alone(
            "trim::tests::trims_what_a_burst_leaves_free_and_nothing_when_nothing_was_freed",
            || {
                // Its own thread: a fresh arena shared with no other test.
                std::thread::spawn(|| {
                    // Well above what anything else in this test binary allocates at once.
                    let threshold = 16 * MIB;
                    let mut trimmer = Trimmer::default();
                    trimmer.tick_with(threshold);
                    let blocks = burst();
                    let pin = vec![1u8; 4000].into_boxed_slice();
                    assert_eq!(trimmer.tick_with(threshold), None, "nothing was freed yet");
                    let held = rss();
                    drop(blocks);
                    let freed = rss();
                    assert!(
                        freed + 16 * MIB > held,
                        "free gave the 32 MB back by itself: {held} -> {freed}"
                    );

                    let trimmed = trimmer
                        .tick_with(threshold)
                        .expect("32 MB were freed: trim");
                    assert!(trimmed.released, "{trimmed:?}");
                    assert!(trimmed.free >= 16 * MIB, "{trimmed:?}");
                    assert!(trimmed.resident >= trimmed.low + 16 * MIB, "{trimmed:?}");
                    let after = rss();
                    assert!(
                        after + 16 * MIB <= freed,
                        "RSS {freed} -> {after} after the trim"
                    );
                    assert_eq!(
                        trimmer.tick_with(threshold),
                        None,
                        "nothing freed since the trim"
                    );
                    drop(pin);
                })
                .join()
                .unwrap();
            },
        );
    }

    /// 16 MB allocated and freed on a thread of its own, none of it pinned: it all ends up as
    /// the free top of the arena that thread allocates from. Returns the RSS with the burst
    /// held, and after it was freed and trimmed.
    fn burst_freed_and_trimmed_on_a_thread() -> (usize, usize) {
        keep_freed_pages();
        std::thread::spawn(|| {
            let blocks: Vec<Box<[u8]>> = burst().into_iter().take(4 * 1024).collect();
            let held = rss();
            drop(blocks);
            trim();
            (held, rss())
        })
        .join()
        .unwrap()
    }

    /// Why `one_arena`: the trim leaves a thread arena's free top resident (below meshd's
    /// M_TRIM_THRESHOLD, glibc does not shrink it on `free` either).
    #[test]
    fn a_thread_arenas_free_top_stays_resident_after_a_trim() {
        alone(
            "trim::tests::a_thread_arenas_free_top_stays_resident_after_a_trim",
            || {
                let (held, after) = burst_freed_and_trimmed_on_a_thread();
                assert!(
                    after + 8 * MIB > held,
                    "the trim returned a thread arena's top: RSS {held} -> {after}"
                );
            },
        );
    }

    /// With one arena the same burst lands in the main arena, whose top the trim returns.
    #[test]
    fn with_one_arena_the_trim_returns_a_threads_freed_burst() {
        alone(
            "trim::tests::with_one_arena_the_trim_returns_a_threads_freed_burst",
            || {
                assert!(one_arena(), "glibc refused M_ARENA_MAX");
                let (held, after) = burst_freed_and_trimmed_on_a_thread();
                assert!(
                    after + 12 * MIB <= held,
                    "RSS {held} -> {after}: the freed 16 MB stayed"
                );
            },
        );
    }

    /// A burst that came and went before the first tick (meshd restarted under load) is
    /// trimmed at that tick, not taken as the baseline.
    #[test]
    fn trims_a_burst_freed_before_the_first_tick() {
        alone(
            "trim::tests::trims_a_burst_freed_before_the_first_tick",
            || {
                std::thread::spawn(|| {
                    let threshold = 16 * MIB;
                    let blocks = burst();
                    let pin = vec![1u8; 4000].into_boxed_slice();
                    drop(blocks);
                    let freed = rss();
                    let mut trimmer = Trimmer::default();
                    let trimmed = trimmer
                        .tick_with(threshold)
                        .expect("32 MB free at the first tick: trim");
                    assert!(trimmed.released, "{trimmed:?}");
                    let after = rss();
                    assert!(
                        after + 16 * MIB <= freed,
                        "RSS {freed} -> {after} after the first tick"
                    );
                    assert_eq!(
                        trimmer.tick_with(threshold),
                        None,
                        "nothing freed since the trim"
                    );
                    drop(pin);
                })
                .join()
                .unwrap();
            },
        );
    }

    /// Memory freed after a trim (a server releases the last of 1 000 closed connections after
    /// the tick that trimmed) is trimmed at the next tick, though resident memory did not grow.
    #[test]
    fn trims_what_was_freed_after_the_last_trim() {
        alone(
            "trim::tests::trims_what_was_freed_after_the_last_trim",
            || {
                std::thread::spawn(|| {
                    let threshold = 16 * MIB;
                    let mut trimmer = Trimmer::default();
                    trimmer.tick_with(threshold);
                    let first = burst();
                    let second = burst();
                    let pin = vec![1u8; 4000].into_boxed_slice();
                    assert_eq!(trimmer.tick_with(threshold), None, "nothing was freed yet");
                    drop(first);
                    trimmer
                        .tick_with(threshold)
                        .expect("the first 32 MB were freed: trim");
                    let before = rss();
                    drop(second);
                    let trimmed = trimmer
                        .tick_with(threshold)
                        .expect("32 MB more were freed after the trim: trim again");
                    assert!(trimmed.released, "{trimmed:?}");
                    let after = rss();
                    assert!(
                        after + 16 * MIB <= before,
                        "RSS {before} -> {after} after the second trim"
                    );
                    drop(pin);
                })
                .join()
                .unwrap();
            },
        );
    }

    /// A trim is counted with the resident memory it gave back; a trim that gave nothing back
    /// (or whose figure after could not be read) adds nothing to the bytes.
    #[test]
    fn figures_count_each_trim_and_what_it_returned() {
        alone(
            "trim::tests::figures_count_each_trim_and_what_it_returned",
            || {
                assert_eq!(stats(), None, "nothing is reported before the thread runs");
                spawn().unwrap();
                spawn().unwrap();
                let start = stats().expect("started");
                assert_eq!((start.trims, start.returned_bytes), (0, 0));
                let trimmed = |resident, resident_after| Trimmed {
                    free: 2 * MIB,
                    resident,
                    low: 0,
                    released: true,
                    resident_after,
                };
                account(&trimmed(10 * MIB, 7 * MIB));
                account(&trimmed(10 * MIB, 12 * MIB));
                let now = stats().expect("started");
                assert_eq!(now.trims, 2);
                assert_eq!(now.returned_bytes, 3 * MIB as u64);
                // A thread names itself once it runs: wait for it, then count.
                let trim_threads = || {
                    std::fs::read_dir("/proc/self/task")
                        .unwrap()
                        .filter(|t| {
                            let comm = t.as_ref().unwrap().path().join("comm");
                            std::fs::read_to_string(comm).unwrap_or_default().trim()
                                == "malloc-trim"
                        })
                        .count()
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while trim_threads() == 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::thread::sleep(Duration::from_millis(100));
                let threads = trim_threads();
                assert_eq!(threads, 1, "a second spawn starts no second thread");
            },
        );
    }
}
