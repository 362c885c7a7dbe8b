//! meshd's memory policy: which allocator settings the process runs with and when the heap a
//! burst of connections freed is given back to the kernel, with the figures its metrics read.
//!
//! meshd keeps glibc's malloc. Two things make it behave under a proxy's load (both measured,
//! see [`trim`]): glibc keeps freed pages instead of shrinking and regrowing its heap top
//! under bulk traffic ([`trim::keep_freed_pages`]), and one thread hands whole free pages back
//! after a burst ([`trim::Trimmer`]). On a platform without glibc, [`start`] does nothing and
//! [`stats`] is `None`.
//!
//! This crate is the only one in the workspace allowed `unsafe` (three glibc calls, in
//! `trim.rs`); every other crate forbids it.
//!
//! Does not: count connections or buffers (the proxy does), serve metrics (meshd-metrics reads
//! [`stats`] at scrape time).

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
