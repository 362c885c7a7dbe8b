//! Both stacks driven whole, layer by layer, with a fake [`Connector`] in place of the upstream
//! dial: for each way a connection can end, what the downstream is answered, what the record
//! says, and what (if anything) was dialled. The connections enter through the same
//! [`Gate`] as in `meshd run`; the downstream is an in-memory pipe.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use meshd_config::{LoadOptions, load_str};
use meshd_hbone::TraceParent;
use meshd_identity::SpiffeId;
use meshd_record::{ConnectionRecord, Direction, Identity, Outcome, RecordRef, RecordSink, Sinks};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::watch;
use tower::ServiceExt;

use super::ConnService;
use super::connect::{Connector, TunnelError};
use super::resolve::ResolveLayer;
use crate::ProxyError;
use crate::conn::{BoxIo, Downstream, Refusal, Target, TunnelRequest};
use crate::entry::{Arrival, Gate};
use crate::own_ports::OwnPorts;
use crate::plugins::{PluginRegistry, PluginSpec};
use crate::relay::Relay;
use crate::stack::{self, Plugins};
use crate::state::ProxyState;

const TRUST_DOMAIN: &str = "cluster.local";
/// Where peers' meshd listen for HBONE.
const HBONE_PORT: u16 = 15008;

/// `shop/web` is this machine's workload; `data/db` is a remote one behind the service
/// `db.data.internal`. Addresses are this file's own loopback range: nothing is dialled there,
/// the fake connector stands in for every upstream.
const MESH: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.10.23.1, labels: {app: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: data}
spec: {address: 127.10.23.2, labels: {app: db}, serviceAccount: db}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.data.internal]
  addresses: [240.10.23.1]
  ports: [{number: 5432, name: tcp}]
  workloadSelector: {labels: {app: db}}
";

/// A DENY of every connection from the namespace `client` to `shop`'s workloads.
const DENY_CLIENT: &str = "
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [client]}}]}]
";

/// The local workload, and a port of its that is nobody's own.
const WEB: &str = "127.10.23.1:8080";
/// A peer in the namespace `client`, and one in `other`.
const CLIENT: &str = "spiffe://cluster.local/ns/client/sa/sleep";
const OTHER: &str = "spiffe://cluster.local/ns/other/sa/curl";

fn state(yaml: &str, generation: u64) -> Arc<ProxyState> {
    let snapshot = load_str("mesh.yaml", yaml, &LoadOptions::default()).unwrap();
    Arc::new(ProxyState::build(
        &snapshot,
        TRUST_DOMAIN,
        generation,
        |w| w.key == "shop/web",
    ))
}

/// What the fake connector answers a dial with.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Connected: the test holds the far end.
    Connect,
    /// The upstream refused (a TCP RST; a tunnel that failed before any answer).
    Refused,
    /// The peer meshd answered the CONNECT with this status.
    Status(u16),
}

/// One dial the stack asked for.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a test's list of a few dials
enum Dial {
    Direct(SocketAddr),
    Tunnel(TunnelRequest, Bytes),
}

/// Stands in for the upstream dial, and only for it: remembers what was asked, answers as
/// told, and hands the test the far end of each connection it makes.
struct FakeConnector {
    answer: Answer,
    dials: Mutex<Vec<Dial>>,
    far_ends: Mutex<Vec<DuplexStream>>,
}

impl FakeConnector {
    fn new(answer: Answer) -> Arc<Self> {
        Arc::new(FakeConnector {
            answer,
            dials: Mutex::default(),
            far_ends: Mutex::default(),
        })
    }

    fn dials(&self) -> Vec<Dial> {
        self.dials.lock().unwrap().clone()
    }

    /// The upstream's end of the last connection made.
    fn far_end(&self) -> DuplexStream {
        self.far_ends.lock().unwrap().pop().unwrap()
    }

    fn connected(&self) -> BoxIo {
        let (near, far) = duplex(1024);
        self.far_ends.lock().unwrap().push(far);
        Box::new(near)
    }
}

