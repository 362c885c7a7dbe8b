//! The configuration directory loader (`meshd_manifests::load_dir`) and its strict deserializer.
//!
//! An input is up to four files separated by a line `#%FILE`; they are written to a fresh
//! directory (the second one in a subdirectory) and loaded as the daemon loads `configDir`.
//! Bytes are written as they are, so non-UTF-8 files are part of the input space. The first file
//! also goes through `parse_text` (the daemon configuration's single-document path) into a
//! generic value, which drives every `deserialize_*` of the deserializer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meshd_manifests::{LoadOptions, load_dir, load_str, parse_text};

const SEPARATOR: &[u8] = b"\n#%FILE\n";
const MAX_FILES: usize = 4;

/// One scratch directory per process, in memory when /dev/shm exists.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("meshd-fuzz-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(dir.join("sub")) {
            panic!("cannot create {}: {e}", dir.display());
        }
        dir
    })
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    let mut rest = data;
    while files.len() + 1 < MAX_FILES {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                files.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    files.push(rest);
    files
}

/// Loads one input; panics only if meshd does.
pub fn run(data: &[u8]) {
    let dir = scratch();
    let files = split(data);
    let paths: Vec<PathBuf> = (0..MAX_FILES)
        .map(|i| match i {
            1 => dir.join("sub").join("1.yaml"),
            _ => dir.join(format!("{i}.yaml")),
        })
        .collect();
    for (i, path) in paths.iter().enumerate() {
        let written = match files.get(i) {
            Some(bytes) => std::fs::write(path, bytes),
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        if let Err(e) = written {
            panic!("cannot prepare {}: {e}", path.display());
        }
    }
    let options = LoadOptions::default();
    let from_dir = load_dir(dir, &options);
    // Rendering is what an operator sees; it must not panic on what the loader produced.
    match &from_dir {
        Ok(snapshot) => drop(snapshot.summary()),
        Err(error) => drop(error.to_string()),
    }
    if let [only] = files.as_slice()
        && let Ok(text) = std::str::from_utf8(only)
    {
        // One file: the directory and the in-memory loader must agree on whether it loads.
        let from_str = load_str("0.yaml", text, &options);
        assert_eq!(
            from_dir.is_ok(),
            from_str.is_ok(),
            "load_dir and load_str disagree: {from_dir:?} vs {from_str:?}"
        );
    }
    if let Some(text) = files.first().and_then(|f| std::str::from_utf8(f).ok()) {
        let _ = parse_text::<serde_json::Value>(Path::new("meshd.yaml"), text);
    }
}
