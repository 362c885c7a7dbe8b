//! The bodies of meshd's fuzz targets, one module per target.
//!
//! Each `run(data)` feeds one input to the real code that meets it in production and panics only
//! on a defect: a panic inside meshd, or a property the module states (the differential RBAC
//! target's agreement, the SOCKS5 target's reference parse). The `fuzz_targets/` binaries call
//! these under libFuzzer; `tests/corpus.rs` replays the committed corpus through them with
//! `cargo test`.
#![forbid(unsafe_code)]

pub mod config_load;
pub mod hbone_server;
pub mod identity_x509;
pub mod rbac_decide;
pub mod rbac_oracle;
pub mod socks5;

/// A current-thread runtime with paused time: timers fire as soon as every task is idle, so a
/// server waiting on a keepalive or an idle timeout costs nothing and an input never hangs.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build a tokio runtime: {e}"),
    }
}
