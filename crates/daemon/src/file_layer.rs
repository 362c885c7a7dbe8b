//! meshd.yaml as a figment layer, read by meshd's own YAML parser (`meshd_manifests::yaml`).
//!
//! The file is parsed once into a positioned tree; the tree is typed by meshd's strict
//! deserializer (errors with file, line, column and field) and the same tree gives figment its
//! values here. One parser, so the values figment layers are the ones the check saw: a plain
//! `8080` is a number and a quoted `"8080"` a string in both (YAML 1.2 core schema,
//! [`resolve_plain`]).

use std::path::PathBuf;

use figment::value::{Dict, Empty, Map, Num, Tag, Value};
use figment::{Error, Metadata, Profile, Provider};
use meshd_manifests::yaml::{self, Node, Plain, resolve_plain};

/// Where the layer's values came from, as `meshd config show` names it.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A file on disk (shown as its path).
    File(PathBuf),
    /// Text built into the binary (shown under this name).
    Embedded(String),
}

/// A figment provider over a tree from [`meshd_manifests::read_tree`].
#[derive(Debug, Clone)]
pub struct FileLayer {
    origin: Origin,
    root: Node,
}

impl FileLayer {
    /// The layer for `root`, the whole file's tree.
    pub fn new(origin: Origin, root: Node) -> Self {
        FileLayer { origin, root }
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        match &self.origin {
            Origin::File(path) => Metadata::from("YAML file", path.as_path()),
            Origin::Embedded(name) => Metadata::named(name.clone()),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let dict = match value(&self.root).map_err(Error::from)? {
            Value::Dict(_, dict) => dict,
            Value::Empty(..) => Dict::new(),
            _ => {
                return Err(Error::from(format!(
                    "{}: the file must be a mapping of keys",
                    self.root.pos
                )));
            }
        };
        Ok(Profile::Default.collect(dict))
    }
}

/// A node as figment's value. Mapping keys must be scalars (figment's dictionaries are keyed by
/// strings); the strict typing before this refuses anything else at its line, so the error here
/// is a backstop.
fn value(node: &Node) -> Result<Value, String> {
    Ok(match &node.value {
        yaml::Value::Null => Value::Empty(Tag::Default, Empty::Unit),
        yaml::Value::Scalar { text, plain: false } => Value::from(text.clone()),
        yaml::Value::Scalar { text, plain: true } => plain(text),
        yaml::Value::Seq(items) => {
            Value::from(items.iter().map(value).collect::<Result<Vec<_>, _>>()?)
        }
        yaml::Value::Map(entries) => {
            let mut dict = Dict::new();
            for (key, item) in entries {
                let Some(name) = key.as_key() else {
                    return Err(format!(
                        "{}: a mapping key must be a string, found {}",
                        key.pos,
                        key.describe()
                    ));
                };
                dict.insert(name.to_string(), value(item)?);
            }
            Value::from(dict)
        }
    })
}

/// A plain scalar typed as meshd's deserializer types it.
fn plain(text: &str) -> Value {
    match resolve_plain(text) {
        Plain::Null => Value::Empty(Tag::Default, Empty::Unit),
        Plain::Bool(b) => Value::from(b),
        Plain::Int(i) => Value::Num(Tag::Default, integer(i)),
        Plain::Float => Value::Num(Tag::Default, Num::F64(float(text))),
        Plain::Str => Value::from(text.to_string()),
    }
}

/// The narrowest of figment's 64-bit integers that holds `i`, so any integer field it fits
/// accepts it (serde's visitors convert between widths when the value fits).
fn integer(i: i128) -> Num {
    if let Ok(u) = u64::try_from(i) {
        Num::U64(u)
    } else if let Ok(s) = i64::try_from(i) {
        Num::I64(s)
    } else if let Ok(u) = u128::try_from(i) {
        Num::U128(u)
    } else {
        Num::I128(i)
    }
}

/// A YAML 1.2 float; `resolve_plain` has already checked the spelling.
fn float(text: &str) -> f64 {
    match text.trim_start_matches('+') {
        ".inf" | ".Inf" | ".INF" => f64::INFINITY,
        "-.inf" | "-.Inf" | "-.INF" => f64::NEG_INFINITY,
        ".nan" | ".NaN" | ".NAN" => f64::NAN,
        other => other.parse().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn layer(text: &str) -> Dict {
        let root = meshd_manifests::parse_tree(Path::new("t.yaml"), text).unwrap();
        let data = FileLayer::new(Origin::Embedded("t".into()), root)
            .data()
            .unwrap();
        data.get(&Profile::Default).cloned().unwrap_or_default()
    }

    #[test]
    fn scalars_are_typed_as_the_strict_deserializer_types_them() {
        let dict =
            layer("a: 8080\nb: \"8080\"\nc: true\nd: 'true'\ne: ~\nf: 1.5\ng: -3\nh: 1m30s\n");
        assert_eq!(dict["a"].to_u128(), Some(8080));
        assert_eq!(dict["b"].as_str(), Some("8080"));
        assert_eq!(dict["c"].to_bool(), Some(true));
        assert_eq!(dict["d"].as_str(), Some("true"));
        assert!(matches!(dict["e"], Value::Empty(..)));
        assert_eq!(dict["f"].to_f64(), Some(1.5));
        assert_eq!(dict["g"].to_i128(), Some(-3));
        assert_eq!(dict["h"].as_str(), Some("1m30s"));
    }

    #[test]
    fn nesting_and_aliases_become_dictionaries_and_arrays() {
        let dict = layer("x: &p {port: 1}\ny: [*p, {port: 2}]\n");
        assert_eq!(dict["x"].find_ref("port").and_then(Value::to_u128), Some(1));
        let Value::Array(_, items) = &dict["y"] else {
            panic!("not an array: {:?}", dict["y"])
        };
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn an_empty_file_is_an_empty_layer() {
        assert!(layer("").is_empty());
        assert!(layer("# only a comment\n").is_empty());
    }

    #[test]
    fn a_non_mapping_file_is_refused_at_its_position() {
        let root = meshd_manifests::parse_tree(Path::new("t.yaml"), "- a\n").unwrap();
        let err = FileLayer::new(Origin::Embedded("t".into()), root)
            .data()
            .unwrap_err();
        assert!(
            err.to_string().contains("1:1: the file must be a mapping"),
            "{err}"
        );
    }

    #[test]
    fn a_non_scalar_key_is_refused_at_its_position() {
        let root = meshd_manifests::parse_tree(Path::new("t.yaml"), "? [a]\n: 1\n").unwrap();
        let err = FileLayer::new(Origin::Embedded("t".into()), root)
            .data()
            .unwrap_err();
        assert!(
            err.to_string().contains("a mapping key must be a string"),
            "{err}"
        );
    }
}
