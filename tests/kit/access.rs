//! Users and what they may do on the virtual host `/`: the `[[users]]`, `[[permissions]]` and
//! `[[topic_permissions]]` blocks of a test broker's configuration, for the tests that log in
//! as users with different rights.

use crate::config::toml_string;

/// TOML text, built up one block at a time; pass [`Access::toml`] to
/// [`Broker::start_with`](crate::Broker::start_with) or with other extra TOML.
#[derive(Clone, Debug, Default)]
pub struct Access {
    toml: String,
}

impl Access {
    /// What every permission test starts from: `admin` may do anything on `/`; `carol` logs in
    /// but has no permission on `/`, so opening it is refused.
    pub fn admin_and_carol() -> Self {
        Access::default()
            .user("admin")
            .permissions("admin", ".*", ".*", ".*")
            .user("carol")
    }

    /// A user whose password is its name, so tests log in as `name`/`name`.
    pub fn user(mut self, name: &str) -> Self {
        let name = toml_string(name);
        self.block(
            "users",
            &[("name", name.as_str()), ("password", name.as_str())],
        );
        self
    }

    /// The regular expressions `user`'s configure, write and read operations on `/` must match.
    pub fn permissions(self, user: &str, configure: &str, write: &str, read: &str) -> Self {
        self.rights("permissions", user, ("configure", configure), write, read)
    }

    /// The regular expressions the routing keys `user` publishes with (`write`) and binds with
    /// (`read`) on the topic exchange `exchange` of `/` must match.
    pub fn topic_permissions(self, user: &str, exchange: &str, write: &str, read: &str) -> Self {
        self.rights(
            "topic_permissions",
            user,
            ("exchange", exchange),
            write,
            read,
        )
    }

    pub fn toml(&self) -> &str {
        &self.toml
    }

    /// A `[[permissions]]` or `[[topic_permissions]]` entry: `user`'s write and read patterns
    /// on `/`, for what `scope` (a key and its value) names.
    fn rights(
        mut self,
        table: &str,
        user: &str,
        scope: (&str, &str),
        write: &str,
        read: &str,
    ) -> Self {
        let (key, value) = scope;
        self.block(
            table,
            &[
                ("user", &toml_string(user)),
                ("vhost", "\"/\""),
                (key, &toml_string(value)),
                ("write", &toml_string(write)),
                ("read", &toml_string(read)),
            ],
        );
        self
    }

    /// Appends a `[[table]]` entry; values are already TOML.
    fn block(&mut self, table: &str, lines: &[(&str, &str)]) {
        self.toml.push_str(&format!("\n[[{table}]]\n"));
        for (key, value) in lines {
            self.toml.push_str(&format!("{key} = {value}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_written_as_toml_strings() {
        let access = Access::default().user("bob").topic_permissions(
            "bob",
            "amq.topic",
            r"^sensors\.",
            "^$",
        );
        assert_eq!(
            access.toml(),
            "\n[[users]]\nname = \"bob\"\npassword = \"bob\"\n\
             \n[[topic_permissions]]\nuser = \"bob\"\nvhost = \"/\"\nexchange = \"amq.topic\"\n\
             write = \"^sensors\\\\.\"\nread = \"^$\"\n"
        );
    }
}
