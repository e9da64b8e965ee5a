//! Scenarios of webhook blocks, async and sync, and of what a sync reply makes the bot do:
//! its instructions, variables and failures.

use super::*;

#[test]
fn an_async_webhook_is_queued_and_the_flow_goes_on() {
    let flow = compile(
        "w",
        vec![
            webhook("w", "wh_1", Some(true), Some("m")),
            message("m", "Sent", None),
        ],
    );
    let (state, result) = start(&flow);
    assert_eq!(
        result.outputs,
        [
            Output::QueueWebhook {
                webhook_id: "wh_1".into(),
                block_id: "w".into()
            },
            bot("Sent"),
            ended()
        ]
    );
    assert!(state.is_ended());
}

#[test]
fn a_webhook_without_async_is_treated_as_async() {
    let flow = compile("w", vec![webhook("w", "wh_1", None, None)]);
    let (_, result) = start(&flow);
    assert_eq!(
        result.outputs,
        [
            Output::QueueWebhook {
                webhook_id: "wh_1".into(),
                block_id: "w".into()
            },
            ended()
        ]
    );
}

#[test]
fn a_webhook_block_without_webhook_is_skipped_with_a_note() {
    let flow = compile(
        "w",
        vec![
            Block {
                next: Some("m".into()),
                ..Block::new("w", BlockKind::Webhook)
            },
            message("m", "on", None),
        ],
    );
    let (_, result) = start(&flow);
    assert_eq!(result.outputs, [bot("on"), ended()]);
    assert_eq!(result.notes.len(), 1);
}

#[test]
fn a_sync_webhook_waits_for_its_result() {
    let (_flow, state) = sync_webhook_flow();
    assert_eq!(state.position, awaiting_webhook("w"));
}

#[test]
fn a_text_instruction_is_said_as_a_template() {
    let (flow, mut state) = sync_webhook_flow();
    state.variables.insert("name".into(), json!("Ada"));
    let outcome = WebhookOutcome::Responses(vec![Instruction::Text("Hello {{name}}".into())]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(
        result.outputs,
        [bot("Hello Ada"), asks("Your after?", QuestionType::Text)]
    );
    assert_eq!(state.position, awaiting_answer("after"));
}

#[test]
fn a_set_instruction_merges_variables_before_later_texts() {
    let (flow, mut state) = sync_webhook_flow();
    state.variables.insert("keep".into(), json!(1));
    state.variables.insert("status".into(), json!("old"));
    let outcome = WebhookOutcome::Responses(vec![
        Instruction::Set(object(json!({"status": "paid", "order": {"id": 7}}))),
        Instruction::Text("{{status}} #{{order.id}}".into()),
    ]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(result.outputs.first(), Some(&bot("paid #7")));
    assert_eq!(
        state.variables,
        object(json!({"keep": 1, "status": "paid", "order": {"id": 7}}))
    );
    assert!(state.answers.is_empty());
}

#[test]
fn a_goto_instruction_continues_at_that_block() {
    let (flow, mut state) = sync_webhook_flow();
    let outcome = WebhookOutcome::Responses(vec![
        Instruction::Goto("other".into()),
        Instruction::Text("still said".into()),
    ]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(
        result.outputs,
        [bot("still said"), asks("Your other?", QuestionType::Text)]
    );
    assert_eq!(state.position, awaiting_answer("other"));
    assert!(result.notes.is_empty());
}

#[test]
fn a_goto_to_a_missing_block_is_noted_and_the_flow_continues_at_next() {
    let (flow, mut state) = sync_webhook_flow();
    let outcome = WebhookOutcome::Responses(vec![Instruction::Goto("ghost".into())]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(result.outputs, [asks("Your after?", QuestionType::Text)]);
    assert_eq!(state.position, awaiting_answer("after"));
    assert_eq!(result.notes.len(), 1);
    assert!(result.notes.iter().all(|note| note.contains("ghost")));
}

#[test]
fn an_end_instruction_ends_the_conversation_and_ignores_the_rest() {
    let (flow, mut state) = sync_webhook_flow();
    let outcome = WebhookOutcome::Responses(vec![
        Instruction::Text("Bye".into()),
        Instruction::End,
        Instruction::Text("never said".into()),
    ]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(result.outputs, [bot("Bye"), ended()]);
    assert!(state.is_ended());
    assert_eq!(result.notes.len(), 1);
}

#[test]
fn an_unknown_instruction_is_skipped_with_a_note() {
    let (flow, mut state) = sync_webhook_flow();
    let outcome = WebhookOutcome::Responses(vec![
        Instruction::Unknown("unknown type \"carousel\"".into()),
        Instruction::Text("after".into()),
    ]);
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(
        result.outputs,
        [bot("after"), asks("Your after?", QuestionType::Text)]
    );
    assert_eq!(
        result.notes,
        ["Skipped a webhook instruction: unknown type \"carousel\"."]
    );
}

#[test]
fn empty_responses_continue_at_next() {
    let (flow, mut state) = sync_webhook_flow();
    let result = run(
        &flow,
        &mut state,
        Input::WebhookResult(WebhookOutcome::Responses(vec![])),
    );
    assert_eq!(result.outputs, [asks("Your after?", QuestionType::Text)]);
}

#[test]
fn a_variables_outcome_sets_every_key_and_continues_at_next() {
    let (flow, mut state) = sync_webhook_flow();
    state.variables.insert("a".into(), json!("old"));
    let outcome = WebhookOutcome::Variables(object(json!({"a": "new", "b": [1, 2]})));
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(result.outputs, [asks("Your after?", QuestionType::Text)]);
    assert_eq!(state.variables, object(json!({"a": "new", "b": [1, 2]})));
}

#[test]
fn a_failed_outcome_changes_nothing_and_continues_at_next() {
    let (flow, mut state) = sync_webhook_flow();
    state.variables.insert("a".into(), json!(1));
    let before = state.variables.clone();
    let outcome = WebhookOutcome::Failed("timeout".into());
    let result = run(&flow, &mut state, Input::WebhookResult(outcome));
    assert_eq!(result.outputs, [asks("Your after?", QuestionType::Text)]);
    assert_eq!(state.variables, before);
    assert_eq!(result.notes, ["The webhook call failed: timeout"]);
}
