//! AMQP topic matching: words separated by `.`, `*` matches exactly one word, `#` matches zero
//! or more words (AMQP 0-9-1 §3.1.3.3). MQTT filters are translated to this form by the MQTT
//! front-end, so one matcher serves both.

/// A binding key split into words once, at bind time, so routing does not re-split it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    One,
    Many,
}

impl TopicPattern {
    pub fn new(pattern: &str) -> Self {
        let words = pattern
            .split('.')
            .map(|w| match w {
                "*" => Word::One,
                "#" => Word::Many,
                other => Word::Literal(other.to_owned()),
            })
            .collect();
        TopicPattern { words }
    }

    pub fn matches(&self, routing_key: &str) -> bool {
        let key: Vec<&str> = routing_key.split('.').collect();
        match_words(&self.words, &key)
    }
}

/// Backtracking over `#` positions; patterns are short, so the worst case stays small.
fn match_words(pattern: &[Word], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((Word::Many, rest)) => {
            // Collapse consecutive `#`: they match the same as one.
            if rest.first() == Some(&Word::Many) {
                return match_words(rest, key);
            }
            (0..=key.len()).any(|skip| match_words(rest, &key[skip..]))
        }
        Some((Word::One, rest)) => !key.is_empty() && match_words(rest, &key[1..]),
        Some((Word::Literal(w), rest)) => {
            key.first() == Some(&w.as_str()) && match_words(rest, &key[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TopicPattern;

    fn m(p: &str, k: &str) -> bool {
        TopicPattern::new(p).matches(k)
    }

    #[test]
    fn literal_words_match_exactly() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(!m("a.b", "a.b.c"));
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(!m("a.*", "a.b.c"));
        assert!(m("*", "x"));
        assert!(m("*", ""));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(m("#", "a.b.c"));
        assert!(m("#", ""));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.b.b.c"));
        assert!(!m("a.#.c", "a.b.d"));
        assert!(m("#.c", "c"));
        assert!(m("a.#.#", "a"));
        assert!(m("*.#", "a.b"));
    }

    #[test]
    fn empty_words_are_words() {
        assert!(m("a..b", "a..b"));
        assert!(m("a.*.b", "a..b"));
    }
}
