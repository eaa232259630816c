//! Reading the broker's log: ANSI stripping and the "listener opened" line.

use std::net::SocketAddr;

/// Removes ANSI escape sequences (colours, cursor moves) from a log line.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            // CSI: ESC [ parameters... final byte in '@'..='~'
            Some('[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: ESC ] ... terminated by BEL or ESC \
            Some(']') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            // Two-character escape.
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

/// Finds the value of field `key` in a tracing line: `key=value`, `key="value"` (text format) or
/// `"key":"value"` (JSON format). The key must start the line or follow a delimiter, so `addr`
/// does not match inside `local_addr`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let patterns = [format!("{key}="), format!("\"{key}\":")];
    for pattern in &patterns {
        let mut from = 0;
        while let Some(pos) = line[from..].find(pattern.as_str()) {
            let start = from + pos;
            from = start + pattern.len();
            let boundary_ok = start == 0
                || line[..start]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_whitespace() || matches!(c, ',' | '{' | '(' | ':'));
            if !boundary_ok {
                continue;
            }
            let rest = line[from..].trim_start();
            let value = if let Some(quoted) = rest.strip_prefix('"') {
                quoted.split('"').next().unwrap_or("")
            } else {
                rest.split(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | ')'))
                    .next()
                    .unwrap_or("")
            };
            if !value.is_empty() {
                return Some(value);
            }
        }
    }
    None
}

/// Parses a "listener opened" log line into `(protocol, address)`.
///
/// Accepts tracing's text format (`listener opened protocol=amqp addr=127.0.0.1:5672`, values
/// possibly quoted) and its JSON format; ANSI escapes are ignored.
pub fn parse_listener(line: &str) -> Option<(String, SocketAddr)> {
    let line = strip_ansi(line);
    if !line.contains("listener opened") {
        return None;
    }
    let protocol = field(&line, "protocol")?.to_ascii_lowercase();
    let addr = field(&line, "addr")
        .or_else(|| field(&line, "address"))?
        .parse()
        .ok()?;
    Some((protocol, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_listener_line_is_parsed() {
        let line = "2024-05-01T10:00:00.000Z  INFO rosetta_server::listener: listener opened protocol=amqp addr=127.0.0.1:40123";
        let (protocol, addr) = parse_listener(line).expect("parsed");
        assert_eq!(protocol, "amqp");
        assert_eq!(addr, "127.0.0.1:40123".parse::<SocketAddr>().expect("addr"));
    }

    #[test]
    fn quoted_fields_and_ansi_colours_are_accepted() {
        let line = "\u{1b}[2m2024-05-01T10:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[1mlistener opened\u{1b}[0m \u{1b}[3mprotocol\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"mqtt\" \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:1883";
        let (protocol, addr) = parse_listener(line).expect("parsed");
        assert_eq!(protocol, "mqtt");
        assert_eq!(addr.port(), 1883);
    }

    #[test]
    fn json_listener_line_is_parsed() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"message":"listener opened","protocol":"stomp","addr":"127.0.0.1:61613"}}"#;
        let (protocol, addr) = parse_listener(line).expect("parsed");
        assert_eq!(protocol, "stomp");
        assert_eq!(addr.port(), 61613);
    }

    #[test]
    fn other_lines_and_lookalike_fields_are_ignored() {
        assert!(
            parse_listener("INFO connection accepted protocol=amqp addr=127.0.0.1:1").is_none()
        );
        assert!(
            parse_listener("INFO listener opened protocol=amqp local_addr=127.0.0.1:1").is_none()
        );
        assert!(parse_listener("INFO listener opened protocol=amqp addr=not-an-address").is_none());
    }

    #[test]
    fn ansi_stripping_keeps_plain_text() {
        assert_eq!(strip_ansi("\u{1b}[1;31mred\u{1b}[0m text"), "red text");
        assert_eq!(strip_ansi("no escapes"), "no escapes");
    }
}
