//! Checking a visitor's answer against a QUESTION block.

use serde_json::{Number, Value};

use chrono::NaiveDate;
use regex::Regex;

use super::model::{Block, Choice, DEFAULT_RATING_MAX, QuestionType, Validation};

/// Checks `text` against the block's question type, then its `validation`.
///
/// On success returns the value to store (the trimmed text; a JSON number
/// for NUMBER and RATING; the choice's value or label for CHOICE; an array of
/// them for MULTI_CHOICE; `true`/`false` for YES_NO; `YYYY-MM-DD` for DATE)
/// and, for CHOICE, the picked choice's `next`. `pattern` is the block's
/// compiled `validation.pattern`, if it has one.
///
/// # Errors
///
/// A message for the visitor saying what a valid answer looks like (the
/// block's `validation.message` when it has one).
pub fn check_answer(
    block: &Block,
    text: &str,
    pattern: Option<&Regex>,
) -> Result<(Value, Option<String>), String> {
    let answer = text.trim();
    let checked = check_type(block, answer).and_then(|(value, next)| match &block.validation {
        Some(rules) => check_rules(rules, answer, &value, pattern).map(|()| (value, next)),
        None => Ok((value, next)),
    });
    checked.map_err(|default| {
        block
            .validation
            .as_ref()
            .and_then(|v| v.message.clone())
            .filter(|m| !m.trim().is_empty())
            .unwrap_or(default)
    })
}

fn check_type(block: &Block, answer: &str) -> Result<(Value, Option<String>), String> {
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
        QuestionType::MultiChoice => {
            let choices = block.choices.as_deref().unwrap_or_default();
            multi_choice(choices, answer).map(|values| (Value::Array(values), None))
        }
        QuestionType::Date => match parse_date(answer) {
            Some(date) => Ok((Value::String(date.format("%Y-%m-%d").to_string()), None)),
            None => Err("Please enter a date, such as 2026-11-28 or 28 November 2026.".to_owned()),
        },
        QuestionType::Url => match parse_url(answer) {
            Some(url) => Ok((Value::String(url), None)),
            None => Err("Please enter a web address, such as https://example.com.".to_owned()),
        },
        QuestionType::Rating => {
            let max = block.rating_max.unwrap_or(DEFAULT_RATING_MAX);
            match answer.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok((Value::from(n), None)),
                _ => Err(format!("Please choose a mark from 1 to {max}.")),
            }
        }
        QuestionType::YesNo => match yes_or_no(answer) {
            Some(yes) => Ok((Value::Bool(yes), None)),
            None => Err("Please answer yes or no.".to_owned()),
        },
    }
}

/// The block's `validation` rules on an answer that passed its type's check.
fn check_rules(
    rules: &Validation,
    answer: &str,
    value: &Value,
    pattern: Option<&Regex>,
) -> Result<(), String> {
    let length = u32::try_from(answer.chars().count()).unwrap_or(u32::MAX);
    if let Some(min) = rules.min_length
        && length < min
    {
        return Err(format!("Please enter at least {min} characters."));
    }
    if let Some(max) = rules.max_length
        && length > max
    {
        return Err(format!("Please enter at most {max} characters."));
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = rules.min.as_ref().and_then(serde_json::Number::as_f64)
            && number < min
        {
            return Err(format!("Please enter {min} or more."));
        }
        if let Some(max) = rules.max.as_ref().and_then(serde_json::Number::as_f64)
            && number > max
        {
            return Err(format!("Please enter {max} or less."));
        }
    }
    if rules.pattern.is_some() && !pattern.is_some_and(|re| re.is_match(answer)) {
        return Err("Please check the format of your answer.".to_owned());
    }
    Ok(())
}

/// Several choices by label or value, separated by commas (or semicolons, or new lines);
/// each stored as its value, once, in the order of the block's choices.
fn multi_choice(choices: &[Choice], answer: &str) -> Result<Vec<Value>, String> {
    let mut picked = vec![false; choices.len()];
    let mut any = false;
    for part in answer
        .split([',', ';', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let Some(choice) = find_choice(choices, part) else {
            return Err(choice_message(choices));
        };
        if let Some(i) = choices.iter().position(|c| std::ptr::eq(c, choice)) {
            picked[i] = true;
            any = true;
        }
    }
    if !any {
        return Err(choice_message(choices));
    }
    Ok(choices
        .iter()
        .zip(picked)
        .filter(|(_, on)| *on)
        .map(|(c, _)| Value::String(c.value.clone().unwrap_or_else(|| c.label.clone())))
        .collect())
}

/// ISO dates and common written forms; slashed dates only when the order is unambiguous.
fn parse_date(text: &str) -> Option<NaiveDate> {
    const FORMATS: [&str; 10] = [
        "%Y-%m-%d",
        "%Y/%m/%d",
        "%d.%m.%Y",
        "%d %B %Y",
        "%d %b %Y",
        "%B %d, %Y",
        "%B %d %Y",
        "%b %d, %Y",
        "%b %d %Y",
        "%A %d %B %Y",
    ];
    let text = text.trim();
    if let Some(date) = FORMATS
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(text, f).ok())
    {
        return Some(date);
    }
    // 28/11/2026 or 11/28/2026: only when one reading is impossible.
    let day_first = NaiveDate::parse_from_str(text, "%d/%m/%Y").ok();
    let month_first = NaiveDate::parse_from_str(text, "%m/%d/%Y").ok();
    match (day_first, month_first) {
        (Some(d), None) | (None, Some(d)) => Some(d),
        (Some(a), Some(b)) if a == b => Some(a),
        _ => None,
    }
}