impl Connector for FakeConnector {
    fn direct(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        self.dials.lock().unwrap().push(Dial::Direct(addr));
        let result = match self.answer {
            Answer::Connect => Ok(self.connected()),
            Answer::Refused | Answer::Status(_) => Err(io::ErrorKind::ConnectionRefused.into()),
        };
        Box::pin(async move { result })
    }

    fn tunnel(
        &self,
        request: TunnelRequest,
        first: Bytes,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelError>> {
        self.dials
            .lock()
            .unwrap()
            .push(Dial::Tunnel(request, first));
        let result = match self.answer {
            Answer::Connect => Ok(self.connected()),
            Answer::Refused => Err(TunnelError::Failed("connection refused".into())),
            Answer::Status(status) => Err(TunnelError::Status(status)),
        };
        Box::pin(async move { result })
    }
}

/// The downstream side: an in-memory pipe whose other end is the test's, and the refusal it
/// was answered with, if any.
struct Pipe {
    io: DuplexStream,
    refused: Arc<Mutex<Option<Refusal>>>,
}

impl Downstream for Pipe {
    fn accept(self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move { Ok(Box::new(self.io) as BoxIo) })
    }

    fn refuse(self: Box<Self>, refusal: Refusal) -> BoxFuture<'static, ()> {
        *self.refused.lock().unwrap() = Some(refusal);
        Box::pin(async {})
    }
}

/// Every record opened and closed.
#[derive(Clone, Default)]
struct Records {
    opened: Arc<Mutex<usize>>,
    closed: Arc<Mutex<Vec<ConnectionRecord>>>,
}

impl RecordSink for Records {
    fn opened(&self, _record: &ConnectionRecord, _live: &RecordRef) {
        *self.opened.lock().unwrap() += 1;
    }

    fn closed(&self, record: &ConnectionRecord) {
        self.closed.lock().unwrap().push(record.clone());
    }
}

/// A proxy's two stacks over one fake connector, fed by one gate.
struct Harness {
    states: watch::Sender<Arc<ProxyState>>,
    gate: Gate,
    records: Records,
    connector: Arc<FakeConnector>,
    own_ports: OwnPorts,
}

/// A connection handed to a stack, seen from the test: the application's (or peer's) end of
/// the downstream pipe, and how the downstream was refused.
struct Client {
    app: DuplexStream,
    refused: Arc<Mutex<Option<Refusal>>>,
}

impl Client {
    fn refusal(&self) -> Option<Refusal> {
        *self.refused.lock().unwrap()
    }
}

impl Harness {
    fn new(yaml: &str, answer: Answer) -> Self {
        let (states, updates) = watch::channel(state(yaml, 1));
        let records = Records::default();
        let gate = Gate::new(updates, Sinks::new(vec![Arc::new(records.clone())]));
        Harness {
            states,
            gate,
            records,
            connector: FakeConnector::new(answer),
            own_ports: OwnPorts::new([]),
        }
    }

    fn inbound(&self, plugins: Plugins) -> ConnService {
        stack::inbound(plugins, self.own_ports.clone(), self.connector.clone())
    }

    fn outbound(&self) -> ConnService {
        stack::outbound(
            Plugins::new(Vec::new()),
            ResolveLayer::new(HBONE_PORT, self.own_ports.clone()),
            self.connector.clone(),
        )
    }

    /// Runs one connection from `source` (with `identity`: the peer's inbound, this meshd's
    /// outbound) for `target` through `stack`, entering as the listeners and the HBONE
    /// server enter theirs.
    async fn connect(
        &self,
        stack: &ConnService,
        direction: Direction,
        identity: Option<&str>,
        target: &str,
    ) -> (Result<Relay, ProxyError>, Client, TraceParent) {
        let (app, io) = duplex(1024);
        let refused = Arc::new(Mutex::new(None));
        let trace = TraceParent::random();
        let opened = self.gate.open(Arrival {
            trace,
            direction,
            source: "127.10.23.9:40000".parse().unwrap(),
            identity: identity.map(|id| Arc::new(id.parse::<Identity>().unwrap())),
            transport: None,
            destination: None,
        });
        let target = Target::Addr(target.parse().unwrap());
        let downstream = Box::new(Pipe {
            io,
            refused: refused.clone(),
        });
        let result = stack
            .clone()
            .oneshot(opened.toward(target, downstream))
            .await;
        (result, Client { app, refused }, trace)
    }

