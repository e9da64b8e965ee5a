//! The step bound (blocks run without a question), and the errors a step refuses or ends
//! with: the state is left as it was, and every message says what went wrong.

use super::*;

fn chain_of_messages(count: usize, last_next: &str) -> Vec<Block> {
    (0..count)
        .map(|i| {
            let next = if i + 1 == count {
                last_next.to_owned()
            } else {
                format!("m{}", i + 1)
            };
            message(&format!("m{i}"), "tick", Some(&next))
        })
        .collect()
}

#[test]
fn one_hundred_blocks_without_a_question_are_allowed() {
    let mut blocks = chain_of_messages(99, "q");
    blocks.push(question("q", QuestionType::Text, "x", None));
    let flow = compile("m0", blocks);
    let (state, result) = start(&flow);
    assert_eq!(result.outputs.len(), 100);
    assert_eq!(state.position, awaiting_answer("q"));
}

#[test]
fn more_than_one_hundred_blocks_without_a_question_stop_the_bot() {
    let mut blocks = chain_of_messages(100, "q");
    blocks.push(question("q", QuestionType::Text, "x", None));
    let flow = compile("m0", blocks);
    let (state, result) = start(&flow);
    assert_eq!(result.outputs.len(), 101);
    assert_eq!(
        result.outputs.last(),
        Some(&ended_with(
            "The bot stopped: too many steps without a question."
        ))
    );
    assert!(state.is_ended());
}

#[test]
fn a_loop_without_a_question_is_stopped_instead_of_spinning() {
    let flow = compile(
        "a",
        vec![message("a", "a", Some("b")), message("b", "b", Some("a"))],
    );
    let (state, result) = start(&flow);
    assert_eq!(result.outputs.len(), MAX_BLOCKS_PER_STEP + 1);
    assert!(state.is_ended());
}

#[test]
fn the_block_bound_is_counted_per_step() {
    let mut blocks = chain_of_messages(99, "q");
    blocks.push(Block {
        next: Some("m0".into()),
        ..question("q", QuestionType::Text, "x", None)
    });
    let flow = compile("m0", blocks);
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Answer("go".into()));
    assert_eq!(result.outputs.len(), 101);
    assert_eq!(state.position, awaiting_answer("q"));
}

#[test]
fn step_errors_leave_the_state_unchanged() {
    let flow = seed_flow();
    let not_started = State::new(object(json!({"x": 1})));
    let awaiting_answer_state = start(&flow).0;
    let (_, awaiting_webhook_state) = sync_webhook_flow();
    let ended_state = State {
        position: Position::Ended,
        ..State::default()
    };
    let result = || Input::WebhookResult(WebhookOutcome::Failed("x".into()));
    let cases = [
        (
            &not_started,
            Input::Answer("hi".into()),
            StepError::NoPendingQuestion,
        ),
        (&not_started, result(), StepError::NotStarted),
        (
            &awaiting_answer_state,
            Input::Start,
            StepError::AlreadyStarted,
        ),
        (
            &awaiting_answer_state,
            result(),
            StepError::NotAwaitingWebhook,
        ),
        (
            &awaiting_webhook_state,
            Input::Start,
            StepError::AlreadyStarted,
        ),
        (
            &awaiting_webhook_state,
            Input::Answer("hi".into()),
            StepError::NoPendingQuestion,
        ),
        (&ended_state, Input::Start, StepError::AlreadyEnded),
        (
            &ended_state,
            Input::Answer("hi".into()),
            StepError::AlreadyEnded,
        ),
        (&ended_state, result(), StepError::AlreadyEnded),
    ];
    for (state, input, expected) in cases {
        let mut copy = state.clone();
        assert_eq!(
            step(&flow, &mut copy, input.clone()),
            Err(expected),
            "{input:?}"
        );
        assert_eq!(&copy, state);
    }
}

#[test]
fn step_errors_have_clear_messages() {
    assert_eq!(
        StepError::AlreadyEnded.to_string(),
        "the conversation has already ended"
    );
    assert_eq!(
        StepError::NoPendingQuestion.to_string(),
        "there is no question waiting for an answer"
    );
    let error: Box<dyn std::error::Error> = Box::new(StepError::NotAwaitingWebhook);
    assert!(error.to_string().contains("webhook"));
}

#[test]
fn an_answer_for_a_block_that_no_longer_exists_ends_with_an_error() {
    let flow = seed_flow();
    let mut state = State {
        position: awaiting_answer("gone"),
        ..State::default()
    };
    let result = run(&flow, &mut state, Input::Answer("hi".into()));
    assert_eq!(
        result.outputs,
        [
            visitor("hi"),
            ended_with("The bot stopped: block \"gone\" does not exist.")
        ]
    );
    assert!(state.is_ended());
}

#[test]
fn a_webhook_result_for_a_block_that_no_longer_exists_ends_with_an_error() {
    let flow = seed_flow();
    let mut state = State {
        position: awaiting_webhook("gone"),
        ..State::default()
    };
    let outcome = WebhookOutcome::Variables(object(json!({"a": 1})));
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(
        result.outputs,
        [ended_with(
            "The bot stopped: block \"gone\" does not exist."
        )]
    );
    assert!(state.variables.is_empty());
}
