//! meshd's memory policy: which allocator settings the process runs with and when the heap a
//! burst of connections freed is given back to the kernel, with the figures its metrics read.
//!
//! meshd keeps glibc's malloc. Two things make it behave under a proxy's load (both measured,
//! see [`trim`]): glibc keeps freed pages instead of shrinking and regrowing its heap top
//! under bulk traffic ([`trim::keep_freed_pages`]), and one thread hands whole free pages back
//! after a burst ([`trim::Trimmer`]). On a platform without glibc, [`start`] does nothing and
//! [`stats`] is `None`.
//!
//! Once meshd is ready, [`release_start_up_pages`] drops the resident pages of its binary and
//! libraries that start-up touched (they stay in the page cache; see [`pages`]).
//!
//! This crate is the only one in the workspace allowed `unsafe` (four glibc calls, in
//! `trim.rs`, and one `madvise`, in `pages.rs`); every other crate forbids it.
//!
//! Does not: count connections or buffers (the proxy does), serve metrics (meshd-metrics reads
//! [`stats`] at scrape time).

#[cfg(target_os = "linux")]
pub mod pages;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub mod trim;

/// What the trimming thread has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Trims done (each a `malloc_trim` call, when enough memory was free to pay).
    pub trims: u64,
    /// Anonymous resident bytes the trims gave back, summed (each trim's drop in resident
    /// memory across the call).
    pub returned_bytes: u64,
    /// Bytes free inside glibc's arenas at the last tick: memory the process holds but does
    /// not use.
    pub free_bytes: u64,
}

/// Applies the memory policy to this process: glibc's settings, then the trimming thread.
/// Call once, before the runtime starts; a second call does nothing. An error means the
/// thread could not be started: freed memory then stays resident (slower to shrink, not
/// wrong).
pub fn start() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        trim::keep_freed_pages();
        trim::spawn()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        Ok(())
    }
}

/// With one worker thread (meshd's default on one or two CPUs), puts every thread's
/// allocations in glibc's main arena, the only one whose free top `malloc_trim` gives back
/// ([`trim::one_arena`]); with more, each keeps its own arena (one lock shared by several busy
/// workers would make them wait for each other). Call before the runtime starts its threads.
pub fn arenas_for_workers(worker_threads: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if worker_threads == 1 && !trim::one_arena() {
        tracing::debug!("glibc refused M_ARENA_MAX; each thread keeps its own arena");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = worker_threads;
}

/// The trimming thread's figures; `None` when it is not running (not started, or no glibc).
pub fn stats() -> Option<Stats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        trim::stats()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Drops the resident pages of read-only file mappings (the binary's code and constants) that
/// start-up touched: call once, when the process is ready. Returns the bytes that were resident
/// in the mappings advised; nothing on other platforms or when /proc cannot be read.
pub fn release_start_up_pages() -> u64 {
    #[cfg(target_os = "linux")]
    {
        match pages::release() {
            Ok(done) => done.resident_bytes,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read /proc/self/smaps: start-up pages stay resident");
                0
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}
