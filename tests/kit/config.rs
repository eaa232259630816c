//! The broker configuration file a test broker runs with, built as TOML text.
//!
//! The kit's defaults put every listener on `127.0.0.1:0` (or disable it) and the store in the
//! test's temporary directory. Extra TOML is merged by section, so a test can add
//! `[amqp] frame_max = 4096` or turn `[mqtt] enabled = true` without repeating the defaults.

use std::path::Path;

/// An ordered set of TOML sections, each an ordered list of `key = value` lines.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    /// Lines before any section header.
    top: Vec<String>,
    sections: Vec<(String, Vec<String>)>,
    /// `[[array.of.tables]]` blocks, kept verbatim.
    verbatim: Vec<String>,
}

/// Quotes a string as a TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('#')).then_some(key)
}

impl ConfigFile {
    /// The kit's defaults: data under `data_dir`, AMQP on an ephemeral loopback port, the other
    /// listeners disabled. MQTT's and STOMP's WebSocket listeners, which open with their
    /// section, are on ephemeral loopback ports too, so parallel brokers do not fight over
    /// 15674 and 15675.
    pub fn defaults(data_dir: &Path) -> Self {
        let mut config = Self::default();
        config.set("storage", "path", &toml_string(&data_dir.to_string_lossy()));
        config.set("amqp", "listen", "\"127.0.0.1:0\"");
        config.set("mqtt", "enabled", "false");
        config.set("mqtt", "ws_listen", "\"127.0.0.1:0\"");
        config.set("stomp", "enabled", "false");
        config.set("stomp", "ws_listen", "\"127.0.0.1:0\"");
        config.set("http", "enabled", "false");
        config
    }

    /// Sets `key = value` (value already in TOML syntax) in `section`, replacing an earlier value.
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        self.set_line(section, format!("{key} = {value}"));
    }

    fn set_line(&mut self, section: &str, line: String) {
        let lines = if section.is_empty() {
            &mut self.top
        } else {
            let index = match self.sections.iter().position(|(name, _)| name == section) {
                Some(index) => index,
                None => {
                    self.sections.push((section.to_string(), Vec::new()));
                    self.sections.len() - 1
                }
            };
            &mut self.sections[index].1
        };
        if let Some(key) = key_of(&line) {
            let key = key.to_string();
            if let Some(existing) = lines.iter_mut().find(|l| key_of(l) == Some(key.as_str())) {
                *existing = line;
                return;
            }
        }
        lines.push(line);
    }

    /// Merges TOML text: `key = value` lines go into their `[section]`, replacing the same key.
    /// Multi-line values are not supported; `[[tables]]` are appended verbatim.
    pub fn merge(&mut self, extra: &str) {
        let mut section = String::new();
        let mut in_verbatim = false;
        for raw in extra.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("[[") {
                in_verbatim = true;
                self.verbatim.push(line.to_string());
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                in_verbatim = false;
                section = name.trim().to_string();
                if !self.sections.iter().any(|(n, _)| *n == section) {
                    self.sections.push((section.clone(), Vec::new()));
                }
                continue;
            }
            if in_verbatim {
                self.verbatim.push(line.to_string());
            } else {
                self.set_line(&section.clone(), line.to_string());
            }
        }
    }

    /// The value of `key` in `section`, as written (TOML syntax), if set.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        let (_, lines) = self.sections.iter().find(|(name, _)| name == section)?;
        lines
            .iter()
            .find(|l| key_of(l) == Some(key))
            .and_then(|l| l.split_once('='))
            .map(|(_, v)| v.trim())
    }

    /// Whether the listener of `section` is enabled (present and not `enabled = false`).
    pub fn listener_enabled(&self, section: &str) -> bool {
        self.sections.iter().any(|(name, _)| name == section)
            && self.get(section, "enabled") != Some("false")
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.top {
            out.push_str(line);
            out.push('\n');
        }
        for (name, lines) in &self.sections {
            out.push_str(&format!("\n[{name}]\n"));
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !self.verbatim.is_empty() {
            out.push('\n');
            for line in &self.verbatim {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_disable_every_listener_but_amqp() {
        let config = ConfigFile::defaults(Path::new("some/dir/data"));
        let text = config.render();
        assert!(
            text.contains("[storage]\npath = \"some/dir/data\"\n"),
            "{text}"
        );
        assert!(
            text.contains("[amqp]\nlisten = \"127.0.0.1:0\"\n"),
            "{text}"
        );
        assert!(config.listener_enabled("amqp"));
        for section in ["mqtt", "stomp", "http"] {
            assert!(!config.listener_enabled(section), "{section}");
        }
        for section in ["mqtt", "stomp"] {
            assert_eq!(
                config.get(section, "ws_listen"),
                Some("\"127.0.0.1:0\""),
                "{section}"
            );
        }
    }

    #[test]
    fn merged_extras_replace_keys_within_their_section() {
        let mut config = ConfigFile::defaults(Path::new("d"));
        config.merge("[amqp]\nframe_max = 4096\n\n[mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_connections = 3\n");
        assert_eq!(config.get("amqp", "frame_max"), Some("4096"));
        assert_eq!(config.get("amqp", "listen"), Some("\"127.0.0.1:0\""));
        assert_eq!(config.get("mqtt", "enabled"), Some("true"));
        assert!(config.listener_enabled("mqtt"));
        assert_eq!(config.get("limits", "max_connections"), Some("3"));
        let text = config.render();
        assert_eq!(text.matches("[amqp]").count(), 1, "{text}");
        assert_eq!(text.matches("enabled = false").count(), 2, "{text}");
    }

    #[test]
    fn strings_with_quotes_and_backslashes_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
