//! A YAML tree that remembers where each node was written, built from granit-parser's events.
//!
//! serde deserializers for YAML either lose positions (serde_yaml reports a line only for
//! syntax errors) or field paths, and meshd's errors need both. So documents are first loaded
//! into this small tree (a pure-Rust, fuzzed, panic-free parser with nesting limits underneath),
//! then typed with [`crate::de`], which knows the path and position of every node it visits.

use std::collections::HashMap;
use std::fmt;

use granit_parser::{Event, Options, Parser, ScalarStyle, Span};

/// At most this many nodes per file, aliases expanded: a guard against alias bombs.
const MAX_NODES: usize = 4_000_000;
/// At most this many bytes of scalar text per file, aliases expanded: a guard against alias
/// bombs by size (a few large scalars repeated by alias stay far below the node bound while
/// each copy costs its full length in memory). Twice the largest file meshd reads
/// ([`crate::MAX_FILE_BYTES`]), so a file without aliases never reaches it.
pub const MAX_EXPANDED_BYTES: usize = 2 * crate::MAX_FILE_BYTES as usize;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub col: usize,
}

impl Pos {
    fn of(span: &Span) -> Self {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The content.
    pub value: Value,
    /// Where the node starts.
    pub pos: Pos,
}

/// Node content.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing.
    Null,
    /// A scalar; `plain` when unquoted (only plain scalars can be numbers or booleans).
    Scalar {
        /// The text after escape processing.
        text: String,
        /// Unquoted and untagged: its type is resolved from its text.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order (duplicates are kept here and rejected when typed).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The node's type, for messages.
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { text, plain: true } => match resolve_plain(text) {
                Plain::Null => "null",
                Plain::Bool(_) => "a boolean",
                Plain::Int(_) => "an integer",
                Plain::Float => "a number",
                Plain::Str => "a string",
            },
            Value::Scalar { .. } => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The string value of a mapping key, if it is a scalar.
    pub fn as_key(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// How a plain scalar resolves under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plain {
    /// `null`, `Null`, `NULL`, `~`, or empty.
    Null,
    /// `true`/`false` in their three spellings.
    Bool(bool),
    /// A decimal, octal (`0o`) or hex (`0x`) integer.
    Int(i128),
    /// A float, `.inf` or `.nan`.
    Float,
    /// Anything else.
    Str,
}

/// Resolves a plain scalar's type.
pub fn resolve_plain(text: &str) -> Plain {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | "-.inf" | "+.inf" | ".Inf" | "-.Inf" | "+.Inf" | ".INF" | "-.INF" | "+.INF"
        | ".nan" | ".NaN" | ".NAN" => return Plain::Float,
        _ => {}
    }
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let parsed = if let Some(hex) = text.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = text.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i128>().ok().map(|v| v * sign)
    } else {
        None
    };
    if let Some(v) = parsed {
        return Plain::Int(v);
    }
    let float_like = text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if float_like && text.parse::<f64>().is_ok() {
        Plain::Float
    } else {
        Plain::Str
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// The parser's message.
    pub message: String,
}

/// Parses every document of a stream. Documents before a syntax error are returned with it;
/// empty documents come back as `Null` nodes so callers can skip them.
pub fn parse_documents(text: &str) -> (Vec<Node>, Option<SyntaxError>) {
    let mut builder = Builder::default();
    let parser = Parser::new_from_str_with_options(text, Options::default());
    for event in parser {
        match event {
            Ok((event, span)) => {
                if let Err(message) = builder.event(event, span) {
                    return (
                        builder.documents,
                        Some(SyntaxError {
                            pos: Pos::of(&span),
                            message,
                        }),
                    );
                }
            }
            Err(e) => {
                let marker = e.marker();
                let pos = Pos {
                    line: marker.line(),
                    col: marker.col() + 1,
                };
                return (
                    builder.documents,
                    Some(SyntaxError {
                        pos,
                        message: e.info(),
                    }),
                );
            }
        }
    }
    (builder.documents, None)
}

/// An open collection while its children are being read.
enum Open {
    Seq(Node, usize),
    Map(Node, usize, Option<Node>),
}

/// An anchored node with its size, so an alias is measured before it is copied.
struct Anchored {
    node: Node,
    size: Size,
}

/// How much a node costs once expanded: nodes, and bytes of scalar text.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: usize,
    bytes: usize,
}

