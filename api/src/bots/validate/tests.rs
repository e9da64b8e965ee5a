//! Unit and property tests of flow validation.
use proptest::prelude::*;

use super::*;
use crate::engine::model::{Choice, Condition};
use crate::engine::proptests::{arb_flow, arb_inputs, arb_prefilled, arb_shaped_flow, drive};
use crate::engine::{ChatMessage, CompiledFlow, Output};

mod richer;

fn flow(start: &str, blocks: Vec<Block>) -> Flow {
    Flow {
        start_block_id: Some(start.to_owned()),
        blocks,
    }
}

fn check(flow: &Flow) -> Vec<Problem> {
    validate_flow(flow, &|id| id == "wh_1", &Limits::default())
}

/// The (block, field) pairs of the problems, for compact assertions.
fn spots(problems: &[Problem]) -> Vec<(Option<&str>, &str)> {
    problems
        .iter()
        .map(|p| (p.block_id.as_deref(), p.field.as_str()))
        .collect()
}

fn spot(problem: &Problem) -> Vec<(Option<&str>, &str)> {
    spots(std::slice::from_ref(problem))
}

fn only_problem(flow: &Flow) -> Problem {
    let mut problems = check(flow);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    problems.remove(0)
}

fn message(id: &str, next: Option<&str>) -> Block {
    Block {
        text: Some(format!("I am {id}")),
        next: next.map(str::to_owned),
        ..Block::new(id, BlockKind::Message)
    }
}

fn question(id: &str, next: Option<&str>) -> Block {
    Block {
        text: Some("Name?".into()),
        save_answer_to: Some("name".into()),
        next: next.map(str::to_owned),
        ..Block::new(id, BlockKind::Question)
    }
}

fn choice(label: &str, next: Option<&str>) -> Choice {
    Choice {
        label: label.into(),
        value: None,
        next: next.map(str::to_owned),
    }
}

fn choice_question(id: &str, choices: Vec<Choice>) -> Block {
    Block {
        question_type: Some(QuestionType::Choice),
        choices: Some(choices),
        ..question(id, None)
    }
}

fn condition(variable: &str, operator: ConditionOperator, value: Option<&str>) -> Condition {
    Condition::test(variable, operator, value, "end")
}

fn condition_block(conditions: Vec<Condition>) -> Block {
    Block {
        conditions: Some(conditions),
        ..Block::new("c", BlockKind::Condition)
    }
}

fn with_end(start: &str, mut blocks: Vec<Block>) -> Flow {
    blocks.push(Block::new("end", BlockKind::End));
    flow(start, blocks)
}

fn seed_flow() -> Flow {
    flow(
        "hello",
        vec![
            message("hello", Some("email")),
            Block {
                question_type: Some(QuestionType::Email),
                save_answer_to: Some("email".into()),
                ..question("email", Some("phone"))
            },
            Block {
                question_type: Some(QuestionType::Phone),
                save_answer_to: Some("phone_number".into()),
                ..question("phone", Some("notify"))
            },
            Block {
                webhook_id: Some("wh_1".into()),
                is_async: Some(true),
                next: Some("bye".into()),
                ..Block::new("notify", BlockKind::Webhook)
            },
            Block::new("bye", BlockKind::End),
        ],
    )
}

#[test]
fn the_seed_flow_is_valid() {
    assert_eq!(check(&seed_flow()), []);
    assert_eq!(unreachable_blocks(&seed_flow()), Vec::<String>::new());
}

#[test]
fn an_empty_flow_is_a_valid_draft() {
    assert_eq!(check(&Flow::default()), []);
    assert_eq!(check(&flow("", vec![])), []);
}

#[test]
fn an_empty_flow_with_a_start_block_is_reported() {
    let problem = only_problem(&flow("hello", vec![]));
    assert_eq!(spot(&problem), [(None, "startBlockId")]);
    assert!(problem.message.contains("no blocks"), "{}", problem.message);
}

#[test]
fn too_many_blocks_are_reported() {
    let limits = Limits {
        max_blocks: 2,
        ..Limits::default()
    };
    let flow = with_end(
        "a",
        vec![message("a", Some("b")), message("b", Some("end"))],
    );
    let problems = validate_flow(&flow, &|_| true, &limits);
    assert_eq!(spots(&problems), [(None, "blocks")]);
    assert_eq!(
        problems[0].message,
        "The flow has 3 blocks; at most 2 are allowed."
    );
}

