//! Network namespaces for tests (feature `test-util`): a private network per test, so capture
//! rules and addresses never touch the machine's own network.
//!
//! A [`Netns`] is a named namespace (`ip netns add`, loopback up) deleted on drop, also when
//! the test panics. Code runs inside it on a dedicated OS thread that `setns`es into the
//! namespace ([`Netns::run`], [`Netns::run_async`] with its own current-thread tokio runtime).
//! Sockets keep the namespace they were created in, so a test can create a listener inside a
//! namespace, return it, and use it from anywhere. [`veth_pair`] wires two namespaces together;
//! [`NetnsPair`] is the common two-machine fixture.
//!
//! These helpers need root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`) and iproute2. When they cannot
//! work they panic with the reason, so a test that needs them fails instead of silently
//! passing.

use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;
use nix::sched::{CloneFlags, setns};

use crate::Error;
use crate::nft::{find_program, run};

/// Where `ip netns add` puts the namespace handles.
const NETNS_DIR: &str = "/var/run/netns";
/// Makes names unique within a process; the pid makes them unique across test binaries.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted (with its interfaces) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with loopback up; panics with the reason if that is impossible.
    pub fn new(label: &str) -> Self {
        Self::try_new(label).unwrap_or_else(|e| {
            panic!(
                "cannot create a network namespace for this test: {e} \
                 (netns tests need root and iproute2; they fail rather than skip)"
            )
        })
    }

    /// Creates a namespace named `meshd-<label>-<pid>-<n>` with loopback up.
    pub fn try_new(label: &str) -> Result<Self, Error> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("meshd-{label}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        // From here on, Drop deletes the namespace whatever fails next.
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME ARGS` and returns its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside the namespace (through `ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(find_program("ip").unwrap_or_else(|| "ip".into()));
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a new OS thread inside the namespace and returns its result; a panic in `f`
    /// propagates to the caller.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || {
                    enter(&path);
                    f()
                })
                .unwrap_or_else(|e| panic!("cannot spawn a thread for netns: {e}"));
            match thread.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs the future made by `f` to completion inside the namespace, on a current-thread
    /// tokio runtime owned by a new OS thread.
    pub fn run_async<R, Fut>(&self, f: impl FnOnce() -> Fut + Send) -> R
    where
        R: Send,
        Fut: Future<Output = R>,
    {
        self.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
            rt.block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it (and thereby their peers).
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Moves the current thread into the namespace at `path`, or panics saying why.
fn enter(path: &std::path::Path) {
    let file = File::open(path)
        .unwrap_or_else(|e| panic!("cannot open network namespace {}: {e}", path.display()));
    setns(&file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into {} failed: {e}", path.display()));
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<String, Error> {
    let program = find_program("ip").ok_or_else(|| Error::ProgramNotFound {
        program: "ip".into(),
        package: "iproute2".into(),
    })?;
    run(&program, args, None)
}

/// One end of a veth pair: the namespace, the interface name there and its addresses.
#[derive(Debug, Clone, Copy)]
pub struct VethEnd<'a> {
    /// Namespace the interface lives in.
    pub ns: &'a Netns,
    /// Interface name (at most 15 bytes; only unique within `ns`).
    pub name: &'a str,
    /// Addresses with prefix length, e.g. `10.213.0.1/24`, `fd00:213::1/64`.
    pub addrs: &'a [IpNet],
}

/// Creates a veth pair between two namespaces, assigns the addresses and brings both ends up.
///
/// The interfaces are created directly inside the namespaces, never in the host's.
pub fn veth_pair(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<(), Error> {
    a.ns.ip(&[
        "link", "add", a.name, "type", "veth", "peer", "name", b.name, "netns", &b.ns.name,
    ])?;
    for end in [a, b] {
        for addr in end.addrs {
            let addr = addr.to_string();
            let mut args = vec!["addr", "add", addr.as_str(), "dev", end.name];
            if addr.contains(':') {
                // Skip duplicate address detection: the address is usable at once instead of
                // after ~1 s of "tentative", and nothing else can hold it in a private link.
                args.push("nodad");
            }
            end.ns.ip(&args)?;
        }
        end.ns.ip(&["link", "set", end.name, "up"])?;
    }
    Ok(())
}

/// Two namespaces joined by a veth pair: a "local" machine and its "peer".
#[derive(Debug)]
pub struct NetnsPair {
    /// The machine under test (where meshd and its rules would live).
    pub local: Netns,
    /// Another machine on the same link.
    pub peer: Netns,
}

impl NetnsPair {
    /// `local`'s IPv4 address on the link.
    pub const LOCAL_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 1));
    /// `peer`'s IPv4 address on the link.
    pub const PEER_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 2));
    /// `local`'s IPv6 (ULA) address on the link.
    pub const LOCAL_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 1));
    /// `peer`'s IPv6 (ULA) address on the link.
    pub const PEER_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x213, 0, 0, 0, 0, 0, 2));

    /// Creates both namespaces and the link (`veth0` on each side); panics saying why if it
    /// cannot, so the test fails.
    pub fn new(label: &str) -> Self {
        let local = Netns::new(&format!("{label}-l"));
        let peer = Netns::new(&format!("{label}-p"));
        let net = |ip: IpAddr, len| IpNet::new_assert(ip, len);
        let local_addrs = [net(Self::LOCAL_V4, 24), net(Self::LOCAL_V6, 64)];
        let peer_addrs = [net(Self::PEER_V4, 24), net(Self::PEER_V6, 64)];
        veth_pair(
            VethEnd {
                ns: &local,
                name: "veth0",
                addrs: &local_addrs,
            },
            VethEnd {
                ns: &peer,
                name: "veth0",
                addrs: &peer_addrs,
            },
        )
        .unwrap_or_else(|e| panic!("cannot link test network namespaces: {e}"));
        Self { local, peer }
    }
}
