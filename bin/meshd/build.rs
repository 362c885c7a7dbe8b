//! Build information for `meshd --version` (src/version.rs): the git revision, the compiler,
//! the profile and the enabled features, as environment variables of the compilation.
//!
//! A source tarball has no .git and a machine may have no git: the revision is then "unknown",
//! never a build failure.

use std::path::Path;
use std::process::Command;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    // A tarball unpacked inside another repository (a packaging checkout) must not take that
    // one's revision: the commit counts only if it tracks this crate's manifest.
    let tracked = git(&dir, &["ls-files", "--full-name", "Cargo.toml"]).is_some();
    let revision = tracked
        .then(|| git(&dir, &["rev-parse", "HEAD"]))
        .flatten()
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MESHD_GIT_REVISION={revision}");
    // Rebuilt when HEAD moves: HEAD itself (a checkout) and the branch it names (a commit).
    // Only files that exist: cargo reruns a script on every build for one that does not.
    for name in ["HEAD", "packed-refs"]
        .into_iter()
        .map(String::from)
        .chain(git(&dir, &["symbolic-ref", "-q", "HEAD"]))
    {
        if let Some(path) = git(&dir, &["rev-parse", "--git-path", &name])
            && Path::new(&dir).join(&path).exists()
        {
            println!(
                "cargo:rerun-if-changed={}",
                Path::new(&dir).join(path).display()
            );
        }
    }
    println!("cargo:rerun-if-changed=build.rs");

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MESHD_RUSTC_VERSION={version}");

    // "debug" for the dev and test profiles, "release" for release (cargo's PROFILE).
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=MESHD_BUILD_PROFILE={profile}");

    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| {
            k.strip_prefix("CARGO_FEATURE_")
                .map(|f| f.to_lowercase().replace('_', "-"))
        })
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(",")
    };
    println!("cargo:rustc-env=MESHD_FEATURES={features}");
}

/// `git ARGS` in `dir`: its first line of output, or None when git or the repository is missing.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_string();
    (!line.is_empty()).then_some(line)
}
