//! Property tests: random flows and random inputs never panic and always
//! leave the conversation in a state that matches the step's last output.
//! The generators are shared with the validation tests.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

use super::*;
use crate::engine::model::{
    Branch, MAX_CALLBACK_TIMEOUT_SECONDS, MAX_WAIT_SECONDS, Rule, Validation,
};

const BLOCK_IDS: &[&str] = &["a", "b", "c", "d", "e", ""];
const TARGETS: &[&str] = &["a", "b", "c", "d", "e", "ghost", "", "b0", "b1"];
const TEXTS: &[&str] = &[
    "Hi {{v}}",
    "",
    "  ",
    "Question?",
    "{{order.status}}",
    "{{ unclosed",
];
const NAMES: &[&str] = &[
    "v",
    "age",
    "answer",
    "email",
    "",
    "conversation",
    "1bad",
    "order",
];
const VARIABLES: &[&str] = &["v", "age", "answer", "order.status", "", "tags"];
const VALUES: &[&str] = &["1", "10", "x", "", "pro", "3.5"];
const LABELS: &[&str] = &["Pro", "Free", "pro", "", "Team"];
const ANSWERS: &[&str] = &[
    "",
    "  ",
    "ada@example.com",
    "bad@",
    "+1 555 123 4567",
    "12",
    "42",
    "3.5",
    "yes",
    "Pro",
    "free",
    "team",
    "{{v}}",
    "2026-11-28",
    "https://example.com",
    "Pro, Team",
    "no",
];

fn arb_kind() -> impl Strategy<Value = BlockKind> {
    select(vec![
        BlockKind::Message,
        BlockKind::Question,
        BlockKind::Webhook,
        BlockKind::Condition,
        BlockKind::End,
        BlockKind::SetVariable,
        BlockKind::Split,
        BlockKind::Redirect,
        BlockKind::Wait,
        BlockKind::Callback,
    ])
}

fn arb_question_type() -> impl Strategy<Value = QuestionType> {
    select(vec![
        QuestionType::Text,
        QuestionType::Email,
        QuestionType::Phone,
        QuestionType::Number,
        QuestionType::Choice,
        QuestionType::Date,
        QuestionType::Url,
        QuestionType::Rating,
        QuestionType::MultiChoice,
        QuestionType::YesNo,
    ])
}

fn arb_validation() -> impl Strategy<Value = Validation> {
    (
        option::of(0u32..6),
        option::of(0u32..6),
        option::of(-3i64..10),
        option::of(-3i64..10),
        option::of(arb_string(&["^a", "(", "x+", "^\\d+$"])),
        option::of(arb_string(&["Try again", ""])),
    )
        .prop_map(
            |(min_length, max_length, min, max, pattern, message)| Validation {
                min_length,
                max_length,
                min: min.map(Into::into),
                max: max.map(Into::into),
                pattern,
                message,
            },
        )
}

fn arb_operator() -> impl Strategy<Value = ConditionOperator> {
    select(vec![
        ConditionOperator::Equals,
        ConditionOperator::NotEquals,
        ConditionOperator::Contains,
        ConditionOperator::GreaterThan,
        ConditionOperator::LessThan,
        ConditionOperator::IsSet,
        ConditionOperator::IsNotSet,
        ConditionOperator::IsEmpty,
        ConditionOperator::Matches,
    ])
}

fn arb_string(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    select(pool).prop_map(str::to_owned)
}

fn arb_choice() -> impl Strategy<Value = Choice> {
    (
        arb_string(LABELS),
        option::of(arb_string(VALUES)),
        option::of(arb_string(TARGETS)),
    )
        .prop_map(|(label, value, next)| Choice { label, value, next })
}

fn arb_condition() -> impl Strategy<Value = Condition> {
    (
        arb_string(VARIABLES),
        arb_operator(),
        option::of(arb_string(VALUES)),
        arb_string(TARGETS),
    )
        .prop_map(|(variable, operator, value, next)| Condition {
            variable,
            operator,
            value,
            all: None,
            any: None,
            next,
        })
        .prop_flat_map(|condition| {
            (
                option::of(vec(arb_rule(), 0..3)),
                option::of(vec(arb_rule(), 0..3)),
            )
                .prop_map(move |(all, any)| Condition {
                    all,
                    any,
                    ..condition.clone()
                })
        })
}

