//! The flow model as it is stored (as JSON) for each published flow version.

use serde::{Deserialize, Serialize};

/// A whole conversation flow: a set of blocks and the block to start from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// The block a conversation starts at; absent in an empty draft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_block_id: Option<String>,
    /// The blocks, in the order the editor keeps them.
    #[serde(default)]
    pub blocks: Vec<Block>,
}

/// One step of a flow. Which fields matter depends on `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Block {
    /// Unique id within the flow.
    pub id: String,
    /// What the block does.
    pub kind: BlockKind,
    /// What the bot says (MESSAGE, QUESTION); a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// How a QUESTION's answer is checked; absent means TEXT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_type: Option<QuestionType>,
    /// Name under which a QUESTION's answer is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_answer_to: Option<String>,
    /// The options of a CHOICE question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Choice>>,
    /// The account webhook a WEBHOOK block calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    /// Whether a WEBHOOK block is fire-and-forget; absent means `true`.
    #[serde(rename = "async", default, skip_serializing_if = "Option::is_none")]
    pub is_async: Option<bool>,
    /// The highest mark of a RATING question (2 to 10); absent means 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating_max: Option<u32>,
    /// Further checks of a QUESTION's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Invalid answers a QUESTION takes before the flow moves to `on_max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Where a QUESTION goes after `max_attempts` invalid answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_max_attempts: Option<String>,
    /// The variable a SET_VARIABLE block sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// What a SET_VARIABLE block sets: a template, stored as JSON when it reads as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The weighted ways out of a SPLIT block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<Branch>>,
    /// Where a REDIRECT block sends the visitor: a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How long a WAIT block pauses, in seconds (1 to 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    /// How long a CALLBACK block waits for the customer's system, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Where a CALLBACK block goes when no callback came in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
    /// The tests of a CONDITION block, tried in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// The block that follows; absent ends the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl Block {
    /// A block of the given kind with every optional field absent.
    pub fn new(id: impl Into<String>, kind: BlockKind) -> Self {
        Self {
            id: id.into(),
            kind,
            text: None,
            question_type: None,
            save_answer_to: None,
            choices: None,
            webhook_id: None,
            is_async: None,
            rating_max: None,
            validation: None,
            max_attempts: None,
            on_max_attempts: None,
            variable: None,
            value: None,
            branches: None,
            url: None,
            seconds: None,
            timeout_seconds: None,
            on_timeout: None,
            conditions: None,
            next: None,
        }
    }

    /// The options a visitor picks from: the block's choices for CHOICE and MULTI_CHOICE,
    /// the marks of a RATING, Yes and No for YES_NO; `None` for typed answers.
    pub fn offered_choices(&self) -> Option<Vec<Choice>> {
        let plain = |label: String| Choice {
            label,
            value: None,
            next: None,
        };
        match self.question_type.unwrap_or(QuestionType::Text) {
            QuestionType::Choice | QuestionType::MultiChoice => {
                Some(self.choices.clone().unwrap_or_default())
            }
            QuestionType::Rating => Some(
                (1..=self.rating_max.unwrap_or(DEFAULT_RATING_MAX))
                    .map(|n| plain(n.to_string()))
                    .collect(),
            ),
            QuestionType::YesNo => Some(vec![plain("Yes".into()), plain("No".into())]),
            _ => None,
        }
    }

    /// Every block id the engine can move to from this block, whether or
    /// not it exists: choice nexts (CHOICE questions), condition nexts
    /// (CONDITION blocks), then `next` (any kind but END). Fields the kind
    /// does not use are left out because the engine never follows them; a
    /// webhook reply's goto cannot be known here.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        let is_choice_question =
            self.kind == BlockKind::Question && self.question_type == Some(QuestionType::Choice);
        let choice_targets = self
            .choices
            .iter()
            .flatten()
            .filter(move |_| is_choice_question)
            .filter_map(|choice| choice.next.as_deref());
        let condition_targets = self
            .conditions
            .iter()
            .flatten()
            .filter(|_| self.kind == BlockKind::Condition)
            .map(|condition| condition.next.as_str());
        let branch_targets = self
            .branches
            .iter()
            .flatten()
            .filter(|_| self.kind == BlockKind::Split)
            .map(|branch| branch.next.as_str());
        let on_timeout = self
            .on_timeout
            .as_deref()
            .filter(|_| self.kind == BlockKind::Callback);
        let on_max = self
            .on_max_attempts
            .as_deref()
            .filter(|_| self.kind == BlockKind::Question && self.max_attempts.is_some());
        let next = self
            .next
            .as_deref()
            .filter(|_| !matches!(self.kind, BlockKind::End | BlockKind::Split));
        choice_targets
            .chain(condition_targets)
            .chain(branch_targets)
            .chain(on_max)
            .chain(on_timeout)
            .chain(next)
    }
}

