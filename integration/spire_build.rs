//! Building SPIRE's `spire-server` and `spire-agent` for the harness in `spire.rs`: `go build`
//! of the Go module under `integration/spire/` (its `go.mod` pins v1.13.3 as tools) into
//! `<target>/spire/`, once per test process and only when the binaries are stale.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The directory holding `spire-server` and `spire-agent`, built once per test process by
/// [`build_spire`] (`SPIRE_BIN_DIR` names another directory instead).
pub fn spire_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var_os("SPIRE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => build_spire(&spire_source(), &spire_out_dir()),
    })
    .clone()
}

/// The Go module naming SPIRE's commands as tools.
pub fn spire_source() -> PathBuf {
    crate::workspace_root().join("integration").join("spire")
}

/// `<target>/spire/`: beside the test executable's profile directory, as the istiod harness.
pub fn spire_out_dir() -> PathBuf {
    crate::go_out_dir("spire")
}

/// The commands built, as the module's `tool` lines name them.
const SPIRE_TOOLS: [&str; 2] = [
    "github.com/spiffe/spire/cmd/spire-server",
    "github.com/spiffe/spire/cmd/spire-agent",
];

/// Builds SPIRE's two commands into `out/` with `go build` unless both binaries are newer
/// than the module's go.mod and go.sum (scripts/test.sh builds them first: 8 to 9 minutes
/// cold on two cores). Concurrent test processes take turns on a lock file; the binaries are
/// built into a scratch directory and renamed, so none runs a half-written one.
///
/// # Panics
/// When `go` is not installed or the build fails (Go's output in the message).
pub fn build_spire(source: &Path, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let lock = std::fs::File::create(out.join("build.lock")).expect("create the build lock");
    lock.lock().expect("lock the SPIRE build");
    let bins = ["spire-server", "spire-agent"].map(|b| out.join(b));
    if bins.iter().all(|bin| crate::go_build_is_fresh(bin, source)) {
        return out.to_path_buf();
    }
    let partial = out.join(format!("partial.{}", std::process::id()));
    std::fs::create_dir_all(&partial).expect("create the scratch directory");
    let result = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(format!("{}/", partial.display()))
        .args(SPIRE_TOOLS)
        .current_dir(source)
        // The go.mod's toolchain, never a download of another one.
        .env("GOTOOLCHAIN", "local")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "SPIRE needs Go 1.26 (`go` on PATH) to build from {}: {e}",
                source.display()
            )
        });
    assert!(
        result.status.success(),
        "go build of SPIRE ({}) failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    for bin in ["spire-server", "spire-agent"] {
        std::fs::rename(partial.join(bin), out.join(bin)).expect("move a SPIRE binary into place");
    }
    let _ = std::fs::remove_dir(&partial);
    out.to_path_buf()
}
