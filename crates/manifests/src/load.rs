//! Reading the configuration directory: which files count, and turning their text into a
//! [`Snapshot`].

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use meshd_policy::{ValidationContext, meta::DEFAULT_ROOT_NAMESPACE};

use crate::document::load_document;
use crate::overlap::{self, Site};
use crate::problem::Problem;
use crate::shadowing::Catalog;
use crate::snapshot::{LoadError, Snapshot};
use crate::tree::{self, Entry};
use crate::yaml::{Node, Pos, Value, parse_documents};

/// Files larger than this are rejected unread: far beyond any real policy set, small enough that
/// a stray log file cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Settings a load depends on.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The mesh root namespace (Istio's `rootNamespace`).
    pub root_namespace: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
        }
    }
}

/// True for names meshd reads: `*.yaml` / `*.yml`, not hidden, not an editor's or package
/// manager's dropping.
pub fn is_config_file_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    if is_ignored_name(name) {
        return false;
    }
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Hidden entries (including Kubernetes' `..data` links and `.#` lock files) and droppings:
/// never read, whatever their kind.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".tmp")
        || name.contains(".dpkg-")
}

/// Loads every configuration file under `dir` (subdirectories included, symlinks followed)
/// into one snapshot, or returns every problem found.
pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Snapshot, LoadError> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    collect(dir, &mut files, &mut problems);
    let mut loader = Loader::new(options);
    loader.problems = problems;
    for file in files {
        match read_text(&file) {
            Ok(text) => loader.add(&file, &text),
            Err(problem) => {
                loader.snapshot.files += 1;
                loader.problems.push(*problem);
            }
        }
    }
    loader.finish()
}

/// Loads one text as if it were a file called `name` (tests, benchmarks, stdin).
pub fn load_str(name: &str, text: &str, options: &LoadOptions) -> Result<Snapshot, LoadError> {
    let mut loader = Loader::new(options);
    loader.add(Path::new(name), text);
    loader.finish()
}

/// The files to read and the problems of the tree itself.
fn collect(dir: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    tree::walk(dir, &mut |entry| match entry {
        Entry::Dir(..) => {}
        Entry::Unlistable(dir, e) => problems.push(Problem::file_error(
            dir,
            None,
            format!("cannot read directory: {e}"),
        )),
        Entry::TooDeep(dir) => problems.push(Problem::file_error(
            dir,
            None,
            format!(
                "directory nested deeper than {} levels is not read",
                tree::MAX_DEPTH
            ),
        )),
        // Only regular files (or symlinks to them, as in Kubernetes' `..data` layout) are
        // opened: opening a FIFO blocks until a writer comes, and a device such as
        // `/dev/zero` reads forever.
        Entry::File(path, Ok(meta)) if meta.is_file() => files.push(path.to_path_buf()),
        Entry::File(path, Ok(meta)) => {
            problems.push(Problem::file_error(path, None, not_regular(meta)));
        }
        Entry::File(path, Err(e)) => {
            problems.push(Problem::file_error(path, None, format!("cannot read: {e}")));
        }
    });
}

/// Why a file that is not a regular file is not read, naming its kind.
fn not_regular(meta: &fs::Metadata) -> String {
    let file_type = meta.file_type();
    let kind = if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "a special file"
    };
    format!("{kind}, not a regular file: meshd reads only regular files (it is not opened)")
}

fn read_text(path: &Path) -> Result<String, Box<Problem>> {
    let bytes = read_capped(path, MAX_FILE_BYTES)?;
    decode(path, bytes)
}

/// Reads a regular file of at most `cap` bytes. The kind is checked before opening (a FIFO's
/// open blocks) and again on the open file, which is opened non-blocking in case a FIFO was
/// put in its place meanwhile; the cap is enforced while reading, since `/proc`-like files and
/// files still growing report a size that is not what a read returns.
fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, Box<Problem>> {
    let problem = |message: String| Box::new(Problem::file_error(path, None, message));
    let cannot = |e: std::io::Error| problem(format!("cannot read: {e}"));
    let meta = fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(problem(not_regular(&meta)));
    }
    if meta.len() > cap {
        return Err(problem(format!(
            "file is {} bytes, more than the {cap} meshd reads",
            meta.len()
        )));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(problem(not_regular(&meta)));
    }
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > cap {
        return Err(problem(format!(
            "file has more than the {cap} bytes meshd reads"
        )));
    }
    Ok(bytes)
}

/// UTF-8 text without a byte-order mark; an invalid byte is placed by line and column.
fn decode(path: &Path, bytes: Vec<u8>) -> Result<String, Box<Problem>> {
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with('\u{feff}') {
                text.remove(0);
            }
            Ok(text)
        }
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let col = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            Err(Box::new(Problem::file_error(
                path,
                Some(Pos { line, col }),
                "not valid UTF-8: YAML files must be UTF-8 text",
            )))
        }
    }
}

