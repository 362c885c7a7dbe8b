//! `meshd validate DIR`.

use std::path::Path;
use std::process::ExitCode;

use meshd_config::{LoadOptions, load_dir};

/// Prints every problem, then a one-line summary; exit 1 when there is any error.
pub fn run(dir: &Path, root_namespace: &str) -> anyhow::Result<ExitCode> {
    let options = LoadOptions {
        root_namespace: root_namespace.to_string(),
    };
    match load_dir(dir, &options) {
        Ok(snapshot) => {
            for warning in &snapshot.warnings {
                println!("{warning}");
            }
            println!("{}: OK: {}", dir.display(), snapshot.summary());
            Ok(ExitCode::SUCCESS)
        }
        Err(rejected) => {
            for problem in &rejected.problems {
                println!("{problem}");
            }
            let errors = rejected.errors().count();
            let warnings = rejected.problems.len() - errors;
            println!(
                "{}: INVALID: {errors} error{}, {warnings} warning{}; the configuration would be rejected",
                dir.display(),
                plural(errors),
                plural(warnings)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