/// The highest mark of a RATING question without `ratingMax`.
pub const DEFAULT_RATING_MAX: u32 = 5;

/// Further checks of a QUESTION's answer, after its type's own.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// Fewest characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u32>,
    /// Most characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// Smallest value of a NUMBER or RATING answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Number>,
    /// Largest value of a NUMBER or RATING answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Number>,
    /// A regular expression the whole answer must match (the `regex` crate's syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// What the visitor is told instead of the default invalid-answer text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One way out of a SPLIT block, taken by about `weight` in the sum of weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Branch {
    /// The share of conversations sent this way, relative to the other branches.
    pub weight: u32,
    /// Where they go.
    pub next: String,
}

/// One option of a CHOICE question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Choice {
    /// What the visitor sees (and may type).
    pub label: String,
    /// What is stored when picked; absent means the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Where the flow goes when picked; absent means the block's `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One test of a CONDITION block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The context variable tested; dotted paths read into objects.
    pub variable: String,
    /// How the variable is compared.
    pub operator: ConditionOperator,
    /// What the variable is compared with (unused by IS_SET / IS_NOT_SET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Further tests that must all hold too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Rule>>,
    /// Further tests of which at least one must hold too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Rule>>,
    /// Where the flow goes when this condition holds.
    pub next: String,
}

impl Condition {
    /// A single test with no groups.
    pub fn test(
        variable: impl Into<String>,
        operator: ConditionOperator,
        value: Option<&str>,
        next: impl Into<String>,
    ) -> Self {
        Self {
            variable: variable.into(),
            operator,
            value: value.map(str::to_owned),
            all: None,
            any: None,
            next: next.into(),
        }
    }

    /// Every rule nested in this condition's groups, at any depth, with its depth (1 for a
    /// rule of the condition's own `all`/`any`).
    pub fn nested_rules(&self) -> Vec<(&Rule, usize)> {
        let mut found = Vec::new();
        let mut stack: Vec<(&Rule, usize)> = groups(self.all.as_deref(), self.any.as_deref())
            .map(|rule| (rule, 1))
            .collect();
        while let Some((rule, depth)) = stack.pop() {
            found.push((rule, depth));
            stack.extend(
                groups(rule.all.as_deref(), rule.any.as_deref()).map(|inner| (inner, depth + 1)),
            );
        }
        found
    }
}

fn groups<'a>(all: Option<&'a [Rule]>, any: Option<&'a [Rule]>) -> impl Iterator<Item = &'a Rule> {
    all.into_iter().flatten().chain(any.into_iter().flatten())
}

/// One test inside a condition's `all` or `any` group: a comparison (`variable`, `operator`,
/// `value`), a nested group (`all`, `any`), or both, which must then all hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The context variable tested; dotted paths read into objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// How the variable is compared; absent for a pure group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<ConditionOperator>,
    /// What the variable is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Tests that must all hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Rule>>,
    /// Tests of which at least one must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Rule>>,
}

/// How deep `all`/`any` groups may nest (a condition's own groups are depth 1).
pub const MAX_RULE_DEPTH: usize = 5;

/// What a block does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BlockKind {
    /// The bot says something and goes on.
    Message,
    /// The bot asks something and waits for the answer.
    Question,
    /// The bot calls an account webhook.
    Webhook,
    /// The flow branches on context variables.
    Condition,
    /// The conversation ends.
    End,
    /// Sets a context variable.
    SetVariable,
    /// Sends each conversation down one of weighted branches (A/B tests).
    Split,
    /// Sends the visitor to a web address.
    Redirect,
    /// Pauses for `seconds` before going on (the runtime schedules the rest).
    Wait,
    /// Waits until the customer's system posts to a one-time callback URL, or
    /// `timeoutSeconds` pass (then goes to `onTimeout`).
    Callback,
}

/// The longest a CALLBACK block may wait, in seconds (a day).
pub const MAX_CALLBACK_TIMEOUT_SECONDS: u32 = 86_400;

/// The longest pause of a WAIT block or a webhook's `wait` instruction, in seconds.
pub const MAX_WAIT_SECONDS: u32 = 60;

