//! The validated set of resources one load produced, and the checks that need all of them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use meshd_policy::{
    AuthorizationPolicy, Kind, PeerAuthentication, PeerAuthnLevel, Resource, ResourceKey,
    ServiceEntry, Severity, WorkloadEntry,
};

use crate::problem::Problem;
use crate::yaml::Pos;

/// A resource with the place it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    /// The resource.
    pub resource: T,
    /// The file it was read from.
    pub file: PathBuf,
    /// Where its document starts.
    pub pos: Pos,
}

impl<T> Sourced<T> {
    /// `file:line:col`, for messages.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.pos)
    }
}

/// Everything in the configuration directory, validated as a whole. Built completely before it
/// is used, so a reader never sees half of a load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The mesh root namespace the snapshot was validated for.
    pub root_namespace: String,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Sourced<AuthorizationPolicy>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Sourced<PeerAuthentication>>,
    /// WorkloadEntries.
    pub workload_entries: Vec<Sourced<WorkloadEntry>>,
    /// ServiceEntries.
    pub service_entries: Vec<Sourced<ServiceEntry>>,
    /// Warnings found while loading (the snapshot is valid regardless).
    pub warnings: Vec<Problem>,
    /// How many files were read.
    pub files: usize,
}

impl Snapshot {
    pub(crate) fn push(&mut self, resource: Resource, file: PathBuf, pos: Pos) {
        match resource {
            Resource::AuthorizationPolicy(r) => self.authorization_policies.push(Sourced {
                resource: r,
                file,
                pos,
            }),
            Resource::PeerAuthentication(r) => self.peer_authentications.push(Sourced {
                resource: r,
                file,
                pos,
            }),
            Resource::WorkloadEntry(r) => self.workload_entries.push(Sourced {
                resource: r,
                file,
                pos,
            }),
            Resource::ServiceEntry(r) => self.service_entries.push(Sourced {
                resource: r,
                file,
                pos,
            }),
        }
    }

