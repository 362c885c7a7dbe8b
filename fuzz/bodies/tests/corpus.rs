//! Replays every committed corpus input through its target's body: the fuzz targets' regression
//! suite without libFuzzer (`cargo test --manifest-path fuzz/Cargo.toml`).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "{} has no inputs", dir.display());
    for path in entries {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{}", path.display());
        run(&data);
    }
}

#[test]
fn config_load() {
    replay("config_load", meshd_fuzz::config_load::run);
}

#[test]
fn identity_x509() {
    replay("identity_x509", meshd_fuzz::identity_x509::run);
}

#[test]
fn hbone_server() {
    replay("hbone_server", meshd_fuzz::hbone_server::run);
}

#[test]
fn socks5() {
    replay("socks5", meshd_fuzz::socks5::run);
}

#[test]
fn rbac_decide() {
    replay("rbac_decide", meshd_fuzz::rbac_decide::run);
}