#[test]
fn a_missing_start_block_id_is_reported() {
    for start in [None, Some(String::new()), Some("  ".to_owned())] {
        let flow = Flow {
            start_block_id: start,
            blocks: vec![Block::new("end", BlockKind::End)],
        };
        let problem = only_problem(&flow);
        assert_eq!(problem.field, "startBlockId");
        assert_eq!(problem.message, "The flow needs a start block.");
    }
}

#[test]
fn a_start_block_that_does_not_exist_is_reported() {
    let problem = only_problem(&with_end("ghost", vec![]));
    assert_eq!(spot(&problem), [(None, "startBlockId")]);
    assert_eq!(problem.message, "The start block \"ghost\" does not exist.");
}

#[test]
fn an_empty_block_id_is_reported() {
    let problems = check(&with_end("end", vec![Block::new(" ", BlockKind::End)]));
    assert_eq!(spots(&problems), [(Some(" "), "id")]);
    assert_eq!(problems[0].message, "Block #1 has an empty id.");
}

#[test]
fn a_duplicate_block_id_is_reported_on_the_later_block() {
    let flow = with_end("end", vec![Block::new("end", BlockKind::End)]);
    let problems = check(&flow);
    assert_eq!(spots(&problems), [(Some("end"), "id")]);
    assert_eq!(
        problems[0].message,
        "The id \"end\" is used by more than one block."
    );
}

#[test]
fn a_next_to_a_missing_block_is_reported() {
    let problem = only_problem(&with_end("a", vec![message("a", Some("ghost"))]));
    assert_eq!(spot(&problem), [(Some("a"), "next")]);
    assert_eq!(problem.message, "The next block \"ghost\" does not exist.");
}

#[test]
fn an_empty_next_is_reported() {
    let problem = only_problem(&with_end("a", vec![message("a", Some(""))]));
    assert_eq!(spot(&problem), [(Some("a"), "next")]);
    assert!(problem.message.contains("empty"), "{}", problem.message);
}

#[test]
fn a_choice_next_to_a_missing_block_is_reported() {
    let q = choice_question(
        "q",
        vec![choice("A", Some("end")), choice("B", Some("ghost"))],
    );
    let problem = only_problem(&with_end("q", vec![q]));
    assert_eq!(spot(&problem), [(Some("q"), "choices[1].next")]);
    assert!(problem.message.contains("ghost"));
}

#[test]
fn a_condition_next_to_a_missing_block_is_reported() {
    let mut broken = condition("v", ConditionOperator::IsSet, None);
    broken.next = "ghost".into();
    let block = condition_block(vec![condition("v", ConditionOperator::IsSet, None), broken]);
    let problem = only_problem(&with_end("c", vec![block]));
    assert_eq!(spot(&problem), [(Some("c"), "conditions[1].next")]);
    assert!(problem.message.contains("ghost"));
}

#[test]
fn a_message_without_text_is_reported() {
    for text in [None, Some(" \n".to_owned())] {
        let block = Block {
            text,
            ..message("a", Some("end"))
        };
        let problem = only_problem(&with_end("a", vec![block]));
        assert_eq!(spot(&problem), [(Some("a"), "text")]);
        assert_eq!(problem.message, "A message block needs a text.");
    }
}

#[test]
fn a_question_without_text_is_reported() {
    let block = Block {
        text: None,
        ..question("q", Some("end"))
    };
    let problem = only_problem(&with_end("q", vec![block]));
    assert_eq!(spot(&problem), [(Some("q"), "text")]);
    assert_eq!(problem.message, "A question block needs a text.");
}

#[test]
fn choices_on_a_non_choice_question_are_reported() {
    let block = Block {
        question_type: Some(QuestionType::Email),
        choices: Some(vec![choice("A", None)]),
        ..question("q", None)
    };
    let problem = only_problem(&with_end("q", vec![block]));
    assert_eq!(spot(&problem), [(Some("q"), "choices")]);
    assert!(problem.message.contains("EMAIL"), "{}", problem.message);
}

