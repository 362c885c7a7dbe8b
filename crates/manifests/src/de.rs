//! A serde `Deserializer` over [`crate::yaml::Node`] whose errors carry the field path and the
//! position of the offending node, and which is strict where Kubernetes is strict: no duplicate
//! keys, no numbers or booleans where a string is expected.

use std::fmt;

use meshd_policy::{FieldPath, Segment};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::yaml::{Node, Plain, Pos, Value, resolve_plain};

/// A typing error: what went wrong, at which path and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    /// The field path from the document root.
    pub path: FieldPath,
    /// Where in the file; set by the innermost node that saw the error.
    pub pos: Option<Pos>,
    /// The message.
    pub message: String,
}

impl DeError {
    fn at(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }

    fn within(mut self, segment: Segment) -> Self {
        self.path.push_front(segment);
        self
    }

    fn new(message: impl Into<String>, pos: Pos) -> Self {
        DeError {
            path: FieldPath::root(),
            pos: Some(pos),
            message: message.into(),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: FieldPath::root(),
            pos: None,
            message: msg.to_string(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = match closest(field, expected) {
            Some(best) => format!("unknown field, did you mean {best}?"),
            None => format!("unknown field; expected one of: {}", expected.join(", ")),
        };
        DeError {
            path: FieldPath::root().field(field),
            pos: None,
            message,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        de::Error::custom(format!(
            "unknown value {variant:?}; expected one of: {}",
            expected.join(", ")
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        de::Error::custom(format!("missing field `{field}`"))
    }
}

/// The expected name closest to a misspelt one, when it is close enough to be a likely typo.
pub(crate) fn closest<'a>(field: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|candidate| (levenshtein(field, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min()
        .map(|(_, candidate)| candidate)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Types a node as `T`.
pub fn from_node<T: de::DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe(node))
}

/// Deserializer over one node.
struct NodeDe<'a>(&'a Node);

impl<'a> NodeDe<'a> {
    fn mismatch(&self, expected: &str) -> DeError {
        let found = self.0.describe();
        let hint = match (&self.0.value, expected) {
            (Value::Scalar { text, plain: true }, "a string") => {
                format!("; quote it (\"{text}\") if a string is meant")
            }
            _ => String::new(),
        };
        DeError::new(
            format!("expected {expected}, found {found}{hint}"),
            self.0.pos,
        )
    }

    fn string(&self) -> Result<&'a str, DeError> {
        match &self.0.value {
            Value::Scalar { text, plain: false } => Ok(text),
            Value::Scalar { text, plain: true } if resolve_plain(text) == Plain::Str => Ok(text),
            _ => Err(self.mismatch("a string")),
        }
    }

    fn integer(&self) -> Result<i128, DeError> {
        match &self.0.value {
            Value::Scalar { text, plain: true } => match resolve_plain(text) {
                Plain::Int(v) => Ok(v),
                _ => Err(self.mismatch("an integer")),
            },
            _ => Err(self.mismatch("an integer")),
        }
    }
}

macro_rules! deserialize_integer {
    ($($method:ident => $visit:ident as $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let value = self.integer()?;
            let narrowed = <$ty>::try_from(value).map_err(|_| {
                DeError::new(format!("{value} is out of range"), self.0.pos)
            })?;
            visitor.$visit(narrowed).map_err(|e: DeError| e.at(self.0.pos))
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let pos = self.0.pos;
        let result = match &self.0.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar { text, plain: false } => visitor.visit_str(text),
            Value::Scalar { text, plain: true } => match resolve_plain(text) {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Int(v) => match i64::try_from(v) {
                    Ok(v) => visitor.visit_i64(v),
                    Err(_) => visitor.visit_str(text),
                },
                Plain::Float => match text.parse::<f64>() {
                    Ok(f) => visitor.visit_f64(f),
                    Err(_) => visitor.visit_str(text),
                },
                Plain::Str => visitor.visit_str(text),
            },
            Value::Seq(_) => return self.deserialize_seq(visitor),
            Value::Map(_) => return self.deserialize_map(visitor),
        };
        result.map_err(|e: DeError| e.at(pos))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Scalar { text, plain: true } => match resolve_plain(text) {
                Plain::Bool(b) => visitor.visit_bool(b).map_err(|e: DeError| e.at(self.0.pos)),
                _ => Err(self.mismatch("a boolean")),
            },
            _ => Err(self.mismatch("a boolean")),
        }
    }

