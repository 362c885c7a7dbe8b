//! Two workloads at one address and port (issue 9, item C).
//!
//! meshd's registry gives an inbound connection to the first workload whose address matches
//! and which serves the port (any of its `ports`, or every port when it lists none). A second
//! workload there would never be chosen: its namespace, labels and service account, and so the
//! AuthorizationPolicies and PeerAuthentication that select it, would silently never apply. So
//! two workloads that can serve one (address, port) are an error naming both.
//!
//! Inline ServiceEntry `endpoints` take part: the registry builds a workload from each, with
//! the ServiceEntry's namespace and the endpoint's labels, exactly as from a WorkloadEntry, and
//! they can be local too. A ServiceEntry that should send traffic to a WorkloadEntry's machine
//! selects it with `workloadSelector` instead of repeating its address. Addresses compare in
//! canonical form, so `::ffff:10.0.0.1` is `10.0.0.1`, as the registry compares them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use meshd_policy::networking::WorkloadEntrySpec;
use meshd_policy::{FieldPath, Resource, ResourceKey, Severity};

use crate::document::locate;
use crate::problem::Problem;
use crate::yaml::{Node, Pos};

/// One workload the registry will build: where it was written and what it serves.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) resource: ResourceKey,
    pub(crate) file: PathBuf,
    /// The position of its `address`.
    pub(crate) pos: Pos,
    /// `spec.address`, or `spec.endpoints[i].address`.
    pub(crate) path: FieldPath,
    pub(crate) address: IpAddr,
    /// Its ports; empty means every port.
    ports: BTreeSet<u32>,
}

impl Site {
    /// An error placed at this workload's address.
    pub(crate) fn error(&self, message: String) -> Problem {
        Problem {
            severity: Severity::Error,
            file: self.file.clone(),
            pos: Some(self.pos),
            resource: Some(self.resource.clone()),
            path: self.path.clone(),
            message,
        }
    }

    pub(crate) fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.pos)
    }

    /// The ports both serve: `None` when they share none, `Some(empty)` for every port.
    fn shared_ports(&self, other: &Site) -> Option<BTreeSet<u32>> {
        match (self.ports.is_empty(), other.ports.is_empty()) {
            (true, true) => Some(BTreeSet::new()),
            (true, false) => Some(other.ports.clone()),
            (false, true) => Some(self.ports.clone()),
            (false, false) => {
                let shared: BTreeSet<u32> =
                    self.ports.intersection(&other.ports).copied().collect();
                (!shared.is_empty()).then_some(shared)
            }
        }
    }
}

/// The workloads a validated resource becomes (none for policies).
pub(crate) fn sites(resource: &Resource, file: &Path, root: &Node) -> Vec<Site> {
    let spec = FieldPath::root().field("spec");
    let key = resource.key();
    let site = |entry: &WorkloadEntrySpec, path: FieldPath| {
        let address = entry.address.as_deref()?.parse::<IpAddr>().ok()?;
        Some(Site {
            resource: key.clone(),
            file: file.to_path_buf(),
            pos: locate(root, &path),
            path,
            address: address.to_canonical(),
            ports: entry.ports.values().copied().collect(),
        })
    };
    match resource {
        Resource::WorkloadEntry(we) => site(&we.spec, spec.field("address")).into_iter().collect(),
        Resource::ServiceEntry(se) => se
            .spec
            .endpoints
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, e)| site(e, spec.field("endpoints").index(i).field("address")))
            .collect(),
        Resource::AuthorizationPolicy(_) | Resource::PeerAuthentication(_) => Vec::new(),
    }
}

/// One error per workload that overlaps an earlier one (in load order), naming both.
pub(crate) fn check(sites: &[Site]) -> Vec<Problem> {
    let mut by_address: BTreeMap<IpAddr, Vec<&Site>> = BTreeMap::new();
    let mut problems = Vec::new();
    for site in sites {
        let earlier = by_address.entry(site.address).or_default();
        // A resource defined twice is already a "duplicate" error; once is enough.
        let clash = earlier
            .iter()
            .filter(|first| (&first.resource, &first.path) != (&site.resource, &site.path))
            .find_map(|first| Some((*first, first.shared_ports(site)?)));
        if let Some((first, shared)) = clash {
            problems.push(site.error(format!(
                    "{} {} is also served by {} at {} ({}): meshd would hand connections there to only one of them, so the other's policies and PeerAuthentication would never apply; give each workload its own address, or distinct `ports`",
                    site.address,
                    describe(&shared),
                    first.resource,
                    first.location(),
                    first.path,
                )));
        }
        earlier.push(site);
    }
    problems
}

fn describe(shared: &BTreeSet<u32>) -> String {
    let list: Vec<String> = shared.iter().map(u32::to_string).collect();
    match list.as_slice() {
        [] => "on every port (a workload without `ports` serves them all)".to_string(),
        [one] => format!("port {one}"),
        many => format!("ports {}", many.join(", ")),
    }
}
