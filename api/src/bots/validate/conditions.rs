//! Checking CONDITION blocks: each condition's own test and its nested `all`/`any` groups.

use super::{Checker, is_number, is_present, operator_name};
use crate::engine::model::{Block, ConditionOperator, MAX_RULE_DEPTH, Rule};

impl Checker<'_> {
    pub(super) fn conditions(&mut self, block: &Block) {
        let conditions = block.conditions.as_deref().unwrap_or_default();
        if conditions.is_empty() {
            self.report(
                Some(block),
                "conditions",
                "A condition block needs at least one condition.".to_owned(),
            );
        }
        if conditions.len() > self.limits.max_conditions {
            let (count, max) = (conditions.len(), self.limits.max_conditions);
            self.report(
                Some(block),
                "conditions",
                format!("The block has {count} conditions; at most {max} are allowed."),
            );
        }
        for (i, condition) in conditions.iter().enumerate() {
            let path = format!("conditions[{i}]");
            self.test(
                block,
                &path,
                Some(&condition.variable),
                condition.operator,
                condition.value.as_deref(),
            );
            let nested = condition.nested_rules().len();
            if nested > self.limits.max_conditions {
                let max = self.limits.max_conditions;
                self.report(
                    Some(block),
                    path.clone(),
                    format!(
                        "The condition's all/any groups hold {nested} rules; at most {max} are \
                         allowed."
                    ),
                );
            }
            self.groups(
                block,
                &path,
                condition.all.as_deref(),
                condition.any.as_deref(),
                1,
            );
            self.target(block, format!("{path}.next"), &condition.next);
        }
    }

    /// Checks the `all` and `any` groups found at `path`, whose rules sit at `depth`.
    fn groups(
        &mut self,
        block: &Block,
        path: &str,
        all: Option<&[Rule]>,
        any: Option<&[Rule]>,
        depth: usize,
    ) {
        for (name, group) in [("all", all), ("any", any)] {
            let Some(rules) = group else {
                continue;
            };
            let field = format!("{path}.{name}");
            if rules.is_empty() {
                self.report(
                    Some(block),
                    field.clone(),
                    format!("An \"{name}\" group needs at least one rule; leave it out instead."),
                );
            }
            if depth > MAX_RULE_DEPTH {
                self.report(
                    Some(block),
                    field,
                    format!("Groups nest at most {MAX_RULE_DEPTH} levels deep."),
                );
                // Deeper rules are not listed: one problem says what to fix.
                continue;
            }
            for (j, rule) in rules.iter().enumerate() {
                let rule_path = format!("{field}[{j}]");
                let has_group = rule.all.is_some() || rule.any.is_some();
                match rule.operator {
                    Some(operator) => self.test(
                        block,
                        &rule_path,
                        rule.variable.as_deref(),
                        operator,
                        rule.value.as_deref(),
                    ),
                    None if !has_group => self.report(
                        Some(block),
                        format!("{rule_path}.operator"),
                        "A rule needs an operator (with a variable) or an all/any group."
                            .to_owned(),
                    ),
                    None if is_present(rule.variable.as_deref()) => self.report(
                        Some(block),
                        format!("{rule_path}.operator"),
                        "A rule that names a variable needs an operator.".to_owned(),
                    ),
                    None => {}
                }
                self.groups(
                    block,
                    &rule_path,
                    rule.all.as_deref(),
                    rule.any.as_deref(),
                    depth + 1,
                );
            }
        }
    }

    /// Checks one comparison (a condition's own, or a rule's) found at `path`.
    fn test(
        &mut self,
        block: &Block,
        path: &str,
        variable: Option<&str>,
        operator: ConditionOperator,
        value: Option<&str>,
    ) {
        if variable.is_none_or(|v| v.trim().is_empty()) {
            self.report(
                Some(block),
                format!("{path}.variable"),
                "Every condition needs a variable.".to_owned(),
            );
        }
        let needs_value = !matches!(
            operator,
            ConditionOperator::IsSet | ConditionOperator::IsNotSet | ConditionOperator::IsEmpty
        );
        if operator == ConditionOperator::Matches
            && let Some(pattern) = value
            && let Err(why) = crate::engine::pattern::compile(pattern)
        {
            self.report(Some(block), format!("{path}.value"), why);
        }
        let numeric = matches!(
            operator,
            ConditionOperator::GreaterThan | ConditionOperator::LessThan
        );
        let operator_name = operator_name(operator);
        match value {
            None if needs_value => self.report(
                Some(block),
                format!("{path}.value"),
                format!("A {operator_name} condition needs a value."),
            ),
            // Such a condition could never hold: the runtime compares
            // numbers only.
            Some(value) if numeric && !is_number(value) => self.report(
                Some(block),
                format!("{path}.value"),
                format!("{operator_name} compares numbers, but \"{value}\" is not a number."),
            ),
            _ => {}
        }
    }
}