    deserialize_integer! {
        deserialize_u8 => visit_u8 as u8,
        deserialize_u16 => visit_u16 as u16,
        deserialize_u32 => visit_u32 as u32,
        deserialize_u64 => visit_u64 as u64,
        deserialize_i8 => visit_i8 as i8,
        deserialize_i16 => visit_i16 as i16,
        deserialize_i32 => visit_i32 as i32,
        deserialize_i64 => visit_i64 as i64,
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.string()?;
        visitor
            .visit_str(text)
            .map_err(|e: DeError| e.at(self.0.pos))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Null => visitor.visit_none().map_err(|e: DeError| e.at(self.0.pos)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Null => visitor.visit_unit().map_err(|e: DeError| e.at(self.0.pos)),
            _ => Err(self.mismatch("null")),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Seq(items) => visitor
                .visit_seq(SeqAccess {
                    items: items.iter(),
                    index: 0,
                })
                .map_err(|e: DeError| e.at(self.0.pos)),
            _ => Err(self.mismatch("a list")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Value::Map(entries) = &self.0.value else {
            return Err(self.mismatch("a mapping"));
        };
        // Kubernetes rejects duplicate keys; silently keeping one would hide half a policy.
        // `8080:` and `"8080":` are the same key to Kubernetes, and so here.
        for (i, (key, _)) in entries.iter().enumerate() {
            let name = key.as_key().unwrap_or_default();
            if let Some((first, _)) = entries[..i].iter().find(|(k, _)| k.as_key() == Some(name)) {
                let message = format!("duplicate key: already set at line {}", first.pos.line);
                return Err(DeError::new(message, key.pos).within(Segment::Field(name.to_string())));
            }
        }
        visitor
            .visit_map(MapAccess {
                entries: entries.iter(),
                current: None,
            })
            .map_err(|e: DeError| e.at(self.0.pos))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if let Value::Map(entries) = &self.0.value {
            // Externally tagged: `variant: {fields}`, one entry only.
            return match entries.as_slice() {
                [(key, value)] => visitor
                    .visit_enum(EnumAccess { key, value })
                    .map_err(|e: DeError| e.at(self.0.pos)),
                _ => Err(DeError::new(
                    format!("expected exactly one of: {}", _variants.join(", ")),
                    self.0.pos,
                )),
            };
        }
        let text = self.string()?;
        visitor
            .visit_enum(text.into_deserializer())
            .map_err(|e: DeError| e.at(self.0.pos))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 f32 f64 char bytes byte_buf unit_struct newtype_struct tuple tuple_struct
    }
}

struct EnumAccess<'a> {
    key: &'a Node,
    value: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let name = self.key.as_key().unwrap_or_default().to_string();
        let variant = seed
            .deserialize(NodeDe(self.key))
            .map_err(|e| e.at(self.key.pos).within(Segment::Field(name.clone())))?;
        Ok((
            variant,
            VariantAccess {
                name,
                value: self.value,
            },
        ))
    }
}

struct VariantAccess<'a> {
    name: String,
    value: &'a Node,
}

