//! Evaluating the conditions of a CONDITION block.

use serde_json::{Map, Value};

use super::compiled::CompiledFlow;
use super::model::{Condition, ConditionOperator, MAX_RULE_DEPTH, Rule};
use super::template::{display, lookup};

/// Whether `condition` holds on the context variables: its own test, every rule of its `all`
/// group and at least one of its `any` group (when given). MATCHES reads its compiled pattern
/// from `flow`.
pub fn holds(condition: &Condition, variables: &Map<String, Value>, flow: &CompiledFlow) -> bool {
    let own = test(
        &condition.variable,
        condition.operator,
        condition.value.as_deref(),
        variables,
        flow,
    );
    own && groups_hold(
        condition.all.as_deref(),
        condition.any.as_deref(),
        variables,
        flow,
        1,
    )
}

/// Whether the `all` and `any` groups at `depth` hold. Rules nested deeper than
/// [`MAX_RULE_DEPTH`] never hold: validation refuses them, and a stored flow that slipped
/// through must not recurse without bound.
fn groups_hold(
    all: Option<&[Rule]>,
    any: Option<&[Rule]>,
    variables: &Map<String, Value>,
    flow: &CompiledFlow,
    depth: usize,
) -> bool {
    let rule_holds =
        |rule: &Rule| depth <= MAX_RULE_DEPTH && rule_holds(rule, variables, flow, depth);
    let all_hold = all.is_none_or(|rules| rules.iter().all(rule_holds));
    // An empty `any` is refused at save; were one stored, it constrains nothing.
    let any_holds = any.is_none_or(|rules| rules.is_empty() || rules.iter().any(rule_holds));
    all_hold && any_holds
}

fn rule_holds(
    rule: &Rule,
    variables: &Map<String, Value>,
    flow: &CompiledFlow,
    depth: usize,
) -> bool {
    let own = match rule.operator {
        Some(operator) => test(
            rule.variable.as_deref().unwrap_or_default(),
            operator,
            rule.value.as_deref(),
            variables,
            flow,
        ),
        None => true,
    };
    own && groups_hold(
        rule.all.as_deref(),
        rule.any.as_deref(),
        variables,
        flow,
        depth + 1,
    )
}

/// One comparison of a variable with a value.
fn test(
    variable: &str,
    operator: ConditionOperator,
    value: Option<&str>,
    variables: &Map<String, Value>,
    flow: &CompiledFlow,
) -> bool {
    // A null variable is treated as missing: a webhook that clears a value
    // usually sends null rather than deleting the key.
    let variable = lookup(variables, variable.trim()).filter(|value| !value.is_null());
    let expected = value.unwrap_or_default();
    match operator {
        ConditionOperator::Equals => variable.is_some_and(|value| equals(value, expected)),
        ConditionOperator::NotEquals => !variable.is_some_and(|value| equals(value, expected)),
        ConditionOperator::Contains => variable.is_some_and(|value| contains(value, expected)),
        ConditionOperator::GreaterThan => compare(variable, expected, |a, b| a > b),
        ConditionOperator::LessThan => compare(variable, expected, |a, b| a < b),
        ConditionOperator::IsSet => is_set(variable),
        ConditionOperator::IsNotSet => !is_set(variable),
        ConditionOperator::IsEmpty => is_empty(variable),
        ConditionOperator::Matches => variable.is_some_and(|value| {
            flow.pattern(expected)
                .is_some_and(|re| re.is_match(&display(value)))
        }),
    }
}

fn is_empty(variable: Option<&Value>) -> bool {
    match variable {
        None => true,
        Some(Value::String(text)) => text.trim().is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(map)) => map.is_empty(),
        Some(_) => false,
    }
}

fn is_set(variable: Option<&Value>) -> bool {
    variable.is_some_and(|value| value.as_str() != Some(""))
}

fn equals(value: &Value, expected: &str) -> bool {
    match (as_number(value), parse_number(expected)) {
        (Some(a), Some(b)) => a == b,
        _ => display(value).trim().to_lowercase() == expected.trim().to_lowercase(),
    }
}

fn contains(value: &Value, expected: &str) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|item| equals(item, expected)),
        other => display(other)
            .to_lowercase()
            .contains(&expected.to_lowercase()),
    }
}

