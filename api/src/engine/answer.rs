//! Checking a visitor's answer against a QUESTION block.

use serde_json::{Number, Value};

use super::model::{Block, Choice, QuestionType};

/// Checks `text` against the block's question type.
///
/// On success returns the value to store (the trimmed text; a JSON number
/// for NUMBER; the choice's value or label for CHOICE) and, for CHOICE, the
/// picked choice's `next`.
///
/// # Errors
///
/// A message for the visitor saying what a valid answer looks like.
pub fn check_answer(block: &Block, text: &str) -> Result<(Value, Option<String>), String> {
    let answer = text.trim();
    match block.question_type.unwrap_or(QuestionType::Text) {
        QuestionType::Text if answer.is_empty() => Err("Please enter an answer.".to_owned()),
        QuestionType::Text => Ok((Value::String(answer.to_owned()), None)),
        QuestionType::Email if is_email(answer) => Ok((Value::String(answer.to_owned()), None)),
        QuestionType::Email => Err("Please enter a valid email address.".to_owned()),
        QuestionType::Phone if is_phone(answer) => Ok((Value::String(answer.to_owned()), None)),
        QuestionType::Phone => Err("Please enter a valid phone number.".to_owned()),
        QuestionType::Number => match parse_number(answer) {
            Some(number) => Ok((Value::Number(number), None)),
            None => Err("Please enter a number.".to_owned()),
        },
        QuestionType::Choice => {
            let choices = block.choices.as_deref().unwrap_or_default();
            match find_choice(choices, answer) {
                Some(choice) => {
                    let stored = choice.value.as_ref().unwrap_or(&choice.label);
                    Ok((Value::String(stored.clone()), choice.next.clone()))
                }
                None => Err(choice_message(choices)),
            }
        }
    }
}

/// A pragmatic address check: real validation is sending a mail.
fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !text.chars().any(char::is_whitespace)
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

fn is_phone(text: &str) -> bool {
    let body = text.strip_prefix('+').unwrap_or(text);
    let allowed = |c: char| c.is_ascii_digit() || matches!(c, ' ' | '.' | '-' | '(' | ')');
    let digits = body.chars().filter(char::is_ascii_digit).count();
    body.chars().all(allowed) && (6..=15).contains(&digits)
}

/// Parses a finite number with `.` as the decimal separator; integral values
/// that fit an `i64` become JSON integers so `42` is stored as `42`, not
/// `42.0`.
fn parse_number(text: &str) -> Option<Number> {
    // i64::MIN is exactly representable; i64::MAX rounds up to 2^63, which
    // is why the upper bound is exclusive.
    const LOW: f64 = -9_223_372_036_854_775_808.0;

    // Rust's float parser also takes "inf" and "NaN"; only digits count.
    if !text.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    if value.fract() == 0.0 && (LOW..-LOW).contains(&value) {
        // Exact: the value is integral and inside the i64 range.
        return Some(Number::from(value as i64));
    }
    Number::from_f64(value)
}

/// Labels match before values so a label is never shadowed by another
/// choice's value.
fn find_choice<'a>(choices: &'a [Choice], answer: &str) -> Option<&'a Choice> {
    let answer = answer.to_lowercase();
    let matches = |candidate: &str| candidate.trim().to_lowercase() == answer;
    choices
        .iter()
        .find(|choice| matches(&choice.label))
        .or_else(|| {
            choices
                .iter()
                .find(|choice| choice.value.as_deref().is_some_and(matches))
        })
}

