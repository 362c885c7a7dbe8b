//! The multi-host suite: three machines (network namespaces on a bridge), each with a real
//! meshd, its own SVID and its own copy of the configuration directory, applications whose
//! plain `connect()` is captured by `meshd redirect install`'s rules. The seed documents' L4
//! policies end to end, a ServiceEntry VIP balanced over two machines, reload by file change
//! on all three, and certificate rotation under traffic.
//!
//! Machines: `sleep` 10.215.0.1, `httpbin` 10.215.0.2, `notsleep` 10.215.0.3 (all in
//! namespace ambient-demo, service account = name). Each test fails, never skips, when it
//! cannot build its namespaces.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use meshd_integration::machines::{Cluster, Machine, SEED_CAST};
use meshd_integration::traffic::{echo_transfer, serve_whoami, whoami};
use meshd_integration::{echo_on, echo_roundtrip, eventually};

const SLEEP: usize = 0;
const HTTPBIN: usize = 1;
const NOTSLEEP: usize = 2;
/// Where every machine's application echoes.
const APP: u16 = 8000;

/// The seed's L4 policy, as the Istio page shows it (plus the namespace kubectl would add).
const SEED_L4: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-sleep-to-httpbin
 namespace: ambient-demo
spec:
 selector:
   matchLabels:
     app: httpbin
 action: ALLOW
 rules:
 - from:
   - source:
       principals:
       - cluster.local/ns/ambient-demo/sa/sleep
";

/// The seed's policy with an HTTP method: ztunnel (and meshd) cannot see methods at L4.
const SEED_L7: &str = "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
 name: allow-sleep-to-httpbin
 namespace: ambient-demo
spec:
 selector:
   matchLabels:
     app: httpbin
 action: ALLOW
 rules:
 - from:
   - source:
       principals:
       - cluster.local/ns/ambient-demo/sa/sleep
   to:
   - operation:
       methods: [\"GET\"]
";

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: ambient-demo}}
spec: {{mtls: {{mode: {mode}}}}}
"
    )
}

/// A cluster of the seed cast with an echo application on port 8000 of every machine.
fn cluster(label: &str, mesh: &str) -> Cluster {
    let cluster = Cluster::new(label, &SEED_CAST, mesh);
    for m in &cluster.machines {
        echo_on(m.listen(APP));
    }
    cluster
}

/// Does an application on `from` get an echo from `to`'s application, through capture (and so
/// through both meshds)?
fn meshed(from: &Machine, to: &Machine) -> bool {
    let Ok(mut stream) = from.connect(to.addr(APP)) else {
        return false;
    };
    echo_roundtrip(&mut stream, b"ping").as_deref() == Some(&b"ping"[..])
}

/// The same from a socket that bypasses `from`'s meshd: plaintext captured on arrival at `to`.
fn plaintext(from: &Machine, to: &Machine) -> bool {
    let Ok(mut stream) = from.connect_plaintext(to.addr(APP)) else {
        return false;
    };
    echo_roundtrip(&mut stream, b"ping").as_deref() == Some(&b"ping"[..])
}

#[test]
fn seed_l4_allow_admits_one_principal_and_denies_every_other_source() {
    let c = cluster("l4", SEED_L4);
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    assert!(meshed(sleep, httpbin), "sleep's principal is allowed");
    httpbin
        .meshd()
        .wait_for_log("policy=\"ambient-demo/allow-sleep-to-httpbin\"");

    assert!(!meshed(notsleep, httpbin), "another principal is denied");
    let log = httpbin.meshd().wait_for_log("connection denied");
    assert!(
        log.lines().any(|l| l.contains("connection denied")
            && l.contains(&format!("src.addr={}:", notsleep.ip))
            && l.contains("src.identity=\"spiffe://cluster.local/ns/ambient-demo/sa/notsleep\"")),
        "{log}"
    );
    notsleep
        .meshd()
        .wait_for_log("peer meshd refused the tunnel with HTTP status 401");
    // Plaintext carries no principal, whichever machine it comes from.
    assert!(!plaintext(notsleep, httpbin), "plaintext from notsleep");
    assert!(!plaintext(sleep, httpbin), "plaintext from sleep's machine");
    // The policy selects httpbin only: sources are not restricted elsewhere.
    assert!(meshed(notsleep, sleep));
    assert!(plaintext(httpbin, notsleep));
}

