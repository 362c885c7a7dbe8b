//! What the tests do inside a network namespace (a machine of `meshd_redirect::netns`): run
//! meshd there, install its capture rules, connect as an application (captured) or as meshd
//! does (marked, so capture skips it), listen. One copy for `machines.rs`, `capture.rs` and
//! `load.rs`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshd_redirect::netns::Netns;

use crate::meshd_bin;

/// How long a connect from inside a namespace may take: long enough for a loaded two-core
/// machine, short enough that a blackholed SYN fails the test quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `meshd ARGS` inside `ns`, not started.
pub fn meshd_in(ns: &Netns, args: &[&str]) -> Command {
    let mut command = ns.command(meshd_bin());
    command.args(args);
    command
}

/// `meshd run --config <config>` inside `ns`, not started.
pub fn run_in(ns: &Netns, config: &Path) -> Command {
    let mut command = meshd_in(ns, &["run", "--config"]);
    command.arg(config);
    command
}

/// Installs the capture rules of `config` inside `ns` (`meshd redirect install`) and returns
/// what `meshd redirect show` then prints, which must name a redirect.
///
/// # Panics
/// When either command fails or no redirect is shown.
pub fn install_capture(ns: &Netns, config: &Path) -> String {
    let out = meshd_in(ns, &["redirect", "install", "--config"])
        .arg(config)
        .output()
        .expect("run meshd redirect install");
    assert!(out.status.success(), "redirect install failed: {out:?}");
    let shown = meshd_in(ns, &["redirect", "show"])
        .output()
        .expect("run meshd redirect show");
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("redirect to :"), "{shown}");
    shown
}

/// An application's plain `connect()` from inside `ns` (captured by that machine's meshd
/// when capture is installed).
pub fn connect_in(ns: &Netns, to: SocketAddr) -> io::Result<TcpStream> {
    ns.run(move || TcpStream::connect_timeout(&to, CONNECT_TIMEOUT))
}

/// A connection from inside `ns` that bypasses its meshd (a socket carrying meshd's mark, so
/// capture skips it): plaintext arriving at the destination. Blocking, as the tests read it.
pub fn connect_marked_in(ns: &Netns, to: SocketAddr) -> io::Result<TcpStream> {
    let stream = ns.run_async(move || {
        meshd_redirect::connect_marked(to, meshd_redirect::DEFAULT_MARK, CONNECT_TIMEOUT)
    })?;
    let stream = stream.into_std()?;
    // tokio hands sockets back non-blocking; the tests read them with blocking calls.
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A listener on `addr` inside `ns` (the socket stays in the namespace whatever thread
/// serves it).
///
/// # Panics
/// When the address cannot be bound.
pub fn listen_in(ns: &Netns, addr: SocketAddr) -> TcpListener {
    ns.run(move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} inside a namespace: {e}"))
}
