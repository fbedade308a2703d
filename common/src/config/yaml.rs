//! A YAML tree that remembers the line of every node, and a serde `Deserializer` over it.
//!
//! serde_yaml-style deserializers lose positions as soon as a value is buffered, so every error here is raised
//! while the offending node is in hand: it names the file, the line, the dotted key, the bad value and what was
//! expected. Scalars are interpreted by the type serde asks for (so `learning_rate: 5e-5` is a number even though
//! YAML 1.1 readers such as PyYAML would read it as a string), after `${VAR}` / `${VAR:-default}` expansion.

use std::collections::HashMap;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::ConfigError;

/// One YAML node and the (1-based) line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub line: usize,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    /// `plain` is false for quoted and block scalars: those are always strings, never null or bool.
    Scalar { value: String, plain: bool },
    Seq(Vec<Node>),
    /// Keys in document order, each with its own line.
    Map(Vec<(String, usize, Node)>),
}

impl Node {
    /// True for YAML null: `~`, `null`, or nothing at all.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true } if is_null_text(value))
    }

    /// True when the node means "off": null, `false`, an empty list or mapping. Used to decide whether a
    /// key that is parsed but not acted on deserves a start-up note.
    pub fn is_off(&self) -> bool {
        match &self.kind {
            NodeKind::Scalar { value, plain } => *plain && (is_null_text(value) || value.eq_ignore_ascii_case("false")),
            NodeKind::Seq(items) => items.is_empty(),
            NodeKind::Map(entries) => entries.is_empty(),
        }
    }

    /// The value as shown in an error: scalars verbatim, containers by kind.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { value, .. } => value.clone(),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }
}

fn is_null_text(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// Parses one YAML document into a [`Node`]. An empty document is an empty mapping.
pub(crate) fn parse(text: &str, file: &str) -> Result<Node, ConfigError> {
    let mut builder = Builder { stack: Vec::new(), anchors: HashMap::new(), root: None, error: None, file };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| ConfigError::Syntax {
        file: file.to_string(),
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder.root.unwrap_or(Node { line: 1, kind: NodeKind::Map(Vec::new()) }))
}

enum Open {
    Seq { line: usize, anchor: usize, items: Vec<Node> },
    Map { line: usize, anchor: usize, entries: Vec<(String, usize, Node)>, pending_key: Option<(String, usize)> },
}

struct Builder<'f> {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<ConfigError>,
    file: &'f str,
}