#[test]
fn a_choice_question_without_choices_is_reported() {
    for choices in [None, Some(vec![])] {
        let block = Block {
            question_type: Some(QuestionType::Choice),
            choices,
            ..question("q", None)
        };
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(spot(&problem), [(Some("q"), "choices")]);
        assert_eq!(
            problem.message,
            "A CHOICE question needs at least one choice."
        );
    }
}

#[test]
fn too_many_choices_are_reported() {
    let choices = (0..51).map(|i| choice(&format!("c{i}"), None)).collect();
    let problem = only_problem(&with_end("q", vec![choice_question("q", choices)]));
    assert_eq!(spot(&problem), [(Some("q"), "choices")]);
    assert!(problem.message.contains("51"), "{}", problem.message);
}

#[test]
fn a_choice_with_a_blank_label_is_reported() {
    let block = choice_question("q", vec![choice("A", None), choice("  ", None)]);
    let problem = only_problem(&with_end("q", vec![block]));
    assert_eq!(spot(&problem), [(Some("q"), "choices[1].label")]);
    assert_eq!(problem.message, "Every choice needs a label.");
}

#[test]
fn duplicate_choice_labels_are_reported_case_insensitively() {
    let block = choice_question(
        "q",
        vec![
            choice("Yes", None),
            choice("No", None),
            choice(" yes", None),
        ],
    );
    let problem = only_problem(&with_end("q", vec![block]));
    assert_eq!(spot(&problem), [(Some("q"), "choices[2].label")]);
    assert!(problem.message.contains("more than one choice"));
}

#[test]
fn a_blank_save_answer_to_is_reported() {
    let block = Block {
        save_answer_to: Some(" ".into()),
        ..question("q", None)
    };
    let problem = only_problem(&with_end("q", vec![block]));
    assert_eq!(spot(&problem), [(Some("q"), "saveAnswerTo")]);
    assert!(problem.message.contains("empty"), "{}", problem.message);
}

#[test]
fn a_reserved_save_answer_to_is_reported() {
    for name in ["conversation", "Conversation", "visitor"] {
        let block = Block {
            save_answer_to: Some(name.into()),
            ..question("q", None)
        };
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(problem.field, "saveAnswerTo");
        assert!(problem.message.contains("reserved"), "{}", problem.message);
    }
}

#[test]
fn a_save_answer_to_that_is_not_an_identifier_is_reported() {
    for name in ["1st", "first-name", "first name", "prénom", " name", "a.b"] {
        let block = Block {
            save_answer_to: Some(name.into()),
            ..question("q", None)
        };
        let problem = only_problem(&with_end("q", vec![block]));
        assert_eq!(problem.field, "saveAnswerTo", "{name}");
        assert!(problem.message.contains("not a valid variable name"));
    }
}

#[test]
fn identifiers_with_letters_digits_and_underscores_are_valid_names() {
    for name in ["name", "_private", "phone_number", "Q2", "conversation_id"] {
        let block = Block {
            save_answer_to: Some(name.into()),
            ..question("q", None)
        };
        assert_eq!(check(&with_end("q", vec![block])), [], "{name}");
    }
}

#[test]
fn a_webhook_without_webhook_id_is_reported() {
    for webhook_id in [None, Some(String::new())] {
        let block = Block {
            webhook_id,
            ..Block::new("w", BlockKind::Webhook)
        };
        let problem = only_problem(&with_end("w", vec![block]));
        assert_eq!(spot(&problem), [(Some("w"), "webhookId")]);
        assert_eq!(problem.message, "A webhook block needs a webhook.");
    }
}

#[test]
fn a_webhook_that_does_not_exist_is_reported() {
    let block = Block {
        webhook_id: Some("wh_gone".into()),
        ..Block::new("w", BlockKind::Webhook)
    };
    let problem = only_problem(&with_end("w", vec![block]));
    assert_eq!(spot(&problem), [(Some("w"), "webhookId")]);
    assert_eq!(problem.message, "The webhook \"wh_gone\" does not exist.");
}

#[test]
fn a_condition_block_without_conditions_is_reported() {
    for conditions in [None, Some(vec![])] {
        let block = Block {
            conditions,
            ..Block::new("c", BlockKind::Condition)
        };
        let problem = only_problem(&with_end("c", vec![block]));
        assert_eq!(spot(&problem), [(Some("c"), "conditions")]);
        assert_eq!(
            problem.message,
            "A condition block needs at least one condition."
        );
    }
}

