//! Headers exchange matching (RabbitMQ semantics): the binding's arguments hold `x-match`
//! (`all`, `any`, `all-with-x`, `any-with-x`; default `all`) and the header values to compare.
//! Binding arguments starting with `x-` are ignored unless the mode ends in `-with-x`.
//! A binding value of type Void matches on presence of the header alone.

use crate::message::{Table, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
}

pub fn headers_match(binding_args: &Table, headers: Option<&Table>) -> bool {
    let (mode, with_x) = match binding_args.get("x-match").and_then(Value::as_str) {
        Some("any") => (Mode::Any, false),
        Some("any-with-x") => (Mode::Any, true),
        Some("all-with-x") => (Mode::All, true),
        _ => (Mode::All, false),
    };
    let empty = Table::new();
    let headers = headers.unwrap_or(&empty);
    let mut considered = binding_args
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.starts_with("x-")));
    let hit = |(k, v): (&String, &Value)| match headers.get(k) {
        None => false,
        Some(_) if matches!(v, Value::Void) => true,
        Some(h) => values_equal(h, v),
    };
    match mode {
        Mode::All => considered.all(hit),
        Mode::Any => considered.any(hit),
    }
}

/// Equality that ignores how a client chose to encode a string or an integer (short vs long
/// string, i32 vs i64), since different client libraries pick different encodings.
fn values_equal(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, Value)]) -> Table {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn all_requires_every_header() {
        let b = table(&[
            ("x-match", Value::Str("all".into())),
            ("a", Value::I32(1)),
            ("b", Value::Str("x".into())),
        ]);
        assert!(headers_match(
            &b,
            Some(&table(&[
                ("a", Value::I64(1)),
                ("b", Value::Str("x".into()))
            ]))
        ));
        assert!(!headers_match(&b, Some(&table(&[("a", Value::I64(1))]))));
        assert!(!headers_match(&b, None));
    }

    #[test]
    fn any_requires_one_header() {
        let b = table(&[
            ("x-match", Value::Str("any".into())),
            ("a", Value::I32(1)),
            ("b", Value::Str("x".into())),
        ]);
        assert!(headers_match(
            &b,
            Some(&table(&[("b", Value::Str("x".into()))]))
        ));
        assert!(!headers_match(
            &b,
            Some(&table(&[("b", Value::Str("y".into()))]))
        ));
    }

    #[test]
    fn x_arguments_count_only_with_x_modes() {
        let plain = table(&[
            ("x-match", Value::Str("all".into())),
            ("x-k", Value::Str("v".into())),
        ]);
        assert!(headers_match(&plain, None));
        let with_x = table(&[
            ("x-match", Value::Str("all-with-x".into())),
            ("x-k", Value::Str("v".into())),
        ]);
        assert!(!headers_match(&with_x, None));
        assert!(headers_match(
            &with_x,
            Some(&table(&[("x-k", Value::Str("v".into()))]))
        ));
        let any_x = table(&[
            ("x-match", Value::Str("any-with-x".into())),
            ("x-k", Value::Str("v".into())),
        ]);
        assert!(headers_match(
            &any_x,
            Some(&table(&[("x-k", Value::Str("v".into()))]))
        ));
    }

    #[test]
    fn void_binding_value_matches_presence() {
        let b = table(&[("a", Value::Void)]);
        assert!(headers_match(
            &b,
            Some(&table(&[("a", Value::Str("anything".into()))]))
        ));
        assert!(!headers_match(&b, None));
    }
}
