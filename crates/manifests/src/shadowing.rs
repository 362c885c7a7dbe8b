//! ServiceEntries that shadow another ServiceEntry or a workload (a sibling of issue 9, item C).
//!
//! meshd's registry routes by first match. An address goes to the first ServiceEntry (in load
//! order) with a VIP in `addresses` that contains it, before any workload is looked at; a host
//! name goes to the first ServiceEntry that carries it in `hosts` or as its `name.namespace`,
//! case-insensitively. Whatever would match later is never used, and nothing says so. So these
//! are errors, each reported on the later resource and naming the earlier one:
//!
//! 1. Two ServiceEntries whose `addresses` overlap (one IP in both, or intersecting CIDRs): the
//!    overlapping range is named.
//! 2. Two ServiceEntries with one host name, or one's host equal to the other's
//!    `name.namespace`. Hosts compare as written, case aside, as the registry matches them: a
//!    wildcard `*.example.com` does not shadow `db.example.com`.
//! 3. A VIP that contains a workload's address (a WorkloadEntry's, or an inline endpoint's of
//!    another ServiceEntry): connections to that workload's own address would be balanced across
//!    the service's endpoints and expect their identities instead.
//!
//! Two cases of (3) are allowed. A VIP that covers the ServiceEntry's own inline endpoints:
//! those exist only as that service's backends, declared in the same resource, so reaching any
//! of them through the VIP is what its author wrote. And a VIP that is exactly the address of the
//! one WorkloadEntry the ServiceEntry selects: every connection to that address still reaches
//! that workload and expects its identity; only the service's ports can then be reached there
//! (others are refused, which is visible, never misrouted).
//!
//! Istio settles a host carried by several ServiceEntries by age: the oldest wins "so newly
//! created Services cannot take ownership unexpectedly" (pilot's sidecar scope,
//! istio/istio#32966), and in ambient the client namespace's ServiceEntry, else the oldest
//! (istio/istio#58860); its maintainers call the duplicate "an invalid configuration"
//! (istio/istio#26282), and `istioctl analyze` flags conflicting ones (IST0177). A directory has
//! no creation time, so, as for conflicting PeerAuthentications, meshd rejects rather than
//! guess. Addresses compare in canonical form: `::ffff:10.0.0.1` is `10.0.0.1`, and a CIDR's
//! host bits do not count (`10.0.0.7/24` is `10.0.0.0/24`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use meshd_policy::values::parse_ip_block;
use meshd_policy::{FieldPath, Kind, Resource, ResourceKey, Severity};

use crate::document::locate;
use crate::overlap::Site;
use crate::problem::Problem;
use crate::yaml::{Node, Pos};

/// What every host clash costs, appended to its message.
const HOST_TAIL: &str = "meshd resolves a host name to the first ServiceEntry carrying it as a host or as its name.namespace (case-insensitively), so this one would never be reached by that name; give each host name to one ServiceEntry";

/// An address range in canonical form: its first address and prefix length, IPv4-mapped IPv6
/// as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first: IpAddr,
    prefix: u8,
}

impl Range {
    /// A `spec.addresses` entry (validation has already rejected what does not parse).
    fn parse(text: &str) -> Option<Range> {
        let net = parse_ip_block(text).ok()?;
        let (first, prefix) = (net.network(), net.prefix_len());
        Some(match first {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Range {
                    first: IpAddr::V4(v4),
                    prefix: prefix - 96,
                },
                None => Range { first, prefix },
            },
            _ => Range { first, prefix },
        })
    }

    /// One address (already canonical: workload addresses are).
    fn single(address: IpAddr) -> Range {
        Range {
            first: address,
            prefix: width(address),
        }
    }

    /// The addresses both hold, if any: prefixes nest, so it is the narrower of the two.
    fn intersection(self, other: Range) -> Option<Range> {
        let (a, b) = match (self.first, other.first) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
            _ => return None,
        };
        let common = self.prefix.min(other.prefix);
        // A shift by the whole width (a /0) leaves nothing to compare.
        let differ = (a ^ b)
            .checked_shr(u32::from(width(self.first).saturating_sub(common)))
            .unwrap_or(0);
        (differ == 0).then_some(if self.prefix >= other.prefix {
            self
        } else {
            other
        })
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == width(self.first) {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}/{}", self.first, self.prefix)
        }
    }
}

fn width(address: IpAddr) -> u8 {
    if address.is_ipv4() { 32 } else { 128 }
}

/// A field of a ServiceEntry with where it was written.
#[derive(Debug, Clone)]
struct Field<T> {
    value: T,
    path: FieldPath,
    pos: Pos,
}

/// The field at `path` of the document `root`, with its position.
fn field<T>(root: &Node, path: FieldPath, value: T) -> Field<T> {
    Field {
        pos: locate(root, &path),
        path,
        value,
    }
}