#[test]
fn too_many_conditions_are_reported() {
    let conditions = (0..51)
        .map(|_| condition("v", ConditionOperator::IsSet, None))
        .collect();
    let problem = only_problem(&with_end("c", vec![condition_block(conditions)]));
    assert_eq!(spot(&problem), [(Some("c"), "conditions")]);
    assert!(problem.message.contains("51"), "{}", problem.message);
}

#[test]
fn a_condition_with_an_empty_variable_is_reported() {
    let block = condition_block(vec![condition(" ", ConditionOperator::IsSet, None)]);
    let problem = only_problem(&with_end("c", vec![block]));
    assert_eq!(spot(&problem), [(Some("c"), "conditions[0].variable")]);
    assert_eq!(problem.message, "Every condition needs a variable.");
}

#[test]
fn a_condition_without_value_is_reported_unless_it_tests_presence() {
    use ConditionOperator::*;
    for operator in [Equals, NotEquals, Contains, GreaterThan, LessThan] {
        let block = condition_block(vec![condition("v", operator, None)]);
        let problem = only_problem(&with_end("c", vec![block]));
        assert_eq!(spot(&problem), [(Some("c"), "conditions[0].value")]);
        assert!(problem.message.contains("needs a value"));
    }
    for operator in [IsSet, IsNotSet] {
        let block = condition_block(vec![condition("v", operator, None)]);
        assert_eq!(check(&with_end("c", vec![block])), []);
    }
}

#[test]
fn a_numeric_condition_with_a_non_number_value_is_reported() {
    let block = condition_block(vec![
        condition("v", ConditionOperator::GreaterThan, Some("10")),
        condition("v", ConditionOperator::LessThan, Some("ten")),
    ]);
    let problem = only_problem(&with_end("c", vec![block]));
    assert_eq!(spot(&problem), [(Some("c"), "conditions[1].value")]);
    assert_eq!(
        problem.message,
        "LESS_THAN compares numbers, but \"ten\" is not a number."
    );
}

#[test]
fn fields_the_kind_does_not_use_are_reported() {
    let message_block = Block {
        question_type: Some(QuestionType::Text),
        save_answer_to: Some("x".into()),
        choices: Some(vec![choice("A", None)]),
        webhook_id: Some("wh_1".into()),
        is_async: Some(true),
        conditions: Some(vec![condition("v", ConditionOperator::IsSet, None)]),
        ..message("m", Some("q"))
    };
    let question_block = Block {
        webhook_id: Some("wh_1".into()),
        ..question("q", Some("w"))
    };
    let webhook_block = Block {
        text: Some("hi".into()),
        webhook_id: Some("wh_1".into()),
        conditions: Some(vec![condition("v", ConditionOperator::IsSet, None)]),
        next: Some("c".into()),
        ..Block::new("w", BlockKind::Webhook)
    };
    let condition_block = Block {
        is_async: Some(false),
        next: Some("end".into()),
        ..condition_block(vec![condition("v", ConditionOperator::IsSet, None)])
    };
    let end_block = Block {
        text: Some("bye".into()),
        next: Some("m".into()),
        ..Block::new("end", BlockKind::End)
    };
    let flow = flow(
        "m",
        vec![
            message_block,
            question_block,
            webhook_block,
            condition_block,
            end_block,
        ],
    );
    let problems = check(&flow);
    assert_eq!(
        spots(&problems),
        [
            (Some("m"), "questionType"),
            (Some("m"), "saveAnswerTo"),
            (Some("m"), "choices"),
            (Some("m"), "webhookId"),
            (Some("m"), "async"),
            (Some("m"), "conditions"),
            (Some("q"), "webhookId"),
            (Some("w"), "text"),
            (Some("w"), "conditions"),
            (Some("c"), "async"),
            (Some("end"), "text"),
            (Some("end"), "next"),
        ]
    );
    // The END block's unused `next` back to "m" is no loop: the engine
    // never follows it.
    assert_eq!(
        problems[0].message,
        "A MESSAGE block does not use questionType; remove it."
    );
}

#[test]
fn empty_unused_fields_are_not_reported() {
    let block = Block {
        save_answer_to: Some(String::new()),
        choices: Some(vec![]),
        webhook_id: Some(String::new()),
        conditions: Some(vec![]),
        ..message("m", Some("end"))
    };
    let end = Block {
        text: Some(String::new()),
        next: Some(String::new()),
        ..Block::new("end", BlockKind::End)
    };
    assert_eq!(check(&flow("m", vec![block, end])), []);
}

