//! Both stacks driven whole, layer by layer, with a fake [`Connector`] in place of the upstream
//! dial: for each way a connection can end, what the downstream is answered, what the record
//! says, and what (if anything) was dialled. The connections enter through the same
//! [`Gate`] as in `meshd run`; the downstream is an in-memory pipe.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use meshd_hbone::TraceParent;
use meshd_manifests::{LoadOptions, load_str};
use meshd_record::{ConnectionRecord, Direction, Identity, Outcome, RecordRef, RecordSink, Sinks};
use tokio::io::{DuplexStream, duplex};
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

/// Where every connection the tests run comes from.
const SOURCE: &str = "127.10.23.9:40000";

/// The local workload, and a port of its that is nobody's own.
const WEB: &str = "127.10.23.1:8080";
/// A peer in the namespace `client`, and one in `other`.
const CLIENT: &str = "spiffe://cluster.local/ns/client/sa/sleep";
const OTHER: &str = "spiffe://cluster.local/ns/other/sa/curl";

fn state(yaml: &str, generation: u64) -> Arc<ProxyState> {
    state_with(yaml, &meshd_workloadapi::MeshState::default(), generation)
}

/// The local workloads: the file's `shop/web` and istiod's [`istiod::LOCAL_UID`].
fn state_with(yaml: &str, mesh: &meshd_workloadapi::MeshState, generation: u64) -> Arc<ProxyState> {
    let snapshot = load_str("mesh.yaml", yaml, &LoadOptions::default()).unwrap();
    Arc::new(ProxyState::build(
        &snapshot,
        mesh,
        TRUST_DOMAIN,
        generation,
        |w| w.key() == "shop/web" || w.key() == istiod::LOCAL_UID,
    ))
}

/// What the fake connector answers a dial with.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Connected: the test holds the far end.
    Connect,
    /// The upstream refused (a TCP RST; a tunnel that failed before any answer).
    Refused,
    /// A plain dial no socket can make (original source: the client's address cannot reach
    /// the workload), refused before any packet.
    Impossible,
    /// The peer meshd answered the CONNECT with this status.
    Status(u16),
}

/// One dial the stack asked for.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a test's list of a few dials
enum Dial {
    Direct(SocketAddr, Option<IpAddr>),
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
    fn direct(
        &self,
        addr: SocketAddr,
        client: Option<IpAddr>,
    ) -> BoxFuture<'static, io::Result<BoxIo>> {
        self.dials.lock().unwrap().push(Dial::Direct(addr, client));
        let result = match self.answer {
            Answer::Connect => Ok(self.connected()),
            Answer::Refused | Answer::Status(_) => Err(io::ErrorKind::ConnectionRefused.into()),
            Answer::Impossible => Err(io::ErrorKind::InvalidInput.into()),
        };
        Box::pin(async move { result })
    }

    fn tunnel(
        &self,
        request: TunnelRequest,
        first: Bytes,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelError>> {
        let peer = request.peer;
        self.dials
            .lock()
            .unwrap()
            .push(Dial::Tunnel(request, first));
        let result = match self.answer {
            Answer::Connect => Ok(self.connected()),
            Answer::Refused | Answer::Impossible => {
                Err(TunnelError::Failed(meshd_hbone::Error::Connect {
                    addr: peer,
                    source: meshd_hbone::Cause::new(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    )),
                }))
            }
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
        Self::with_state(state(yaml, 1), answer)
    }

    fn with_state(state: Arc<ProxyState>, answer: Answer) -> Self {
        let (states, updates) = watch::channel(state);
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
            source: SOURCE.parse().unwrap(),
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

mod inbound;
mod istiod;
mod outbound;
