//! AMQP topic matching: words separated by `.`, `*` matches exactly one word, `#` matches zero
//! or more words (AMQP 0-9-1 §3.1.3.3). MQTT filters are translated to this form by the MQTT
//! front-end, so one matcher serves both.
//!
//! Patterns live in a trie over words, so a publish visits only the branches its words lead to,
//! however many patterns are bound. `#` is matched as a state that either absorbs the next word
//! or hands over to what follows it; every (node, word position) state is explored at most once,
//! so a match costs at most the trie nodes reached times the key's words. A naive backtracking
//! matcher is exponential in the number of `#` in a pattern, which one client could use to stall
//! every publisher of an exchange.

use std::collections::{HashMap, HashSet};

use smallvec::SmallVec;

use crate::hash::KeyedState;

/// A trie of topic patterns, each ending in a value of type `V` (the bindings of that pattern).
#[derive(Debug, Default)]
pub struct TopicTrie<V> {
    root: Node<V>,
}

#[derive(Debug)]
struct Node<V> {
    /// Clients choose the words, and a publish hashes each of its key's words here.
    words: HashMap<Box<str>, Node<V>, KeyedState>,
    star: Option<Box<Node<V>>>,
    hash: Option<Box<Node<V>>>,
    /// The value of the pattern that ends here, if one does.
    value: Option<V>,
    /// This node stands for a `#` word.
    is_hash: bool,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            words: HashMap::default(),
            star: None,
            hash: None,
            value: None,
            is_hash: false,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

enum Word<'a> {
    Literal(&'a str),
    One,
    Many,
}

/// The pattern's words, with runs of `#` collapsed: `#.#` matches exactly what `#` matches, and
/// keeping one keeps the trie from growing a chain of `#` states per run.
fn pattern_words(pattern: &str) -> impl Iterator<Item = Word<'_>> {
    let mut previous_many = false;
    pattern.split('.').filter_map(move |w| {
        let word = match w {
            "*" => Word::One,
            "#" => Word::Many,
            other => Word::Literal(other),
        };
        let many = matches!(word, Word::Many);
        let skip = many && previous_many;
        previous_many = many;
        (!skip).then_some(word)
    })
}