fn compare(variable: Option<&Value>, expected: &str, order: fn(f64, f64) -> bool) -> bool {
    match (variable.and_then(as_number), parse_number(expected)) {
        (Some(a), Some(b)) => order(a, b),
        _ => false,
    }
}

/// Numbers and numeric strings compare as numbers; booleans do not.
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => parse_number(text),
        _ => None,
    }
}

fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    // Rust's float parser also takes "inf" and "NaN"; only digits count.
    if !text.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse::<f64>().ok().filter(|value| value.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Map<String, Value> {
        match json!({
            "name": "Ada",
            "age": 36,
            "score": "7.50",
            "empty": "",
            "nothing": null,
            "flag": true,
            "tags": ["vip", "Beta", 3],
            "order": {"status": "Shipped", "total": 120.5}
        }) {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn check(variable: &str, operator: ConditionOperator, value: Option<&str>) -> bool {
        check_condition(Condition::test(variable, operator, value, "n"))
    }

    fn check_condition(condition: Condition) -> bool {
        let flow = CompiledFlow::new(crate::engine::model::Flow {
            start_block_id: None,
            blocks: vec![crate::engine::model::Block {
                conditions: Some(vec![condition.clone()]),
                ..crate::engine::model::Block::new("c", crate::engine::model::BlockKind::Condition)
            }],
        });
        holds(&condition, &vars(), &flow)
    }

    use ConditionOperator::*;

    #[test]
    fn equals_compares_text_trimmed_and_case_insensitively() {
        assert!(check("name", Equals, Some(" ada ")));
        assert!(!check("name", Equals, Some("bob")));
        assert!(check("flag", Equals, Some("TRUE")));
    }

    #[test]
    fn equals_compares_numbers_numerically() {
        assert!(check("age", Equals, Some("36.0")));
        assert!(check("score", Equals, Some("7.5")));
        assert!(!check("score", Equals, Some("7.51")));
    }

    #[test]
    fn equals_on_a_missing_variable_is_false_and_not_equals_true() {
        assert!(!check("missing", Equals, Some("x")));
        assert!(check("missing", NotEquals, Some("x")));
        assert!(!check("nothing", Equals, Some("")));
        assert!(check("nothing", NotEquals, Some("")));
    }

    #[test]
    fn not_equals_is_the_negation_of_equals() {
        assert!(!check("name", NotEquals, Some("ADA")));
        assert!(check("name", NotEquals, Some("Bob")));
        assert!(!check("age", NotEquals, Some("36")));
    }

    #[test]
    fn contains_is_a_case_insensitive_substring() {
        assert!(check("name", Contains, Some("DA")));
        assert!(!check("name", Contains, Some("bob")));
        assert!(!check("missing", Contains, Some("")));
    }

    #[test]
    fn contains_on_an_array_means_any_element_equals() {
        assert!(check("tags", Contains, Some("beta")));
        assert!(check("tags", Contains, Some("3")));
        assert!(!check("tags", Contains, Some("vi")));
    }

    #[test]
    fn greater_and_less_than_compare_numbers() {
        assert!(check("age", GreaterThan, Some("35.5")));
        assert!(!check("age", GreaterThan, Some("36")));
        assert!(check("score", LessThan, Some("10")));
        assert!(!check("score", LessThan, Some("7.5")));
    }

    #[test]
    fn greater_and_less_than_are_false_unless_both_sides_are_numbers() {
        assert!(!check("name", GreaterThan, Some("1")));
        assert!(!check("age", GreaterThan, Some("abc")));
        assert!(!check("missing", LessThan, Some("1")));
        assert!(!check("flag", LessThan, Some("2")));
        assert!(!check("age", LessThan, Some("inf")));
        assert!(!check("age", LessThan, None));
    }

    #[test]
    fn is_set_needs_a_present_non_null_non_empty_value() {
        assert!(check("name", IsSet, None));
        assert!(check("age", IsSet, None));
        assert!(check("flag", IsSet, None));
        assert!(!check("empty", IsSet, None));
        assert!(!check("nothing", IsSet, None));
        assert!(!check("missing", IsSet, None));
    }

    #[test]
    fn is_not_set_is_the_negation_of_is_set() {
        assert!(!check("name", IsNotSet, None));
        assert!(check("empty", IsNotSet, None));
        assert!(check("nothing", IsNotSet, None));
        assert!(check("missing", IsNotSet, None));
    }

    #[test]
    fn variables_support_dotted_paths() {
        assert!(check("order.status", Equals, Some("shipped")));
        assert!(check("order.total", GreaterThan, Some("100")));
        assert!(check("order.missing", IsNotSet, None));
        assert!(check(" order.status ", IsSet, None));
    }

    #[test]
    fn is_empty_holds_for_missing_null_blank_and_empty_collections() {
        assert!(check("missing", IsEmpty, None));
        assert!(check("nothing", IsEmpty, None));
        assert!(check("empty", IsEmpty, None));
        assert!(!check("name", IsEmpty, None));
        assert!(!check("age", IsEmpty, None));
        assert!(!check("tags", IsEmpty, None));
    }

    #[test]
    fn matches_runs_the_pattern_on_the_variable_as_text() {
        assert!(check("name", Matches, Some("^A[a-z]+$")));
        assert!(!check("name", Matches, Some("^B")));
        assert!(check("age", Matches, Some("^\\d+$")));
        assert!(!check("missing", Matches, Some(".*")));
        // A pattern that does not compile matches nothing.
        assert!(!check("name", Matches, Some("(")));
    }

    fn rule(variable: &str, operator: ConditionOperator, value: Option<&str>) -> Rule {
        Rule {
            variable: Some(variable.into()),
            operator: Some(operator),
            value: value.map(str::to_owned),
            ..Rule::default()
        }
    }

    fn with_groups(all: Option<Vec<Rule>>, any: Option<Vec<Rule>>) -> Condition {
        Condition {
            all,
            any,
            ..Condition::test("name", IsSet, None, "n")
        }
    }

    #[test]
    fn an_all_group_needs_every_rule_to_hold() {
        let both = vec![
            rule("age", GreaterThan, Some("30")),
            rule("tags", Contains, Some("vip")),
        ];
        assert!(check_condition(with_groups(Some(both), None)));
        let one_fails = vec![
            rule("age", GreaterThan, Some("30")),
            rule("tags", Contains, Some("gold")),
        ];
        assert!(!check_condition(with_groups(Some(one_fails), None)));
    }

    #[test]
    fn an_any_group_needs_one_rule_to_hold() {
        let one = vec![
            rule("age", LessThan, Some("18")),
            rule("order.status", Equals, Some("shipped")),
        ];
        assert!(check_condition(with_groups(None, Some(one))));
        let none = vec![
            rule("age", LessThan, Some("18")),
            rule("missing", IsSet, None),
        ];
        assert!(!check_condition(with_groups(None, Some(none))));
    }

    #[test]
    fn the_own_test_and_the_groups_must_all_hold() {
        let holds_alone = vec![rule("age", Equals, Some("36"))];
        let condition = Condition {
            all: Some(holds_alone),
            ..Condition::test("missing", IsSet, None, "n")
        };
        assert!(!check_condition(condition));
    }

    #[test]
    fn groups_nest() {
        // name is set AND (age < 18 OR (score > 7 AND order.total > 100))
        let inner = Rule {
            all: Some(vec![
                rule("score", GreaterThan, Some("7")),
                rule("order.total", GreaterThan, Some("100")),
            ]),
            ..Rule::default()
        };
        let any = vec![rule("age", LessThan, Some("18")), inner.clone()];
        assert!(check_condition(with_groups(None, Some(any))));
        let failing_inner = Rule {
            all: Some(vec![
                rule("score", GreaterThan, Some("8")),
                rule("order.total", GreaterThan, Some("100")),
            ]),
            ..Rule::default()
        };
        let any = vec![rule("age", LessThan, Some("18")), failing_inner];
        assert!(!check_condition(with_groups(None, Some(any))));
    }

    #[test]
    fn rules_nested_past_the_depth_limit_never_hold() {
        let mut deepest = Rule {
            all: Some(vec![rule("name", IsSet, None)]),
            ..Rule::default()
        };
        // A chain of MAX_RULE_DEPTH groups holds; one more level does not.
        for _ in 1..MAX_RULE_DEPTH - 1 {
            deepest = Rule {
                all: Some(vec![deepest]),
                ..Rule::default()
            };
        }
        assert!(check_condition(with_groups(
            Some(vec![deepest.clone()]),
            None
        )));
        let too_deep = Rule {
            all: Some(vec![deepest]),
            ..Rule::default()
        };
        assert!(!check_condition(with_groups(Some(vec![too_deep]), None)));
    }
}
