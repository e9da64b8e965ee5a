//! Whole-step scenarios: each block kind, each input, the step bound.

use serde_json::{Map, Value, json};

use super::*;

mod bounds;
mod pauses;
mod webhooks;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn compile(start: &str, blocks: Vec<Block>) -> CompiledFlow {
    CompiledFlow::new(Flow {
        start_block_id: Some(start.to_owned()),
        blocks,
    })
}

fn message(id: &str, text: &str, next: Option<&str>) -> Block {
    Block {
        text: Some(text.to_owned()),
        next: next.map(str::to_owned),
        ..Block::new(id, BlockKind::Message)
    }
}

fn question(id: &str, question_type: QuestionType, save: &str, next: Option<&str>) -> Block {
    Block {
        text: Some(format!("Your {save}?")),
        question_type: Some(question_type),
        save_answer_to: Some(save.to_owned()),
        next: next.map(str::to_owned),
        ..Block::new(id, BlockKind::Question)
    }
}

fn webhook(id: &str, webhook_id: &str, is_async: Option<bool>, next: Option<&str>) -> Block {
    Block {
        webhook_id: Some(webhook_id.to_owned()),
        is_async,
        next: next.map(str::to_owned),
        ..Block::new(id, BlockKind::Webhook)
    }
}

fn end(id: &str) -> Block {
    Block::new(id, BlockKind::End)
}

fn run(flow: &CompiledFlow, state: &mut State, input: Input) -> StepResult {
    match step(flow, state, input) {
        Ok(result) => result,
        Err(error) => panic!("the step was refused: {error}"),
    }
}

fn start(flow: &CompiledFlow) -> (State, StepResult) {
    let mut state = State::default();
    let result = run(flow, &mut state, Input::Start);
    (state, result)
}

fn bot(text: &str) -> Output {
    Output::Say(ChatMessage::BotMessage { text: text.into() })
}

fn visitor(text: &str) -> Output {
    Output::Say(ChatMessage::VisitorMessage { text: text.into() })
}

fn asks(text: &str, question_type: QuestionType) -> Output {
    Output::Say(ChatMessage::Question {
        text: text.into(),
        question_type,
        choices: None,
    })
}

fn ended() -> Output {
    Output::Say(ChatMessage::Ended { error: None })
}

fn ended_with(error: &str) -> Output {
    Output::Say(ChatMessage::Ended {
        error: Some(error.into()),
    })
}

fn awaiting_answer(id: &str) -> Position {
    Position::AwaitingAnswer {
        block_id: id.into(),
    }
}

fn awaiting_webhook(id: &str) -> Position {
    Position::AwaitingWebhook {
        block_id: id.into(),
    }
}

/// The seed flow every new bot gets.
fn seed_flow() -> CompiledFlow {
    compile(
        "hello",
        vec![
            message("hello", "Hi!", Some("email")),
            question("email", QuestionType::Email, "email", Some("phone")),
            question("phone", QuestionType::Phone, "phone_number", Some("notify")),
            webhook("notify", "wh_1", Some(true), Some("bye")),
            end("bye"),
        ],
    )
}

/// A sync webhook block `w` going on to a question `after`, plus a spare
/// question `other` for gotos.
fn sync_webhook_flow() -> (CompiledFlow, State) {
    let flow = compile(
        "w",
        vec![
            webhook("w", "wh_sync", Some(false), Some("after")),
            question("after", QuestionType::Text, "after", None),
            question("other", QuestionType::Text, "other", None),
        ],
    );
    let (state, result) = start(&flow);
    assert_eq!(
        result.outputs,
        [Output::CallWebhook {
            webhook_id: "wh_sync".into(),
            block_id: "w".into()
        }]
    );
    assert_eq!(state.position, awaiting_webhook("w"));
    (flow, state)
}

#[test]
fn the_seed_flow_runs_from_greeting_to_end() {
    let flow = seed_flow();
    let (mut state, result) = start(&flow);
    assert_eq!(
        result.outputs,
        [bot("Hi!"), asks("Your email?", QuestionType::Email)]
    );
    assert_eq!(state.position, awaiting_answer("email"));

    let result = run(&flow, &mut state, Input::Answer(" ada@example.com ".into()));
    assert_eq!(
        result.outputs,
        [
            visitor(" ada@example.com "),
            asks("Your phone_number?", QuestionType::Phone)
        ]
    );

    let result = run(&flow, &mut state, Input::Answer("+44 20 7946 0958".into()));
    assert_eq!(
        result.outputs,
        [
            visitor("+44 20 7946 0958"),
            Output::QueueWebhook {
                webhook_id: "wh_1".into(),
                block_id: "notify".into()
            },
            ended(),
        ]
    );
    assert!(result.notes.is_empty());
    assert!(state.is_ended());
    let expected = object(json!({"email": "ada@example.com", "phone_number": "+44 20 7946 0958"}));
    assert_eq!(state.answers, expected);
    assert_eq!(state.variables, expected);
}