/// An http(s) address with a host; a bare `example.com/x` gets `https://`.
fn parse_url(text: &str) -> Option<String> {
    if text.is_empty() || text.chars().any(char::is_whitespace) {
        return None;
    }
    let candidate = if text.contains("://") {
        text.to_owned()
    } else {
        format!("https://{text}")
    };
    let url = url::Url::parse(&candidate).ok()?;
    let host = url.host_str()?;
    let plausible = host.contains('.') || host == "localhost";
    (matches!(url.scheme(), "http" | "https") && plausible).then(|| url.to_string())
}

fn yes_or_no(text: &str) -> Option<bool> {
    match text.trim().to_lowercase().as_str() {
        "yes" | "y" | "yeah" | "yep" | "sure" | "ok" | "true" | "1" | "oui" | "si" | "sí"
        | "ja" => Some(true),
        "no" | "n" | "nope" | "false" | "0" | "non" | "nein" => Some(false),
        _ => None,
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

    /// The type checks alone, as most tests want them.
    fn check_answer(block: &Block, text: &str) -> Result<(Value, Option<String>), String> {
        super::check_answer(block, text, None)
    }

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

    fn typed(question_type: QuestionType) -> Block {
        question(Some(question_type))
    }

    #[test]
    fn dates_accept_common_forms_and_store_iso() {
        let block = typed(QuestionType::Date);
        for text in [
            "2026-11-28",
            "28 November 2026",
            "November 28, 2026",
            "28.11.2026",
            "28/11/2026",
            "11/28/2026",
            "Nov 28 2026",
        ] {
            assert_eq!(
                check_answer(&block, text),
                Ok((json!("2026-11-28"), None)),
                "{text}"
            );
        }
        // 05/06/2026 could be May or June: refused rather than guessed.
        for text in ["05/06/2026", "2026-02-30", "tomorrow", ""] {
            assert!(check_answer(&block, text).is_err(), "{text}");
        }
    }

    #[test]
    fn urls_need_a_web_scheme_and_a_host() {
        let block = typed(QuestionType::Url);
        assert_eq!(
            check_answer(&block, "https://example.com/a?b=1"),
            Ok((json!("https://example.com/a?b=1"), None))
        );
        assert_eq!(
            check_answer(&block, "example.com"),
            Ok((json!("https://example.com/"), None))
        );
        for text in [
            "ftp://example.com",
            "not a url",
            "javascript:alert(1)",
            "http://",
        ] {
            assert!(check_answer(&block, text).is_err(), "{text}");
        }
    }

    #[test]
    fn ratings_are_marks_from_one_to_the_maximum() {
        let mut block = typed(QuestionType::Rating);
        assert_eq!(check_answer(&block, "5"), Ok((json!(5), None)));
        assert!(check_answer(&block, "6").is_err());
        assert!(check_answer(&block, "0").is_err());
        block.rating_max = Some(10);
        assert_eq!(check_answer(&block, "10"), Ok((json!(10), None)));
        assert_eq!(block.offered_choices().map(|c| c.len()), Some(10));
    }

    #[test]
    fn multi_choice_stores_every_picked_value_once_in_choice_order() {
        let mut block = choice_question();
        block.question_type = Some(QuestionType::MultiChoice);
        let (value, next) = check_answer(&block, "no, Yes please, yes please").expect("valid");
        assert!(next.is_none(), "a choice's next does not apply");
        assert_eq!(value, json!(["yes", "No"]));
        assert!(check_answer(&block, "yes please, maybe").is_err());
        assert!(check_answer(&block, " , ").is_err());
    }

    #[test]
    fn yes_no_is_stored_as_a_boolean() {
        let block = typed(QuestionType::YesNo);
        assert_eq!(check_answer(&block, "Yes"), Ok((json!(true), None)));
        assert_eq!(check_answer(&block, "nope"), Ok((json!(false), None)));
        assert!(check_answer(&block, "perhaps").is_err());
    }

    #[test]
    fn validation_rules_run_after_the_type_and_may_replace_the_message() {
        let mut block = typed(QuestionType::Number);
        block.validation = Some(Validation {
            min: Some(18.into()),
            max: Some(120.into()),
            ..Validation::default()
        });
        assert_eq!(check_answer(&block, "42"), Ok((json!(42), None)));
        assert!(check_answer(&block, "17").is_err_and(|m| m.contains("18")));
        assert!(check_answer(&block, "121").is_err());

        let mut block = typed(QuestionType::Text);
        let re = crate::engine::pattern::compile("^[A-Z]{2}-\\d{3}$").expect("compiles");
        block.validation = Some(Validation {
            min_length: Some(6),
            max_length: Some(6),
            pattern: Some(re.as_str().to_owned()),
            message: Some("Use the form AB-123.".into()),
            ..Validation::default()
        });
        assert_eq!(
            super::check_answer(&block, "AB-123", Some(&re)),
            Ok((json!("AB-123"), None))
        );
        assert_eq!(
            super::check_answer(&block, "ab-123", Some(&re)),
            Err("Use the form AB-123.".to_owned())
        );
        assert_eq!(
            super::check_answer(&block, "AB-1234", Some(&re)),
            Err("Use the form AB-123.".to_owned())
        );
    }
}
