//! Evaluating the conditions of a CONDITION block.

use serde_json::{Map, Value};

use super::compiled::CompiledFlow;
use super::model::{Condition, ConditionOperator};
use super::template::{display, lookup};

/// Whether `condition` holds on the context variables; MATCHES reads its compiled pattern
/// from `flow`.
pub fn holds(condition: &Condition, variables: &Map<String, Value>, flow: &CompiledFlow) -> bool {
    // A null variable is treated as missing: a webhook that clears a value
    // usually sends null rather than deleting the key.
    let variable = lookup(variables, condition.variable.trim()).filter(|value| !value.is_null());
    let expected = condition.value.as_deref().unwrap_or_default();
    match condition.operator {
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
        let condition = Condition {
            variable: variable.into(),
            operator,
            value: value.map(str::to_owned),
            next: "n".into(),
        };
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
}
