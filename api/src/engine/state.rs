//! The persisted state of one conversation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::Choice;

/// Where a conversation is and what it has collected; stored as JSON
/// between steps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// What the conversation waits for.
    pub position: Position,
    /// Validated answers, by `saveAnswerTo` name.
    #[serde(default)]
    pub answers: Map<String, Value>,
    /// The context for templates and conditions: prefilled values, answers
    /// and whatever webhooks set.
    #[serde(default)]
    pub variables: Map<String, Value>,
    /// Invalid answers to the pending question so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Drawn once by the runtime; SPLIT blocks derive their draws from it, so the engine stays
    /// deterministic.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seed: u64,
    /// The branch each SPLIT block drew, by block id: a conversation that passes a split
    /// again goes the same way.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub splits: std::collections::BTreeMap<String, usize>,
    /// Buttons a sync webhook reply offered (`choices`) for the next CHOICE question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_choices: Option<Vec<Choice>>,
    /// The buttons the pending CHOICE question offers instead of its own (from
    /// `next_choices`), until it is answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Choice>>,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// What a conversation waits for. Serialized as
/// `{"type": "awaitingAnswer", "blockId": ".."}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Position {
    /// Waiting for `Input::Start`.
    NotStarted,
    /// Waiting for the visitor's answer to this QUESTION block.
    AwaitingAnswer {
        /// The question asked.
        block_id: String,
    },
    /// Waiting for the result of this sync WEBHOOK block's call.
    AwaitingWebhook {
        /// The webhook block being run.
        block_id: String,
    },
    /// Pausing (a WAIT block, or a webhook reply's `wait`) for `seconds`; the runtime
    /// steps again with `Input::Resume` when they are over.
    Waiting {
        /// The block that paused.
        block_id: String,
        /// How long the pause lasts, from the step that began it.
        seconds: u32,
        /// Where the flow goes on; `None` ends it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Waiting for the customer's system to post to this CALLBACK block's one-time URL; the
    /// runtime steps with `Input::Resume` after `timeout_seconds` (the timeout).
    AwaitingCallback {
        /// The CALLBACK block.
        block_id: String,
        /// How long it waits, from the step that reached it.
        timeout_seconds: u32,
    },
    /// Finished; every further input is refused.
    Ended,
}

/// The variable under which the values a visitor prefilled are kept (`{{visitor.name}}`), so
/// that they can never pose as answers or as what a webhook returned.
pub const VISITOR_VARIABLE: &str = "visitor";

impl State {
    /// A conversation that has not started, with the visitor's prefilled values under
    /// [`VISITOR_VARIABLE`] and nothing else, and `seed` for its SPLIT draws.
    pub fn for_visitor(prefilled: Map<String, Value>, seed: u64) -> Self {
        let mut variables = Map::new();
        variables.insert(VISITOR_VARIABLE.to_owned(), Value::Object(prefilled));
        Self {
            seed,
            ..Self::new(variables)
        }
    }

    /// A conversation that has not started, with `prefilled` as its first
    /// context variables.
    pub fn new(prefilled: Map<String, Value>) -> Self {
        Self {
            position: Position::NotStarted,
            answers: Map::new(),
            variables: prefilled,
            attempts: 0,
            seed: 0,
            splits: std::collections::BTreeMap::new(),
            next_choices: None,
            choices: None,
        }
    }

    /// Whether the conversation is over.
    pub fn is_ended(&self) -> bool {
        self.position == Position::Ended
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new(Map::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_visitors_values_live_under_their_own_name_only() {
        let mut prefilled = Map::new();
        prefilled.insert("crm_id".into(), json!("forged"));
        let state = State::for_visitor(prefilled, 7);
        assert!(state.variables.get("crm_id").is_none());
        assert_eq!(state.variables[VISITOR_VARIABLE]["crm_id"], "forged");
    }

    #[test]
    fn a_new_state_has_not_started_and_keeps_the_prefilled_variables() {
        let mut prefilled = Map::new();
        prefilled.insert("name".into(), json!("Ada"));
        let state = State::new(prefilled.clone());
        assert_eq!(state.position, Position::NotStarted);
        assert_eq!(state.variables, prefilled);
        assert!(state.answers.is_empty());
        assert!(!state.is_ended());
    }

    #[test]
    fn the_state_serializes_with_a_tagged_camel_case_position() {
        let state = State {
            position: Position::AwaitingAnswer {
                block_id: "q1".into(),
            },
            ..State::default()
        };
        let json = serde_json::to_value(&state).expect("a state always serializes");
        assert_eq!(
            json,
            json!({
                "position": {"type": "awaitingAnswer", "blockId": "q1"},
                "answers": {},
                "variables": {}
            })
        );
        let back: State = serde_json::from_value(json).expect("what was written reads back");
        assert_eq!(back, state);
        let ended: Position =
            serde_json::from_value(json!({"type": "ended"})).expect("ended is a position");
        assert_eq!(ended, Position::Ended);
    }
}
