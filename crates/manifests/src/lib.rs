//! Loads meshd's configuration directory into one validated [`Snapshot`].
//!
//! The directory holds the Istio YAML users already write (AuthorizationPolicy,
//! PeerAuthentication, WorkloadEntry, ServiceEntry), any number of `---`-separated documents per
//! file, in any number of `*.yaml`/`*.yml` files and subdirectories (symlinks followed; hidden
//! entries such as Kubernetes' `..data` and editor droppings ignored). Only regular files are
//! read (a FIFO, device or socket named `*.yaml` is refused without being opened), each up to
//! [`MAX_FILE_BYTES`], and YAML aliases are bounded by expanded nodes and bytes.
//!
//! A load is all or nothing: every file is read, every problem is collected with its file, line,
//! column, resource and field path, and a snapshot is returned only if there is no error. The
//! caller keeps its previous snapshot otherwise — that is how a bad file never takes down a
//! running meshd. Besides each resource's own validation (`meshd-policy`), a load checks what
//! needs them all: duplicate resources, conflicting PeerAuthentications, two workloads
//! (WorkloadEntries or inline ServiceEntry endpoints) that could serve one address and port, and
//! ServiceEntries that shadow one another (overlapping VIPs, shared hosts) or a workload's
//! address.
//!
//! This crate does not watch the directory or decide connections; it only turns files into a
//! snapshot. Typing goes through a YAML tree with positions ([`yaml`]) and a strict serde
//! deserializer over it ([`de`]): unknown fields, duplicate keys and numbers where strings are
//! expected are errors, with a suggestion for likely typos.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod de;
mod document;
mod load;
mod overlap;
mod problem;
mod shadowing;
mod snapshot;
pub mod tree;
pub mod yaml;

pub use load::{
    LoadOptions, MAX_FILE_BYTES, is_config_file_name, is_ignored_name, load_dir, load_str,
    parse_file, parse_text, parse_tree, read_tree, type_tree,
};
pub use problem::Problem;
pub use snapshot::{LoadError, Snapshot, Sourced};
