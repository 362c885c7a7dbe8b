//! Field paths such as `spec.rules[0].from[1].source.ipBlocks[2]`, used to point at the part of a
//! resource a diagnostic is about.

use std::fmt;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key.
    Field(String),
    /// A sequence index.
    Index(usize),
}

/// A path from a YAML document's root to one of its nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The empty path: the document itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a mapping key.
    pub fn field(&self, name: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Field(name.to_string()));
        Self(segments)
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    /// Prepends a segment; errors bubbling up a tree learn their path this way.
    pub fn push_front(&mut self, segment: Segment) {
        self.0.insert(0, segment);
    }

    /// The segments from the root.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for FieldPath {
    /// Parses the dotted form (`spec.rules[0].from`); used by tests and fixtures.
    fn from(text: &str) -> Self {
        let mut path = FieldPath::root();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                path.0.push(Segment::Field(name.to_string()));
            }
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    path.0.push(Segment::Index(i));
                }
                rest = &rest[close + 1..];
            }
        }
        path
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let path = FieldPath::root()
            .field("spec")
            .field("rules")
            .index(0)
            .field("from")
            .index(12)
            .field("source");
        assert_eq!(path.to_string(), "spec.rules[0].from[12].source");
        assert_eq!(FieldPath::from("spec.rules[0].from[12].source"), path);
    }
}