    /// The AuthorizationPolicies, without their sources.
    pub fn policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.authorization_policies.iter().map(|s| &s.resource)
    }

    /// The PeerAuthentications, without their sources.
    pub fn peer_auths(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.peer_authentications.iter().map(|s| &s.resource)
    }

    /// Checks that need every resource: duplicates and conflicting PeerAuthentications.
    pub(crate) fn cross_check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut seen: BTreeMap<ResourceKey, String> = BTreeMap::new();
        let all = self
            .authorization_policies
            .iter()
            .map(|s| {
                (
                    ResourceKey::new(Kind::AuthorizationPolicy, &s.resource.metadata),
                    &s.file,
                    s.pos,
                )
            })
            .chain(self.peer_authentications.iter().map(|s| {
                (
                    ResourceKey::new(Kind::PeerAuthentication, &s.resource.metadata),
                    &s.file,
                    s.pos,
                )
            }))
            .chain(self.workload_entries.iter().map(|s| {
                (
                    ResourceKey::new(Kind::WorkloadEntry, &s.resource.metadata),
                    &s.file,
                    s.pos,
                )
            }))
            .chain(self.service_entries.iter().map(|s| {
                (
                    ResourceKey::new(Kind::ServiceEntry, &s.resource.metadata),
                    &s.file,
                    s.pos,
                )
            }));
        for (key, file, pos) in all {
            let here = format!("{}:{pos}", file.display());
            match seen.get(&key) {
                Some(first) => problems.push(error(
                    file,
                    pos,
                    Some(key.clone()),
                    format!("duplicate {key}: already defined at {first}"),
                )),
                None => {
                    seen.insert(key, here);
                }
            }
        }
        problems.extend(self.peer_authentication_conflicts());
        problems
    }

    /// Istio resolves several PeerAuthentications at one level by creation time, which a
    /// directory does not have: meshd rejects the conflict instead (meshd decision M9).
    fn peer_authentication_conflicts(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut levels: BTreeMap<String, &Sourced<PeerAuthentication>> = BTreeMap::new();
        for pa in &self.peer_authentications {
            let ns = pa.resource.metadata.namespace();
            let level = match pa.resource.level(&self.root_namespace) {
                PeerAuthnLevel::Mesh => "mesh level".to_string(),
                PeerAuthnLevel::Namespace => format!("namespace level in namespace {ns:?}"),
                PeerAuthnLevel::Ignored => continue, // warned about by validation
                PeerAuthnLevel::Workload => {
                    let labels = pa
                        .resource
                        .spec
                        .selector
                        .clone()
                        .unwrap_or_default()
                        .match_labels;
                    format!("workload level in namespace {ns:?} with selector {labels:?}")
                }
            };
            match levels.get(&level) {
                Some(first) => problems.push(conflict(pa, first, &level)),
                None => {
                    levels.insert(level, pa);
                }
            }
        }
        // Different selectors can still select the same workload.
        for workload in &self.workload_entries {
            let ns = workload.resource.metadata.namespace();
            let labels = &workload.resource.spec.labels;
            let matching: Vec<&Sourced<PeerAuthentication>> = self
                .peer_authentications
                .iter()
                .filter(|pa| pa.resource.metadata.namespace() == ns)
                .filter(|pa| pa.resource.level(&self.root_namespace) == PeerAuthnLevel::Workload)
                .filter(|pa| {
                    pa.resource
                        .spec
                        .selector
                        .as_ref()
                        .is_some_and(|s| s.matches(labels))
                })
                .collect();
            if let [first, second, ..] = matching.as_slice()
                && first.resource.spec.selector != second.resource.spec.selector
            {
                let level = format!(
                    "workload level for WorkloadEntry {ns}/{}",
                    workload.resource.metadata.name()
                );
                problems.push(conflict(second, first, &level));
            }
        }
        problems
    }

    /// A one-line summary of what was loaded.
    pub fn summary(&self) -> String {
        format!(
            "{}, {}, {}, {} from {} ({})",
            count(
                self.authorization_policies.len(),
                "AuthorizationPolicy",
                "AuthorizationPolicies"
            ),
            count(
                self.peer_authentications.len(),
                "PeerAuthentication",
                "PeerAuthentications"
            ),
            count(
                self.workload_entries.len(),
                "WorkloadEntry",
                "WorkloadEntries"
            ),
            count(self.service_entries.len(), "ServiceEntry", "ServiceEntries"),
            count(self.files, "file", "files"),
            count(self.warnings.len(), "warning", "warnings"),
        )
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn error(
    file: &std::path::Path,
    pos: Pos,
    resource: Option<ResourceKey>,
    message: String,
) -> Problem {
    Problem {
        severity: Severity::Error,
        file: file.to_path_buf(),
        pos: Some(pos),
        resource,
        path: meshd_policy::FieldPath::root(),
        message,
    }
}

fn conflict(
    pa: &Sourced<PeerAuthentication>,
    first: &Sourced<PeerAuthentication>,
    level: &str,
) -> Problem {
    let first_name = format!(
        "{}/{}",
        first.resource.metadata.namespace(),
        first.resource.metadata.name()
    );
    error(
        &pa.file,
        pa.pos,
        Some(ResourceKey::new(
            Kind::PeerAuthentication,
            &pa.resource.metadata,
        )),
        format!(
            "conflicting PeerAuthentication at {level}: {first_name} at {} applies there too; Istio picks the oldest, a directory has no creation time, so keep only one",
            first.location()
        ),
    )
}

/// Why a load produced no snapshot: every problem found (errors and warnings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The problems, errors and warnings, in file order.
    pub problems: Vec<Problem>,
}

impl LoadError {
    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors().count();
        write!(
            f,
            "configuration rejected with {count} error{}",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in self.errors() {
            write!(f, "\n{problem}")?;
        }
        Ok(())
    }
}