struct Loader {
    ctx: ValidationContext,
    snapshot: Snapshot,
    problems: Vec<Problem>,
    /// Every workload so far, with the position of its address (the snapshot keeps none).
    sites: Vec<Site>,
    /// Every ServiceEntry and workload so far, for the shadowing check.
    catalog: Catalog,
}

impl Loader {
    fn new(options: &LoadOptions) -> Self {
        Loader {
            ctx: ValidationContext {
                root_namespace: options.root_namespace.clone(),
            },
            snapshot: Snapshot {
                root_namespace: options.root_namespace.clone(),
                ..Snapshot::default()
            },
            problems: Vec::new(),
            sites: Vec::new(),
            catalog: Catalog::default(),
        }
    }

    fn add(&mut self, file: &Path, text: &str) {
        self.snapshot.files += 1;
        let (documents, syntax) = parse_documents(text);
        for root in &documents {
            if root.value == Value::Null {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let (resource, problems) = load_document(file, root, &self.ctx);
            let has_errors = problems.iter().any(Problem::is_error);
            self.problems.extend(problems);
            if let (Some(resource), false) = (resource, has_errors) {
                let sites = overlap::sites(&resource, file, root);
                self.catalog.add(&resource, file, root, &sites);
                self.sites.extend(sites);
                self.snapshot.push(resource, file.to_path_buf(), root.pos);
            }
        }
        if let Some(e) = syntax {
            self.problems.push(Problem::file_error(
                file,
                Some(e.pos),
                format!("YAML syntax error: {}", e.message),
            ));
        }
    }

    fn finish(mut self) -> Result<Snapshot, LoadError> {
        let cross = self.snapshot.cross_check();
        self.problems.extend(cross);
        self.problems.extend(overlap::check(&self.sites));
        self.problems.extend(self.catalog.check());
        self.problems
            .sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        if self.problems.iter().any(Problem::is_error) {
            Err(LoadError {
                problems: self.problems,
            })
        } else {
            self.snapshot.warnings = self.problems;
            Ok(self.snapshot)
        }
    }
}

/// Types a single-document YAML file (the daemon's own configuration) with the same positioned,
/// strict deserializer as the manifests; errors name the file, line, column and field.
pub fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Box<Problem>> {
    let text = read_text(path)?;
    parse_text(path, &text)
}

/// [`parse_file`] on text already read; `path` names it in errors.
pub fn parse_text<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, Box<Problem>> {
    type_tree(path, &parse_tree(path, text)?)
}

/// Reads a single-document YAML file into its positioned tree (an empty file is an empty
/// mapping), with the same size, file-type and UTF-8 checks as the configuration directory.
/// The daemon both types the tree ([`type_tree`]) and layers its values under the environment,
/// so the file is read and parsed once, by one parser.
pub fn read_tree(path: &Path) -> Result<Node, Box<Problem>> {
    let text = read_text(path)?;
    parse_tree(path, &text)
}

/// [`read_tree`] on text already read; `path` names it in errors.
pub fn parse_tree(path: &Path, text: &str) -> Result<Node, Box<Problem>> {
    let (documents, syntax) = parse_documents(text);
    if let Some(e) = syntax {
        return Err(Box::new(Problem::file_error(
            path,
            Some(e.pos),
            format!("YAML syntax error: {}", e.message),
        )));
    }
    let empty = Node {
        value: Value::Map(Vec::new()),
        pos: Pos { line: 1, col: 1 },
    };
    let mut documents = documents.into_iter();
    match (documents.next(), documents.next()) {
        (None, _) => Ok(empty),
        (Some(one), None) if one.value == Value::Null => Ok(empty),
        (Some(one), None) => Ok(one),
        (Some(_), Some(_)) => Err(Box::new(Problem::file_error(
            path,
            None,
            "expected a single YAML document",
        ))),
    }
}

/// Types a tree from [`read_tree`] / [`parse_tree`]; errors name `path`, line, column, field.
pub fn type_tree<T: serde::de::DeserializeOwned>(
    path: &Path,
    root: &Node,
) -> Result<T, Box<Problem>> {
    crate::de::from_node(root).map_err(|e| {
        Box::new(Problem {
            severity: meshd_policy::Severity::Error,
            file: path.to_path_buf(),
            pos: e.pos,
            resource: None,
            path: e.path,
            message: e.message,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_cap_holds_while_reading_not_only_by_metadata() {
        // /proc files say they are empty, then read as much as they hold: metadata alone
        // cannot bound them.
        let path = Path::new("/proc/self/maps");
        assert_eq!(fs::metadata(path).map(|m| m.len()).ok(), Some(0));
        let problem = read_capped(path, 64).expect_err("over the cap");
        assert_eq!(
            problem.to_string(),
            "/proc/self/maps: file has more than the 64 bytes meshd reads"
        );
        assert!(read_capped(path, MAX_FILE_BYTES).is_ok());
    }
}
