//! Regular expressions that flow authors write (a QUESTION's `validation.pattern`, a
//! condition's MATCHES). The `regex` crate runs in linear time, so no pattern can backtrack
//! catastrophically; the size limits keep a pattern's compiled form small.
use regex::{Regex, RegexBuilder};

/// Most bytes a pattern may take once compiled.
const SIZE_LIMIT: usize = 256 * 1024;
/// Most characters in a pattern's text.
pub const MAX_PATTERN_CHARS: usize = 500;

/// Compiles `pattern`, or says why it cannot be used.
///
/// # Errors
///
/// A message for the flow's author.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.chars().count() > MAX_PATTERN_CHARS {
        return Err(format!(
            "The pattern is longer than {MAX_PATTERN_CHARS} characters."
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                "The pattern is too large once compiled; simplify it.".to_owned()
            }
            other => format!("The pattern is not a valid regular expression: {other}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_pattern_compiles_and_a_broken_or_huge_one_is_explained() {
        assert!(compile("^[A-Z]{2}-\\d+$").is_ok_and(|r| r.is_match("AB-12")));
        assert!(compile("(unclosed").is_err_and(|m| m.contains("not a valid")));
        assert!(compile("\\w{1000}{1000}").is_err_and(|m| m.contains("too large")));
        assert!(compile(&"a".repeat(501)).is_err());
    }

    #[test]
    fn a_pattern_that_backtracks_elsewhere_runs_in_linear_time_here() {
        let re = compile("^(a+)+$").expect("compiles");
        let input = format!("{}!", "a".repeat(50_000));
        let started = std::time::Instant::now();
        assert!(!re.is_match(&input));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
