//! The NUL character (U+0000) in what comes in from outside. PostgreSQL's `text` and `jsonb`
//! refuse it while SQLite keeps it: taken in, it would fail a write as an internal error on one
//! database and be stored on the other. So every way in refuses it before anything is written:
//! GraphQL's variables and literals, a callback's body, a sync webhook's reply.
use serde_json::{Map, Value};

/// Whether `value` holds the NUL character in a string or a key.
pub fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map_holds_nul(map),
        _ => false,
    }
}

/// Whether a key or a value of `map` holds the NUL character (see [`holds_nul`]).
pub fn map_holds_nul(map: &Map<String, Value>) -> bool {
    map.iter()
        .any(|(name, value)| name.contains('\0') || holds_nul(value))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_nul_is_found_in_a_nested_string_or_key_and_nowhere_else() {
        assert!(holds_nul(&json!({"a": [1, {"b": "x\u{0}y"}]})));
        assert!(holds_nul(&json!({"a": {"k\u{0}": true}})));
        assert!(holds_nul(&json!("\u{0}")));
        assert!(!holds_nul(
            &json!({"a": [1, {"b": "x\\u0000y"}], "c": null})
        ));
        assert!(!holds_nul(&json!("\u{fffd}")));
    }
}
