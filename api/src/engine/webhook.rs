//! Reading the reply of a synchronous webhook call.

use serde_json::{Map, Value};

/// What a synchronous webhook call came back with.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookOutcome {
    /// A `{"responses": [..]}` reply: instructions run in order.
    Responses(Vec<Instruction>),
    /// Any other JSON object: every key becomes a context variable.
    Variables(Map<String, Value>),
    /// The call did not give a usable reply (the reason is for the logs).
    Failed(String),
}

/// One element of a sync reply's `responses` array.
#[derive(Debug, Clone, PartialEq)]
pub enum Instruction {
    /// Say this text (a template).
    Text(String),
    /// Merge these keys into the context variables.
    Set(Map<String, Value>),
    /// Continue at this block instead of the webhook block's `next`.
    Goto(String),
    /// End the conversation.
    End,
    /// Not understood; skipped. Holds a description for the notes.
    Unknown(String),
}

/// Longest excerpt of an unknown instruction kept in its description, so a
/// huge reply cannot bloat the notes.
const EXCERPT_LEN: usize = 80;

impl Instruction {
    /// Parses one element of a sync reply's `responses` array:
    /// `{"type":"text","text":..}`, `{"type":"set","variables":{..}}`,
    /// `{"type":"goto","blockId":..}` or `{"type":"end"}`; anything else
    /// (including a known type with a missing or mistyped field) is
    /// `Unknown` with a description. Type names are matched ignoring ASCII
    /// case.
    pub fn from_json(v: &Value) -> Instruction {
        let Some(object) = v.as_object() else {
            return Instruction::Unknown(format!("not an object: {}", excerpt(v)));
        };
        let Some(kind) = object.get("type").and_then(Value::as_str) else {
            return Instruction::Unknown(format!("no \"type\": {}", excerpt(v)));
        };
        let field = |name: &str| object.get(name);
        let missing = |name: &str, what: &str| {
            Instruction::Unknown(format!("\"{kind}\" without {what} \"{name}\""))
        };
        match kind.to_ascii_lowercase().as_str() {
            "text" => match field("text").and_then(Value::as_str) {
                Some(text) => Instruction::Text(text.to_owned()),
                None => missing("text", "a string"),
            },
            "set" => match field("variables").and_then(Value::as_object) {
                Some(variables) => Instruction::Set(variables.clone()),
                None => missing("variables", "an object"),
            },
            "goto" => match field("blockId").and_then(Value::as_str) {
                Some(block_id) => Instruction::Goto(block_id.to_owned()),
                None => missing("blockId", "a string"),
            },
            "end" => Instruction::End,
            _ => Instruction::Unknown(format!("unknown type \"{}\"", excerpt_str(kind))),
        }
    }
}

impl WebhookOutcome {
    /// Classifies a 2xx response body: a JSON object with a `responses`
    /// array is `Responses`; any other JSON object is `Variables`; anything
    /// else (empty, not JSON, not an object) is `Failed`.
    pub fn from_body(body: &[u8]) -> WebhookOutcome {
        if body.iter().all(u8::is_ascii_whitespace) {
            return WebhookOutcome::Failed("the response body is empty".to_owned());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(mut object)) => match object.remove("responses") {
                Some(Value::Array(items)) => {
                    WebhookOutcome::Responses(items.iter().map(Instruction::from_json).collect())
                }
                Some(other) => {
                    // Not an instruction list after all: keep it as a variable.
                    object.insert("responses".to_owned(), other);
                    WebhookOutcome::Variables(object)
                }
                None => WebhookOutcome::Variables(object),
            },
            Ok(other) => WebhookOutcome::Failed(format!(
                "the response body is not a JSON object: {}",
                excerpt(&other)
            )),
            Err(error) => {
                WebhookOutcome::Failed(format!("the response body is not valid JSON: {error}"))
            }
        }
    }
}

fn excerpt(value: &Value) -> String {
    excerpt_str(&value.to_string())
}

fn excerpt_str(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_LEN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn each_known_instruction_type_is_parsed() {
        assert_eq!(
            Instruction::from_json(&json!({"type": "text", "text": "Hi {{name}}"})),
            Instruction::Text("Hi {{name}}".into())
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "set", "variables": {"a": 1}})),
            Instruction::Set(object(json!({"a": 1})))
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "goto", "blockId": "b2"})),
            Instruction::Goto("b2".into())
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "end"})),
            Instruction::End
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "END"})),
            Instruction::End
        );
    }

    #[test]
    fn an_unknown_type_is_described() {
        assert_eq!(
            Instruction::from_json(&json!({"type": "carousel", "items": []})),
            Instruction::Unknown("unknown type \"carousel\"".into())
        );
    }

    #[test]
    fn a_known_type_with_a_missing_field_is_unknown() {
        assert_eq!(
            Instruction::from_json(&json!({"type": "text"})),
            Instruction::Unknown("\"text\" without a string \"text\"".into())
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "set", "variables": [1]})),
            Instruction::Unknown("\"set\" without an object \"variables\"".into())
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "goto", "blockId": 3})),
            Instruction::Unknown("\"goto\" without a string \"blockId\"".into())
        );
    }

    #[test]
    fn a_non_object_or_untyped_instruction_is_unknown() {
        assert_eq!(
            Instruction::from_json(&json!("text")),
            Instruction::Unknown("not an object: \"text\"".into())
        );
        assert_eq!(
            Instruction::from_json(&json!({"text": "hi"})),
            Instruction::Unknown("no \"type\": {\"text\":\"hi\"}".into())
        );
    }

    #[test]
    fn a_long_unknown_description_is_cut() {
        let long = "x".repeat(500);
        let Instruction::Unknown(description) = Instruction::from_json(&json!({"type": long}))
        else {
            panic!("a made-up type is unknown");
        };
        assert!(description.chars().count() < 120, "{description}");
    }

    #[test]
    fn a_body_with_a_responses_array_is_responses() {
        let body = br#"{"responses":[{"type":"text","text":"ok"},{"type":"end"}],"extra":1}"#;
        assert_eq!(
            WebhookOutcome::from_body(body),
            WebhookOutcome::Responses(vec![Instruction::Text("ok".into()), Instruction::End])
        );
    }

    #[test]
    fn any_other_object_body_is_variables() {
        assert_eq!(
            WebhookOutcome::from_body(br#"{"status":"paid","responses":"no"}"#),
            WebhookOutcome::Variables(object(json!({"status": "paid", "responses": "no"})))
        );
        assert_eq!(
            WebhookOutcome::from_body(b"{}"),
            WebhookOutcome::Variables(Map::new())
        );
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_failed() {
        for body in [&b""[..], b"  \n", b"[1,2]", b"42", b"not json", b"{\"a\":"] {
            assert!(
                matches!(WebhookOutcome::from_body(body), WebhookOutcome::Failed(_)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