#[derive(Default)]
struct Builder {
    documents: Vec<Node>,
    stack: Vec<Open>,
    anchors: HashMap<usize, Anchored>,
    /// What the document holds so far, aliases expanded.
    total: Size,
    current: Option<Node>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), String> {
        let pos = Pos::of(&span);
        match event {
            Event::DocumentStart(..) => {
                self.anchors.clear();
                self.current = None;
            }
            Event::DocumentEnd => {
                let root = self.current.take().unwrap_or(Node {
                    value: Value::Null,
                    pos,
                });
                self.documents.push(root);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let plain = style == ScalarStyle::Plain && !tagged_str;
                self.add_bytes(text.len())?;
                let value = if plain && matches!(resolve_plain(&text), Plain::Null) {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                self.complete(Node { value, pos }, anchor)?;
            }
            Event::SequenceStart(_, anchor, _) => {
                self.stack.push(Open::Seq(
                    Node {
                        value: Value::Seq(Vec::new()),
                        pos,
                    },
                    anchor,
                ));
            }
            Event::MappingStart(_, anchor, _) => {
                self.stack.push(Open::Map(
                    Node {
                        value: Value::Map(Vec::new()),
                        pos,
                    },
                    anchor,
                    None,
                ));
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(node, anchor)) | Some(Open::Map(node, anchor, None)) => {
                    self.complete(node, anchor)?;
                }
                Some(Open::Map(_, _, Some(_))) | None => {
                    return Err("unbalanced collection".to_string());
                }
            },
            Event::Alias(id) => {
                let size = self
                    .anchors
                    .get(&id)
                    .map(|a| a.size)
                    .ok_or_else(|| "alias to an unknown anchor".to_string())?;
                // Measured before copying: the copy is what the bound protects memory from.
                // `complete` counts the alias's own node.
                self.total.nodes += size.nodes.saturating_sub(1);
                self.add_bytes(size.bytes)?;
                if self.total.nodes > MAX_NODES {
                    return Err(format!("more than {MAX_NODES} nodes (aliases expanded)"));
                }
                let node = match self.anchors.get(&id) {
                    Some(anchored) => anchored.node.clone(),
                    None => return Err("alias to an unknown anchor".to_string()),
                };
                self.complete(node, 0)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn add_bytes(&mut self, bytes: usize) -> Result<(), String> {
        self.total.bytes = self.total.bytes.saturating_add(bytes);
        if self.total.bytes > MAX_EXPANDED_BYTES {
            return Err(format!(
                "more than {MAX_EXPANDED_BYTES} bytes of text (aliases expanded)"
            ));
        }
        Ok(())
    }

    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), String> {
        self.total.nodes += 1;
        if self.total.nodes > MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes (aliases expanded)"));
        }
        if anchor != 0 {
            let size = size(&node);
            self.anchors.insert(
                anchor,
                Anchored {
                    node: node.clone(),
                    size,
                },
            );
        }
        match self.stack.last_mut() {
            Some(Open::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Open::Map(map, _, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((key, node));
                    }
                }
            },
            None => self.current = Some(node),
        }
        Ok(())
    }
}

fn size(node: &Node) -> Size {
    let add = |a: Size, b: Size| Size {
        nodes: a.nodes.saturating_add(b.nodes),
        bytes: a.bytes.saturating_add(b.bytes),
    };
    let one = Size { nodes: 1, bytes: 0 };
    match &node.value {
        Value::Seq(items) => items.iter().map(size).fold(one, add),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| add(size(k), size(v)))
            .fold(one, add),
        Value::Scalar { text, .. } => Size {
            nodes: 1,
            bytes: text.len(),
        },
        Value::Null => one,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_absolute_across_documents() {
        let (docs, err) = parse_documents("a: 1\n---\nb:\n  c: \"x\"\n");
        assert_eq!(err, None);
        assert_eq!(docs.len(), 2);
        let Value::Map(entries) = &docs[1].value else {
            panic!("not a map")
        };
        let (key, value) = &entries[0];
        assert_eq!(key.pos, Pos { line: 3, col: 1 });
        let Value::Map(inner) = &value.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.pos, Pos { line: 4, col: 6 });
        assert_eq!(
            inner[0].1.value,
            Value::Scalar {
                text: "x".into(),
                plain: false
            }
        );
    }

    #[test]
    fn syntax_errors_keep_earlier_documents() {
        let (docs, err) = parse_documents("a: 1\n---\nb: [1, 2\n");
        assert_eq!(docs.len(), 1);
        let err = err.expect("syntax error");
        assert!(err.pos.line >= 3, "{err:?}");
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let (_, err) = parse_documents(&text);
        assert!(err.expect("bounded").message.contains("nodes"));
    }

    #[test]
    fn alias_bombs_by_bytes_are_bounded() {
        // 40 aliases of a 4 MiB scalar: 41 nodes, 164 MiB of text.
        let mut text = format!("a: &big \"{}\"\nb:\n", "x".repeat(4 << 20));
        for _ in 0..40 {
            text.push_str("- *big\n");
        }
        let (_, err) = parse_documents(&text);
        let err = err.expect("bounded");
        assert_eq!(
            err.message,
            format!("more than {MAX_EXPANDED_BYTES} bytes of text (aliases expanded)")
        );
        // Placed at the alias that crosses the bound (before it is copied): the keys take 2
        // bytes, so the anchor and 30 aliases fit and alias 31, on line 2 + 31, crosses.
        let crossing = (MAX_EXPANDED_BYTES - 2) / (4 << 20);
        assert_eq!(err.pos.line, 2 + crossing);
    }

    #[test]
    fn small_aliases_stay_below_the_bound() {
        let (docs, err) = parse_documents("a: &s hello\nb: [*s, *s, *s]\n");
        assert_eq!(err, None);
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn plain_scalars_resolve_like_yaml_1_2() {
        assert_eq!(resolve_plain("8080"), Plain::Int(8080));
        assert_eq!(resolve_plain("-3"), Plain::Int(-3));
        assert_eq!(resolve_plain("0x1F"), Plain::Int(31));
        assert_eq!(resolve_plain("true"), Plain::Bool(true));
        assert_eq!(resolve_plain("yes"), Plain::Str);
        assert_eq!(resolve_plain("1.5"), Plain::Float);
        assert_eq!(resolve_plain("10.0.0.1"), Plain::Str);
        assert_eq!(resolve_plain("~"), Plain::Null);
        assert_eq!(resolve_plain("v1"), Plain::Str);
    }
}
