//! The GraphQL mirror of the engine's flow model: output types (`Flow`, `Block`, …), the
//! matching inputs, and the conversions both ways.
use async_graphql::{Enum, ID, InputObject, SimpleObject};

use crate::engine::model;

/// What a block does.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "BlockKind", remote = "model::BlockKind")]
pub enum BlockKindGql {
    Message,
    Question,
    Webhook,
    Condition,
    End,
    SetVariable,
    Split,
    Redirect,
    Wait,
    Callback,
}

/// How a question's answer is checked.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "QuestionType", remote = "model::QuestionType")]
pub enum QuestionTypeGql {
    Text,
    Email,
    Phone,
    Number,
    Choice,
    Date,
    Url,
    Rating,
    MultiChoice,
    YesNo,
}

/// How a condition compares a variable.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "ConditionOperator", remote = "model::ConditionOperator")]
pub enum ConditionOperatorGql {
    Equals,
    NotEquals,
    Contains,
    GreaterThan,
    LessThan,
    IsSet,
    IsNotSet,
    IsEmpty,
    Matches,
}

/// A flow: blocks and where to start.
#[derive(SimpleObject)]
#[graphql(name = "Flow")]
pub struct FlowOut {
    start_block_id: Option<String>,
    blocks: Vec<BlockOut>,
}

/// One block of a flow.
#[derive(SimpleObject)]
#[graphql(name = "Block")]
pub struct BlockOut {
    id: String,
    kind: BlockKindGql,
    text: Option<String>,
    question_type: Option<QuestionTypeGql>,
    save_answer_to: Option<String>,
    choices: Option<Vec<ChoiceOut>>,
    webhook_id: Option<ID>,
    #[graphql(name = "async")]
    is_async: Option<bool>,
    /// The highest mark of a RATING question (default 5).
    rating_max: Option<i32>,
    /// Further checks of a QUESTION's answer.
    validation: Option<ValidationOut>,
    /// Invalid answers a QUESTION takes before the flow goes to `onMaxAttempts`.
    max_attempts: Option<i32>,
    on_max_attempts: Option<String>,
    /// The variable a SET_VARIABLE block sets.
    variable: Option<String>,
    /// What it sets: a template, stored as JSON when it reads as JSON.
    value: Option<String>,
    /// The weighted ways out of a SPLIT block.
    branches: Option<Vec<BranchOut>>,
    /// Where a REDIRECT block sends the visitor (a template).
    url: Option<String>,
    /// How long a WAIT block pauses (1 to 60 seconds).
    seconds: Option<i32>,
    /// How long a CALLBACK block waits for the customer's system (1 to 86,400 seconds).
    timeout_seconds: Option<i32>,
    /// Where a CALLBACK block goes when nothing came in time.
    on_timeout: Option<String>,
    conditions: Option<Vec<ConditionOut>>,
    next: Option<String>,
}

/// One way out of a SPLIT block.
#[derive(SimpleObject, InputObject, Clone)]
#[graphql(name = "Branch", input_name = "BranchInput")]
pub struct BranchOut {
    /// The share of conversations sent this way, relative to the other branches.
    weight: i32,
    next: String,
}

/// Further checks of a QUESTION's answer, after its type's own.
#[derive(SimpleObject, InputObject, Clone, Default)]
#[graphql(name = "Validation", input_name = "ValidationInput")]
pub struct ValidationOut {
    /// Fewest characters.
    min_length: Option<i32>,
    /// Most characters.
    max_length: Option<i32>,
    /// Smallest value (NUMBER, RATING).
    min: Option<f64>,
    /// Largest value (NUMBER, RATING).
    max: Option<f64>,
    /// A regular expression the answer must match (anchor with `^…$` for the whole answer).
    pattern: Option<String>,
    /// What the visitor is told when the answer is refused.
    message: Option<String>,
}

impl From<model::Validation> for ValidationOut {
    fn from(v: model::Validation) -> Self {
        let count = |n: Option<u32>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        Self {
            min_length: count(v.min_length),
            max_length: count(v.max_length),
            min: v.min.and_then(|n| n.as_f64()),
            max: v.max.and_then(|n| n.as_f64()),
            pattern: v.pattern,
            message: v.message,
        }
    }
}

