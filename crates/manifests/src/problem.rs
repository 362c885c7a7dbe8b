//! A diagnostic placed in a file: what `meshd validate` prints and what a reload logs.

use std::fmt;
use std::path::PathBuf;

use meshd_policy::{FieldPath, ResourceKey, Severity};

use crate::yaml::Pos;

/// A problem in the configuration directory, with everything needed to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error (the configuration is rejected) or warning.
    pub severity: Severity,
    /// The file (as reached from the directory given, symlinks not resolved).
    pub file: PathBuf,
    /// Line and column, when the problem is inside the file.
    pub pos: Option<Pos>,
    /// The resource, when known.
    pub resource: Option<ResourceKey>,
    /// The field, when the problem is about one.
    pub path: FieldPath,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// An error about a whole file (unreadable, not UTF-8, too large).
    pub fn file_error(
        file: impl Into<PathBuf>,
        pos: Option<Pos>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Error,
            file: file.into(),
            pos,
            resource: None,
            path: FieldPath::root(),
            message: message.into(),
        }
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    /// `file:line:col: [warning: ]Kind/namespace/name: field.path: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(pos) = self.pos {
            write!(f, ":{pos}")?;
        }
        f.write_str(": ")?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(key) = &self.resource {
            write!(f, "{key}: ")?;
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}
