//! A workload as the proxy sees it, from either source: a file's WorkloadEntry (or a
//! ServiceEntry's inline endpoint), converted once when the directory is loaded, or istiod's
//! Workload, held as istiod's own model and read through it. The second is what keeps a mesh
//! of 10⁵ istiod workloads to one copy of each: the registry's entry for one is a pointer to
//! the model the store already holds (benches/istiod.rs measures it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use meshd_policy::networking::WorkloadEntrySpec;
use meshd_record::WorkloadMeta;
use meshd_workloadapi::Sym;
use meshd_workloadapi::model::{self as xds, Tunnel};

use super::{MeshRefusal, Origin, Protocol};

/// Labels and named ports istiod's workloads do not have.
static NONE: BTreeMap<String, String> = BTreeMap::new();
static NO_PORTS: BTreeMap<String, u16> = BTreeMap::new();

/// A workload, as the proxy needs it.
#[derive(Debug, Clone)]
pub struct Workload {
    source: Source,
    // Built on the first record that names the workload and shared by every later one: most
    // of istiod's workloads never see a connection from this machine.
    meta: OnceLock<Arc<WorkloadMeta>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    File(Box<FileWorkload>),
    /// Has at least one address (checked by [`Workload::istiod`]).
    Istiod(Arc<xds::Workload>),
}

/// What a file says about a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileWorkload {
    key: String,
    namespace: String,
    address: IpAddr,
    labels: BTreeMap<String, String>,
    service_account: String,
    ports: BTreeMap<String, u16>,
    protocol: Protocol,
    weight: u32,
    /// Its `security.meshd.io/trust-domain` annotation (validated when loaded); `None`: the
    /// mesh's.
    trust_domain: Option<String>,
    /// Always empty (a file's workload is bound to no istiod policy); held so that a
    /// connection's decision shares it rather than allocating one.
    bound_policies: Arc<[Sym]>,
}