#[test]
fn seed_policy_with_an_http_method_fails_safe_and_denies_even_the_right_principal() {
    let c = cluster("l7", SEED_L7);
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    assert!(
        !meshed(sleep, httpbin),
        "the L7 rule is dropped: nothing is allowed"
    );
    let log = httpbin.meshd().wait_for_log("connection denied");
    assert!(
        log.contains("ALLOW policies apply to the destination, but none matched"),
        "{log}"
    );
    assert!(!meshed(notsleep, httpbin));
    assert!(!plaintext(sleep, httpbin));
    assert!(meshed(sleep, notsleep), "other workloads are untouched");
    // The same policy without the method (written live) admits sleep again.
    c.write_all("mesh.yaml", SEED_L4);
    eventually("the L4-only policy is in force on httpbin", || {
        meshed(sleep, httpbin).then_some(())
    });
    assert!(!meshed(notsleep, httpbin));
}

/// Waits until every machine runs a configuration newer than `after` (one generation each).
fn reloaded(c: &Cluster, after: &[u64]) -> Vec<u64> {
    c.machines
        .iter()
        .zip(after)
        .map(|(m, &g)| {
            eventually(&format!("a reload on {}", m.name), || {
                let now = m.generation();
                (now > g).then_some(now)
            })
        })
        .collect()
}

fn generations(c: &Cluster) -> Vec<u64> {
    c.machines.iter().map(Machine::generation).collect()
}

#[test]
fn strict_refuses_plaintext_permissive_accepts_it_and_disable_acts_as_permissive() {
    let c = cluster("mtls", &peer_authentication("STRICT"));
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    assert!(!plaintext(notsleep, httpbin), "STRICT refuses plaintext");
    httpbin.meshd().wait_for_log(
        "plaintext refused: PeerAuthentication ambient-demo/default requires mTLS (STRICT)",
    );
    assert!(
        !plaintext(httpbin, sleep),
        "on every machine of the namespace"
    );
    assert!(meshed(notsleep, httpbin), "mTLS passes");
    assert!(meshed(sleep, notsleep));

    let mut g = generations(&c);
    for mode in ["PERMISSIVE", "DISABLE"] {
        c.write_all("mesh.yaml", &peer_authentication(mode));
        g = reloaded(&c, &g);
        for (from, to) in [(notsleep, httpbin), (httpbin, sleep), (sleep, notsleep)] {
            assert!(
                plaintext(from, to),
                "{mode}: plaintext {} → {}",
                from.name,
                to.name
            );
            assert!(meshed(from, to), "{mode}: mTLS {} → {}", from.name, to.name);
        }
    }
    // The plaintext connection's record on httpbin has no identity and says so.
    let log = httpbin.meshd().wait_for_log("mtls=false");
    assert!(log.contains("src.identity=\"-\""), "{log}");
}

#[test]
fn reload_by_file_change_changes_decisions_live_on_all_three() {
    let c = cluster("reload", "");
    let ring = [(SLEEP, HTTPBIN), (HTTPBIN, NOTSLEEP), (NOTSLEEP, SLEEP)];
    let decisions =
        |c: &Cluster| -> Vec<bool> { ring.iter().map(|&(a, b)| meshed(c.m(a), c.m(b))).collect() };
    assert_eq!(decisions(&c), [true, true, true]);
    // A connection that every step below keeps allowed: it must carry on untouched.
    let mut held = c.m(NOTSLEEP).connect(c.m(SLEEP).addr(APP)).unwrap();
    assert!(echo_roundtrip(&mut held, b"held").is_some());
    let mut g = generations(&c);

    // Namespace-wide: deny everything from sleep and httpbin. Each receiving meshd enforces.
    let deny = |principals: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny, namespace: ambient-demo}}
spec:
  action: DENY
  rules: [{{from: [{{source: {{principals: [{principals}]}}}}]}}]
"
        )
    };
    c.write_all("deny.yaml", &deny("'*/sa/sleep', '*/sa/httpbin'"));
    g = reloaded(&c, &g);
    assert_eq!(decisions(&c), [false, false, true]);
    assert!(echo_roundtrip(&mut held, b"still").is_some());

    // Edited: only sleep is denied now.
    c.write_all("deny.yaml", &deny("'*/sa/sleep'"));
    g = reloaded(&c, &g);
    assert_eq!(decisions(&c), [false, true, true]);

    // An allow-list on sleep's machine: only httpbin may reach it; notsleep's held connection
    // is now denied and closed by sleep's meshd.
    c.write_all(
        "allow.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep-from-httpbin, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: sleep}}
  rules: [{from: [{source: {principals: [cluster.local/ns/ambient-demo/sa/httpbin]}}]}]
",
    );
    g = reloaded(&c, &g);
    assert_eq!(decisions(&c), [false, true, false]);
    assert!(meshed(c.m(HTTPBIN), c.m(SLEEP)));
    assert_eq!(
        echo_roundtrip(&mut held, b"closed?"),
        None,
        "closed on reload"
    );
    c.m(SLEEP)
        .meshd()
        .wait_for_log("closing connection after a configuration change");

    c.remove_all("deny.yaml");
    c.remove_all("allow.yaml");
    reloaded(&c, &g);
    assert_eq!(decisions(&c), [true, true, true]);
}

