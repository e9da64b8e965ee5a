//! Validation of the richer-flows additions: a condition's nested `all`/`any` groups, and
//! loops through pauses.

use super::*;
use crate::engine::model::{MAX_RULE_DEPTH, Rule};

fn rule(variable: &str, operator: ConditionOperator, value: Option<&str>) -> Rule {
    Rule {
        variable: Some(variable.into()),
        operator: Some(operator),
        value: value.map(str::to_owned),
        ..Rule::default()
    }
}

#[test]
fn well_formed_nested_groups_pass() {
    let inner = Rule {
        any: Some(vec![
            rule("plan", ConditionOperator::Equals, Some("pro")),
            rule("seats", ConditionOperator::GreaterThan, Some("10")),
        ]),
        ..Rule::default()
    };
    let grouped = Condition {
        all: Some(vec![rule("email", ConditionOperator::IsSet, None), inner]),
        ..condition("name", ConditionOperator::IsSet, None)
    };
    assert_eq!(
        check(&with_end("c", vec![condition_block(vec![grouped])])),
        []
    );
}

#[test]
fn malformed_groups_are_each_reported_with_their_path() {
    let grouped = Condition {
        all: Some(vec![
            // Neither a test nor a group.
            Rule::default(),
            // A variable without an operator.
            Rule {
                variable: Some("x".into()),
                all: Some(vec![rule("y", ConditionOperator::IsSet, None)]),
                ..Rule::default()
            },
            // An operator without a variable, and a comparison with a word.
            Rule {
                operator: Some(ConditionOperator::LessThan),
                value: Some("ten".into()),
                ..Rule::default()
            },
        ]),
        any: Some(vec![]),
        ..condition("name", ConditionOperator::IsSet, None)
    };
    let problems = check(&with_end("c", vec![condition_block(vec![grouped])]));
    assert_eq!(
        spots(&problems),
        [
            (Some("c"), "conditions[0].all[0].operator"),
            (Some("c"), "conditions[0].all[1].operator"),
            (Some("c"), "conditions[0].all[2].variable"),
            (Some("c"), "conditions[0].all[2].value"),
            (Some("c"), "conditions[0].any"),
        ],
        "{problems:#?}"
    );
    assert!(
        problems[4].message.contains("at least one rule"),
        "{problems:#?}"
    );
}

#[test]
fn groups_nested_too_deep_are_reported_once() {
    let mut deepest = rule("v", ConditionOperator::IsSet, None);
    for _ in 0..MAX_RULE_DEPTH {
        deepest = Rule {
            any: Some(vec![deepest]),
            ..Rule::default()
        };
    }
    let grouped = Condition {
        all: Some(vec![deepest]),
        ..condition("name", ConditionOperator::IsSet, None)
    };
    let problem = only_problem(&with_end("c", vec![condition_block(vec![grouped])]));
    assert_eq!(
        spot(&problem),
        [(
            Some("c"),
            "conditions[0].all[0].any[0].any[0].any[0].any[0].any"
        )]
    );
    assert!(
        problem.message.contains("at most 5 levels"),
        "{}",
        problem.message
    );
}

#[test]
fn a_pattern_nested_in_a_group_is_compiled_at_save() {
    let grouped = Condition {
        any: Some(vec![rule("v", ConditionOperator::Matches, Some("("))]),
        ..condition("name", ConditionOperator::IsSet, None)
    };
    let problem = only_problem(&with_end("c", vec![condition_block(vec![grouped])]));
    assert_eq!(spot(&problem), [(Some("c"), "conditions[0].any[0].value")]);
}

#[test]
fn a_loop_through_a_wait_is_still_a_loop() {
    let wait = Block {
        seconds: Some(1),
        next: Some("w".into()),
        ..Block::new("w", BlockKind::Wait)
    };
    let problem = only_problem(&flow("w", vec![wait]));
    assert_eq!(spot(&problem), [(Some("w"), "next")]);
}