/// A rule of a condition's group: a test, a one-level group, both, or (broken) neither.
fn arb_rule() -> impl Strategy<Value = Rule> {
    let test = || {
        (
            option::of(arb_string(VARIABLES)),
            option::of(arb_operator()),
            option::of(arb_string(VALUES)),
        )
    };
    (test(), option::of(vec(test(), 0..2))).prop_map(|((variable, operator, value), inner)| Rule {
        variable,
        operator,
        value,
        any: inner.map(|tests| {
            tests
                .into_iter()
                .map(|(variable, operator, value)| Rule {
                    variable,
                    operator,
                    value,
                    ..Rule::default()
                })
                .collect()
        }),
        all: None,
    })
}

/// Any block at all, most of them broken in some way.
fn arb_block() -> impl Strategy<Value = Block> {
    (
        (
            arb_string(BLOCK_IDS),
            arb_kind(),
            option::of(arb_string(TEXTS)),
        ),
        (
            option::of(arb_question_type()),
            option::of(arb_string(NAMES)),
            option::of(vec(arb_choice(), 0..4)),
        ),
        (
            option::of(arb_string(&["wh_1", "wh_2", ""])),
            option::of(any::<bool>()),
            option::of(vec(arb_condition(), 0..3)),
            option::of(arb_string(TARGETS)),
        ),
        (
            option::of(0u32..12),
            option::of(arb_validation()),
            option::of(0u32..4),
            option::of(arb_string(TARGETS)),
        ),
    )
        .prop_map(
            |(
                (id, kind, text),
                (question_type, save_answer_to, choices),
                (webhook_id, is_async, conditions, next),
                (rating_max, validation, max_attempts, on_max_attempts),
            )| Block {
                rating_max,
                validation,
                max_attempts,
                on_max_attempts,
                variable: None,
                value: None,
                branches: None,
                url: None,
                // A WAIT without seconds (or with too many) still pauses, at 1 to 60 s.
                seconds: (kind == BlockKind::Wait).then_some(90),
                timeout_seconds: None,
                on_timeout: (kind == BlockKind::Callback).then(|| "a".to_owned()),
                id,
                kind,
                text,
                question_type,
                save_answer_to,
                choices,
                webhook_id,
                is_async,
                conditions,
                next,
            },
        )
}

/// A random flow, valid or (usually) not.
pub(crate) fn arb_flow() -> impl Strategy<Value = Flow> {
    (option::of(arb_string(TARGETS)), vec(arb_block(), 0..7)).prop_map(
        |(start_block_id, blocks)| Flow {
            start_block_id,
            blocks,
        },
    )
}

/// A flow whose blocks `b0..` only use the fields their kind needs, with
/// targets anywhere in the flow: often valid, sometimes looping.
pub(crate) fn arb_shaped_flow() -> impl Strategy<Value = Flow> {
    (1usize..8)
        .prop_flat_map(|count| vec(arb_shaped_block(count), count))
        .prop_map(|blocks| Flow {
            start_block_id: Some("b0".to_owned()),
            blocks: blocks
                .into_iter()
                .enumerate()
                .map(|(i, block)| Block {
                    id: format!("b{i}"),
                    ..block
                })
                .collect(),
        })
}

