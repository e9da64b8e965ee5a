//! Scenarios of the blocks and reply instructions that make a conversation wait for
//! something other than the visitor: WAIT, a reply's `wait`/`choices`/`redirect`, CALLBACK.

use serde_json::{Map, json};

use super::*;
use crate::engine::model::MAX_WAIT_SECONDS;

fn wait(id: &str, seconds: u32, next: Option<&str>) -> Block {
    Block {
        seconds: Some(seconds),
        next: next.map(str::to_owned),
        ..Block::new(id, BlockKind::Wait)
    }
}

#[test]
fn a_wait_block_pauses_until_resumed_then_goes_on() {
    let flow = compile(
        "hi",
        vec![
            message("hi", "One moment…", Some("w")),
            wait("w", 3, Some("done")),
            message("done", "Here it is.", None),
        ],
    );
    let (mut state, result) = start(&flow);
    assert_eq!(result.outputs, [bot("One moment…")]);
    assert_eq!(
        state.position,
        Position::Waiting {
            block_id: "w".into(),
            seconds: 3,
            next: Some("done".into())
        }
    );
    let resumed = run(&flow, &mut state, Input::Resume);
    assert_eq!(resumed.outputs, [bot("Here it is."), ended()]);
    assert!(state.is_ended());
}

#[test]
fn an_answer_during_a_wait_is_refused_and_changes_nothing() {
    let flow = compile(
        "w",
        vec![
            wait("w", 5, Some("q")),
            question("q", QuestionType::Text, "name", None),
        ],
    );
    let (mut state, _) = start(&flow);
    let before = state.clone();
    assert_eq!(
        step(&flow, &mut state, Input::Answer("hello".into())),
        Err(StepError::Pausing)
    );
    assert_eq!(state, before);
    let asked = run(&flow, &mut state, Input::Resume);
    assert_eq!(asked.outputs, [asks("Your name?", QuestionType::Text)]);
    // Resuming twice (two timers, two instances) is refused the second time.
    assert_eq!(
        step(&flow, &mut state, Input::Resume),
        Err(StepError::NotPausing)
    );
}

#[test]
fn a_wait_is_bounded_and_consecutive_waits_each_pause() {
    let flow = compile("a", vec![wait("a", 600, Some("b")), wait("b", 0, None)]);
    let (mut state, _) = start(&flow);
    assert!(matches!(
        state.position,
        Position::Waiting { seconds: 60, .. }
    ));
    run(&flow, &mut state, Input::Resume);
    assert!(matches!(
        state.position,
        Position::Waiting { seconds: 1, .. }
    ));
    let last = run(&flow, &mut state, Input::Resume);
    assert_eq!(last.outputs, [ended()]);
}

/// A sync webhook, then a CHOICE question with its own choices, then the end.
fn webhook_then_choice() -> (CompiledFlow, State) {
    let flow = compile(
        "w",
        vec![
            webhook("w", "wh_1", Some(false), Some("size")),
            Block {
                choices: Some(vec![Choice {
                    label: "Default".into(),
                    value: None,
                    next: None,
                }]),
                ..question("size", QuestionType::Choice, "size", Some("done"))
            },
            message("done", "Size {{size}}", None),
        ],
    );
    let (state, _) = start(&flow);
    (flow, state)
}

fn offered(labels: &[(&str, Option<&str>)]) -> Vec<Choice> {
    labels
        .iter()
        .map(|(label, value)| Choice {
            label: (*label).into(),
            value: value.map(str::to_owned),
            next: None,
        })
        .collect()
}

#[test]
fn a_choices_instruction_replaces_the_next_choice_questions_buttons_once() {
    let (flow, mut state) = webhook_then_choice();
    let choices = offered(&[("Small", Some("s")), ("Large", None)]);
    let outcome = WebhookOutcome::Responses(vec![Instruction::Choices(choices.clone())]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(
        result.outputs,
        [Output::Say(ChatMessage::Question {
            text: "Your size?".into(),
            question_type: QuestionType::Choice,
            choices: Some(choices),
        })]
    );
    // The block's own choice is not offered, so not accepted; the reply's are.
    let refused = run(&flow, &mut state, Input::Answer("Default".into()));
    assert!(matches!(
        refused.outputs.get(1),
        Some(Output::Say(ChatMessage::InvalidAnswer { .. }))
    ));
    let asked_again = refused.outputs.last();
    assert!(
        matches!(asked_again, Some(Output::Say(ChatMessage::Question { choices: Some(c), .. })) if c.len() == 2),
        "{asked_again:?}"
    );
    let done = run(&flow, &mut state, Input::Answer("small".into()));
    assert_eq!(done.outputs[1], bot("Size s"));
    assert_eq!(state.choices, None);
    assert_eq!(state.next_choices, None);
}

#[test]
fn a_wait_instruction_pauses_before_going_on_and_redirects_are_said() {
    let (flow, mut state) = webhook_then_choice();
    state.variables.insert("plan".into(), json!("pro"));
    let outcome = WebhookOutcome::Responses(vec![
        Instruction::Redirect("https://example.com/{{plan}}".into()),
        Instruction::Wait(40),
        Instruction::Text("One moment".into()),
        Instruction::Wait(40),
    ]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(
        result.outputs,
        [
            Output::Say(ChatMessage::Redirect {
                url: "https://example.com/pro".into()
            }),
            bot("One moment"),
        ]
    );
    assert_eq!(
        state.position,
        Position::Waiting {
            block_id: "w".into(),
            seconds: MAX_WAIT_SECONDS,
            next: Some("size".into())
        }
    );
    let resumed = run(&flow, &mut state, Input::Resume);
    assert!(matches!(
        resumed.outputs.last(),
        Some(Output::Say(ChatMessage::Question { .. }))
    ));
}

fn callback_flow() -> CompiledFlow {
    compile(
        "cb",
        vec![
            Block {
                timeout_seconds: Some(120),
                on_timeout: Some("late".into()),
                next: Some("paid".into()),
                ..Block::new("cb", BlockKind::Callback)
            },
            message("paid", "Paid: {{status}}", None),
            message("late", "Still waiting for the payment.", None),
        ],
    )
}

#[test]
fn a_callback_block_waits_then_takes_the_posted_keys_as_variables() {
    let flow = callback_flow();
    let (mut state, result) = start(&flow);
    assert_eq!(result.outputs, []);
    assert_eq!(
        state.position,
        Position::AwaitingCallback {
            block_id: "cb".into(),
            timeout_seconds: 120
        }
    );
    assert_eq!(
        step(&flow, &mut state, Input::Answer("hi".into())),
        Err(StepError::Pausing)
    );
    let posted = object(json!({"status": "paid"}));
    let result = run(&flow, &mut state, Input::Callback(posted));
    assert_eq!(result.outputs, [bot("Paid: paid"), ended()]);
    assert_eq!(state.variables["status"], "paid");
}

#[test]
fn a_callback_that_never_comes_times_out_to_on_timeout() {
    let flow = callback_flow();
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Resume);
    assert_eq!(
        result.outputs,
        [bot("Still waiting for the payment."), ended()]
    );
    // Too late now: the conversation is no longer at the CALLBACK.
    assert_eq!(
        step(&flow, &mut state, Input::Callback(Map::new())),
        Err(StepError::AlreadyEnded)
    );
}
