//! One YAML document → one typed, validated resource (or the problems that stop it).

use std::path::Path;

use meshd_policy::{
    AuthorizationPolicy, FieldPath, Kind, PeerAuthentication, Resource, ResourceKey, Segment,
    ServiceEntry, ValidationContext, WorkloadEntry, validate,
};

use crate::de::{DeError, closest, from_node};
use crate::problem::Problem;
use crate::yaml::{Node, Pos, Value};

/// Types and validates one document. Returns the resource (None if it has errors that stop
/// typing) and every problem found.
pub(crate) fn load_document(
    file: &Path,
    root: &Node,
    ctx: &ValidationContext,
) -> (Option<Resource>, Vec<Problem>) {
    let mut problems = Vec::new();
    let problem =
        |pos: Pos, path: FieldPath, resource: Option<ResourceKey>, message: String| Problem {
            severity: meshd_policy::Severity::Error,
            file: file.to_path_buf(),
            pos: Some(pos),
            resource,
            path,
            message,
        };
    let Value::Map(_) = &root.value else {
        let message = format!(
            "a document must be a Kubernetes-style resource (a mapping with apiVersion, kind, metadata, spec), found {}",
            root.describe()
        );
        return (
            None,
            vec![problem(root.pos, FieldPath::root(), None, message)],
        );
    };

    let kind_node = child(root, "kind");
    let Some(kind_text) = kind_node.and_then(Node::as_key) else {
        let message = "missing `kind`".to_string();
        return (
            None,
            vec![problem(root.pos, FieldPath::root(), None, message)],
        );
    };
    let kind_pos = kind_node.map_or(root.pos, |n| n.pos);
    let Some(kind) = Kind::parse(kind_text) else {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        let hint = match closest(kind_text, &names) {
            Some(best) => format!("did you mean {best}?"),
            None => format!("meshd reads {}", names.join(", ")),
        };
        let message = format!("unknown kind {kind_text:?}: {hint}");
        return (
            None,
            vec![problem(kind_pos, FieldPath::from("kind"), None, message)],
        );
    };
    let key = ResourceKey {
        kind,
        namespace: child_str(root, &["metadata", "namespace"])
            .unwrap_or(meshd_policy::meta::DEFAULT_NAMESPACE)
            .to_string(),
        name: child_str(root, &["metadata", "name"])
            .unwrap_or_default()
            .to_string(),
    };
    let api_node = child(root, "apiVersion");
    let api_version = api_node.and_then(Node::as_key).unwrap_or_default();
    if !kind.accepts_api_version(api_version) {
        let message = if api_node.is_none() {
            format!(
                "missing `apiVersion`: want one of {}",
                kind.api_versions().join(", ")
            )
        } else {
            format!(
                "{kind} is not served as {api_version:?}: want one of {}",
                kind.api_versions().join(", ")
            )
        };
        let pos = api_node.map_or(root.pos, |n| n.pos);
        problems.push(problem(
            pos,
            FieldPath::from("apiVersion"),
            Some(key.clone()),
            message,
        ));
        return (None, problems);
    }

    let typed: Result<Resource, DeError> = match kind {
        Kind::AuthorizationPolicy => {
            from_node::<AuthorizationPolicy>(root).map(Resource::AuthorizationPolicy)
        }
        Kind::PeerAuthentication => {
            from_node::<PeerAuthentication>(root).map(Resource::PeerAuthentication)
        }
        Kind::WorkloadEntry => from_node::<WorkloadEntry>(root).map(Resource::WorkloadEntry),
        Kind::ServiceEntry => from_node::<ServiceEntry>(root).map(Resource::ServiceEntry),
    };
    let resource = match typed {
        Ok(resource) => resource,
        Err(e) => {
            problems.push(problem(
                e.pos.unwrap_or(root.pos),
                e.path,
                Some(key),
                e.message,
            ));
            return (None, problems);
        }
    };
    for diagnostic in validate(&resource, ctx) {
        problems.push(Problem {
            severity: diagnostic.severity,
            file: file.to_path_buf(),
            pos: Some(locate(root, &diagnostic.path)),
            resource: Some(key.clone()),
            path: diagnostic.path,
            message: diagnostic.message,
        });
    }
    (Some(resource), problems)
}

fn child<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_key() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn child_str<'a>(node: &'a Node, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .try_fold(node, |n, k| child(n, k))
        .and_then(Node::as_key)
}

/// The position a field path points at: the key of a final field (where a reader looks for it),
/// the item of a final index, or the deepest part of the path that exists.
pub(crate) fn locate(root: &Node, path: &FieldPath) -> Pos {
    let mut node = root;
    let mut pos = root.pos;
    for segment in path.segments() {
        let next = match (segment, &node.value) {
            (Segment::Field(name), Value::Map(entries)) => entries
                .iter()
                .find(|(k, _)| k.as_key() == Some(name.as_str()))
                .map(|(k, v)| (k.pos, v)),
            (Segment::Index(i), Value::Seq(items)) => items.get(*i).map(|item| (item.pos, item)),
            _ => None,
        };
        match next {
            Some((at, child)) => {
                pos = at;
                node = child;
            }
            None => break,
        }
    }
    pos
}
