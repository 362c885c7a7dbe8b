//! What the tests do inside a network namespace (a machine of `meshd_redirect::netns`): run
//! meshd there, install its capture rules, connect as an application (captured) or as meshd
//! does (marked, so capture skips it), listen. One copy for `machines.rs`, `capture.rs` and
//! `load.rs`.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
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

/// An application's `connect()` from inside `ns`, bound to `source` first (one of the
/// machine's workload addresses), captured by that machine's meshd.
pub fn connect_from_in(ns: &Netns, source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    ns.run(move || {
        let domain = socket2::Domain::for_address(to);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
        Ok(socket.into())
    })
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

/// The URI SAN of the certificate served at `to`, as `openssl s_client` sees it from inside
/// `ns` (meshd checks nothing here: an independent reading), presenting `cert`/`key` as the
/// client certificate (meshd asks for one). With `ca_file`, the chain must verify against it.
///
/// # Errors
/// What went wrong, with openssl's output: no certificate, a chain that does not verify, no
/// URI SAN.
pub fn served_san_uri(
    ns: &Netns,
    to: SocketAddr,
    (cert, key): (&Path, &Path),
    ca_file: Option<&Path>,
) -> Result<String, String> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut s_client = ns.command("openssl");
    s_client.args(["s_client", "-connect", &to.to_string(), "-cert"]);
    s_client.arg(cert).arg("-key").arg(key).stdin(Stdio::null());
    if let Some(ca) = ca_file {
        s_client.arg("-verify_return_error").arg("-CAfile").arg(ca);
    }
    let out = s_client
        .output()
        .map_err(|e| format!("openssl s_client: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if ca_file.is_some() && !text.contains("Verify return code: 0 (ok)") {
        return Err(format!("the chain at {to} does not verify: {text}"));
    }
    const END: &str = "-----END CERTIFICATE-----";
    let pem = text
        .find("-----BEGIN CERTIFICATE-----")
        .and_then(|begin| Some(&text[begin..begin + text[begin..].find(END)? + END.len()]))
        .ok_or_else(|| format!("no certificate from {to}: {text}"))?;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("openssl x509: {e}"))?;
    let written = x509.stdin.take().map(|mut i| i.write_all(pem.as_bytes()));
    let out = x509
        .wait_with_output()
        .map_err(|e| format!("openssl x509: {e}"))?;
    if !matches!(written, Some(Ok(()))) {
        return Err(format!(
            "could not hand openssl x509 the certificate from {to}"
        ));
    }
    let san = String::from_utf8_lossy(&out.stdout);
    san.lines()
        .find_map(|l| l.trim().strip_prefix("URI:"))
        .map(str::to_string)
        .ok_or_else(|| format!("no URI SAN in the certificate from {to}: {san}"))
}