/// A ServiceEntry as the registry matches it.
#[derive(Debug, Clone)]
struct Service {
    order: usize,
    key: ResourceKey,
    file: PathBuf,
    vips: Vec<Field<Range>>,
    hosts: Vec<Field<String>>,
    /// `name.namespace`, which the registry resolves like a host.
    name_form: Field<String>,
    /// `workloadSelector.labels`, when it selects WorkloadEntries.
    selector: Option<BTreeMap<String, String>>,
}

impl Service {
    fn location(&self, pos: Pos) -> String {
        format!("{}:{pos}", self.file.display())
    }
}

/// A workload the registry will build, with the labels a `workloadSelector` reads.
#[derive(Debug, Clone)]
struct Workload {
    order: usize,
    site: Site,
    labels: BTreeMap<String, String>,
}

/// Every ServiceEntry and workload of a load, in load order.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    services: Vec<Service>,
    workloads: Vec<Workload>,
    resources: usize,
}

impl Catalog {
    /// Records a validated resource; `sites` are the workloads it becomes.
    pub(crate) fn add(&mut self, resource: &Resource, file: &Path, root: &Node, sites: &[Site]) {
        let order = self.resources;
        self.resources += 1;
        let labels = match resource {
            Resource::WorkloadEntry(we) => we.spec.labels.clone(),
            _ => BTreeMap::new(),
        };
        self.workloads.extend(sites.iter().map(|site| Workload {
            order,
            site: site.clone(),
            labels: labels.clone(),
        }));
        let Resource::ServiceEntry(se) = resource else {
            return;
        };
        let spec = FieldPath::root().field("spec");
        self.services.push(Service {
            order,
            key: resource.key(),
            file: file.to_path_buf(),
            vips: se
                .spec
                .addresses
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    Some(field(
                        root,
                        spec.field("addresses").index(i),
                        Range::parse(a)?,
                    ))
                })
                .collect(),
            hosts: se
                .spec
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| field(root, spec.field("hosts").index(i), h.clone()))
                .collect(),
            name_form: field(
                root,
                FieldPath::root().field("metadata").field("name"),
                format!("{}.{}", se.metadata.name(), se.metadata.namespace()),
            ),
            selector: se.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
        });
    }

    /// One error per shadowing VIP, host or workload address, on the later of the two.
    pub(crate) fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, service) in self.services.iter().enumerate() {
            // Same key twice is already a "duplicate" error; once is enough.
            let earlier: Vec<&Service> = self
                .services
                .iter()
                .take(i)
                .filter(|e| e.key != service.key)
                .collect();
            problems.extend(overlapping_vips(service, &earlier));
            problems.extend(shared_hosts(service, &earlier));
        }
        problems.extend(self.covered_workloads());
        problems
    }

    /// Rule 3: VIPs that contain a workload's address.
    fn covered_workloads(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        // Service and VIP → the earlier workloads it covers.
        let mut covers: BTreeMap<(usize, usize), Vec<&Workload>> = BTreeMap::new();
        // Workload → the first earlier VIP that covers it.
        let mut covered: BTreeMap<usize, (&Service, &Field<Range>)> = BTreeMap::new();
        for (s, service) in self.services.iter().enumerate() {
            for (v, vip) in service.vips.iter().enumerate() {
                for (w, workload) in self.workloads.iter().enumerate() {
                    // A ServiceEntry's own inline endpoints are its backends (module doc).
                    if workload.site.resource == service.key
                        || vip
                            .value
                            .intersection(Range::single(workload.site.address))
                            .is_none()
                        || self.is_sole_endpoint(service, vip.value, w)
                    {
                        continue;
                    }
                    if workload.order < service.order {
                        covers.entry((s, v)).or_default().push(workload);
                    } else {
                        covered.entry(w).or_insert((service, vip));
                    }
                }
            }
        }
        for ((s, v), workloads) in covers {
            let (Some(service), Some(first)) = (self.services.get(s), workloads.first()) else {
                continue;
            };
            let Some(vip) = service.vips.get(v) else {
                continue;
            };
            let more = match workloads.len().saturating_sub(1) {
                0 => String::new(),
                1 => " (and 1 more workload)".to_string(),
                n => format!(" (and {n} more workloads)"),
            };
            problems.push(error(
                service,
                vip,
                format!(
                    "VIP {} contains {}, the address of {} at {} ({}){more}: connections to that workload's own address would go to this ServiceEntry's endpoints instead and expect their identities; choose VIPs outside the workloads' addresses",
                    vip.value,
                    first.site.address,
                    first.site.resource,
                    first.site.location(),
                    first.site.path,
                ),
            ));
        }
        for (w, (service, vip)) in covered {
            let Some(workload) = self.workloads.get(w) else {
                continue;
            };
            let site = &workload.site;
            problems.push(site.error(format!(
                    "{} is inside VIP {} of {} at {} ({}): connections to this workload's own address would go to that ServiceEntry's endpoints instead and expect their identities; choose VIPs outside the workloads' addresses",
                    site.address,
                    vip.value,
                    service.key,
                    service.location(vip.pos),
                    vip.path,
                )));
        }
        problems
    }

    /// True when `vip` is exactly the address of workload `w`, a WorkloadEntry, and that is
    /// the only workload `service` selects: nothing is shadowed (module doc).
    fn is_sole_endpoint(&self, service: &Service, vip: Range, w: usize) -> bool {
        let Some(selector) = &service.selector else {
            return false;
        };
        // As the registry selects: WorkloadEntries of the service's namespace carrying every
        // selector label.
        let mut selected = self.workloads.iter().enumerate().filter(|(_, workload)| {
            workload.site.resource.kind == Kind::WorkloadEntry
                && workload.site.resource.namespace == service.key.namespace
                && selector
                    .iter()
                    .all(|(k, v)| workload.labels.get(k) == Some(v))
        });
        let sole =
            matches!((selected.next(), selected.next()), (Some((only, _)), None) if only == w);
        sole && self
            .workloads
            .get(w)
            .is_some_and(|workload| vip == Range::single(workload.site.address))
    }
}

