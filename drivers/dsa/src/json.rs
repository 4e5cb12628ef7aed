//! JSON for accel-config files: `serde_json` (no_std, `alloc`) reads the text into a
//! [`Value`] tree that keeps the key order of every object, so the accel-config reader can
//! report fields by name in the order they were written.
//!
//! On top of RFC 8259 the tree enforces what the configuration needs: numbers are integers
//! that fit an `i64`, a key appears at most once per object (serde_json's own maps keep the
//! last one silently), and nesting is at most [`MAX_DEPTH`] levels (an accel-config file
//! has four).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 32;

/// A JSON value as accel-config files use them: numbers are integers only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits `i64` (fractions and exponents are refused).
    Int(i64),
    /// A string, escapes decoded.
    Str(String),
    /// An array, in order.
    Array(Vec<Value>),
    /// An object's members in file order (duplicate keys kept).
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The kind of value with its article, for error messages ("a string").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Str(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Why the text is not acceptable JSON: where (1-based line and column, as serde_json
/// counts them) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong there.
    pub what: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.what
        )
    }
}

impl core::error::Error for SyntaxError {}

/// Parses one JSON value (surrounding whitespace allowed, nothing else after it).
pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = ValueSeed { depth: 0 }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| SyntaxError {
            line: e.line(),
            column: e.column(),
            // serde_json appends " at line L column C"; the position has its own fields.
            what: strip_position(&e.to_string()),
        })?;
    Ok(v)
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Builds a [`Value`] at nesting level `depth`.
struct ValueSeed {
    depth: usize,
}

impl ValueSeed {
    /// The seed for the elements of an array or object at this level.
    fn nested<E: de::Error>(&self) -> Result<ValueSeed, E> {
        // The outermost value is level 0: at most MAX_DEPTH levels of containers inside it.
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(ValueSeed {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        i64::try_from(n)
            .map(Value::Int)
            .map_err(|_| E::custom("a number that fits 64 bits"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Err(E::custom("numbers must be integers"))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_string()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.nested()?)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields: Vec<(String, Value)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            if fields.iter().any(|(x, _)| *x == k) {
                return Err(de::Error::custom(format!("duplicate key \"{k}\"")));
            }
            let v = map.next_value_seed(self.nested()?)?;
            fields.push((k, v));
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_values_in_key_order() {
        let v = parse(
            r#" [ {"b": -1, "a": "x\u00e9\n\ud83d\ude00", "c": [true, false, null], "d": {}} ] "#,
        )
        .unwrap();
        let Value::Array(items) = v else {
            panic!("not an array")
        };
        let Value::Object(f) = &items[0] else {
            panic!("not an object")
        };
        assert_eq!(f[0], ("b".into(), Value::Int(-1)));
        assert_eq!(f[1], ("a".into(), Value::Str("x\u{e9}\n\u{1f600}".into())));
        assert_eq!(
            f[2].1,
            Value::Array(vec![Value::Bool(true), Value::Bool(false), Value::Null])
        );
        assert_eq!(f[3].1, Value::Object(vec![]));
        assert_eq!(parse("9223372036854775807"), Ok(Value::Int(i64::MAX)));
        assert_eq!(parse("-9223372036854775808"), Ok(Value::Int(i64::MIN)));
    }

    #[test]
    fn rejects_bad_syntax_with_the_position() {
        for (s, col, what) in [
            ("[1,]", 4, "trailing comma"),
            ("{\"a\" 1}", 6, "expected `:`"),
            ("[1.5]", 4, "numbers must be integers"),
            ("[1e3]", 4, "numbers must be integers"),
            ("[01]", 3, "invalid number"),
            ("\"abc", 4, "EOF while parsing a string"),
            ("[1] x", 5, "trailing characters"),
            ("[9223372036854775808]", 20, "a number that fits 64 bits"),
            ("[\"\\ud800\"]", 9, "escape"),
            ("{\"a\":1,\"b\":2,\"a\":3}", 16, "duplicate key \"a\""),
        ] {
            let e = parse(s).unwrap_err();
            assert_eq!((e.line, e.column), (1, col), "{s}: {e}");
            assert!(e.what.contains(what), "{s}: {e}");
        }
        let e = parse("[\n  1,\n  x]").unwrap_err();
        assert_eq!((e.line, e.column), (3, 3), "{e}");
        assert_eq!(parse("").unwrap_err().what, "EOF while parsing a value");
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = "[".repeat(MAX_DEPTH) + "1" + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(
            parse(&deep)
                .unwrap_err()
                .what
                .contains("nesting deeper than 32"),
            "{:?}",
            parse(&deep)
        );
        // Far deeper than serde_json's own recursion limit: still a clean error.
        let very = "{\"a\":".repeat(100_000);
        assert!(parse(&very).is_err());
    }
}