fn arb_shaped_block(count: usize) -> impl Strategy<Value = Block> {
    let target = move || option::of((0..count).prop_map(|i| format!("b{i}")));
    let choices = vec(target(), 1..4).prop_map(|nexts| {
        nexts
            .into_iter()
            .zip(["Pro", "Free", "Team"])
            .map(|(next, label)| Choice {
                label: label.to_owned(),
                value: (label != "Free").then(|| label.to_lowercase()),
                next,
            })
            .collect::<Vec<_>>()
    });
    let conditions = vec(
        (
            select(vec!["v", "age", "answer"]),
            arb_operator(),
            (0..count).prop_map(|i| format!("b{i}")),
        ),
        1..3,
    )
    .prop_map(|items| {
        items
            .into_iter()
            .map(|(variable, operator, next)| Condition {
                variable: variable.to_owned(),
                operator,
                value: Some("1".to_owned()),
                all: None,
                any: None,
                next,
            })
            .collect::<Vec<_>>()
    });
    (
        arb_kind(),
        arb_question_type(),
        option::of(select(vec!["v", "age", "answer"])),
        choices,
        option::of(any::<bool>()),
        conditions,
        target(),
    )
        .prop_map(
            |(kind, question_type, save, choices, is_async, conditions, next)| {
                let mut block = Block::new("", kind);
                match kind {
                    BlockKind::Message => block.text = Some("Hi {{v}}".to_owned()),
                    BlockKind::Question => {
                        block.text = Some("Q {{answer}}?".to_owned());
                        block.question_type = Some(question_type);
                        block.save_answer_to = save.map(str::to_owned);
                        if question_type == QuestionType::Choice {
                            block.choices = Some(choices);
                        }
                    }
                    BlockKind::Webhook => {
                        block.webhook_id = Some("wh_1".to_owned());
                        block.is_async = is_async;
                    }
                    BlockKind::Condition => block.conditions = Some(conditions),
                    BlockKind::End => {}
                    BlockKind::SetVariable => {
                        block.variable = Some("v".to_owned());
                        block.value = Some("{{age}}".to_owned());
                    }
                    BlockKind::Split => {
                        let mut branches: Vec<Branch> = conditions
                            .into_iter()
                            .map(|c| Branch {
                                weight: 1,
                                next: c.next,
                            })
                            .collect();
                        if let Some(first) = branches.first().cloned() {
                            branches.push(Branch { weight: 3, ..first });
                        }
                        block.branches = Some(branches);
                    }
                    BlockKind::Redirect => {
                        block.url = Some("https://example.com/{{v}}".to_owned());
                    }
                    BlockKind::Wait => block.seconds = Some(2),
                    BlockKind::Callback => {
                        block.timeout_seconds = Some(30);
                        block.on_timeout = Some("b0".to_owned());
                    }
                }
                if !matches!(kind, BlockKind::End | BlockKind::Split) {
                    block.next = next;
                }
                block
            },
        )
}

fn arb_instruction() -> impl Strategy<Value = Instruction> {
    prop_oneof![
        select(vec!["hi {{v}}", "{{order.status}}", ""]).prop_map(|t| Instruction::Text(t.into())),
        select(vec![
            json!({"v": 1}),
            json!({"order": {"status": "paid"}}),
            json!({})
        ])
        .prop_map(|v| Instruction::Set(object(v))),
        arb_string(TARGETS).prop_map(Instruction::Goto),
        Just(Instruction::End),
        Just(Instruction::Unknown("unknown type \"x\"".into())),
        Just(Instruction::Choices(vec![Choice {
            label: "Pro".into(),
            value: Some("pro".into()),
            next: None,
        }])),
        (1u32..=MAX_WAIT_SECONDS).prop_map(Instruction::Wait),
        Just(Instruction::Redirect("https://example.com/{{v}}".into())),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => Just(Input::Start),
        6 => arb_string(ANSWERS).prop_map(Input::Answer),
        1 => vec(arb_instruction(), 0..4)
            .prop_map(|items| Input::WebhookResult(WebhookOutcome::Responses(items))),
        1 => select(vec![json!({"v": "x"}), json!({"age": 20, "tags": ["a"]}), json!({})])
            .prop_map(|v| Input::WebhookResult(WebhookOutcome::Variables(object(v)))),
        1 => Just(Input::WebhookResult(WebhookOutcome::Failed("timeout".into()))),
        2 => Just(Input::Resume),
        1 => select(vec![json!({"v": "called back"}), json!({})])
            .prop_map(|v| Input::Callback(object(v))),
    ]
}

/// Inputs that usually begin with `Start`, so most runs get somewhere.
pub(crate) fn arb_inputs() -> impl Strategy<Value = Vec<Input>> {
    (prop::bool::weighted(0.9), vec(arb_input(), 0..12)).prop_map(|(start, rest)| {
        let first = start.then_some(Input::Start);
        first.into_iter().chain(rest).collect()
    })
}

