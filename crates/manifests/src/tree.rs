//! The configuration tree as meshd reaches it: which directories are followed and which files
//! count. One walk for the loader and for the daemon's check that the tree is still before a
//! reload, so both always look at the same files.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::load::{is_config_file_name, is_ignored_name};

/// How deep subdirectories are followed.
pub const MAX_DEPTH: usize = 16;

/// One step of [`walk`].
#[derive(Debug)]
pub enum Entry<'a> {
    /// A directory about to be read (`dir` itself first), with its metadata if it could be read.
    Dir(&'a Path, Option<&'a fs::Metadata>),
    /// A directory whose entries cannot be listed.
    Unlistable(&'a Path, std::io::Error),
    /// A directory nested deeper than [`MAX_DEPTH`] levels: not read.
    TooDeep(&'a Path),
    /// A file with a configuration name (`*.yaml`, `*.yml`), of any kind (the loader refuses
    /// what is not a regular file), or why its metadata could not be read.
    File(&'a Path, Result<&'a fs::Metadata, std::io::Error>),
}

/// Visits `dir` and everything below it that meshd reads: subdirectories (symlinks followed,
/// loops cut by canonical path), in name order, skipping hidden entries and droppings. Only
/// metadata is read: nothing is opened.
pub fn walk(dir: &Path, visit: &mut dyn FnMut(Entry<'_>)) {
    walk_at(dir, 0, &mut HashSet::new(), visit);
}

fn walk_at(
    dir: &Path,
    depth: usize,
    visited: &mut HashSet<PathBuf>,
    visit: &mut dyn FnMut(Entry<'_>),
) {
    visit(Entry::Dir(dir, fs::metadata(dir).ok().as_ref()));
    // Symlinked directories are followed; the canonical path stops loops.
    if let Ok(canonical) = fs::canonicalize(dir)
        && !visited.insert(canonical)
    {
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return visit(Entry::Unlistable(dir, e)),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name() else {
            continue;
        };
        if name.to_str().is_none_or(is_ignored_name) {
            continue;
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() && depth + 1 >= MAX_DEPTH => visit(Entry::TooDeep(&path)),
            Ok(meta) if meta.is_dir() => walk_at(&path, depth + 1, visited, visit),
            Ok(meta) if is_config_file_name(name) => visit(Entry::File(&path, Ok(&meta))),
            Err(e) if is_config_file_name(name) => visit(Entry::File(&path, Err(e))),
            Ok(_) | Err(_) => {}
        }
    }
}