    /// The records closed so far; each connection's exactly once.
    fn closed(&self) -> Vec<ConnectionRecord> {
        self.records.closed.lock().unwrap().clone()
    }

    /// The one record closed, for a test that ran one connection.
    fn only_record(&self) -> ConnectionRecord {
        let closed = self.closed();
        assert_eq!(closed.len(), 1, "{closed:#?}");
        assert_eq!(*self.records.opened.lock().unwrap(), 1);
        closed.into_iter().next().unwrap()
    }
}

// A peer the policy denies gets the HBONE 401 equivalent; the denial and the deciding policy
// are in the record; the workload is never dialled.
#[tokio::test]
async fn a_denied_peer_is_refused_recorded_and_never_dialled() {
    let h = Harness::new(&format!("{MESH}{DENY_CLIENT}"), Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(CLIENT),
            WEB,
        )
        .await;
    assert!(
        matches!(result, Err(ProxyError::Denied { .. })),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Denied));
    assert!(h.connector.dials().is_empty());
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::Denied);
    let verdict = record.verdict.unwrap();
    assert!(!verdict.allowed);
    assert_eq!(verdict.policy.as_deref(), Some("shop/deny-client"));
    assert_eq!(record.destination_workload.as_deref(), Some("shop/web"));
}

// The same policy lets another namespace through: the workload is dialled at the destination
// asked for, the downstream accepted, and bytes flow both ways.
#[tokio::test]
async fn an_allowed_peer_is_dialled_directly_and_relayed() {
    let h = Harness::new(&format!("{MESH}{DENY_CLIENT}"), Answer::Connect);
    let (result, mut client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(OTHER),
            WEB,
        )
        .await;
    let relay = result.unwrap();
    assert_eq!(client.refusal(), None);
    assert_eq!(
        h.connector.dials(),
        vec![Dial::Direct(WEB.parse().unwrap())]
    );
    let mut workload = h.connector.far_end();
    let running = tokio::spawn(relay.run());
    client.app.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    workload.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    drop((client, workload));
    running.await.unwrap().unwrap();
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::Allowed);
    assert!(record.established);
    assert!(
        record.mtls,
        "an inbound peer with an identity came over mTLS"
    );
    assert_eq!(record.bytes_in, 4);
}

// meshd's own ports are refused before policy is asked, even with no policy at all.
#[tokio::test]
async fn an_own_port_is_refused_before_policy() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(OTHER),
            "127.10.23.1:15001",
        )
        .await;
    assert!(matches!(result, Err(ProxyError::OwnPort(_))), "{result:?}");
    assert_eq!(client.refusal(), Some(Refusal::BadDestination));
    assert!(h.connector.dials().is_empty());
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::OwnPort);
    assert_eq!(record.verdict, None, "refused before any decision");
}

// A destination that is not a local workload is refused (HBONE 400), never dialled.
#[tokio::test]
async fn a_destination_not_served_here_is_refused() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(OTHER),
            "127.10.23.2:5432",
        )
        .await;
    assert!(
        matches!(result, Err(ProxyError::BadDestination(_))),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::BadDestination));
    assert!(h.connector.dials().is_empty());
    assert_eq!(h.only_record().outcome, Outcome::NotLocal);
}

// An allowed connection whose workload refuses the dial: the peer gets the HBONE 503
// equivalent and the record says unreachable.
#[tokio::test]
async fn a_failed_dial_is_unreachable() {
    let h = Harness::new(MESH, Answer::Refused);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(OTHER),
            WEB,
        )
        .await;
    assert!(
        matches!(result, Err(ProxyError::Connect { .. })),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Unreachable));
    assert_eq!(
        h.connector.dials(),
        vec![Dial::Direct(WEB.parse().unwrap())]
    );
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::Unreachable);
    assert!(!record.established);
    assert!(
        record.verdict.unwrap().allowed,
        "authorized, then unreachable"
    );
}

