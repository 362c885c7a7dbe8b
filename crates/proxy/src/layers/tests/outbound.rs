//! The outbound stack: resolution to a tunnel, a peer's answers, loops into meshd; and the
//! facts the context and the record share.

use meshd_identity::SpiffeId;

use super::*;

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

// A destination outside the mesh is dialled directly, and never from the application's
// address: keeping the client's address is for inbound connections only.
#[tokio::test]
async fn an_outbound_direct_dial_carries_no_client_address() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, _client, _) = h
        .connect(&h.outbound(), Direction::Outbound, None, "192.0.2.7:443")
        .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        h.connector.dials(),
        vec![Dial::Direct("192.0.2.7:443".parse().unwrap(), None)]
    );
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

/// A ServiceEntry in another trust domain: its annotation gives its inline endpoints theirs.
const FEDERATED_SERVICE: &str = "
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: pay
  namespace: bank
  annotations: {security.meshd.io/trust-domain: td-b}
spec:
  hosts: [pay.bank.internal]
  addresses: [240.10.23.2]
  ports: [{number: 443, name: tcp}]
  endpoints: [{address: 127.10.23.3, serviceAccount: pay}]
";

// A ServiceEntry's inline endpoint in another trust domain: the tunnel must be answered by
// that domain's identity, not the mesh's; the mesh's own workloads keep the mesh's.
#[tokio::test]
async fn a_tunnel_to_an_annotated_endpoint_expects_its_trust_domain() {
    let h = Harness::new(&format!("{MESH}{FEDERATED_SERVICE}"), Answer::Connect);
    for destination in ["240.10.23.2:443", "240.10.23.1:5432"] {
        let (result, _client, _) = h
            .connect(&h.outbound(), Direction::Outbound, None, destination)
            .await;
        drop(result.unwrap());
    }
    let identities: Vec<String> = (h.connector.dials().iter())
        .map(|dial| match dial {
            Dial::Tunnel(request, _) => request.identity.to_string(),
            other => panic!("a tunnel: {other:?}"),
        })
        .collect();
    assert_eq!(
        identities,
        [
            "spiffe://td-b/ns/bank/sa/pay",
            "spiffe://cluster.local/ns/data/sa/db"
        ]
    );
}