impl Builder<'_> {
    fn fail(&mut self, line: usize, message: String) {
        if self.error.is_none() {
            self.error = Some(ConfigError::Syntax { file: self.file.to_string(), line, col: 1, message });
        }
    }

    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, pending_key, .. }) => match pending_key.take() {
                Some((key, key_line)) => {
                    if entries.iter().any(|(k, _, _)| *k == key) {
                        let message = format!("key `{key}` appears twice in the same mapping; keep one");
                        self.fail(key_line, message);
                    } else {
                        entries.push((key, key_line, node));
                    }
                }
                None => match node.kind {
                    NodeKind::Scalar { value, .. } => *pending_key = Some((value, node.line)),
                    _ => self.fail(node.line, "mapping keys must be plain strings, not lists or mappings".into()),
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let plain = matches!(style, TScalarStyle::Plain);
                self.push_node(Node { line, kind: NodeKind::Scalar { value, plain } }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq { line, anchor, items: Vec::new() }),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map { line, anchor, entries: Vec::new(), pending_key: None })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq { line, anchor, items }) => (Node { line, kind: NodeKind::Seq(items) }, anchor),
                    Some(Open::Map { line, anchor, entries, .. }) => {
                        // A block mapping's start mark sits on its first key; prefer that line.
                        let line = entries.first().map(|(_, l, _)| *l).unwrap_or(line);
                        (Node { line, kind: NodeKind::Map(entries) }, anchor)
                    }
                    None => return,
                };
                self.push_node(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.line = line;
                    self.push_node(node, 0);
                }
                None => self.fail(line, "alias refers to an unknown anchor".into()),
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd | Event::Nothing => {}
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` (the default may itself use `${...}`, e.g.
/// `${SPLADE_CACHE:-${HOME}/.cache/splade}`); `$${` stays a literal `${`; an empty variable counts as unset
/// when a default is given. Returns the name of an unset variable that has no default.
pub(crate) fn expand_env(s: &str) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            // Find the brace closing this reference, allowing nested `${...}` in the default.
            let mut depth = 1usize;
            let mut end = None;
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                out.push_str(&rest[pos..]);
                return Ok(out);
            };
            let inner = &body[..end];
            let (name, default) = match inner.find(":-") {
                Some(i) => (&inner[..i], Some(&inner[i + 2..])),
                None => (inner, None),
            };
            match (std::env::var(name), default) {
                (Ok(v), Some(d)) if v.is_empty() => out.push_str(&expand_env(d)?),
                (Ok(v), _) => out.push_str(&v),
                (Err(_), Some(d)) => out.push_str(&expand_env(d)?),
                (Err(_), None) => return Err(name.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// What went wrong while deserializing, before it is pinned to a line.
#[derive(Debug)]
pub(crate) enum DeError {
    Custom(String),
    InvalidType { expected: String },
    UnknownField { field: String, expected: &'static [&'static str] },
    UnknownVariant { variant: String, expected: &'static [&'static str] },
    MissingField(&'static str),
    /// An error pinned to its node; the `Vec` is the node's position in the tree (entry/item indices from
    /// the root), so that [`from_node_all`] can drop the node and read on.
    Located(Box<ConfigError>, Vec<usize>),
}

impl std::fmt::Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeError::Custom(m) => f.write_str(m),
            DeError::InvalidType { expected } => write!(f, "expected {expected}"),
            DeError::UnknownField { field, .. } => write!(f, "unknown key `{field}`"),
            DeError::UnknownVariant { variant, .. } => write!(f, "unknown value `{variant}`"),
            DeError::MissingField(k) => write!(f, "missing key `{k}`"),
            DeError::Located(e, _) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DeError::Custom(msg.to_string())
    }
    fn invalid_type(_unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DeError::InvalidType { expected: exp.to_string() }
    }
    fn invalid_value(_unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DeError::InvalidType { expected: exp.to_string() }
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::UnknownField { field: field.to_string(), expected }
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::UnknownVariant { variant: variant.to_string(), expected }
    }
    fn missing_field(field: &'static str) -> Self {
        DeError::MissingField(field)
    }
}

/// The nearest candidate to `word` by Jaro-Winkler similarity, if it is close enough to be a plausible typo.
pub(crate) fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Deserializer over one node. `path` is the dotted key the node sits under.
pub(crate) struct NodeDe<'a> {
    pub node: &'a Node,
    pub path: String,
    pub file: &'a str,
    /// The node's position in the tree: entry/item indices from the root.
    pub idx: Vec<usize>,
}

impl<'a> NodeDe<'a> {
    /// Pins an error raised while this node was being read to its line, key and value.
    fn locate(&self, e: DeError) -> DeError {
        let file = self.file.to_string();
        let line = self.node.line;
        let key = self.path.clone();
        let located = match e {
            DeError::Located(..) => return e,
            DeError::InvalidType { expected } => {
                ConfigError::WrongType { file, line, key, value: self.node.describe(), expected: friendly(&expected) }
            }
            DeError::UnknownVariant { variant, expected } => ConfigError::UnknownValue {
                file,
                line,
                key,
                suggestion: nearest(&variant, expected.iter().copied()),
                value: variant,
                choices: expected.iter().map(|s| s.to_string()).collect(),
            },
            DeError::MissingField(field) => ConfigError::MissingKey { file, line, key: join(&key, field) },
            DeError::UnknownField { field, expected } => ConfigError::UnknownKey {
                file,
                line,
                suggestion: nearest(&field, expected.iter().copied()).map(|s| join(&key, &s)),
                key: join(&key, &field),
            },
            DeError::Custom(message) => ConfigError::Other { file, line, key, message },
        };
        DeError::Located(Box::new(located), self.idx.clone())
    }

    fn scalar(&self, expected: &str) -> Result<(String, bool), DeError> {
        match &self.node.kind {
            NodeKind::Scalar { value, plain } => match expand_env(value) {
                Ok(v) => Ok((v, *plain)),
                Err(var) => Err(DeError::Located(
                    Box::new(ConfigError::EnvVar {
                        file: self.file.to_string(),
                        line: self.node.line,
                        key: self.path.clone(),
                        var,
                    }),
                    self.idx.clone(),
                )),
            },
            _ => Err(self.locate(DeError::InvalidType { expected: expected.to_string() })),
        }
    }

    fn parsed<T: std::str::FromStr>(&self, expected: &str) -> Result<T, DeError> {
        let (text, _) = self.scalar(expected)?;
        text.trim().parse::<T>().map_err(|_| {
            DeError::Located(
                Box::new(ConfigError::WrongType {
                    file: self.file.to_string(),
                    line: self.node.line,
                    key: self.path.clone(),
                    value: text.clone(),
                    expected: expected.to_string(),
                }),
                self.idx.clone(),
            )
        })
    }

    fn with<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| self.locate(e))
    }
}

/// Turns serde's terse expectation strings into something a config author reads easily.
fn friendly(expected: &str) -> String {
    match expected {
        "a boolean" => "true or false".into(),
        "a string" => "a string".into(),
        s if s.starts_with("struct ") => "a mapping of keys (`key: value` lines)".into(),
        s if s.starts_with("a sequence") => "a list".into(),
        s if s.starts_with("a map") => "a mapping of keys (`key: value` lines)".into(),
        s => s.to_string(),
    }
}

macro_rules! number_methods {
    ($($method:ident => $visit:ident : $ty:ty, $expected:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let value: $ty = self.parsed($expected)?;
            self.with(visitor.$visit(value))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            NodeKind::Seq(_) => return self.deserialize_seq(visitor),
            NodeKind::Map(_) => return self.deserialize_map(visitor),
            NodeKind::Scalar { .. } => {
                let (text, plain) = self.scalar("a value")?;
                if !plain {
                    visitor.visit_string(text)
                } else if is_null_text(&text) {
                    visitor.visit_unit()
                } else if let Some(b) = parse_bool(&text) {
                    visitor.visit_bool(b)
                } else if let Ok(i) = text.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(f) = text.parse::<f64>() {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_string(text)
                }
            }
        };
        self.with(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (text, _) = self.scalar("true or false")?;
        match parse_bool(&text) {
            Some(b) => self.with(visitor.visit_bool(b)),
            None => Err(self.locate(DeError::InvalidType { expected: "a boolean".into() })),
        }
    }

    number_methods! {
        deserialize_i8 => visit_i64: i64, "an integer";
        deserialize_i16 => visit_i64: i64, "an integer";
        deserialize_i32 => visit_i64: i64, "an integer";
        deserialize_i64 => visit_i64: i64, "an integer";
        deserialize_u8 => visit_u64: u64, "a non-negative integer";
        deserialize_u16 => visit_u64: u64, "a non-negative integer";
        deserialize_u32 => visit_u64: u64, "a non-negative integer";
        deserialize_u64 => visit_u64: u64, "a non-negative integer";
        deserialize_f32 => visit_f64: f64, "a number (e.g. 0.5 or 5e-5)";
        deserialize_f64 => visit_f64: f64, "a number (e.g. 0.5 or 5e-5)";
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (text, _) = self.scalar("a string")?;
        self.with(visitor.visit_string(text))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.with(visitor.visit_none())
        } else {
            let located = NodeDe { node: self.node, path: self.path.clone(), file: self.file, idx: self.idx.clone() };
            visitor.visit_some(located).map_err(|e| self.locate(e))
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.with(visitor.visit_unit())
        } else {
            Err(self.locate(DeError::InvalidType { expected: "nothing (null)".into() }))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let inner = NodeDe { node: self.node, path: self.path.clone(), file: self.file, idx: self.idx.clone() };
        visitor.visit_newtype_struct(inner).map_err(|e| self.locate(e))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Seq(items) => {
                let access = SeqAccess { items: items.iter(), index: 0, path: &self.path, file: self.file, idx: &self.idx };
                self.with(visitor.visit_seq(access))
            }
            _ if self.node.is_null() => {
                let access = SeqAccess { items: [].iter(), index: 0, path: &self.path, file: self.file, idx: &self.idx };
                self.with(visitor.visit_seq(access))
            }
            _ => Err(self.locate(DeError::InvalidType { expected: "a list".into() })),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Map(entries) => {
                let access = MapAccess {
                    entries: entries.iter().enumerate(),
                    value: None,
                    path: &self.path,
                    file: self.file,
                    idx: &self.idx,
                };
                self.with(visitor.visit_map(access))
            }
            // An empty section (`mlflow:` with nothing under it) means "all defaults".
            _ if self.node.is_null() => {
                let access = MapAccess {
                    entries: [].iter().enumerate(),
                    value: None,
                    path: &self.path,
                    file: self.file,
                    idx: &self.idx,
                };
                self.with(visitor.visit_map(access))
            }
            _ => Err(self.locate(DeError::InvalidType { expected: "a mapping of keys (`key: value` lines)".into() })),
        }
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
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Scalar { .. } => {
                let (text, _) = self.scalar("one of the listed values")?;
                // Unknown variants come back as DeError::UnknownVariant and are located (with a suggestion) here.
                self.with(visitor.visit_enum(text.into_deserializer()))
            }
            _ => Err(self.locate(DeError::InvalidType { expected: format!("one of: {}", variants.join(", ")) })),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    path: &'a str,
    file: &'a str,
    idx: &'a [usize],
}

fn child(idx: &[usize], i: usize) -> Vec<usize> {
    let mut v = idx.to_vec();
    v.push(i);
    v
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.next() else { return Ok(None) };
        let path = format!("{}[{}]", self.path, self.index);
        let idx = child(self.idx, self.index);
        self.index += 1;
        let de = NodeDe { node, path, file: self.file, idx: idx.clone() };
        let located_path = de.path.clone();
        seed.deserialize(de).map(Some).map_err(|e| NodeDe { node, path: located_path, file: self.file, idx }.locate(e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: std::iter::Enumerate<std::slice::Iter<'a, (String, usize, Node)>>,
    value: Option<(&'a str, &'a Node, usize)>,
    path: &'a str,
    file: &'a str,
    idx: &'a [usize],
}

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some((i, (key, line, value))) = self.entries.next() else { return Ok(None) };
        self.value = Some((key, value, i));
        // The key is located on its own line: an unknown key error points at the key, not the section.
        let key_node = Node { line: *line, kind: NodeKind::Scalar { value: key.clone(), plain: false } };
        let de = NodeDe { node: &key_node, path: self.path.to_string(), file: self.file, idx: child(self.idx, i) };
        let r = seed.deserialize(KeyDe(key.clone()));
        r.map(Some).map_err(|e| de.locate(e))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, node, i) = self.value.take().expect("next_value_seed before next_key_seed");
        let idx = child(self.idx, i);
        let de = NodeDe { node, path: join(self.path, key), file: self.file, idx: idx.clone() };
        let path = de.path.clone();
        seed.deserialize(de).map_err(|e| NodeDe { node, path, file: self.file, idx }.locate(e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Deserializes a mapping key: always a string, errors are located by the caller.
struct KeyDe(String);

impl<'de> de::Deserializer<'de> for KeyDe {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_string(self.0)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// Deserializes `T` from a node tree, every error carrying file, line and key. Stops at the first error.
#[allow(dead_code)]
pub(crate) fn from_node<T: serde::de::DeserializeOwned>(node: &Node, file: &str) -> Result<T, ConfigError> {
    let (value, mut errors) = from_node_all::<T>(node, file, 1);
    match value {
        Some(v) if errors.is_empty() => Ok(v),
        _ => Err(errors.remove(0)),
    }
}

/// Deserializes `T` from a node tree and collects every error, up to `limit`: after each error the node it
/// names is dropped from a copy of the tree (so the key's default applies) and reading starts over, until
/// the rest reads cleanly. Returns the value read from what was left (`None` when an error could not be
/// pinned to a node below the root) and the errors in document order. A key missing only because its bad
/// value was dropped is not reported twice.
pub(crate) fn from_node_all<T: serde::de::DeserializeOwned>(
    node: &Node,
    file: &str,
    limit: usize,
) -> (Option<T>, Vec<ConfigError>) {
    let mut tree = node.clone();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let de = NodeDe { node: &tree, path: String::new(), file, idx: Vec::new() };
        match T::deserialize(de) {
            Ok(v) => return (Some(v), errors),
            Err(DeError::Located(e, idx)) => {
                let derivative = matches!(&*e, ConfigError::MissingKey { key, .. } if dropped.contains(key));
                if let Some(key) = e.key() {
                    dropped.push(key.to_string());
                }
                // A misspelt required key: the "missing" error for the key it was meant to be says nothing new.
                if let ConfigError::UnknownKey { suggestion: Some(s), .. } = &*e {
                    dropped.push(s.clone());
                }
                if !derivative {
                    errors.push(*e);
                }
                if idx.is_empty() || errors.len() >= limit || !remove_at(&mut tree, &idx) {
                    return (None, errors);
                }
            }
            Err(other) => {
                errors.push(ConfigError::Other {
                    file: file.to_string(),
                    line: node.line,
                    key: String::new(),
                    message: other.to_string(),
                });
                return (None, errors);
            }
        }
    }
}

/// Removes the node at `idx` (entry/item indices from `node`); false when there is none.
fn remove_at(node: &mut Node, idx: &[usize]) -> bool {
    let Some((&last, parents)) = idx.split_last() else { return false };
    let mut cur = node;
    for &i in parents {
        cur = match &mut cur.kind {
            NodeKind::Map(entries) => match entries.get_mut(i) {
                Some(e) => &mut e.2,
                None => return false,
            },
            NodeKind::Seq(items) => match items.get_mut(i) {
                Some(n) => n,
                None => return false,
            },
            NodeKind::Scalar { .. } => return false,
        };
    }
    match &mut cur.kind {
        NodeKind::Map(entries) if last < entries.len() => {
            entries.remove(last);
            true
        }
        NodeKind::Seq(items) if last < items.len() => {
            items.remove(last);
            true
        }
        _ => false,
    }
}

/// Lines of nodes that came from the `i`-th `--set` are `SET_LINE_BASE + i`: far past any file's end, so
/// errors about them can be told apart and named after the `--set` argument.
pub(crate) const SET_LINE_BASE: usize = 1 << 40;

/// Applies one `--set key=value` (the `index`-th) to the tree: `key` is dotted (`training.max_steps`), missing
/// mappings on the way are created, and `value` is read as YAML (`20` is a number where a number is
/// expected, `[a, b]` a list, `''` an empty string, nothing at all null), so the schema judges it as it
/// would judge the same text in the file.
pub(crate) fn apply_set(root: &mut Node, index: usize, arg: &str) -> Result<(), String> {
    let line = SET_LINE_BASE + index;
    let Some((key, value)) = arg.split_once('=') else {
        return Err("expected key=value with a dotted key, e.g. --set training.max_steps=20".into());
    };
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if key.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key such as training.max_steps"));
    }
    let mut value_node = if value.trim().is_empty() {
        Node { line, kind: NodeKind::Scalar { value: String::new(), plain: true } }
    } else {
        parse(value, &format!("--set {arg}")).map_err(|e| e.to_string())?
    };
    relabel(&mut value_node, line);
    if root.is_null() {
        *root = Node { line: 1, kind: NodeKind::Map(Vec::new()) };
    }
    let mut cur = root;
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        let here = parts[..depth].join(".");
        if cur.is_null() {
            cur.kind = NodeKind::Map(Vec::new());
        }
        if !matches!(cur.kind, NodeKind::Map(_)) {
            return Err(format!(
                "`{here}` is {} in the config, not a mapping of keys; set `{here}` itself",
                cur.describe()
            ));
        }
        let NodeKind::Map(entries) = &mut cur.kind else { unreachable!("checked above") };
        let pos = match entries.iter().position(|(k, _, _)| k == part) {
            Some(p) => p,
            None => {
                entries.push((part.to_string(), line, Node { line, kind: NodeKind::Map(Vec::new()) }));
                entries.len() - 1
            }
        };
        let entry = &mut entries[pos];
        if last {
            entry.1 = line;
            entry.2 = value_node;
            return Ok(());
        }
        cur = &mut entry.2;
    }
    Ok(())
}

fn relabel(node: &mut Node, line: usize) {
    node.line = line;
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| relabel(n, line)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|e| {
            e.1 = line;
            relabel(&mut e.2, line)
        }),
    }
}