#[test]
fn a_text_longer_than_the_limit_is_reported() {
    let limits = Limits {
        max_text_len: 5,
        ..Limits::default()
    };
    let long_message = Block {
        text: Some("ééééé!".into()),
        ..message("m", Some("q"))
    };
    let short_message = Block {
        text: Some("ééééé".into()),
        ..message("n", Some("q"))
    };
    let long_label = Block {
        text: Some("Pick".into()),
        ..choice_question("q", vec![choice("Fine", None), choice("Too long", None)])
    };
    let flow = with_end("m", vec![long_message, short_message, long_label]);
    let problems = validate_flow(&flow, &|_| true, &limits);
    assert_eq!(
        spots(&problems),
        [(Some("m"), "text"), (Some("q"), "choices[1].label")]
    );
    assert_eq!(
        problems[0].message,
        "The text is 6 characters long; at most 5 are allowed."
    );
}

#[test]
fn a_loop_without_a_question_is_reported_once_on_its_smallest_block() {
    let flow = with_end(
        "c",
        vec![
            message("c", Some("b")),
            message("b", Some("d")),
            Block {
                conditions: Some(vec![Condition {
                    next: "end".into(),
                    ..condition("v", ConditionOperator::IsSet, None)
                }]),
                next: Some("b".into()),
                ..Block::new("d", BlockKind::Condition)
            },
        ],
    );
    let problems = check(&flow);
    assert_eq!(spots(&problems), [(Some("b"), "next")]);
    assert_eq!(
        problems[0].message,
        "The blocks \"b\", \"d\" form a loop with no question, so a visitor could never leave it."
    );
}

#[test]
fn a_block_leading_to_itself_is_reported() {
    let problems = check(&flow("a", vec![message("a", Some("a"))]));
    assert_eq!(spots(&problems), [(Some("a"), "next")]);
    assert!(problems[0].message.contains("back to itself"));
}

#[test]
fn separate_loops_are_reported_separately_in_id_order() {
    let flow = flow(
        "z",
        vec![
            message("z", Some("y")),
            message("y", Some("z")),
            message("a", Some("a")),
        ],
    );
    assert_eq!(
        spots(&check(&flow)),
        [(Some("a"), "next"), (Some("y"), "next")]
    );
}

#[test]
fn a_loop_through_a_question_is_fine() {
    let flow = flow("a", vec![message("a", Some("q")), question("q", Some("a"))]);
    assert_eq!(check(&flow), []);
}

#[test]
fn a_loop_that_bypasses_the_question_of_a_larger_loop_is_reported() {
    let branch = Block {
        conditions: Some(vec![Condition {
            next: "q".into(),
            ..condition("v", ConditionOperator::IsSet, None)
        }]),
        next: Some("a".into()),
        ..Block::new("b", BlockKind::Condition)
    };
    let flow = flow(
        "a",
        vec![message("a", Some("b")), branch, question("q", Some("a"))],
    );
    let problems = check(&flow);
    assert_eq!(spots(&problems), [(Some("a"), "next")]);
    assert!(problems[0].message.contains("\"a\", \"b\""));
}

#[test]
fn a_very_long_chain_does_not_overflow_the_stack() {
    let count = 50_000;
    let mut blocks: Vec<Block> = (0..count)
        .map(|i| message(&format!("m{i}"), Some(&format!("m{}", i + 1))))
        .collect();
    blocks.push(message(&format!("m{count}"), Some("m0")));
    let flow = flow("m0", blocks);
    let limits = Limits {
        max_blocks: usize::MAX,
        ..Limits::default()
    };
    let problems = validate_flow(&flow, &|_| true, &limits);
    assert_eq!(spots(&problems), [(Some("m0"), "next")]);
    assert_eq!(unreachable_blocks(&flow), Vec::<String>::new());
}

