//! `{{name}}` templates over the conversation's context variables.

use serde_json::{Map, Value};

/// Finds a context variable by name or dotted path (`order.status`,
/// `items.0.name`).
///
/// A key that literally contains dots wins over the path reading, because a
/// webhook may well set `{"order.status": ..}` as one flat key.
pub fn lookup<'a>(variables: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = variables.get(path) {
        return Some(value);
    }
    let mut segments = path.split('.');
    let first = segments.next()?;
    let mut current = variables.get(first)?;
    for segment in segments {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// How a variable reads inside a text: strings raw, null empty, anything
/// else as compact JSON.
pub fn display(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Longest text a template renders to, in bytes: a short template repeating a large variable
/// must not make a huge message. Past it the text is cut and ends with `…`.
pub const MAX_RENDERED_BYTES: usize = 8 * 1024;

/// Replaces every `{{ name }}` in `template` by the variable's display;
/// unknown names become empty and an unclosed `{{` stays as it is. The result is at most
/// `MAX_RENDERED_BYTES` long.
pub fn render(template: &str, variables: &Map<String, Value>) -> String {
    let mut out = Capped::default();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            break;
        };
        out.push(&rest[..open]);
        let mut name = &after_open[..close];
        // In `{{a {{b}}` only the innermost pair is a placeholder; the
        // earlier braces are text the author typed.
        if let Some(inner_open) = name.rfind("{{") {
            out.push("{{");
            out.push(&name[..inner_open]);
            name = &name[inner_open + 2..];
        }
        if let Some(value) = lookup(variables, name.trim()) {
            match value {
                Value::String(text) => out.push(text),
                other => out.push(&display(other)),
            }
        }
        if out.full {
            return out.text;
        }
        rest = &after_open[close + 2..];
    }
    out.push(rest);
    out.text
}

/// A string that stops growing at `MAX_RENDERED_BYTES`, ending in `…` when cut.
#[derive(Default)]
struct Capped {
    text: String,
    full: bool,
}

impl Capped {
    const ELLIPSIS: &'static str = "…";

    fn push(&mut self, piece: &str) {
        if self.full {
            return;
        }
        let room = MAX_RENDERED_BYTES - self.text.len();
        if piece.len() <= room {
            self.text.push_str(piece);
            return;
        }
        let mut cut = room.saturating_sub(Self::ELLIPSIS.len());
        while !piece.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&piece[..cut]);
        self.text.push_str(Self::ELLIPSIS);
        self.full = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_known_name_is_replaced_by_its_value() {
        let v = vars(json!({"name": "Ada"}));
        assert_eq!(render("Hi {{name}}!", &v), "Hi Ada!");
    }

    #[test]
    fn whitespace_inside_the_braces_is_allowed() {
        let v = vars(json!({"name": "Ada"}));
        assert_eq!(
            render("Hi {{ name }} and {{\tname\n}}", &v),
            "Hi Ada and Ada"
        );
    }

    #[test]
    fn a_dotted_name_reads_into_nested_objects() {
        let v = vars(json!({"order": {"status": "shipped", "lines": [{"sku": "A1"}]}}));
        assert_eq!(render("{{order.status}}", &v), "shipped");
        assert_eq!(render("{{order.lines.0.sku}}", &v), "A1");
        assert_eq!(
            render("[{{order.missing}}][{{order.status.x}}]", &v),
            "[][]"
        );
    }

    #[test]
    fn a_flat_key_with_dots_wins_over_the_path() {
        let v = vars(json!({"order.status": "flat", "order": {"status": "nested"}}));
        assert_eq!(render("{{order.status}}", &v), "flat");
    }

    #[test]
    fn an_unknown_name_becomes_empty() {
        assert_eq!(render("Hi {{nobody}}!", &Map::new()), "Hi !");
        assert_eq!(render("{{}}", &Map::new()), "");
    }

    #[test]
    fn values_render_by_type() {
        let v = vars(json!({
            "s": "text", "i": 42, "f": 1.5, "b": true, "n": null,
            "a": [1, "x"], "o": {"k": "v"}
        }));
        assert_eq!(
            render("{{s}}|{{i}}|{{f}}|{{b}}|{{n}}|{{a}}|{{o}}", &v),
            r#"text|42|1.5|true||[1,"x"]|{"k":"v"}"#
        );
    }

    #[test]
    fn an_unclosed_placeholder_stays_literal() {
        let v = vars(json!({"name": "Ada"}));
        assert_eq!(render("Hi {{name", &v), "Hi {{name");
        assert_eq!(render("{{name}} and {{name", &v), "Ada and {{name");
        assert_eq!(render("{{a {{name}}", &v), "{{a Ada");
    }

    #[test]
    fn text_without_placeholders_is_unchanged() {
        assert_eq!(render("Plain } { text", &Map::new()), "Plain } { text");
        assert_eq!(render("", &Map::new()), "");
    }

    #[test]
    fn a_text_that_would_expand_without_bound_is_cut() {
        let v = vars(json!({"v": "x".repeat(16 * 1024)}));
        let out = render(&"{{v}}".repeat(10_000), &v);
        assert!(out.len() <= MAX_RENDERED_BYTES, "{}", out.len());
        assert!(out.ends_with('…'));
        // Multi-byte characters are never split.
        let v = vars(json!({"v": "é".repeat(MAX_RENDERED_BYTES)}));
        let out = render("{{v}}", &v);
        assert!(out.len() <= MAX_RENDERED_BYTES && out.ends_with('…'));
    }

    #[test]
    fn rendered_values_are_not_rendered_again() {
        let v = vars(json!({"a": "{{b}}", "b": "no"}));
        assert_eq!(render("{{a}}", &v), "{{b}}");
    }
}
