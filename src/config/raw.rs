//! A TOML document as a tree of values that keeps the byte span of every
//! value and key, so that validation errors can name the line they are about.
//!
//! `toml::Spanned<T>` cannot be used directly for every value: tables made
//! implicitly by dotted keys (`env.A = "b"`) have no span in `toml` 0.8, and
//! deserializing them as `Spanned<T>` fails with a confusing message. So this
//! module speaks the same protocol as `toml::Spanned` (the deserializer is asked
//! for the struct name and fields that `Spanned` itself asks for, learned from
//! `Spanned`'s own `Deserialize` impl at run time) and accepts values with or
//! without a span.

use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A byte range in the source text.
pub(crate) type Span = Range<usize>;

/// One value of the document with the span it was read from, if any.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub value: Raw,
    pub span: Option<Span>,
}

/// One `key = value` of a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Option<Span>,
    pub value: Item,
}

/// A TOML value whose children keep their spans.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Item>),
    /// Entries in document order.
    Table(Vec<Entry>),
}

impl Item {
    /// The start offset of this value, or of its first descendant that has a
    /// span (an implicit dotted table has none of its own).
    pub fn start(&self) -> Option<usize> {
        if let Some(span) = &self.span {
            return Some(span.start);
        }
        match &self.value {
            Raw::Array(items) => items.iter().filter_map(Item::start).min(),
            Raw::Table(entries) => entries
                .iter()
                .filter_map(|e| e.key_span.as_ref().map(|s| s.start).or(e.value.start()))
                .min(),
            _ => None,
        }
    }
}

impl Entry {
    /// The start offset of the key, else of the value.
    pub fn start(&self) -> Option<usize> {
        self.key_span
            .as_ref()
            .map(|s| s.start)
            .or(self.value.start())
    }
}

/// Parses a whole document. The top level is always a table.
pub(crate) fn parse_document(text: &str) -> Result<Vec<Entry>, toml::de::Error> {
    let doc: Document = toml::from_str(text)?;
    Ok(doc.0)
}

struct Document(Vec<Entry>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(RawVisitor)? {
            Raw::Table(entries) => Ok(Document(entries)),
            _ => Err(de::Error::custom("expected a table at the top level")),
        }
    }
}

// ---------------------------------------------------------------------------
// Learning the private struct names of `toml::Spanned` and `toml::value::Datetime`.

/// Names a deserializer is asked for by a `deserialize_struct` call.
#[derive(Debug, Clone, Copy)]
struct StructShape {
    name: &'static str,
    fields: &'static [&'static str],
}

/// A deserializer that only records what `deserialize_struct` was called with.
struct Probe;

#[derive(Debug)]
enum ProbeError {
    Struct(StructShape),
    Other,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        ProbeError::Other
    }
}

impl<'de> Deserializer<'de> for Probe {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Other)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Struct(StructShape { name, fields }))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

fn probe<T: for<'de> Deserialize<'de>>() -> Option<StructShape> {
    match T::deserialize(Probe) {
        Err(ProbeError::Struct(shape)) => Some(shape),
        _ => None,
    }
}

/// The struct name and fields (`start`, `end`, `value`) of `toml::Spanned`.
fn spanned_shape() -> Option<StructShape> {
    static SHAPE: OnceLock<Option<StructShape>> = OnceLock::new();
    *SHAPE.get_or_init(|| probe::<toml::Spanned<()>>().filter(|s| s.fields.len() == 3))
}

/// The single field name by which a date-time value presents itself as a map.
fn datetime_field() -> &'static str {
    static FIELD: OnceLock<&'static str> = OnceLock::new();
    FIELD.get_or_init(|| {
        probe::<toml::value::Datetime>()
            .and_then(|s| s.fields.first().copied())
            .unwrap_or("$__toml_private_datetime")
    })
}

/// Asks `d` for a spanned value if the protocol is known, else for any value.
fn deserialize_maybe_spanned<'de, D: Deserializer<'de>, V: Visitor<'de>>(
    d: D,
    visitor: V,
) -> Result<V::Value, D::Error> {
    match spanned_shape() {
        Some(shape) => d.deserialize_struct(shape.name, shape.fields, visitor),
        None => d.deserialize_any(visitor),
    }
}

