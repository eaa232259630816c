//! Users and the login check every front-end shares.

use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    /// May log in only over a loopback address (RabbitMQ's rule for `guest`).
    pub loopback_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password; the two are not told apart, to not leak user names.
    BadCredentials,
    /// The user exists but may only connect from loopback.
    LoopbackOnly,
}

#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
}

impl Users {
    pub fn new(users: Vec<User>) -> Self {
        Users { users }
    }

    pub fn check(&self, name: &str, password: &str, peer: IpAddr) -> Result<(), AuthFailure> {
        let user = self
            .users
            .iter()
            .find(|u| u.name == name && u.password == password)
            .ok_or(AuthFailure::BadCredentials)?;
        if user.loopback_only && !peer.is_loopback() {
            return Err(AuthFailure::LoopbackOnly);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_users_are_refused_from_elsewhere() {
        let users = Users::new(vec![User {
            name: "guest".into(),
            password: "guest".into(),
            loopback_only: true,
        }]);
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let remote: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(users.check("guest", "guest", local), Ok(()));
        assert_eq!(
            users.check("guest", "guest", remote),
            Err(AuthFailure::LoopbackOnly)
        );
        assert_eq!(
            users.check("guest", "nope", local),
            Err(AuthFailure::BadCredentials)
        );
        assert_eq!(
            users.check("nobody", "guest", local),
            Err(AuthFailure::BadCredentials)
        );
    }
}
