//! The document tree every stage works on: YAML values that remember where they were written.
//!
//! `serde_json::Value` would lose positions, so the parser builds [`Node`]s (each with the file
//! index, line and column of its YAML node) and converts to JSON only for schema validation and
//! typed conversion. Key paths found there are mapped back to a position with [`Node::lookup`].

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Where a node was written: index into the input's files, 1-based line and column.
/// `file == usize::MAX` marks a node the loader made itself (no position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub file: usize,
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub const NONE: Pos = Pos {
        file: usize::MAX,
        line: 0,
        column: 0,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// Where the node is used (what messages point at).
    pub pos: Pos,
    /// Where its text is written: for a node that comes from an alias (`*m`, or a `<<` merge
    /// key), the anchored original; else `pos`. Used to see how a number was spelled.
    pub written: Pos,
    pub value: Value,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a key path the way people write it: `services.web.ports[0]`.
pub(crate) fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

impl Node {
    pub fn new(pos: Pos, value: Value) -> Self {
        Self {
            pos,
            written: pos,
            value,
        }
    }

    pub fn map(pos: Pos) -> Self {
        Self::new(pos, Value::Map(Vec::new()))
    }

    pub fn as_map(&self) -> Option<&Vec<(Key, Node)>> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(Key, Node)>> {
        match &mut self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.as_map_mut()?
            .iter_mut()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// Removes a key from a mapping, returning its key and value.
    pub fn remove(&mut self, key: &str) -> Option<(Key, Node)> {
        let map = self.as_map_mut()?;
        let idx = map.iter().position(|(k, _)| k.name == key)?;
        Some(map.remove(idx))
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The position of the node at `path`, or of the deepest node on the way there; for a
    /// mapping key the position of the key itself.
    pub fn lookup(&self, path: &[Seg]) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for seg in path {
            match (seg, &node.value) {
                (Seg::Key(k), Value::Map(m)) => match m.iter().find(|(key, _)| &key.name == k) {
                    Some((key, v)) => {
                        pos = if key.pos.file == usize::MAX {
                            v.pos
                        } else {
                            key.pos
                        };
                        node = v;
                    }
                    None => return pos,
                },
                (Seg::Index(i), Value::Seq(s)) => match s.get(*i) {
                    Some(v) => {
                        pos = v.pos;
                        node = v;
                    }
                    None => return pos,
                },
                _ => return pos,
            }
        }
        pos
    }

    /// The JSON form (for schema validation and typed conversion).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => {
                let mut obj = serde_json::Map::new();
                for (k, v) in entries {
                    obj.insert(k.name.clone(), v.to_json());
                }
                J::Object(obj)
            }
        }
    }

    /// Builds a tree from parsed YAML, stamping every node with `file`.
    pub(crate) fn from_raw(raw: Spanned<Raw>, file: usize) -> Node {
        let pos = Pos {
            file,
            line: raw.referenced.line(),
            column: raw.referenced.column(),
        };
        let written = Pos {
            file,
            line: raw.defined.line(),
            column: raw.defined.column(),
        };
        let value = match raw.value {
            Raw::Null => Value::Null,
            Raw::Bool(b) => Value::Bool(b),
            Raw::Int(i) => Value::Int(i),
            Raw::Float(f) => Value::Float(f),
            Raw::Str(s) => Value::Str(s),
            Raw::Seq(items) => Value::Seq(
                items
                    .into_iter()
                    .map(|item| Node::from_raw(item, file))
                    .collect(),
            ),
            Raw::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let key = Key {
                            name: k.value.0,
                            pos: Pos {
                                file,
                                line: k.referenced.line(),
                                column: k.referenced.column(),
                            },
                        };
                        (key, Node::from_raw(v, file))
                    })
                    .collect(),
            ),
        };
        Node {
            pos,
            written,
            value,
        }
    }
}

/// A YAML value as the parser hands it over, children carrying their spans.
pub(crate) enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<RawKey>, Spanned<Raw>)>),
}

/// A mapping key: any scalar, as text.
pub(crate) struct RawKey(pub String);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Raw::Int(i),
            Err(_) => Raw::Str(v.to_string()),
        })
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Raw::Int(i),
            Err(_) => Raw::Str(v.to_string()),
        })
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Raw::Int(i),
            Err(_) => Raw::Str(v.to_string()),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries: Vec<(Spanned<RawKey>, Spanned<Raw>)> = Vec::new();
        // A set beside the list: a mapping of many keys is checked in linear time, not
        // quadratic.
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<Spanned<RawKey>>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            if !seen.insert(key.value.0.clone()) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{}` at line {}",
                    key.value.0,
                    key.referenced.line()
                )));
            }
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = RawKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar mapping key")
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawKey, E> {
        Ok(RawKey("null".to_owned()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawKey, E> {
        Ok(RawKey(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKey, E> {
        Ok(RawKey(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawKey, E> {
        Ok(RawKey(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawKey, E> {
        Ok(RawKey(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKey, E> {
        Ok(RawKey(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawKey, E> {
        Ok(RawKey(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<RawKey, A::Error> {
        Err(de::Error::custom(
            "a mapping key must be a scalar, not a sequence",
        ))
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<RawKey, A::Error> {
        Err(de::Error::custom(
            "a mapping key must be a scalar, not a mapping",
        ))
    }
}