fn choice_message(choices: &[Choice]) -> String {
    if choices.is_empty() {
        return "This question has no options to choose from.".to_owned();
    }
    let labels: Vec<&str> = choices.iter().map(|choice| choice.label.trim()).collect();
    format!("Please choose one of: {}.", labels.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::BlockKind;
    use serde_json::json;

    fn question(question_type: Option<QuestionType>) -> Block {
        Block {
            question_type,
            ..Block::new("q", BlockKind::Question)
        }
    }

    fn choice_question() -> Block {
        Block {
            question_type: Some(QuestionType::Choice),
            choices: Some(vec![
                Choice {
                    label: "Yes please".into(),
                    value: Some("yes".into()),
                    next: Some("thanks".into()),
                },
                Choice {
                    label: "No".into(),
                    value: None,
                    next: None,
                },
            ]),
            ..Block::new("q", BlockKind::Question)
        }
    }

    #[test]
    fn a_text_answer_is_stored_trimmed() {
        let block = question(Some(QuestionType::Text));
        assert_eq!(check_answer(&block, "  hello "), Ok((json!("hello"), None)));
    }

    #[test]
    fn a_blank_text_answer_is_invalid() {
        let block = question(Some(QuestionType::Text));
        assert_eq!(
            check_answer(&block, " \t"),
            Err("Please enter an answer.".to_owned())
        );
    }

    #[test]
    fn a_missing_question_type_means_text() {
        let block = question(None);
        assert_eq!(
            check_answer(&block, "anything"),
            Ok((json!("anything"), None))
        );
        assert!(check_answer(&block, "").is_err());
    }

    #[test]
    fn valid_email_addresses_are_accepted() {
        let block = question(Some(QuestionType::Email));
        for address in ["ada@example.com", " a.b+c@mail.example.org ", "x@y.io"] {
            assert_eq!(
                check_answer(&block, address),
                Ok((json!(address.trim()), None)),
                "{address}"
            );
        }
    }

    #[test]
    fn invalid_email_addresses_are_rejected_with_a_clear_message() {
        let block = question(Some(QuestionType::Email));
        for address in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a@b@example.com",
            "ada lovelace@example.com",
            "ada@exa mple.com",
            "ada@example..com",
            "ada@.example.com",
            "ada@example.com.",
        ] {
            assert_eq!(
                check_answer(&block, address),
                Err("Please enter a valid email address.".to_owned()),
                "{address}"
            );
        }
    }

    #[test]
    fn valid_phone_numbers_are_accepted() {
        let block = question(Some(QuestionType::Phone));
        for phone in [
            "+1 (555) 123-4567",
            "0612345678",
            "06.12.34.56.78",
            "123456",
            "+123456789012345",
        ] {
            assert_eq!(
                check_answer(&block, phone),
                Ok((json!(phone), None)),
                "{phone}"
            );
        }
    }

    #[test]
    fn invalid_phone_numbers_are_rejected_with_a_clear_message() {
        let block = question(Some(QuestionType::Phone));
        for phone in [
            "",
            "12345",
            "1234567890123456",
            "++123456789",
            "123+456789",
            "call me",
            "12345a67",
            "+",
        ] {
            assert_eq!(
                check_answer(&block, phone),
                Err("Please enter a valid phone number.".to_owned()),
                "{phone}"
            );
        }
    }

    #[test]
    fn a_number_answer_is_stored_as_a_json_number() {
        let block = question(Some(QuestionType::Number));
        assert_eq!(check_answer(&block, " 42 "), Ok((json!(42), None)));
        assert_eq!(check_answer(&block, "-7"), Ok((json!(-7), None)));
        assert_eq!(check_answer(&block, "3.0"), Ok((json!(3), None)));
        assert_eq!(check_answer(&block, "2.5"), Ok((json!(2.5), None)));
        assert_eq!(check_answer(&block, "1e3"), Ok((json!(1000), None)));
        assert_eq!(check_answer(&block, "1e300"), Ok((json!(1e300), None)));
    }

    #[test]
    fn a_non_number_answer_is_rejected() {
        let block = question(Some(QuestionType::Number));
        for text in ["", "abc", "1,5", "inf", "NaN", "-infinity", "1e999", "12 3"] {
            assert_eq!(
                check_answer(&block, text),
                Err("Please enter a number.".to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_choice_matches_its_label_case_insensitively_and_stores_its_value() {
        let block = choice_question();
        assert_eq!(
            check_answer(&block, "  YES PLEASE "),
            Ok((json!("yes"), Some("thanks".to_owned())))
        );
    }

    #[test]
    fn a_choice_matches_its_value() {
        let block = choice_question();
        assert_eq!(
            check_answer(&block, "Yes"),
            Ok((json!("yes"), Some("thanks".to_owned())))
        );
    }

    #[test]
    fn a_choice_without_value_stores_its_label() {
        let block = choice_question();
        assert_eq!(check_answer(&block, "no"), Ok((json!("No"), None)));
    }

    #[test]
    fn an_answer_that_is_no_choice_lists_the_choices() {
        let block = choice_question();
        assert_eq!(
            check_answer(&block, "maybe"),
            Err("Please choose one of: Yes please, No.".to_owned())
        );
    }

    #[test]
    fn a_label_wins_over_another_choices_value() {
        let block = Block {
            question_type: Some(QuestionType::Choice),
            choices: Some(vec![
                Choice {
                    label: "First".into(),
                    value: Some("second".into()),
                    next: None,
                },
                Choice {
                    label: "Second".into(),
                    value: Some("2".into()),
                    next: None,
                },
            ]),
            ..Block::new("q", BlockKind::Question)
        };
        assert_eq!(check_answer(&block, "second"), Ok((json!("2"), None)));
    }

    #[test]
    fn a_choice_question_without_choices_accepts_nothing() {
        let block = question(Some(QuestionType::Choice));
        assert!(check_answer(&block, "anything").is_err());
    }
}
