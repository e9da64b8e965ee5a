//! Reading the reply of a synchronous webhook call.

use serde_json::{Map, Value};

use super::model::{Choice, MAX_WAIT_SECONDS};
use crate::nul::map_holds_nul;

/// Most buttons a reply's `choices` instruction may offer.
pub const MAX_REPLY_CHOICES: usize = 50;
/// Longest label or value of a reply's choice, in characters.
pub const MAX_REPLY_CHOICE_CHARS: usize = 200;

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
    /// Offer these buttons at the next CHOICE question instead of its own choices.
    Choices(Vec<Choice>),
    /// Pause this many seconds (1 to 60) before going on.
    Wait(u32),
    /// Send the visitor to this address (a template): a REDIRECT chat event.
    Redirect(String),
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
            "choices" => match field("choices").and_then(Value::as_array) {
                Some(items) => parse_choices(items),
                None => missing("choices", "an array"),
            },
            "wait" => match field("seconds").and_then(Value::as_u64) {
                Some(seconds @ 1..) if seconds <= u64::from(MAX_WAIT_SECONDS) => {
                    Instruction::Wait(u32::try_from(seconds).unwrap_or(MAX_WAIT_SECONDS))
                }
                _ => Instruction::Unknown(format!(
                    "\"wait\" needs whole \"seconds\" from 1 to {MAX_WAIT_SECONDS}"
                )),
            },
            "redirect" => match field("url").and_then(Value::as_str).map(str::trim) {
                Some(url) if is_web_address(url) => Instruction::Redirect(url.to_owned()),
                _ => Instruction::Unknown(
                    "\"redirect\" needs a \"url\" starting with https:// or http://".to_owned(),
                ),
            },
            _ => Instruction::Unknown(format!("unknown type \"{}\"", excerpt_str(kind))),
        }
    }
}

/// The buttons of a `choices` instruction, or `Unknown` saying what is wrong with them: each
/// needs a non-blank `label` (and may have a string `value`), both at most
/// [`MAX_REPLY_CHOICE_CHARS`] long, and there are 1 to [`MAX_REPLY_CHOICES`] of them.
fn parse_choices(items: &[Value]) -> Instruction {
    if items.is_empty() || items.len() > MAX_REPLY_CHOICES {
        return Instruction::Unknown(format!(
            "\"choices\" with {} choices (1 to {MAX_REPLY_CHOICES} allowed)",
            items.len()
        ));
    }
    let mut choices = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let label = item.get("label").and_then(Value::as_str).map(str::trim);
        let value = match item.get("value") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.trim().to_owned())),
            Some(_) => Err(()),
        };
        let (Some(label), Ok(value)) = (label, value) else {
            return Instruction::Unknown(format!(
                "\"choices\" item {i} needs a string \"label\" (and a string \"value\" if any)"
            ));
        };
        let too_long = |text: &str| text.chars().count() > MAX_REPLY_CHOICE_CHARS;
        if label.is_empty() || too_long(label) || value.as_deref().is_some_and(too_long) {
            return Instruction::Unknown(format!(
                "\"choices\" item {i} needs a label of 1 to {MAX_REPLY_CHOICE_CHARS} characters"
            ));
        }
        choices.push(Choice {
            label: label.to_owned(),
            value: value.filter(|v| !v.is_empty()),
            next: None,
        });
    }
    Instruction::Choices(choices)
}

fn is_web_address(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")) && url.len() > 8
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
            // Nothing of such a reply is used: a variable or a message holding NUL could not
            // be stored on PostgreSQL (see `crate::nul`).
            Ok(Value::Object(object)) if map_holds_nul(&object) => WebhookOutcome::Failed(
                "the response body contains the NUL character (U+0000)".to_owned(),
            ),
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
    fn a_body_holding_a_nul_anywhere_is_failed() {
        for body in [
            r#"{"name": "a\u0000b"}"#,
            r#"{"responses": [{"type": "text", "text": "\u0000"}]}"#,
            r#"{"deep": {"k\u0000": 1}}"#,
        ] {
            assert!(
                matches!(WebhookOutcome::from_body(body.as_bytes()), WebhookOutcome::Failed(reason) if reason.contains("NUL")),
                "{body}"
            );
        }
        assert_eq!(
            WebhookOutcome::from_body(br#"{"name": "a\\u0000b"}"#),
            WebhookOutcome::Variables(object(serde_json::json!({"name": "a\\u0000b"})))
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

    #[test]
    fn choices_wait_and_redirect_instructions_are_parsed() {
        assert_eq!(
            Instruction::from_json(&json!({"type": "choices", "choices": [
                {"label": " Small ", "value": "s"}, {"label": "Large"}
            ]})),
            Instruction::Choices(vec![
                Choice {
                    label: "Small".into(),
                    value: Some("s".into()),
                    next: None
                },
                Choice {
                    label: "Large".into(),
                    value: None,
                    next: None
                },
            ])
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "wait", "seconds": 3})),
            Instruction::Wait(3)
        );
        assert_eq!(
            Instruction::from_json(&json!({"type": "redirect", "url": "https://example.com/x"})),
            Instruction::Redirect("https://example.com/x".into())
        );
    }

    #[test]
    fn malformed_choices_wait_and_redirect_are_unknown() {
        let too_many: Vec<Value> = (0..=MAX_REPLY_CHOICES)
            .map(|i| json!({"label": format!("c{i}")}))
            .collect();
        for bad in [
            json!({"type": "choices", "choices": []}),
            json!({"type": "choices", "choices": too_many}),
            json!({"type": "choices", "choices": [{"label": "  "}]}),
            json!({"type": "choices", "choices": [{"value": "x"}]}),
            json!({"type": "choices", "choices": [{"label": "x", "value": 3}]}),
            json!({"type": "choices", "choices": [{"label": "x".repeat(201)}]}),
            json!({"type": "choices"}),
            json!({"type": "wait", "seconds": 0}),
            json!({"type": "wait", "seconds": 61}),
            json!({"type": "wait", "seconds": 1.5}),
            json!({"type": "wait"}),
            json!({"type": "redirect", "url": "javascript:alert(1)"}),
            json!({"type": "redirect"}),
        ] {
            assert!(
                matches!(Instruction::from_json(&bad), Instruction::Unknown(_)),
                "{bad}"
            );
        }
    }
}