// A plugin sits after authorization and refuses with its own signal (HBONE 429): the second
// connection of a peer limited to one is refused, and never dialled.
#[tokio::test]
async fn a_plugin_refusal_is_limited() {
    let h = Harness::new(MESH, Answer::Connect);
    let spec = PluginSpec {
        name: "connection_limit".into(),
        config: serde_json::json!({"maxPerSource": 1}),
    };
    let layers = PluginRegistry::builtin().build(&[spec]).unwrap();
    let stack = h.inbound(Plugins::new(layers));
    let (first, _first_client, _) = h
        .connect(&stack, Direction::Inbound, Some(OTHER), WEB)
        .await;
    let first = first.unwrap();
    let (second, client, _) = h
        .connect(&stack, Direction::Inbound, Some(OTHER), WEB)
        .await;
    assert!(
        matches!(second, Err(ProxyError::Limited { .. })),
        "{second:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Limited));
    assert_eq!(h.connector.dials().len(), 1, "only the first was dialled");
    let closed = h.closed();
    assert_eq!(closed.len(), 1, "the first is still open");
    assert_eq!(closed[0].outcome, Outcome::Limited);
    drop(first);
}

// A new configuration that denies an open connection closes it: the relay ends with the
// policy-change error and the record says so.
#[tokio::test]
async fn a_policy_change_closes_an_open_relay() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, mut client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(CLIENT),
            WEB,
        )
        .await;
    let relay = result.unwrap();
    let mut workload = h.connector.far_end();
    let running = tokio::spawn(relay.run());
    client.app.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    workload.read_exact(&mut got).await.unwrap();
    // Another configuration that still allows it changes nothing.
    h.states.send_replace(state(MESH, 2));
    client.app.write_all(b"again!").await.unwrap();
    workload.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"again!");
    h.states
        .send_replace(state(&format!("{MESH}{DENY_CLIENT}"), 3));
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the relay closes")
        .unwrap();
    match ended {
        Err(ProxyError::ClosedByPolicyChange { policy, .. }) => {
            assert_eq!(policy.as_deref(), Some("shop/deny-client"))
        }
        other => panic!("{other:?}"),
    }
    // Both sides are closed.
    let mut rest = Vec::new();
    assert_eq!(client.app.read_to_end(&mut rest).await.unwrap(), 0);
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::ClosedByPolicy);
    assert!(record.established);
}

// Outbound to a mesh service: the tunnel is asked for with the destination workload's SPIFFE
// ID and this connection's own trace context, both as typed values from entry to dial.
#[tokio::test]
async fn an_outbound_tunnel_carries_the_typed_identity_and_trace() {
    let h = Harness::new(MESH, Answer::Connect);
    let own = "spiffe://cluster.local/ns/shop/sa/web";
    let (result, _client, trace) = h
        .connect(
            &h.outbound(),
            Direction::Outbound,
            Some(own),
            "240.10.23.1:5432",
        )
        .await;
    let relay = result.unwrap();
    let dials: [Dial; 1] = h.connector.dials().try_into().unwrap();
    let [Dial::Tunnel(request, first)] = dials else {
        panic!("one tunnel: {dials:?}");
    };
    assert_eq!(
        request.identity,
        SpiffeId::new("spiffe://cluster.local/ns/data/sa/db").unwrap()
    );
    assert_eq!(request.trace, trace);
    assert_eq!(request.authority, "127.10.23.2:5432".parse().unwrap());
    assert_eq!(
        request.peer,
        SocketAddr::new([127, 10, 23, 2].into(), HBONE_PORT)
    );
    assert_eq!(request.service_host.as_deref(), Some("db.data.internal"));
    assert!(first.is_empty(), "the test application sent nothing ahead");
    drop(relay);
    let record = h.only_record();
    assert_eq!(record.facts.trace, trace);
    assert_eq!(
        record.destination_identity.as_deref().map(Identity::as_str),
        Some("spiffe://cluster.local/ns/data/sa/db")
    );
    assert_eq!(record.transport.as_deref(), Some("h2"));
    assert!(record.mtls);
    assert_eq!(
        record
            .facts
            .source_identity
            .as_deref()
            .map(Identity::as_str),
        Some(own)
    );
}