#[test]
fn an_invalid_email_is_asked_again() {
    let flow = seed_flow();
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Answer("not-an-email".into()));
    assert_eq!(
        result.outputs,
        [
            visitor("not-an-email"),
            Output::Say(ChatMessage::InvalidAnswer {
                text: "Please enter a valid email address.".into()
            }),
            asks("Your email?", QuestionType::Email),
        ]
    );
    assert_eq!(state.position, awaiting_answer("email"));
    assert!(state.answers.is_empty());
}

#[test]
fn an_invalid_phone_number_is_asked_again() {
    let flow = seed_flow();
    let (mut state, _) = start(&flow);
    run(&flow, &mut state, Input::Answer("ada@example.com".into()));
    let result = run(&flow, &mut state, Input::Answer("12".into()));
    assert_eq!(
        result.outputs,
        [
            visitor("12"),
            Output::Say(ChatMessage::InvalidAnswer {
                text: "Please enter a valid phone number.".into()
            }),
            asks("Your phone_number?", QuestionType::Phone),
        ]
    );
    assert_eq!(state.position, awaiting_answer("phone"));
}

#[test]
fn a_message_is_said_and_the_flow_goes_on_at_once() {
    let flow = compile(
        "a",
        vec![
            message("a", "One", Some("b")),
            message("b", "Two", Some("c")),
            end("c"),
        ],
    );
    let (state, result) = start(&flow);
    assert_eq!(result.outputs, [bot("One"), bot("Two"), ended()]);
    assert_eq!(state.position, Position::Ended);
}

#[test]
fn a_message_without_text_says_nothing() {
    let flow = compile("a", vec![Block::new("a", BlockKind::Message)]);
    let (_, result) = start(&flow);
    assert_eq!(result.outputs, [ended()]);
}

#[test]
fn a_null_next_ends_the_conversation() {
    let flow = compile("a", vec![message("a", "Bye", None)]);
    let (state, result) = start(&flow);
    assert_eq!(result.outputs, [bot("Bye"), ended()]);
    assert!(state.is_ended());
}

#[test]
fn an_end_block_ends_the_conversation() {
    let flow = compile("e", vec![end("e")]);
    let (state, result) = start(&flow);
    assert_eq!(result.outputs, [ended()]);
    assert!(state.is_ended());
}

#[test]
fn a_next_to_a_missing_block_ends_with_an_error() {
    let flow = compile("a", vec![message("a", "Hi", Some("ghost"))]);
    let (state, result) = start(&flow);
    assert_eq!(
        result.outputs,
        [
            bot("Hi"),
            ended_with("The bot stopped: block \"ghost\" does not exist.")
        ]
    );
    assert!(state.is_ended());
}

#[test]
fn a_missing_start_block_ends_with_an_error() {
    let flow = compile("ghost", vec![end("e")]);
    let (state, result) = start(&flow);
    assert_eq!(
        result.outputs,
        [ended_with(
            "The bot stopped: block \"ghost\" does not exist."
        )]
    );
    assert!(state.is_ended());
}

#[test]
fn a_flow_without_start_block_or_blocks_ends_at_once() {
    let flows = [
        CompiledFlow::new(Flow::default()),
        CompiledFlow::new(Flow {
            start_block_id: None,
            blocks: vec![end("e")],
        }),
        compile(" ", vec![end("e")]),
        compile("e", vec![]),
    ];
    for flow in &flows {
        let (state, result) = start(flow);
        assert_eq!(result.outputs, [ended()]);
        assert!(state.is_ended());
    }
}

#[test]
fn a_question_waits_for_the_answer() {
    let flow = compile(
        "q",
        vec![
            question("q", QuestionType::Text, "name", Some("e")),
            end("e"),
        ],
    );
    let (state, result) = start(&flow);
    assert_eq!(result.outputs, [asks("Your name?", QuestionType::Text)]);
    assert_eq!(state.position, awaiting_answer("q"));
}