/// A count from the API: negative counts are kept as 0 so that validation can name them.
fn count_in(n: Option<i32>) -> Option<u32> {
    n.map(|n| u32::try_from(n).unwrap_or(0))
}

/// A JSON number from a GraphQL float: integral values stay integers.
fn number_in(x: Option<f64>) -> Option<serde_json::Number> {
    let x = x?;
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        return Some(serde_json::Number::from(x as i64));
    }
    serde_json::Number::from_f64(x)
}

impl From<ValidationOut> for model::Validation {
    fn from(v: ValidationOut) -> Self {
        Self {
            min_length: count_in(v.min_length),
            max_length: count_in(v.max_length),
            min: number_in(v.min),
            max: number_in(v.max),
            pattern: v.pattern,
            message: v.message,
        }
    }
}

/// One option of a CHOICE question.
#[derive(SimpleObject, Clone)]
#[graphql(name = "Choice")]
pub struct ChoiceOut {
    pub label: String,
    pub value: Option<String>,
    pub next: Option<String>,
}

/// One test of a CONDITION block.
#[derive(SimpleObject)]
#[graphql(name = "Condition")]
pub struct ConditionOut {
    variable: String,
    operator: ConditionOperatorGql,
    value: Option<String>,
    /// Further tests that must all hold too.
    all: Option<Vec<ConditionRule>>,
    /// Further tests of which at least one must hold too.
    any: Option<Vec<ConditionRule>>,
    next: String,
}

/// A test inside a condition's `all` or `any` group: a comparison (`variable`, `operator`,
/// `value`), a nested group (`all`, `any`, at most 5 levels deep), or both (then all must
/// hold).
#[derive(SimpleObject, InputObject, Clone)]
#[graphql(name = "ConditionRule", input_name = "ConditionRuleInput")]
pub struct ConditionRule {
    variable: Option<String>,
    operator: Option<ConditionOperatorGql>,
    value: Option<String>,
    all: Option<Vec<ConditionRule>>,
    any: Option<Vec<ConditionRule>>,
}

impl From<model::Rule> for ConditionRule {
    fn from(r: model::Rule) -> Self {
        Self {
            variable: r.variable,
            operator: r.operator.map(Into::into),
            value: r.value,
            all: rules_out(r.all),
            any: rules_out(r.any),
        }
    }
}

impl From<ConditionRule> for model::Rule {
    fn from(r: ConditionRule) -> Self {
        Self {
            variable: r.variable,
            operator: r.operator.map(Into::into),
            value: r.value,
            all: rules_in(r.all),
            any: rules_in(r.any),
        }
    }
}

fn rules_out(rules: Option<Vec<model::Rule>>) -> Option<Vec<ConditionRule>> {
    rules.map(|rs| rs.into_iter().map(Into::into).collect())
}

fn rules_in(rules: Option<Vec<ConditionRule>>) -> Option<Vec<model::Rule>> {
    rules.map(|rs| rs.into_iter().map(Into::into).collect())
}

impl From<model::Choice> for ChoiceOut {
    fn from(c: model::Choice) -> Self {
        Self {
            label: c.label,
            value: c.value,
            next: c.next,
        }
    }
}

impl From<model::Flow> for FlowOut {
    fn from(f: model::Flow) -> Self {
        Self {
            start_block_id: f.start_block_id,
            blocks: f
                .blocks
                .into_iter()
                .map(|b| BlockOut {
                    id: b.id,
                    kind: b.kind.into(),
                    text: b.text,
                    question_type: b.question_type.map(Into::into),
                    save_answer_to: b.save_answer_to,
                    choices: b.choices.map(|cs| cs.into_iter().map(Into::into).collect()),
                    webhook_id: b.webhook_id.map(ID),
                    is_async: b.is_async,
                    rating_max: b.rating_max.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
                    validation: b.validation.map(Into::into),
                    max_attempts: b.max_attempts.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
                    on_max_attempts: b.on_max_attempts,
                    variable: b.variable,
                    value: b.value,
                    branches: b.branches.map(|bs| {
                        bs.into_iter()
                            .map(|br| BranchOut {
                                weight: i32::try_from(br.weight).unwrap_or(i32::MAX),
                                next: br.next,
                            })
                            .collect()
                    }),
                    url: b.url,
                    seconds: b.seconds.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
                    timeout_seconds: b
                        .timeout_seconds
                        .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
                    on_timeout: b.on_timeout,
                    conditions: b.conditions.map(|cs| {
                        cs.into_iter()
                            .map(|c| ConditionOut {
                                variable: c.variable,
                                operator: c.operator.into(),
                                value: c.value,
                                all: rules_out(c.all),
                                any: rules_out(c.any),
                                next: c.next,
                            })
                            .collect()
                    }),
                    next: b.next,
                })
                .collect(),
        }
    }
}