#[test]
fn every_problem_is_reported_at_once_in_a_stable_order() {
    let flow = flow(
        "ghost",
        vec![
            Block {
                text: None,
                next: Some("nowhere".into()),
                ..message("a", None)
            },
            Block::new("a", BlockKind::Webhook),
            condition_block(vec![condition("", ConditionOperator::Equals, None)]),
        ],
    );
    let problems = check(&flow);
    assert_eq!(
        spots(&problems),
        [
            (None, "startBlockId"),
            (Some("a"), "text"),
            (Some("a"), "next"),
            (Some("a"), "id"),
            (Some("a"), "webhookId"),
            (Some("c"), "conditions[0].variable"),
            (Some("c"), "conditions[0].value"),
            (Some("c"), "conditions[0].next"),
        ]
    );
    assert_eq!(check(&flow), problems);
}

#[test]
fn problems_serialize_with_camel_case_fields() {
    let problem = Problem {
        block_id: Some("a".into()),
        field: "next".into(),
        message: "m".into(),
    };
    assert_eq!(
        serde_json::to_value(&problem).ok(),
        Some(serde_json::json!({"blockId": "a", "field": "next", "message": "m"}))
    );
}

#[test]
fn unreachable_blocks_are_those_no_path_from_the_start_reaches() {
    let q = choice_question("q", vec![choice("A", Some("picked")), choice("B", None)]);
    let branch = Block {
        conditions: Some(vec![Condition {
            next: "q".into(),
            ..condition("v", ConditionOperator::IsSet, None)
        }]),
        next: Some("end".into()),
        ..Block::new("c", BlockKind::Condition)
    };
    let flow = with_end(
        "c",
        vec![
            message("orphan", Some("also_orphan")),
            branch,
            q,
            message("picked", None),
            message("also_orphan", Some("c")),
        ],
    );
    assert_eq!(unreachable_blocks(&flow), ["orphan", "also_orphan"]);
}

#[test]
fn without_a_valid_start_every_block_is_unreachable() {
    let blocks = vec![message("a", Some("b")), message("b", None)];
    assert_eq!(
        unreachable_blocks(&flow("ghost", blocks.clone())),
        ["a", "b"]
    );
    let no_start = Flow {
        start_block_id: None,
        blocks,
    };
    assert_eq!(unreachable_blocks(&no_start), ["a", "b"]);
    assert_eq!(unreachable_blocks(&Flow::default()), Vec::<String>::new());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validation_is_deterministic_and_names_only_existing_blocks(flow in arb_flow()) {
        let problems = check(&flow);
        prop_assert_eq!(&problems, &check(&flow));
        for problem in &problems {
            if let Some(id) = &problem.block_id {
                prop_assert!(flow.blocks.iter().any(|block| &block.id == id));
            }
            prop_assert!(!problem.message.is_empty());
        }
        let unreachable = unreachable_blocks(&flow);
        prop_assert_eq!(&unreachable, &unreachable_blocks(&flow));
    }

    #[test]
    fn a_flow_that_passes_validation_never_stops_with_an_error(
        flow in arb_shaped_flow(),
        prefilled in arb_prefilled(),
        inputs in arb_inputs(),
    ) {
        if check(&flow).is_empty() {
            let results = drive(&CompiledFlow::new(flow), prefilled, inputs)?;
            for output in results.iter().flat_map(|result| &result.outputs) {
                prop_assert!(
                    !matches!(output, Output::Say(ChatMessage::Ended { error: Some(_) })),
                    "{:?}",
                    output
                );
            }
        }
    }

    #[test]
    fn a_flow_with_a_question_less_loop_is_never_valid(flow in arb_shaped_flow()) {
        // Walk the runtime's own edges: if some walk from any block
        // revisits a block before meeting a question, validation must
        // have said so.
        let compiled = CompiledFlow::new(flow.clone());
        let has_loop = flow.blocks.iter().any(|block| loops_without_question(&compiled, block));
        if has_loop {
            prop_assert!(check(&flow).iter().any(|p| p.message.contains("loop")
                || p.message.contains("itself")));
        }
    }
}

/// Depth-first search over non-question blocks from `start`'s targets;
/// true if it can come back to `start` without passing a question.
fn loops_without_question(flow: &CompiledFlow, start: &Block) -> bool {
    if start.kind == BlockKind::Question {
        return false;
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<&str> = start.targets().collect();
    while let Some(id) = stack.pop() {
        if id == start.id {
            return true;
        }
        let Some(block) = flow.block(id) else {
            continue;
        };
        if block.kind != BlockKind::Question && seen.insert(id) {
            stack.extend(block.targets());
        }
    }
    false
}