#[test]
fn a_valid_answer_is_stored_as_answer_and_variable_and_used_by_later_templates() {
    let flow = compile(
        "q",
        vec![
            question("q", QuestionType::Text, "name", Some("m")),
            message("m", "Nice to meet you, {{ name }}.", None),
        ],
    );
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Answer("  Ada ".into()));
    assert_eq!(
        result.outputs,
        [visitor("  Ada "), bot("Nice to meet you, Ada."), ended()]
    );
    assert_eq!(state.answers, object(json!({"name": "Ada"})));
    assert_eq!(state.variables, object(json!({"name": "Ada"})));
}

#[test]
fn a_number_answer_is_stored_as_a_json_number() {
    let flow = compile("q", vec![question("q", QuestionType::Number, "age", None)]);
    let (mut state, _) = start(&flow);
    run(&flow, &mut state, Input::Answer("36".into()));
    assert_eq!(state.answers.get("age"), Some(&json!(36)));
    assert_eq!(state.variables.get("age"), Some(&json!(36)));
}

#[test]
fn an_answer_without_save_answer_to_is_not_stored_but_the_flow_goes_on() {
    let mut q = question("q", QuestionType::Text, "x", Some("m"));
    q.save_answer_to = None;
    let flow = compile("q", vec![q, message("m", "ok", None)]);
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Answer("hello".into()));
    assert_eq!(result.outputs, [visitor("hello"), bot("ok"), ended()]);
    assert!(state.answers.is_empty());
    assert!(state.variables.is_empty());
}

fn plan_question() -> Block {
    Block {
        text: Some("Which plan?".into()),
        question_type: Some(QuestionType::Choice),
        save_answer_to: Some("plan".into()),
        choices: Some(vec![
            Choice {
                label: "Pro".into(),
                value: Some("pro_monthly".into()),
                next: Some("pro".into()),
            },
            Choice {
                label: "Free".into(),
                value: None,
                next: None,
            },
        ]),
        next: Some("free".into()),
        ..Block::new("q", BlockKind::Question)
    }
}

fn plan_flow() -> CompiledFlow {
    compile(
        "q",
        vec![
            plan_question(),
            message("pro", "Pro it is", None),
            message("free", "Free it is", None),
        ],
    )
}

#[test]
fn a_choice_question_shows_its_choices() {
    let flow = plan_flow();
    let (_, result) = start(&flow);
    assert_eq!(
        result.outputs,
        [Output::Say(ChatMessage::Question {
            text: "Which plan?".into(),
            question_type: QuestionType::Choice,
            choices: plan_question().choices,
        })]
    );
}

#[test]
fn a_picked_choice_with_next_goes_there_and_stores_its_value() {
    let flow = plan_flow();
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Answer("pro".into()));
    assert_eq!(result.outputs, [visitor("pro"), bot("Pro it is"), ended()]);
    assert_eq!(state.answers, object(json!({"plan": "pro_monthly"})));
}

#[test]
fn a_picked_choice_without_next_goes_to_the_blocks_next_and_stores_its_label() {
    let flow = plan_flow();
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Answer("FREE".into()));
    assert_eq!(
        result.outputs,
        [visitor("FREE"), bot("Free it is"), ended()]
    );
    assert_eq!(state.answers, object(json!({"plan": "Free"})));
}

#[test]
fn an_answer_that_is_no_choice_is_asked_again() {
    let flow = plan_flow();
    let (mut state, _) = start(&flow);
    let result = run(&flow, &mut state, Input::Answer("Gold".into()));
    assert_eq!(result.outputs.len(), 3);
    assert_eq!(
        result.outputs.get(1),
        Some(&Output::Say(ChatMessage::InvalidAnswer {
            text: "Please choose one of: Pro, Free.".into()
        }))
    );
    assert!(matches!(
        result.outputs.last(),
        Some(Output::Say(ChatMessage::Question { .. }))
    ));
    assert_eq!(state.position, awaiting_answer("q"));
}

#[test]
fn a_question_without_type_is_a_text_question_without_choices() {
    let mut q = plan_question();
    q.question_type = None;
    let flow = compile("q", vec![q]);
    let (_, result) = start(&flow);
    assert_eq!(result.outputs, [asks("Which plan?", QuestionType::Text)]);
}

