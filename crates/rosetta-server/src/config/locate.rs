//! Turns parse errors and rule violations into one line naming the file, line and key.
//!
//! The TOML parser reports byte spans but not key paths, and validation knows key paths but not
//! lines, so both are bridged by a light scan of the text: which table each line belongs to and
//! which key it sets. The scan understands the layouts people write (`[table]`, `[[array]]`,
//! `key = value`, top-level dotted keys); for anything more exotic the key is still named and only
//! the line number may be missing.

use std::collections::HashMap;

use super::validate::{KeyPath, Violation};
use super::ConfigError;

/// The ` line N` part of an error's location, empty when the line is unknown.
pub(super) fn at_line(line: Option<usize>) -> String {
    line.map(|n| format!(" line {n}")).unwrap_or_default()
}

pub(super) fn parse_error(text: &str, origin: &str, err: &toml::de::Error) -> ConfigError {
    let message = one_line(err.message());
    let line = err.span().map(|span| line_of(text, span.start));
    let scanned = line.and_then(|n| scan(text).into_iter().nth(n - 1));

    if let Some(unknown) = unknown_field(&message) {
        // For a header line (`[amqpp]`) the unknown key is the header itself, so it belongs to
        // the parent table; otherwise to the table in effect on that line.
        let (table, place) = match &scanned {
            Some(Line {
                kind: Kind::Header,
                table,
                ..
            }) => {
                let parent = table.and_then(|t| parent(t.name)).map(str::to_owned);
                let place = parent.as_ref().map(|p| format!(" in [{p}]"));
                (parent, place)
            }
            Some(Line { table, .. }) => (
                table.map(|t| t.path()),
                table.map(|t| format!(" in {}", t.header())),
            ),
            None => (None, None),
        };
        let place = place.unwrap_or_default();
        let key = match &table {
            Some(t) => format!("{t}.{}", unknown.key),
            None => unknown.key.to_owned(),
        };
        return ConfigError::Invalid {
            origin: origin.to_owned(),
            line,
            message: format!("unknown key `{}`{place}{}", unknown.key, unknown.rest),
            key: Some(key),
        };
    }

    let key = scanned.and_then(|l| match l.kind {
        Kind::Key(k) => Some(match l.table {
            Some(t) => format!("{}.{k}", t.path()),
            None => k.to_owned(),
        }),
        Kind::Header => l.table.map(|t| t.path()),
        Kind::Other => None,
    });
    let message = match &key {
        Some(key) => format!("{key}: {message}"),
        None => message,
    };
    ConfigError::Invalid {
        origin: origin.to_owned(),
        line,
        key,
        message,
    }
}

pub(super) fn violation_error(text: &str, origin: &str, violation: Violation) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        line: find(text, violation.key),
        key: Some(violation.key.to_string()),
        message: format!("{}: {}", violation.key, violation.message),
    }
}

/// The line that sets `path`, or failing that the line of its table, so that an error about a
/// value left at its default still points somewhere useful.
fn find(text: &str, path: KeyPath) -> Option<usize> {
    let lines = scan(text);
    let in_table = |l: &Line| match (l.table, path.table) {
        (None, None) => true,
        (Some(t), Some(name)) => t.name == name && t.index == path.index,
        _ => false,
    };
    let dotted = path.table.map(|t| format!("{t}.{}", path.key));
    let exact = lines
        .iter()
        .find(|l| in_table(l) && matches!(l.kind, Kind::Key(k) if k == path.key));
    let top_dotted = || {
        lines.iter().find(|l| {
            l.table.is_none() && matches!(l.kind, Kind::Key(k) if Some(k) == dotted.as_deref())
        })
    };
    let header = || {
        lines
            .iter()
            .find(|l| path.table.is_some() && in_table(l) && matches!(l.kind, Kind::Header))
    };
    // An inline array (`users = [...]`) has no per-item lines; its own line is the best answer.
    let inline = || {
        lines
            .iter()
            .find(|l| l.table.is_none() && matches!(l.kind, Kind::Key(k) if Some(k) == path.table))
    };
    exact
        .or_else(top_dotted)
        .or_else(header)
        .or_else(inline)
        .map(|l| l.number)
}

struct Unknown<'a> {
    key: &'a str,
    /// What serde says after the key, e.g. ", expected one of `enabled`, `listen`".
    rest: &'a str,
}

/// Recognises serde's `unknown field `x`, expected ...` message.
fn unknown_field(message: &str) -> Option<Unknown<'_>> {
    let after = message.strip_prefix("unknown field `")?;
    let (key, rest) = after.split_once('`')?;
    Some(Unknown { key, rest })
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line containing byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parent(table: &str) -> Option<&str> {
    table.rsplit_once('.').map(|(parent, _)| parent)
}

#[derive(Debug, Clone, Copy)]
struct Table<'a> {
    name: &'a str,
    /// Position among the `[[name]]` headers, for arrays of tables.
    index: Option<usize>,
}

impl Table<'_> {
    fn path(&self) -> String {
        match self.index {
            Some(i) => format!("{}[{i}]", self.name),
            None => self.name.to_owned(),
        }
    }

    fn header(&self) -> String {
        match self.index {
            Some(i) => format!("[[{}]] (entry {})", self.name, i + 1),
            None => format!("[{}]", self.name),
        }
    }
}

#[derive(Debug)]
enum Kind<'a> {
    Header,
    Key(&'a str),
    Other,
}

#[derive(Debug)]
struct Line<'a> {
    number: usize,
    /// The table in effect on this line; for a header line, the table it opens.
    table: Option<Table<'a>>,
    kind: Kind<'a>,
}

fn scan(text: &str) -> Vec<Line<'_>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut table = None;
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        let kind = if let Some(rest) = trimmed.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or_default().trim();
            let count = seen.entry(name).or_insert(0);
            table = Some(Table {
                name,
                index: Some(*count),
            });
            *count += 1;
            Kind::Header
        } else if let Some(rest) = trimmed.strip_prefix('[') {
            let name = rest.split(']').next().unwrap_or_default().trim();
            table = Some(Table { name, index: None });
            Kind::Header
        } else if trimmed.starts_with('#') {
            Kind::Other
        } else if let Some((key, _)) = trimmed.split_once('=') {
            Kind::Key(key.trim().trim_matches('"'))
        } else {
            Kind::Other
        };
        lines.push(Line {
            number: i + 1,
            table,
            kind,
        });
    }
    lines
}