// A peer meshd's 401 is a denial for the application; its 503 is unreachable and marks the
// endpoint unhealthy (the peer could not reach its workload).
#[tokio::test]
async fn tunnel_statuses_map_to_denied_and_unreachable() {
    for (status, refusal, outcome, ejected) in [
        (401, Refusal::Denied, Outcome::Denied, false),
        (503, Refusal::Unreachable, Outcome::Unreachable, true),
    ] {
        let h = Harness::new(MESH, Answer::Status(status));
        let (result, client, _) = h
            .connect(&h.outbound(), Direction::Outbound, None, "240.10.23.1:5432")
            .await;
        assert!(
            matches!(result, Err(ProxyError::TunnelStatus(s)) if s == status),
            "{result:?}"
        );
        assert_eq!(client.refusal(), Some(refusal), "{status}");
        assert_eq!(h.only_record().outcome, outcome, "{status}");
        let registry = &h.states.borrow().registry;
        assert_eq!(
            registry.is_healthy([127, 10, 23, 2].into()),
            !ejected,
            "{status}"
        );
    }
}

// An outbound connection that would loop back into one of meshd's own listeners is refused
// before anything is dialled.
#[tokio::test]
async fn an_outbound_loop_into_meshd_is_refused() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, client, _) = h
        .connect(&h.outbound(), Direction::Outbound, None, "127.0.0.1:15001")
        .await;
    assert!(matches!(result, Err(ProxyError::OwnPort(_))), "{result:?}");
    assert_eq!(client.refusal(), Some(Refusal::BadDestination));
    assert!(h.connector.dials().is_empty());
    assert_eq!(h.only_record().outcome, Outcome::OwnPort);
}

// The context the layers read and the record share one value of facts, not copies.
#[tokio::test]
async fn the_context_and_the_record_share_their_facts() {
    let h = Harness::new(MESH, Answer::Connect);
    let opened = h.gate.open(Arrival {
        trace: TraceParent::random(),
        direction: Direction::Inbound,
        source: "127.10.23.9:40000".parse().unwrap(),
        identity: Some(Arc::new(OTHER.parse().unwrap())),
        transport: None,
        destination: None,
    });
    let (_app, io) = duplex(64);
    let downstream = Box::new(Pipe {
        io,
        refused: Arc::default(),
    });
    let conn = opened.toward(Target::Addr(WEB.parse().unwrap()), downstream);
    let shared = conn.ctx.record.snapshot().facts;
    assert!(Arc::ptr_eq(&conn.ctx.facts, &shared));
    assert_eq!(conn.ctx.record.snapshot().destination, WEB);
    assert_eq!(
        conn.ctx.peer(),
        Some(&SpiffeId::new(OTHER).unwrap()),
        "an inbound source identity is the peer"
    );
}

// A peer identity outside Istio's `ns/<ns>/sa/<sa>` form matches no principal or namespace:
// the connection is denied (fail closed), even with no policy at all, and never dialled.
#[tokio::test]
async fn a_peer_identity_outside_istio_form_is_denied() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some("spiffe://cluster.local/workload/sleep"),
            WEB,
        )
        .await;
    assert!(
        matches!(result, Err(ProxyError::Denied { .. })),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Denied));
    assert!(h.connector.dials().is_empty());
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::Denied);
    let verdict = record.verdict.unwrap();
    assert!(!verdict.allowed);
    assert!(
        verdict
            .reason
            .contains("\"cluster.local/workload/sleep\" is not of the form"),
        "{}",
        verdict.reason
    );
}
