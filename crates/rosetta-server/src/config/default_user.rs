//! The first administrator from environment variables, as container images take it
//! (RabbitMQ's image reads `RABBITMQ_DEFAULT_USER` and `RABBITMQ_DEFAULT_PASS` the same way):
//! an image can then ship a configuration without a usable remote login, and each deployment
//! names its own administrator without writing a file.

use super::{validate, Config, ConfigError, PermissionConfig, User};

/// The administrator's name; with it, exactly one of the two below.
pub const USER_VAR: &str = "ROSETTA_DEFAULT_USER";
/// Its password in plain text (hashed at once, like `password` in the file)...
pub const PASS_VAR: &str = "ROSETTA_DEFAULT_PASS";
/// ...or already hashed, as `rosetta hash-password` prints it.
pub const PASS_HASH_VAR: &str = "ROSETTA_DEFAULT_PASS_HASH";

impl Config {
    /// Adds the administrator named by the environment (see the module docs), replacing a
    /// configured user of the same name; unchanged when `ROSETTA_DEFAULT_USER` is unset.
    pub fn with_default_user_from_env(self) -> Result<Config, ConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        self.with_default_user(var(USER_VAR), var(PASS_VAR), var(PASS_HASH_VAR))
    }

    fn with_default_user(
        mut self,
        name: Option<String>,
        password: Option<String>,
        password_hash: Option<String>,
    ) -> Result<Config, ConfigError> {
        let Some(name) = name else {
            if password.is_some() || password_hash.is_some() {
                return Err(invalid(format!(
                    "{PASS_VAR} or {PASS_HASH_VAR} is set without {USER_VAR}"
                )));
            }
            return Ok(self);
        };
        let user = User {
            name,
            password,
            password_hash,
            tags: vec!["administrator".into()],
            // Clients of a container come from outside its loopback interface.
            loopback_only: Some(false),
        };
        validate::user(0, &user).map_err(|v| {
            invalid(format!(
                "the administrator from {USER_VAR}: {}",
                v.message
                    .replace("`password`", PASS_VAR)
                    .replace("`password_hash`", PASS_HASH_VAR)
            ))
        })?;
        // Full permissions on every virtual host, as RabbitMQ's default user has. Without any
        // `[[permissions]]` every user has them already, and one entry here would take them
        // from the others.
        if !self.permissions_are_implicit() {
            self.permissions.retain(|p| p.user != user.name);
            for vhost in &self.vhosts {
                self.permissions.push(PermissionConfig {
                    user: user.name.clone(),
                    vhost: vhost.name.clone(),
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                });
            }
        }
        self.users.retain(|u| u.name != user.name);
        self.users.push(user);
        Ok(self)
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid {
        origin: "environment".into(),
        line: None,
        key: None,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::default()
    }

    #[test]
    fn nothing_set_changes_nothing() {
        let before = config();
        let after = config()
            .with_default_user(None, None, None)
            .expect("no variables");
        assert_eq!(after, before);
    }

    #[test]
    fn the_administrator_joins_the_configured_users_and_may_log_in_remotely() {
        let after = config()
            .with_default_user(Some("admin".into()), Some("s3cret".into()), None)
            .expect("valid");
        let users = after.core_users().expect("users");
        let remote = std::net::IpAddr::from([10, 0, 0, 7]);
        assert!(users.check("admin", "s3cret", remote).is_ok());
        assert!(users.check("admin", "wrong", remote).is_err());
        assert_eq!(
            users.tags("admin"),
            &[rosetta_core::auth::Tag::Administrator]
        );
        // guest stays, still confined to loopback.
        assert!(users.check("guest", "guest", remote).is_err());
    }

    #[test]
    fn the_administrator_gets_full_permissions_on_every_vhost_when_permissions_are_set() {
        let mut config = config();
        config.vhosts.push(super::super::VHostConfig {
            name: "prod".into(),
        });
        let after = config
            .with_default_user(Some("admin".into()), Some("s3cret".into()), None)
            .expect("valid");
        let directory = after.core_directory().expect("directory");
        assert!(directory.vhost_access("admin", "/"));
        assert!(directory.vhost_access("admin", "prod"));
        // guest keeps exactly its own entry.
        assert!(directory.vhost_access("guest", "/"));
        assert!(!directory.vhost_access("guest", "prod"));
    }

    #[test]
    fn a_configured_user_of_the_same_name_is_replaced() {
        let after = config()
            .with_default_user(Some("guest".into()), Some("better".into()), None)
            .expect("valid");
        assert_eq!(after.users.iter().filter(|u| u.name == "guest").count(), 1);
        let users = after.core_users().expect("users");
        let remote = std::net::IpAddr::from([10, 0, 0, 7]);
        assert!(users.check("guest", "better", remote).is_ok());
        assert!(users.check("guest", "guest", remote).is_err());
    }

    #[test]
    fn a_hash_is_taken_as_it_is_and_bad_combinations_are_named() {
        // RabbitMQ's documented example: "test12" with salt 908DC60A.
        let hash = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";
        let after = config()
            .with_default_user(Some("admin".into()), None, Some(hash.into()))
            .expect("valid hash");
        let users = after.core_users().expect("users");
        assert!(users
            .check("admin", "test12", std::net::IpAddr::from([10, 0, 0, 7]))
            .is_ok());

        let both = config()
            .with_default_user(Some("a".into()), Some("p".into()), Some(hash.into()))
            .expect_err("both");
        assert!(both.to_string().contains(USER_VAR), "{both}");
        let neither = config()
            .with_default_user(Some("a".into()), None, None)
            .expect_err("neither");
        assert!(neither.to_string().contains(PASS_VAR), "{neither}");
        let orphan = config()
            .with_default_user(None, Some("p".into()), None)
            .expect_err("password without user");
        assert!(orphan.to_string().contains(USER_VAR), "{orphan}");
    }
}