#[test]
fn a_condition_block_takes_the_first_condition_that_holds() {
    let branch = Block {
        conditions: Some(vec![
            Condition {
                variable: "age".into(),
                operator: ConditionOperator::LessThan,
                value: Some("18".into()),
                all: None,
                any: None,
                next: "young".into(),
            },
            Condition {
                variable: "age".into(),
                operator: ConditionOperator::GreaterThan,
                value: Some("10".into()),
                all: None,
                any: None,
                next: "adult".into(),
            },
            Condition {
                variable: "age".into(),
                operator: ConditionOperator::IsSet,
                value: None,
                all: None,
                any: None,
                next: "young".into(),
            },
        ]),
        next: Some("unknown".into()),
        ..Block::new("c", BlockKind::Condition)
    };
    let flow = compile(
        "c",
        vec![
            branch,
            message("young", "young", None),
            message("adult", "adult", None),
            message("unknown", "unknown", None),
        ],
    );
    let cases = [
        (json!({"age": 12}), "young"),
        (json!({"age": "40"}), "adult"),
        (json!({"age": "n/a"}), "young"),
        (json!({}), "unknown"),
    ];
    for (variables, said) in cases {
        let mut state = State::new(object(variables));
        let result = run(&flow, &mut state, Input::Start);
        assert_eq!(result.outputs, [bot(said), ended()], "{said}");
    }
}

#[test]
fn a_condition_block_without_a_holding_condition_or_next_ends() {
    let flow = compile("c", vec![Block::new("c", BlockKind::Condition)]);
    let (state, result) = start(&flow);
    assert_eq!(result.outputs, [ended()]);
    assert!(state.is_ended());
}

#[test]
fn prefilled_variables_are_used_by_templates_and_conditions() {
    let flow = compile(
        "c",
        vec![
            Block {
                conditions: Some(vec![Condition {
                    variable: "customer.tier".into(),
                    operator: ConditionOperator::Equals,
                    value: Some("GOLD".into()),
                    all: None,
                    any: None,
                    next: "gold".into(),
                }]),
                ..Block::new("c", BlockKind::Condition)
            },
            message("gold", "Welcome back, {{customer.name}}!", None),
        ],
    );
    let prefilled = object(json!({"customer": {"name": "Ada", "tier": "gold"}}));
    let mut state = State::new(prefilled.clone());
    let result = run(&flow, &mut state, Input::Start);
    assert_eq!(result.outputs, [bot("Welcome back, Ada!"), ended()]);
    assert_eq!(state.variables, prefilled);
    assert!(state.answers.is_empty());
}

#[test]
fn chat_messages_serialize_as_tagged_events() {
    let question = ChatMessage::Question {
        text: "Email?".into(),
        question_type: QuestionType::Email,
        choices: None,
    };
    assert_eq!(
        serde_json::to_value(&question).ok(),
        Some(json!({"type": "QUESTION", "text": "Email?", "questionType": "EMAIL"}))
    );
    assert_eq!(
        serde_json::to_value(ChatMessage::InvalidAnswer { text: "no".into() }).ok(),
        Some(json!({"type": "INVALID_ANSWER", "text": "no"}))
    );
    assert_eq!(
        serde_json::to_value(ChatMessage::Ended { error: None }).ok(),
        Some(json!({"type": "ENDED"}))
    );
}

#[test]
fn webhook_bodies_drive_the_flow_end_to_end() {
    let (flow, mut state) = sync_webhook_flow();
    let body = br#"{"responses":[{"type":"set","variables":{"n":2}},{"type":"text","text":"n={{n}}"},{"type":"goto","blockId":"other"}]}"#;
    let result = run(
        &flow,
        &mut state,
        Input::WebhookResult(WebhookOutcome::from_body(body)),
    );
    assert_eq!(
        result.outputs,
        [bot("n=2"), asks("Your other?", QuestionType::Text)]
    );
}

#[test]
fn wrong_answers_past_max_attempts_go_where_the_author_said() {
    let ask = Block {
        max_attempts: Some(2),
        on_max_attempts: Some("help".into()),
        ..question("q", QuestionType::Email, "email", Some("done"))
    };
    let flow = compile(
        "q",
        vec![
            ask,
            message("help", "Let us call you instead.", None),
            end("done"),
        ],
    );
    let (mut state, _) = start(&flow);
    let first = run(&flow, &mut state, Input::Answer("nope".into()));
    assert!(matches!(state.position, Position::AwaitingAnswer { .. }));
    assert_eq!(state.attempts, 1);
    assert!(matches!(
        first.outputs.last(),
        Some(Output::Say(ChatMessage::Question { .. }))
    ));
    let second = run(&flow, &mut state, Input::Answer("still no".into()));
    assert_eq!(state.position, Position::Ended);
    let said: Vec<&ChatMessage> = second
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Say(m) => Some(m),
            _ => None,
        })
        .collect();
    assert!(matches!(said[1], ChatMessage::InvalidAnswer { .. }));
    assert_eq!(
        said[2],
        &ChatMessage::BotMessage {
            text: "Let us call you instead.".into()
        }
    );
    assert_eq!(state.attempts, 0);
}