impl PartialEq for Workload {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Workload {}

impl Workload {
    /// A workload from a file: `key` is `namespace/name` of its WorkloadEntry (inline endpoints
    /// get `namespace/service#index`), `trust_domain` its resource's annotation; `None` without
    /// a usable address.
    pub(super) fn file(
        key: String,
        namespace: &str,
        spec: &WorkloadEntrySpec,
        tunnel: Option<&str>,
        trust_domain: Option<&str>,
    ) -> Option<Workload> {
        let protocol = tunnel_protocol(&key, tunnel);
        let file = FileWorkload {
            key,
            namespace: namespace.to_string(),
            address: spec
                .address
                .as_deref()?
                .parse::<IpAddr>()
                .ok()?
                .to_canonical(),
            labels: spec.labels.clone(),
            service_account: spec
                .service_account
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            ports: spec
                .ports
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), u16::try_from(*p).ok()?)))
                .collect(),
            protocol,
            weight: spec.weight.unwrap_or(1),
            trust_domain: trust_domain.map(str::to_string),
            bound_policies: Arc::from([]),
        };
        Some(Workload {
            source: Source::File(Box::new(file)),
            meta: OnceLock::new(),
        })
    }

    /// An istiod workload, or `None` when it has no address (nothing to reach or to refuse).
    pub(super) fn istiod(w: &Arc<xds::Workload>) -> Option<Workload> {
        w.addresses.first()?;
        Some(Workload {
            source: Source::Istiod(Arc::clone(w)),
            meta: OnceLock::new(),
        })
    }

    /// `namespace/name` of its WorkloadEntry (inline endpoints: `namespace/service#index`);
    /// istiod's uid for an istiod workload.
    pub fn key(&self) -> &str {
        match &self.source {
            Source::File(f) => &f.key,
            Source::Istiod(w) => &w.uid,
        }
    }

    /// Whether `name` is how meshd.yaml names it (`local.workloads`, `listeners[].workload`, a
    /// SOCKS5 user name): `namespace/name` of its WorkloadEntry for a file's workload and an
    /// istiod one alike (an istiod workload's key is istiod's uid, which operators do not
    /// write, though it is accepted too).
    pub fn is_named(&self, name: &str) -> bool {
        match &self.source {
            Source::File(f) => f.key == name,
            Source::Istiod(w) => {
                *w.uid == *name
                    || name
                        .split_once('/')
                        .is_some_and(|(ns, n)| *w.namespace == *ns && *w.name == *n)
            }
        }
    }

    /// Its namespace (part of its identity).
    pub fn namespace(&self) -> &str {
        match &self.source {
            Source::File(f) => &f.namespace,
            Source::Istiod(w) => &w.namespace,
        }
    }

    /// Its address (the first, for an istiod workload with several).
    pub fn address(&self) -> IpAddr {
        match &self.source {
            Source::File(f) => f.address,
            // Never empty (`Workload::istiod`); the fallback only keeps this total.
            Source::Istiod(w) => w
                .addresses
                .first()
                .copied()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        }
    }

    /// Every address of it.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let (first, rest): (IpAddr, &[IpAddr]) = match &self.source {
            Source::File(f) => (f.address, &[]),
            Source::Istiod(w) => (self.address(), w.addresses.get(1..).unwrap_or(&[])),
        };
        std::iter::once(first).chain(rest.iter().copied())
    }

    /// Its labels (none for istiod workloads: istiod resolved the selectors and sends none).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        match &self.source {
            Source::File(f) => &f.labels,
            Source::Istiod(_) => &NONE,
        }
    }

    /// Its service account (`default` when unset, as Istio).
    pub fn service_account(&self) -> &str {
        match &self.source {
            Source::File(f) => &f.service_account,
            Source::Istiod(w) => &w.service_account,
        }
    }

    /// Its own trust domain (a file's annotation, istiod's `trust_domain`); `None`: the
    /// mesh's. Both sources answer here, so every use of a workload's identity (the tunnel's
    /// expected peer, views, records) treats them alike.
    pub fn own_trust_domain(&self) -> Option<&str> {
        match &self.source {
            Source::File(f) => f.trust_domain.as_deref(),
            Source::Istiod(w) => Some(&w.trust_domain),
        }
    }

    /// Its trust domain: its own (annotation or istiod's `trust_domain`) or the mesh's.
    pub fn trust_domain<'a>(&'a self, mesh_trust_domain: &'a str) -> &'a str {
        self.own_trust_domain().unwrap_or(mesh_trust_domain)
    }

    /// The Istio principal of the workload: its own trust domain if it has one, else `mesh`.
    pub fn principal(&self, mesh_trust_domain: &str) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain(mesh_trust_domain),
            self.namespace(),
            self.service_account()
        )
    }

    /// Named ports (none for istiod workloads).
    pub fn ports(&self) -> &BTreeMap<String, u16> {
        match &self.source {
            Source::File(f) => &f.ports,
            Source::Istiod(_) => &NO_PORTS,
        }
    }

    /// True when the workload accepts connections on `port`: any of its named ports, or any
    /// port at all when it names none.
    pub fn serves_port(&self, port: u16) -> bool {
        let ports = self.ports();
        ports.is_empty() || ports.values().any(|p| *p == port)
    }

    /// How it is reached.
    pub fn protocol(&self) -> Protocol {
        match &self.source {
            Source::File(f) => f.protocol,
            Source::Istiod(w) => match w.tunnel {
                Tunnel::Hbone => Protocol::Hbone,
                Tunnel::None => Protocol::Tcp,
            },
        }
    }

    /// Load-balancing weight.
    pub fn weight(&self) -> u32 {
        match &self.source {
            Source::File(f) => f.weight,
            Source::Istiod(w) => w.capacity,
        }
    }

    /// Where it came from.
    pub fn origin(&self) -> Origin {
        match &self.source {
            Source::File(_) => Origin::File,
            Source::Istiod(_) => Origin::Istiod,
        }
    }

    /// Why meshd refuses connections to it (istiod workloads meshd must not reach directly).
    pub fn refused(&self) -> Option<MeshRefusal> {
        match &self.source {
            Source::File(_) => None,
            Source::Istiod(w) => w.refused,
        }
    }

    /// The istiod policies bound to it (its `authorization_policies`; none for a file's).
    pub fn bound_policies(&self) -> Arc<[Sym]> {
        match &self.source {
            Source::File(f) => Arc::clone(&f.bound_policies),
            Source::Istiod(w) => Arc::clone(&w.authorization_policies),
        }
    }

    /// istiod's model of it, for an istiod workload.
    pub fn from_istiod(&self) -> Option<&xds::Workload> {
        match &self.source {
            Source::File(_) => None,
            Source::Istiod(w) => Some(w),
        }
    }

    /// The target port istiod resolved for this workload behind service `service` (`<namespace>/
    /// <hostname>`) at `port`; `None` for a file's workload or when istiod gave none.
    pub(crate) fn istiod_target(&self, service: &str, port: u16) -> Option<u16> {
        let Source::Istiod(w) = &self.source else {
            return None;
        };
        w.services
            .get(service)?
            .iter()
            .find(|p| p.service_port == port)?
            .target_port
    }

    /// The workload as records label it: its name, namespace and `app`/`version` labels
    /// (istiod's canonical name and revision for an istiod workload).
    pub fn meta(&self) -> Arc<WorkloadMeta> {
        Arc::clone(self.meta.get_or_init(|| match &self.source {
            Source::File(f) => {
                let label = |keys: [&str; 2]| keys.iter().find_map(|k| f.labels.get(*k).cloned());
                Arc::new(WorkloadMeta {
                    name: f
                        .key
                        .split_once('/')
                        .map_or(f.key.as_str(), |(_, name)| name)
                        .to_string(),
                    namespace: f.namespace.clone(),
                    app: label(["app", "app.kubernetes.io/name"]),
                    version: label(["version", "app.kubernetes.io/version"]),
                })
            }
            Source::Istiod(w) => {
                let label = |v: &Sym| (!v.is_empty()).then(|| v.to_string());
                Arc::new(WorkloadMeta {
                    name: if w.name.is_empty() { &w.uid } else { &w.name }.to_string(),
                    namespace: w.namespace.to_string(),
                    app: label(&w.owner.canonical_name),
                    version: label(&w.owner.canonical_revision),
                })
            }
        }))
    }
}

/// The `meshd.io/tunnel` annotation's transport.
fn tunnel_protocol(key: &str, tunnel: Option<&str>) -> Protocol {
    match tunnel {
        Some("none") | Some("tcp") | Some("TCP") => Protocol::Tcp,
        Some("quic") | Some("h3") => {
            if !meshd_hbone::QUIC_BUILT {
                // Kept as asked: connections to it are refused with this reason (the client
                // has no HTTP/3), never sent over HTTP/2 or in plaintext.
                tracing::warn!(
                    workload = %key,
                    "meshd.io/tunnel: quic asks for HBONE over QUIC, which this meshd is built without (the `quic` feature): connections to this workload will be refused"
                );
            }
            Protocol::HboneQuic
        }
        _ => Protocol::Hbone,
    }
}
