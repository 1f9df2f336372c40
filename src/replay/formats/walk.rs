//! The streaming reader for whole JSON documents (gitlab, sarif, json): walks any JSON
//! without holding it, finds every token in its strings (keys included) with the JSON
//! path as location, and hands the elements a format knows (`vulnerabilities[*]`,
//! `runs[*].results[*]`) to that format as parsed values.
//!
//! Invariants:
//! - Memory is one known element (as a `serde_json::Value`), one string and the path,
//!   whatever the document's size.
//! - Every token in a decoded string is an occurrence: inside a known element, the
//!   format's fields first, then [`sweep_json`] for the rest; elsewhere, at
//!   `origin:path` with source `json`.
//! - Invalid JSON hands the rest to the text scan, as [`super::json_array`] does.

use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::json_array::{read_json, Taken};
use super::{tokens_in, Emitter, FormatError, Found};

/// What a JSON-document format knows of its document.
pub(super) trait Document {
    /// What the document should look like, for messages.
    const EXPECTED: &'static str;
    /// Whether the element at `path` (`.runs[0].results[3]`) is one this format reads.
    fn is_item(path: &str) -> bool;
    /// Appends the occurrences of a known element; `false` if it is not in the
    /// format's shape (it is then named as unstructured).
    fn occurrences(item: &Value, origin: &str, out: &mut Vec<Found>) -> bool;
}

/// Reads a whole JSON document of format `D`.
pub(super) fn read<R: Read, D: Document>(
    reader: R,
    origin: &str,
    out: &mut Emitter<'_>,
) -> Result<(), FormatError> {
    read_json(
        reader,
        origin,
        out,
        D::EXPECTED,
        |de, out, taken, stopped| {
            let mut walk = Walk::<D> {
                origin,
                path: String::new(),
                out,
                taken,
                stopped,
                format: std::marker::PhantomData,
            };
            de::Deserializer::deserialize_any(de, &mut walk)
        },
    )
}

struct Walk<'a, 's, D> {
    origin: &'a str,
    path: String,
    out: &'a mut Emitter<'s>,
    taken: Rc<RefCell<Taken>>,
    stopped: &'a mut Option<FormatError>,
    format: std::marker::PhantomData<D>,
}

impl<D: Document> Walk<'_, '_, D> {
    /// A sink refusal kept aside (serde only carries its own error type).
    fn stop<E: de::Error>(&mut self, emitted: Result<(), FormatError>) -> Result<(), E> {
        emitted.map_err(|e| {
            *self.stopped = Some(e);
            E::custom("stopped by the sink")
        })
    }

    fn string<E: de::Error>(&mut self, s: &str) -> Result<(), E> {
        let batch: Vec<Found> = tokens_in(s)
            .map(|token| Found {
                token_type: super::type_of(&token),
                token,
                url: format!("{}:{}", self.origin, self.path),
                source: "json".to_owned(),
            })
            .collect();
        self.taken.borrow_mut().element_done();
        let emitted = self.out.emit_all(batch);
        self.stop(emitted)
    }

    fn item<E: de::Error>(&mut self, value: Value) -> Result<(), E> {
        self.taken.borrow_mut().element_done();
        let place = format!("{}:{}", self.origin, self.path);
        let origin = self.origin;
        let emitted = self.out.element(&value, &place, |batch| {
            D::occurrences(&value, origin, batch)
        });
        self.stop(emitted)
    }
}

impl<'de, D: Document> Visitor<'de> for &mut Walk<'_, '_, D> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(D::EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.string(s)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.taken.borrow_mut().element_done();
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.taken.borrow_mut().element_done();
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.taken.borrow_mut().element_done();
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.taken.borrow_mut().element_done();
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.taken.borrow_mut().element_done();
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let len = self.path.len();
            self.path.push_str(&format!("[{i}]"));
            let more = if D::is_item(&self.path) {
                match seq.next_element::<Value>()? {
                    Some(value) => {
                        self.item(value)?;
                        true
                    }
                    None => false,
                }
            } else {
                seq.next_element_seed(&mut *self)?.is_some()
            };
            // Also after containers: `[[],[],…]` must not pile up in `Taken`.
            self.taken.borrow_mut().element_done();
            self.path.truncate(len);
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let len = self.path.len();
            super::push_key(&mut self.path, &key);
            self.string(&key)?;
            if D::is_item(&self.path) {
                let value = map.next_value::<Value>()?;
                self.item(value)?;
            } else {
                map.next_value_seed(&mut *self)?;
            }
            self.taken.borrow_mut().element_done();
            self.path.truncate(len);
        }
        Ok(())
    }
}

impl<'de, D: Document> DeserializeSeed<'de> for &mut Walk<'_, '_, D> {
    type Value = ();

    fn deserialize<T: de::Deserializer<'de>>(self, de: T) -> Result<(), T::Error> {
        de.deserialize_any(self)
    }
}

/// Any JSON document: no element is known; every token is found by its path.
pub(super) struct AnyJson;

impl Document for AnyJson {
    const EXPECTED: &'static str = "JSON";

    fn is_item(_: &str) -> bool {
        false
    }

    fn occurrences(_: &Value, _: &str, _: &mut Vec<Found>) -> bool {
        true
    }
}