/// Rule 1: a VIP of `service` that overlaps an earlier ServiceEntry's.
fn overlapping_vips(service: &Service, earlier: &[&Service]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for vip in &service.vips {
        let clash = earlier.iter().find_map(|first| {
            first.vips.iter().find_map(|other| {
                let shared = vip.value.intersection(other.value)?;
                Some((*first, other, shared))
            })
        });
        if let Some((first, other, shared)) = clash {
            problems.push(error(
                service,
                vip,
                format!(
                    "VIP {} overlaps VIP {} of {} at {} ({}) on {shared}: meshd sends a destination to the first ServiceEntry whose VIP contains it, so traffic to {shared} would never reach this one; give each ServiceEntry VIPs of its own",
                    vip.value,
                    other.value,
                    first.key,
                    first.location(other.pos),
                    other.path,
                ),
            ));
        }
    }
    problems
}

/// Rule 2: a host (or the `name.namespace`) of `service` that an earlier ServiceEntry carries.
fn shared_hosts(service: &Service, earlier: &[&Service]) -> Vec<Problem> {
    let ours = service
        .hosts
        .iter()
        .map(|h| (h, "host"))
        .chain(std::iter::once((&service.name_form, "name.namespace")));
    let mut problems = Vec::new();
    for (name, what) in ours {
        let clash = earlier.iter().find_map(|first| {
            names(first)
                .into_iter()
                .find(|(other, _)| other.value.eq_ignore_ascii_case(&name.value))
                .map(|(other, theirs)| (*first, other, theirs))
        });
        if let Some((first, other, theirs)) = clash {
            problems.push(error(
                service,
                name,
                format!(
                    "{what} {:?} is also {theirs} of {} at {} ({}): {HOST_TAIL}",
                    name.value,
                    first.key,
                    first.location(other.pos),
                    other.path,
                ),
            ));
        }
    }
    problems
}

/// What a ServiceEntry answers to, each with how a message calls it.
fn names(service: &Service) -> Vec<(&Field<String>, &'static str)> {
    let hosts = service.hosts.iter().map(|h| (h, "a host"));
    hosts
        .chain(std::iter::once((&service.name_form, "the name.namespace")))
        .collect()
}

fn error<T>(service: &Service, field: &Field<T>, message: String) -> Problem {
    Problem {
        severity: Severity::Error,
        file: service.file.clone(),
        pos: Some(field.pos),
        resource: Some(service.key.clone()),
        path: field.path.clone(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::Range;

    fn range(text: &str) -> Range {
        Range::parse(text).unwrap_or_else(|| panic!("{text} does not parse"))
    }

    fn shared(a: &str, b: &str) -> Option<String> {
        range(a).intersection(range(b)).map(|r| r.to_string())
    }

    #[test]
    fn nested_ranges_share_the_narrower() {
        // Prefixes never cross: either one holds the other or they are disjoint.
        assert_eq!(
            shared("10.0.0.0/8", "10.1.2.0/24").as_deref(),
            Some("10.1.2.0/24")
        );
        assert_eq!(
            shared("10.1.2.3", "10.0.0.0/8").as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(shared("10.0.0.0/25", "10.0.0.128/25"), None);
    }

    #[test]
    fn a_zero_prefix_holds_its_whole_family() {
        // A shift by the full width must not wrap around.
        assert_eq!(
            shared("0.0.0.0/0", "192.0.2.1").as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(
            shared("::/0", "2001:db8::1").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(shared("::/0", "10.0.0.1"), None);
    }

    #[test]
    fn ipv4_mapped_ranges_are_ipv4() {
        // As the registry canonicalises destinations; host bits dropped; a range wider than the
        // mapped block stays IPv6.
        assert_eq!(range("::ffff:10.0.0.7/120").to_string(), "10.0.0.0/24");
        assert_eq!(range("::ffff:10.0.0.1").to_string(), "10.0.0.1");
        assert_eq!(range("::ffff:0:0/95").to_string(), "::fffe:0:0/95");
    }
}