#[test]
fn a_valid_answer_resets_the_attempts_of_the_next_question() {
    let ask = Block {
        max_attempts: Some(2),
        on_max_attempts: Some("done".into()),
        ..question("q", QuestionType::Number, "n", Some("q2"))
    };
    let again = Block {
        max_attempts: Some(2),
        on_max_attempts: Some("done".into()),
        ..question("q2", QuestionType::Number, "m", Some("done"))
    };
    let flow = compile("q", vec![ask, again, end("done")]);
    let (mut state, _) = start(&flow);
    run(&flow, &mut state, Input::Answer("x".into()));
    run(&flow, &mut state, Input::Answer("3".into()));
    assert_eq!(state.attempts, 0);
    run(&flow, &mut state, Input::Answer("y".into()));
    assert!(
        matches!(state.position, Position::AwaitingAnswer { ref block_id } if block_id == "q2")
    );
}

#[test]
fn rating_and_yes_no_questions_offer_their_choices() {
    let flow = compile(
        "r",
        vec![Block {
            rating_max: Some(3),
            ..question("r", QuestionType::Rating, "score", None)
        }],
    );
    let (_, result) = start(&flow);
    let Some(Output::Say(ChatMessage::Question { choices, .. })) = result.outputs.last() else {
        panic!("a question: {result:?}");
    };
    let labels: Vec<&str> = choices.iter().flatten().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["1", "2", "3"]);
}

fn split_flow() -> CompiledFlow {
    compile(
        "ab",
        vec![
            Block {
                branches: Some(vec![
                    Branch {
                        weight: 1,
                        next: "a".into(),
                    },
                    Branch {
                        weight: 3,
                        next: "b".into(),
                    },
                ]),
                ..Block::new("ab", BlockKind::Split)
            },
            message("a", "Variant A", None),
            message("b", "Variant B", None),
        ],
    )
}

#[test]
fn a_split_draws_by_weight_from_the_seed_and_records_its_draw() {
    let flow = split_flow();
    let mut seen_b = 0;
    for seed in 0..400u64 {
        let mut state = State {
            seed,
            ..State::default()
        };
        let result = run(&flow, &mut state, Input::Start);
        let mut again = State {
            seed,
            ..State::default()
        };
        assert_eq!(
            run(&flow, &mut again, Input::Start),
            result,
            "same seed, same way"
        );
        let drawn = state
            .splits
            .get("ab")
            .copied()
            .expect("the draw is recorded");
        if drawn == 1 {
            seen_b += 1;
        }
    }
    // Weights 1:3 — about 300 of 400 take B.
    assert!((250..=350).contains(&seen_b), "{seen_b}");
}

#[test]
fn set_variable_stores_json_when_it_reads_as_json_and_text_otherwise() {
    let flow = compile(
        "n",
        vec![
            Block {
                variable: Some("n".into()),
                value: Some("{{age}}".into()),
                next: Some("t".into()),
                ..Block::new("n", BlockKind::SetVariable)
            },
            Block {
                variable: Some("t".into()),
                value: Some("Hi {{name}}".into()),
                next: Some("r".into()),
                ..Block::new("t", BlockKind::SetVariable)
            },
            Block {
                url: Some("https://example.com/{{t}}".into()),
                ..Block::new("r", BlockKind::Redirect)
            },
        ],
    );
    let mut state = State::new(object(json!({"age": 42, "name": "Ada"})));
    let result = run(&flow, &mut state, Input::Start);
    assert_eq!(state.variables["n"], json!(42));
    assert_eq!(state.variables["t"], json!("Hi Ada"));
    assert_eq!(
        result.outputs[0],
        Output::Say(ChatMessage::Redirect {
            url: "https://example.com/Hi Ada".into()
        })
    );
}

#[test]
fn set_variable_keeps_as_text_json_that_would_decode_to_a_nul() {
    let flow = compile(
        "v",
        vec![Block {
            variable: Some("v".into()),
            value: Some(r#"{"k": "{{typed}}"}"#.into()),
            ..Block::new("v", BlockKind::SetVariable)
        }],
    );
    // A visitor typed the six characters of the escape; the answer holds no NUL.
    let mut state = State::new(object(json!({"typed": r"\u0000"})));
    run(&flow, &mut state, Input::Start);
    assert_eq!(state.variables["v"], json!(r#"{"k": "\u0000"}"#));
}