/// Reads the rest of a spanned-protocol map whose first key (`start`) has
/// already been read. Returns the span and whatever `seed` made of the value.
fn read_spanned<'de, A: MapAccess<'de>, S: DeserializeSeed<'de>>(
    mut map: A,
    shape: StructShape,
    seed: S,
) -> Result<(Span, S::Value), A::Error> {
    let start: usize = map.next_value()?;
    let mut end = start;
    let mut seed = Some(seed);
    let mut value = None;
    while let Some(key) = map.next_key::<String>()? {
        if key == shape.fields[1] {
            end = map.next_value()?;
        } else if key == shape.fields[2] {
            let seed = seed
                .take()
                .ok_or_else(|| de::Error::custom("spanned value given twice"))?;
            value = Some(map.next_value_seed(seed)?);
        } else {
            return Err(de::Error::custom(format!(
                "unexpected key {key} in a spanned value"
            )));
        }
    }
    match value {
        Some(v) => Ok((start..end, v)),
        None => Err(de::Error::custom("spanned value without a value")),
    }
}

// ---------------------------------------------------------------------------
// Keys.

struct Key {
    name: String,
    span: Option<Span>,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_maybe_spanned(d, KeyVisitor)
    }
}

struct KeyVisitor;

struct StringSeed;

impl<'de> DeserializeSeed<'de> for StringSeed {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        String::deserialize(d)
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_owned(),
            span: None,
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key, E> {
        Ok(Key {
            name: v,
            span: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let shape = spanned_shape().ok_or_else(|| de::Error::custom("expected a key"))?;
        match map.next_key::<String>()? {
            Some(k) if k == shape.fields[0] => {
                let (span, name) = read_spanned(map, shape, StringSeed)?;
                Ok(Key {
                    name,
                    span: Some(span),
                })
            }
            _ => Err(de::Error::custom("expected a key")),
        }
    }
}

// ---------------------------------------------------------------------------
// Values.

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_maybe_spanned(d, ItemVisitor)
    }
}

struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = Raw;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

/// Reads a table (or a date-time in disguise) whose first key may already be read.
fn visit_table<'de, A: MapAccess<'de>>(first: Option<Key>, mut map: A) -> Result<Raw, A::Error> {
    let mut entries = Vec::new();
    let mut next = first;
    if next.is_none() {
        next = map.next_key::<Key>()?;
    }
    if let Some(key) = &next {
        if key.name == datetime_field() {
            let text: String = map.next_value()?;
            return Ok(Raw::Datetime(text));
        }
    }
    while let Some(key) = next {
        let value: Item = map.next_value()?;
        entries.push(Entry {
            key: key.name,
            key_span: key.span,
            value,
        });
        next = map.next_key::<Key>()?;
    }
    Ok(Raw::Table(entries))
}

fn visit_array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Raw, A::Error> {
    let mut items = Vec::new();
    while let Some(item) = seq.next_element::<Item>()? {
        items.push(item);
    }
    Ok(Raw::Array(items))
}

/// Visits a value that is not wrapped in the spanned protocol.
struct RawVisitor;

macro_rules! scalar_visits {
    ($wrap:expr) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok($wrap(Raw::Bool(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok($wrap(Raw::Int(v)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(|v| $wrap(Raw::Int(v)))
                .map_err(|_| E::custom("integer out of range"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrap(Raw::Float(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok($wrap(Raw::Str(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok($wrap(Raw::Str(v)))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            visit_array(seq).map($wrap)
        }
    };
}

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    scalar_visits!(|r| r);

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Raw, A::Error> {
        visit_table(None, map)
    }
}

/// Visits a value that may come wrapped in the spanned protocol.
struct ItemVisitor;

fn unspanned(value: Raw) -> Item {
    Item { value, span: None }
}

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    scalar_visits!(unspanned);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let first = map.next_key::<Key>()?;
        if let (Some(shape), Some(key)) = (spanned_shape(), &first) {
            if key.name == shape.fields[0] {
                let (span, value) = read_spanned(map, shape, RawSeed)?;
                return Ok(Item {
                    value,
                    span: Some(span),
                });
            }
        }
        visit_table(first, map).map(unspanned)
    }
}
