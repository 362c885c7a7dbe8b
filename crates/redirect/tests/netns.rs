//! The netns harness itself: code really runs inside the namespace, failures propagate, and
//! namespaces are deleted even when the test panics.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use meshd_redirect::netns::{Netns, NetnsPair};

/// The network namespace of the calling thread, as the kernel names it (`net:[inode]`).
fn current_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

// run and run_async execute on a thread inside the namespace, not in the caller's.
#[test]
fn runs_inside_namespace() {
    let ns = Netns::new("inside");
    let outside = current_netns();
    let inside = ns.run(current_netns);
    assert_ne!(inside, outside);
    assert_eq!(ns.run_async(|| async { current_netns() }), inside);
    assert_eq!(current_netns(), outside, "the caller's thread never moves");
}

// The pair's addresses exist in the right namespaces, and the link carries traffic.
#[test]
fn pair_is_linked() {
    let net = NetnsPair::new("link");
    let peer_addr = SocketAddr::new(NetnsPair::PEER_V6, 7000);
    let listener = net
        .peer
        .run(|| std::net::TcpListener::bind(peer_addr))
        .unwrap();
    net.local
        .run(|| std::net::TcpStream::connect(peer_addr))
        .unwrap();
    let (_, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), NetnsPair::LOCAL_V6);
    // The host's own network never sees these addresses.
    assert!(std::net::TcpListener::bind((NetnsPair::LOCAL_V4, 0)).is_err());
}

// `command` runs a program inside the namespace: it sees only the namespace's loopback.
#[test]
fn command_runs_inside() {
    let ns = Netns::new("cmd");
    let out = ns.command("ip").args(["-o", "link"]).output().unwrap();
    assert!(out.status.success());
    let links = String::from_utf8(out.stdout).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:"), "{links}");
}

// A panic inside the namespace fails the caller, and the namespace is still deleted.
#[test]
fn panic_propagates_and_namespace_is_deleted() {
    let mut path = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ns = Netns::new("panic");
        path = Some(ns.path());
        assert!(ns.path().exists());
        ns.run(|| panic!("boom"));
    }));
    let payload = result.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    let path = path.unwrap();
    assert!(!path.exists(), "{} left behind", path.display());
}