/// How a question's answer is checked and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QuestionType {
    /// Any non-blank text.
    Text,
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A number, stored as a JSON number.
    Number,
    /// One of the block's choices.
    Choice,
    /// A date, in ISO form or a common written one; stored as `YYYY-MM-DD`.
    Date,
    /// An http or https address.
    Url,
    /// A mark from 1 to `ratingMax`, stored as a number.
    Rating,
    /// Several of the block's choices, stored as an array of values.
    MultiChoice,
    /// Yes or no, stored as `true` or `false`.
    YesNo,
}

/// How a condition compares its variable with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConditionOperator {
    /// Numerically equal, else equal as trimmed case-insensitive text.
    Equals,
    /// The negation of `Equals` (true for a missing variable).
    NotEquals,
    /// Case-insensitive substring; for an array, any element equals.
    Contains,
    /// Numerically greater; false unless both sides are numbers.
    GreaterThan,
    /// Numerically less; false unless both sides are numbers.
    LessThan,
    /// Present, not null and not the empty string.
    IsSet,
    /// The negation of `IsSet`.
    IsNotSet,
    /// Missing, null, blank text, an empty array or an empty object.
    IsEmpty,
    /// Its text matches the regular expression in `value` (anywhere; anchor with `^…$`).
    Matches,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_from_camel_case_json_with_missing_options() {
        let json = r#"{"id":"w","kind":"WEBHOOK","webhookId":"h1","async":false,"next":"e"}"#;
        let block: Block = serde_json::from_str(json).expect("the JSON above is a valid block");
        assert_eq!(block.kind, BlockKind::Webhook);
        assert_eq!(block.webhook_id.as_deref(), Some("h1"));
        assert_eq!(block.is_async, Some(false));
        assert_eq!(block.text, None);
        assert_eq!(block.next.as_deref(), Some("e"));
    }

    #[test]
    fn a_flow_round_trips_through_json_without_null_fields() {
        let flow = Flow {
            start_block_id: Some("q".into()),
            blocks: vec![Block {
                question_type: Some(QuestionType::Choice),
                save_answer_to: Some("plan".into()),
                choices: Some(vec![Choice {
                    label: "Pro".into(),
                    value: Some("pro".into()),
                    next: None,
                }]),
                ..Block::new("q", BlockKind::Question)
            }],
        };
        let json = serde_json::to_string(&flow).expect("a flow always serializes");
        assert!(json.contains(r#""startBlockId":"q""#));
        assert!(json.contains(r#""questionType":"CHOICE""#));
        assert!(json.contains(r#""saveAnswerTo":"plan""#));
        assert!(!json.contains("null"));
        let back: Flow = serde_json::from_str(&json).expect("what was written reads back");
        assert_eq!(back, flow);
    }

    #[test]
    fn an_empty_object_is_an_empty_flow() {
        let flow: Flow = serde_json::from_str("{}").expect("every field of a flow has a default");
        assert_eq!(flow, Flow::default());
    }

    #[test]
    fn operators_use_screaming_snake_case() {
        let op: ConditionOperator =
            serde_json::from_str(r#""IS_NOT_SET""#).expect("IS_NOT_SET is an operator");
        assert_eq!(op, ConditionOperator::IsNotSet);
        let json = serde_json::to_string(&ConditionOperator::GreaterThan)
            .expect("an operator always serializes");
        assert_eq!(json, r#""GREATER_THAN""#);
    }

    fn block_with_every_target(kind: BlockKind, question_type: Option<QuestionType>) -> Block {
        Block {
            question_type,
            choices: Some(vec![
                Choice {
                    label: "a".into(),
                    value: None,
                    next: Some("x".into()),
                },
                Choice {
                    label: "b".into(),
                    value: None,
                    next: None,
                },
            ]),
            conditions: Some(vec![Condition::test(
                "v",
                ConditionOperator::IsSet,
                None,
                "y",
            )]),
            next: Some("z".into()),
            ..Block::new("b", kind)
        }
    }

    #[test]
    fn targets_are_the_ids_the_engine_can_follow_for_the_kind() {
        let cases = [
            (
                BlockKind::Question,
                Some(QuestionType::Choice),
                vec!["x", "z"],
            ),
            (BlockKind::Question, Some(QuestionType::Text), vec!["z"]),
            (BlockKind::Question, None, vec!["z"]),
            (BlockKind::Condition, None, vec!["y", "z"]),
            (BlockKind::Message, Some(QuestionType::Choice), vec!["z"]),
            (BlockKind::Webhook, None, vec!["z"]),
            (BlockKind::End, None, vec![]),
        ];
        for (kind, question_type, expected) in cases {
            let block = block_with_every_target(kind, question_type);
            assert_eq!(block.targets().collect::<Vec<_>>(), expected, "{kind:?}");
        }
    }
}