pub(crate) fn arb_prefilled() -> impl Strategy<Value = Map<String, Value>> {
    select(vec![
        json!({}),
        json!({"v": 1, "age": "30"}),
        json!({"order": {"status": "new"}}),
    ])
    .prop_map(object)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Feeds `inputs` one by one, checking after each step that a refusal left
/// the state alone and that an accepted step left a state matching its last
/// output. Returns the accepted steps' results.
pub(crate) fn drive(
    flow: &CompiledFlow,
    prefilled: Map<String, Value>,
    inputs: Vec<Input>,
) -> Result<Vec<StepResult>, TestCaseError> {
    let mut state = State::new(prefilled);
    let mut results = Vec::new();
    for input in inputs {
        let before = state.clone();
        let Ok(result) = step(flow, &mut state, input) else {
            prop_assert_eq!(&state, &before);
            continue;
        };
        let last = result.outputs.last();
        match &state.position {
            Position::NotStarted => prop_assert!(false, "a step left the state not started"),
            Position::AwaitingAnswer { block_id } => {
                prop_assert!(
                    matches!(last, Some(Output::Say(ChatMessage::Question { .. }))),
                    "awaiting an answer after {:?}",
                    last
                );
                prop_assert!(flow.block(block_id).is_some());
            }
            Position::AwaitingWebhook { block_id } => {
                prop_assert!(
                    matches!(last, Some(Output::CallWebhook { block_id: id, .. }) if id == block_id),
                    "awaiting a webhook after {:?}",
                    last
                );
            }
            Position::Waiting {
                block_id, seconds, ..
            } => {
                prop_assert!((1..=MAX_WAIT_SECONDS).contains(seconds));
                prop_assert!(flow.block(block_id).is_some());
                prop_assert!(
                    !matches!(
                        last,
                        Some(
                            Output::CallWebhook { .. } | Output::Say(ChatMessage::Question { .. })
                        )
                    ),
                    "waiting after {:?}",
                    last
                );
                // No conversation is stuck in a pause after a restart: the state as stored
                // reads back and takes the scheduler's `Resume` (a WAIT that loops onto
                // itself pauses again, which validation refuses as a loop).
                let stored =
                    serde_json::to_value(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut restarted: State = serde_json::from_value(stored)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let resumed = step(flow, &mut restarted, Input::Resume);
                prop_assert!(resumed.is_ok(), "a paused conversation refused Resume");
            }
            Position::AwaitingCallback {
                block_id,
                timeout_seconds,
            } => {
                prop_assert!((1..=MAX_CALLBACK_TIMEOUT_SECONDS).contains(timeout_seconds));
                prop_assert!(
                    flow.block(block_id)
                        .is_some_and(|b| b.kind == BlockKind::Callback)
                );
                // Its timeout goes through the same scheduler: a restart never strands it.
                let mut restarted = state.clone();
                prop_assert!(step(flow, &mut restarted, Input::Resume).is_ok());
            }
            Position::Ended => prop_assert!(
                matches!(last, Some(Output::Say(ChatMessage::Ended { .. }))),
                "ended after {:?}",
                last
            ),
        }
        let earlier = result.outputs.len().saturating_sub(1);
        for output in result.outputs.iter().take(earlier) {
            prop_assert!(
                !matches!(
                    output,
                    Output::CallWebhook { .. } | Output::Say(ChatMessage::Ended { .. })
                ),
                "{:?} is not last",
                output
            );
        }
        prop_assert!(result.outputs.len() <= 2 * MAX_BLOCKS_PER_STEP + 20);
        let stored =
            serde_json::to_string(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let restored: State =
            serde_json::from_str(&stored).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&restored, &state);
        results.push(result);
    }
    Ok(results)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_flows_and_inputs_keep_the_state_consistent(
        flow in arb_flow(),
        prefilled in arb_prefilled(),
        inputs in arb_inputs(),
    ) {
        drive(&CompiledFlow::new(flow), prefilled, inputs)?;
    }

    #[test]
    fn shaped_flows_and_inputs_keep_the_state_consistent(
        flow in arb_shaped_flow(),
        prefilled in arb_prefilled(),
        inputs in arb_inputs(),
    ) {
        drive(&CompiledFlow::new(flow), prefilled, inputs)?;
    }

    #[test]
    fn the_same_inputs_give_the_same_outputs(
        flow in arb_shaped_flow(),
        prefilled in arb_prefilled(),
        inputs in arb_inputs(),
    ) {
        let flow = CompiledFlow::new(flow);
        let first = drive(&flow, prefilled.clone(), inputs.clone())?;
        let second = drive(&flow, prefilled, inputs)?;
        prop_assert_eq!(first, second);
    }

    #[test]
    fn templates_never_panic_and_keep_text_without_braces(text in ".{0,40}") {
        let variables = object(json!({"v": "x", "o": {"k": [1, 2]}}));
        let rendered = template::render(&text, &variables);
        if !text.contains("{{") {
            prop_assert_eq!(rendered, text);
        }
    }
}