impl<V> TopicTrie<V> {
    pub fn new() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }

    /// The value of `pattern`, created with `make` if the pattern is new. Costs one step per word.
    pub fn entry(&mut self, pattern: &str, make: impl FnOnce() -> V) -> &mut V {
        let mut node = &mut self.root;
        for word in pattern_words(pattern) {
            node = match word {
                Word::Literal(w) => node.words.entry(w.into()).or_default(),
                Word::One => node.star.get_or_insert_with(Box::default),
                Word::Many => node.hash.get_or_insert_with(|| {
                    Box::new(Node {
                        is_hash: true,
                        ..Node::default()
                    })
                }),
            };
        }
        node.value.get_or_insert_with(make)
    }

    /// Applies `edit` to the value of `pattern`, if the pattern is there. When `edit` returns
    /// true the value is removed, and so are the trie nodes no other pattern uses.
    pub fn edit(&mut self, pattern: &str, edit: impl FnOnce(&mut V) -> bool) {
        let words: Vec<Word<'_>> = pattern_words(pattern).collect();
        edit_at(&mut self.root, &words, edit);
    }

    /// Calls `found` once for the value of every pattern that matches `routing_key`. Runs on
    /// every publish to a topic exchange, so the common case allocates nothing: the key's words
    /// are found in place, and the work list and visited set live inline until a match needs
    /// more states than a handful.
    pub fn for_each_match<'a>(&'a self, routing_key: &str, mut found: impl FnMut(&'a V)) {
        let key = KeyWords(routing_key);
        // (node, byte offset of the next key word, or `key.end()` once every word is used). At
        // a `#` node the state means "the `#` has absorbed the words before this offset".
        let mut stack: SmallVec<[(&Node<V>, usize); INLINE_STATES]> = SmallVec::new();
        stack.push((&self.root, 0));
        // Only `#` lets two paths reach the same state, so states are tracked from the first one.
        let mut seen = Seen::default();
        let mut tracking = false;
        while let Some((node, at)) = stack.pop() {
            let id = node as *const Node<V> as usize;
            if tracking && !seen.insert((id, at)) {
                continue;
            }
            if node.is_hash {
                // A pattern ending in `#` matches whatever is left: report it on the first visit.
                tracking = true;
                if seen.insert((id, usize::MAX)) {
                    if let Some(v) = &node.value {
                        found(v);
                    }
                }
                if let Some((_, next)) = key.word_at(at) {
                    stack.push((node, next));
                }
            } else if at == key.end() {
                if let Some(v) = &node.value {
                    found(v);
                }
            }
            if let Some(hash) = node.hash.as_deref() {
                tracking = true;
                stack.push((hash, at));
            }
            let Some((word, next)) = key.word_at(at) else {
                continue;
            };
            if let Some(child) = node.words.get(word) {
                stack.push((child, next));
            }
            if let Some(child) = node.star.as_deref() {
                stack.push((child, next));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

/// States a match keeps inline before its work list or visited set moves to the heap.
const INLINE_STATES: usize = 16;

/// A routing key's words, addressed by the byte offset where each starts, so matching needs no
/// list of them.
#[derive(Clone, Copy)]
struct KeyWords<'k>(&'k str);

impl<'k> KeyWords<'k> {
    /// The offset that stands for "after the last word". An empty key is one empty word.
    fn end(self) -> usize {
        self.0.len() + 1
    }

    /// The word starting at `at` and the offset of the one after it; None past the last word.
    /// Words are a few bytes long, so a plain byte scan beats `str::find`, whose setup costs
    /// more than such a word. `.` is ASCII: never part of another character's encoding.
    fn word_at(self, at: usize) -> Option<(&'k str, usize)> {
        let rest = self.0.get(at..)?;
        let len = rest.bytes().position(|b| b == b'.').unwrap_or(rest.len());
        Some((&rest[..len], at + len + 1))
    }
}

/// The (node, offset) states a match has visited: a linear scan over an inline array while
/// they are few, a hash set past that, so a hostile pattern stays polynomial.
#[derive(Default)]
struct Seen {
    few: SmallVec<[(usize, usize); INLINE_STATES]>,
    many: Option<HashSet<(usize, usize)>>,
}

impl Seen {
    /// Adds a state; false if it was there already.
    fn insert(&mut self, state: (usize, usize)) -> bool {
        if let Some(many) = self.many.as_mut() {
            return many.insert(state);
        }
        if self.few.contains(&state) {
            return false;
        }
        if self.few.len() < INLINE_STATES {
            self.few.push(state);
        } else {
            let mut many: HashSet<_> = self.few.drain(..).collect();
            many.insert(state);
            self.many = Some(many);
        }
        true
    }
}

/// Recursion is bounded by the pattern's words, which callers keep within 255 bytes.
fn edit_at<V>(node: &mut Node<V>, words: &[Word<'_>], edit: impl FnOnce(&mut V) -> bool) {
    let Some((first, rest)) = words.split_first() else {
        if node.value.as_mut().is_some_and(edit) {
            node.value = None;
        }
        return;
    };
    match first {
        Word::Literal(w) => {
            if let Some(child) = node.words.get_mut(*w) {
                edit_at(child, rest, edit);
                if child.is_empty() {
                    node.words.remove(*w);
                }
            }
        }
        Word::One => {
            if let Some(child) = node.star.as_deref_mut() {
                edit_at(child, rest, edit);
                if child.is_empty() {
                    node.star = None;
                }
            }
        }
        Word::Many => {
            if let Some(child) = node.hash.as_deref_mut() {
                edit_at(child, rest, edit);
                if child.is_empty() {
                    node.hash = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TopicTrie;

    fn m(p: &str, k: &str) -> bool {
        let mut trie = TopicTrie::new();
        *trie.entry(p, || 0) += 1;
        let mut hits = 0;
        trie.for_each_match(k, |_| hits += 1);
        assert!(hits <= 1, "{p} reported {hits} times for {k}");
        hits == 1
    }

    /// The definition, by backtracking: exponential, fine for the short cases compared below.
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
            Some((w, rest)) => key.first() == Some(w) && reference(rest, &key[1..]),
        }
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
        assert!(!m("*.*.#", "a"));
        assert!(m("#.*.#", "a"));
    }

    #[test]
    fn empty_words_are_words() {
        assert!(m("a..b", "a..b"));
        assert!(m("a.*.b", "a..b"));
    }

    #[test]
    fn every_short_pattern_agrees_with_the_definition() {
        let words = ["a", "b", "*", "#"];
        let keys = [
            "",
            "a",
            "b",
            "a.a",
            "a.b",
            "b.a",
            "a.b.a",
            "a.a.a.b",
            "b.b.b.b.a",
        ];
        // Every pattern of up to four words over {a, b, *, #}.
        let mut patterns = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..4 {
            patterns = patterns
                .iter()
                .flat_map(|p| {
                    words.iter().map(move |w| {
                        if p.is_empty() {
                            (*w).to_owned()
                        } else {
                            format!("{p}.{w}")
                        }
                    })
                })
                .collect();
            all.extend(patterns.iter().cloned());
        }
        let mut trie = TopicTrie::new();
        for (i, p) in all.iter().enumerate() {
            trie.entry(p, Vec::new).push(i);
        }
        for key in keys {
            let mut got: Vec<usize> = Vec::new();
            trie.for_each_match(key, |v: &Vec<usize>| got.extend(v));
            got.sort_unstable();
            let k: Vec<&str> = key.split('.').collect();
            let want: Vec<usize> = (0..all.len())
                .filter(|&i| {
                    let p: Vec<&str> = all[i].split('.').collect();
                    reference(&p, &k)
                })
                .collect();
            assert_eq!(got, want, "key {key:?}");
        }
    }

    #[test]
    fn alternating_hash_and_star_patterns_match_in_polynomial_steps() {
        // The pattern a backtracking matcher needs minutes for: `#.*.` eight times, then `z`,
        // against 121 words that never end in `z`.
        let pattern = format!("{}z", "#.*.".repeat(8));
        let key = format!("{}a", "a.".repeat(120));
        assert!(!m(&pattern, &key));
        let matching = format!("{}z", "a.".repeat(120));
        assert!(m(&pattern, &matching));
    }

    #[test]
    fn removing_a_pattern_prunes_its_branch_and_keeps_the_others() {
        let mut trie = TopicTrie::new();
        *trie.entry("a.*.#.b", || 0) += 1;
        *trie.entry("a.*", || 0) += 1;
        trie.edit("a.*.#.b", |_| true);
        let mut hits = 0;
        trie.for_each_match("a.x.y.b", |_| hits += 1);
        assert_eq!(hits, 0);
        trie.for_each_match("a.x", |_| hits += 1);
        assert_eq!(hits, 1);
        trie.edit("a.*", |_| true);
        assert!(trie.is_empty());
    }

    #[test]
    fn runs_of_hash_are_one_hash() {
        let mut trie = TopicTrie::new();
        *trie.entry("a.#.#.#", || 0) += 1;
        assert_eq!(*trie.entry("a.#", || 0), 1);
    }
}