impl<'de, 'a> de::VariantAccess<'de> for VariantAccess<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match &self.value.value {
            Value::Null => Ok(()),
            _ => {
                Err(DeError::new("expected no value", self.value.pos)
                    .within(Segment::Field(self.name)))
            }
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        let name = self.name;
        seed.deserialize(NodeDe(self.value))
            .map_err(|e| e.at(self.value.pos).within(Segment::Field(name)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        let name = self.name;
        de::Deserializer::deserialize_seq(NodeDe(self.value), visitor)
            .map_err(|e| e.within(Segment::Field(name)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let name = self.name;
        de::Deserializer::deserialize_map(NodeDe(self.value), visitor)
            .map_err(|e| e.within(Segment::Field(name)))
    }
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqAccess<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(NodeDe(item))
            .map(Some)
            .map_err(|e: DeError| e.at(item.pos).within(Segment::Index(index)))
    }
}

struct MapAccess<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    current: Option<&'a (Node, Node)>,
}

impl<'de, 'a> de::MapAccess<'de> for MapAccess<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key = &entry.0;
        seed.deserialize(NodeDe(key)).map(Some).map_err(|e| {
            // An unknown field names itself in its path already; a key that is not a scalar
            // (null, a list) has no name to add, so the error stays at the mapping.
            let e = e.at(key.pos);
            match key.as_key() {
                Some(name) if e.path.is_root() => e.within(Segment::Field(name.to_string())),
                _ => e,
            }
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.current else {
            return Err(de::Error::custom("value without a key"));
        };
        seed.deserialize(NodeDe(value)).map_err(|e: DeError| {
            e.at(value.pos)
                .within(Segment::Field(key.as_key().unwrap_or_default().to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::yaml::parse_documents;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        items: Vec<Inner>,
        port: Option<u16>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Inner {
        principals: Option<Vec<String>>,
    }

    fn load(text: &str) -> Result<Outer, DeError> {
        let (docs, err) = parse_documents(text);
        assert_eq!(err, None);
        from_node(&docs[0])
    }

    #[test]
    fn typo_names_the_field_and_suggests() {
        let err = load("name: a\nitems:\n- principal: [x]\n").unwrap_err();
        assert_eq!(err.path.to_string(), "items[0].principal");
        assert_eq!(err.pos, Some(Pos { line: 3, col: 3 }));
        assert_eq!(err.message, "unknown field, did you mean principals?");
    }

    #[test]
    fn unrelated_unknown_field_lists_the_expected_ones() {
        let err = load("name: a\nzzzzzz: 1\n").unwrap_err();
        assert_eq!(err.path.to_string(), "zzzzzz");
        assert!(
            err.message
                .contains("expected one of: name, items, port, labels"),
            "{err:?}"
        );
    }

    #[test]
    fn numbers_are_not_strings() {
        let err = load("name: a\nitems:\n- principals: [8080]\n").unwrap_err();
        assert_eq!(err.path.to_string(), "items[0].principals[0]");
        assert_eq!(err.pos, Some(Pos { line: 3, col: 16 }));
        assert!(
            err.message
                .starts_with("expected a string, found an integer"),
            "{err:?}"
        );
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = load("name: a\nlabels:\n  app: x\n  app: y\n").unwrap_err();
        assert_eq!(err.path.to_string(), "labels.app");
        assert_eq!(err.pos, Some(Pos { line: 4, col: 3 }));
        assert_eq!(err.message, "duplicate key: already set at line 3");
    }

    #[test]
    fn missing_fields_point_at_the_mapping() {
        let err = load("items: []\n").unwrap_err();
        assert_eq!(err.message, "missing field `name`");
        assert_eq!(err.pos, Some(Pos { line: 1, col: 1 }));
    }

    #[test]
    fn out_of_range_integers_are_errors() {
        let err = load("name: a\nport: 70000\n").unwrap_err();
        assert_eq!(err.path.to_string(), "port");
        assert_eq!(err.message, "70000 is out of range");
    }

    #[test]
    fn well_formed_input_types() {
        let outer = load("name: 'a'\nport: 80\nitems:\n- principals: [\"x\", y]\n").unwrap();
        assert_eq!(outer.port, Some(80));
        assert_eq!(
            outer.items[0].principals,
            Some(vec!["x".to_string(), "y".to_string()])
        );
    }
}