const VIP: &str = "10.215.100.10";

const BACKEND_SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: ambient-demo}
spec:
  hosts: [backend.ambient-demo.mesh.internal]
  addresses: [10.215.100.10]
  ports: [{number: 80, name: http, targetPort: 9000}]
  resolution: STATIC
  workloadSelector: {labels: {tier: backend}}
";

/// Which machine a connection to the VIP reached; `None` if it failed.
fn through_vip(client: &Machine) -> Option<String> {
    let mut stream: TcpStream = client.connect(format!("{VIP}:80").parse().ok()?).ok()?;
    whoami(&mut stream)
}

#[test]
fn service_entry_vip_balances_over_two_machines_and_moves_off_a_stopped_one() {
    let mut c = Cluster::new("vip", &SEED_CAST, BACKEND_SERVICE);
    for i in [HTTPBIN, NOTSLEEP] {
        serve_whoami(c.m(i).listen(9000), c.m(i).name);
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    const N: usize = 60;
    for _ in 0..N {
        let at = through_vip(c.m(SLEEP)).expect("every connection reaches a backend");
        *seen.entry(at).or_default() += 1;
    }
    // Uniform weights: each of two endpoints gets Binomial(60, 1/2) connections; below 15 has
    // probability ~5e-5.
    for backend in ["httpbin", "notsleep"] {
        let n = seen.get(backend).copied().unwrap_or(0);
        assert!(n >= 15, "{backend} got {n} of {N}: {seen:?}");
    }
    assert_eq!(seen.values().sum::<usize>(), N, "{seen:?}");

    // notsleep's meshd stops: at most the first connection that picks it fails (and marks the
    // endpoint), after which every connection goes to httpbin.
    c.m_mut(NOTSLEEP).kill();
    let started = Instant::now();
    let results: Vec<Option<String>> = (0..30).map(|_| through_vip(c.m(SLEEP))).collect();
    let failed = results.iter().filter(|r| r.is_none()).count();
    assert!(failed <= 1, "{failed} failed: {results:?}");
    // Everything after the failure went to httpbin. Where the failure falls is chance (the
    // first pick of notsleep): asserting it among the first ten, as this test did, fails one
    // run in 1 024, and did once.
    let after_failure = results
        .iter()
        .position(Option::is_none)
        .map_or(0, |i| i + 1);
    assert!(
        results[after_failure..]
            .iter()
            .all(|r| r.as_deref() == Some("httpbin")),
        "{results:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
    c.m(SLEEP).meshd().wait_for_log("10.215.0.3:15008");
}

#[test]
fn certificate_rotation_on_one_machine_under_traffic_loses_nothing() {
    let c = cluster("rotate", "");
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    let before = httpbin.serial();
    // Traffic to httpbin from two machines while its certificate is replaced: a long transfer
    // on one connection and a stream of new connections, every byte hashed.
    let long = sleep.connect(httpbin.addr(APP)).unwrap();
    let rotating = std::sync::atomic::AtomicBool::new(true);
    thread::scope(|s| {
        let long = s.spawn(|| echo_transfer(long, 8 << 20, 1));
        let churn = s.spawn(|| {
            let mut n = 0u64;
            while rotating.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                let stream = notsleep
                    .connect(httpbin.addr(APP))
                    .map_err(|e| e.to_string())?;
                echo_transfer(stream, 64 << 10, n)?;
                n += 1;
            }
            Ok::<u64, String>(n)
        });
        meshd_integration::meshd(&[
            "ca",
            "issue",
            "--ca",
            &c.ws.ca().display().to_string(),
            "--namespace",
            "ambient-demo",
            "--service-account",
            "httpbin",
            "--out",
            &httpbin.tls_dir().display().to_string(),
        ]);
        eventually("httpbin's new certificate in force", || {
            let now = httpbin.serial();
            (now != before && !now.is_empty()).then_some(())
        });
        rotating.store(false, std::sync::atomic::Ordering::Relaxed);
        long.join().unwrap().expect("the long transfer");
        let n = churn.join().unwrap().expect("every new connection");
        assert!(n >= 20);
    });
    httpbin.meshd().wait_for_log("rotated identity");
    // A machine that never talked to httpbin before makes a new TLS connection: the new
    // certificate is what it sees, and it is accepted.
    assert!(meshed(sleep, httpbin));
}