/// A flow to save as the draft.
#[derive(InputObject)]
pub struct FlowInput {
    start_block_id: String,
    blocks: Vec<BlockInput>,
}

/// One block to save.
#[derive(InputObject)]
pub struct BlockInput {
    id: String,
    kind: BlockKindGql,
    text: Option<String>,
    question_type: Option<QuestionTypeGql>,
    save_answer_to: Option<String>,
    choices: Option<Vec<ChoiceInput>>,
    webhook_id: Option<ID>,
    #[graphql(name = "async")]
    is_async: Option<bool>,
    rating_max: Option<i32>,
    validation: Option<ValidationOut>,
    max_attempts: Option<i32>,
    on_max_attempts: Option<String>,
    variable: Option<String>,
    value: Option<String>,
    branches: Option<Vec<BranchOut>>,
    url: Option<String>,
    seconds: Option<i32>,
    timeout_seconds: Option<i32>,
    on_timeout: Option<String>,
    conditions: Option<Vec<ConditionInput>>,
    next: Option<String>,
}

/// One option to save.
#[derive(InputObject)]
pub struct ChoiceInput {
    label: String,
    value: Option<String>,
    next: Option<String>,
}

/// One condition to save.
#[derive(InputObject)]
pub struct ConditionInput {
    variable: String,
    operator: ConditionOperatorGql,
    value: Option<String>,
    /// Further tests that must all hold too.
    all: Option<Vec<ConditionRule>>,
    /// Further tests of which at least one must hold too.
    any: Option<Vec<ConditionRule>>,
    next: String,
}

impl From<FlowInput> for model::Flow {
    fn from(f: FlowInput) -> Self {
        Self {
            start_block_id: Some(f.start_block_id).filter(|s| !s.is_empty()),
            blocks: f
                .blocks
                .into_iter()
                .map(|b| model::Block {
                    id: b.id,
                    kind: b.kind.into(),
                    text: b.text,
                    question_type: b.question_type.map(Into::into),
                    save_answer_to: b.save_answer_to,
                    choices: b.choices.map(|cs| {
                        cs.into_iter()
                            .map(|c| model::Choice {
                                label: c.label,
                                value: c.value,
                                next: c.next,
                            })
                            .collect()
                    }),
                    // Stored lower-cased, the form in which ids are compared and printed.
                    webhook_id: b.webhook_id.map(|id| id.0.trim().to_ascii_lowercase()),
                    is_async: b.is_async,
                    rating_max: count_in(b.rating_max),
                    validation: b.validation.map(Into::into),
                    max_attempts: count_in(b.max_attempts),
                    on_max_attempts: b.on_max_attempts,
                    variable: b.variable,
                    value: b.value,
                    branches: b.branches.map(|bs| {
                        bs.into_iter()
                            .map(|br| model::Branch {
                                weight: u32::try_from(br.weight).unwrap_or(0),
                                next: br.next,
                            })
                            .collect()
                    }),
                    url: b.url,
                    seconds: count_in(b.seconds),
                    timeout_seconds: count_in(b.timeout_seconds),
                    on_timeout: b.on_timeout,
                    conditions: b.conditions.map(|cs| {
                        cs.into_iter()
                            .map(|c| model::Condition {
                                variable: c.variable,
                                operator: c.operator.into(),
                                value: c.value,
                                all: rules_in(c.all),
                                any: rules_in(c.any),
                                next: c.next,
                            })
                            .collect()
                    }),
                    next: b.next,
                })
                .collect(),
        }
    }
}
