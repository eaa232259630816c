//! Users, their permissions, and the checks every front-end shares: the login, access to a
//! virtual host, and RabbitMQ's configure / write / read and topic permissions
//! ([`Directory`], [`Grant`], `permissions`).
//!
//! Passwords are kept only as salted hashes ([`PasswordHash`], RabbitMQ's format). A refused
//! login is also noted for whoever drives the connection: the front-ends check credentials
//! synchronously while they decode a frame, and the connection driver, which owns the socket
//! and the timers, answers a refusal late and counts it. [`refusals_during`] tells it how many
//! logins the code it ran refused, without each protocol reporting them on its own.

mod directory;
mod grant;
mod password;
#[cfg(test)]
mod permission_tests;
pub mod permissions;
pub mod records;

use std::cell::Cell;
use std::net::IpAddr;

pub use directory::{Contents, Directory};
pub use grant::Grant;
pub use password::{constant_time_eq, HashAlgorithm, HashError, PasswordHash};
pub use permissions::{
    Access, Pattern, PatternError, Permission, Permissions, Resource, TopicPermission,
};

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// Build it from plain text with `"secret".into()` or [`PasswordHash::new`], or read an
    /// existing hash with [`PasswordHash::parse`].
    pub password: PasswordHash,
    /// May log in only over a loopback address (RabbitMQ's rule for `guest`).
    pub loopback_only: bool,
}

/// A user's management role, RabbitMQ's user tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    Administrator,
    Management,
    Monitoring,
}

impl Tag {
    pub const ALL: [Tag; 3] = [Tag::Administrator, Tag::Management, Tag::Monitoring];

    pub fn name(self) -> &'static str {
        match self {
            Tag::Administrator => "administrator",
            Tag::Management => "management",
            Tag::Monitoring => "monitoring",
        }
    }

    pub fn from_name(name: &str) -> Option<Tag> {
        Tag::ALL.into_iter().find(|t| t.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Unknown user or wrong password; the two are not told apart, to not leak user names.
    BadCredentials,
    /// The user exists but may only connect from loopback.
    LoopbackOnly,
}

#[derive(Debug, Clone)]
struct Account {
    user: User,
    tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default)]
pub struct Users {
    accounts: Vec<Account>,
}

impl Users {
    /// Users without tags.
    pub fn new(users: Vec<User>) -> Self {
        Users::tagged(users.into_iter().map(|u| (u, Vec::new())).collect())
    }

    /// Users with their tags.
    pub fn tagged(users: Vec<(User, Vec<Tag>)>) -> Self {
        Users {
            accounts: users
                .into_iter()
                .map(|(user, tags)| Account { user, tags })
                .collect(),
        }
    }

    /// The tags of user `name`; none for an unknown user.
    pub fn tags(&self, name: &str) -> &[Tag] {
        self.find(name).map_or(&[][..], |a| a.tags.as_slice())
    }

    fn find(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.user.name == name)
    }

    /// User `name` with its tags.
    pub fn get(&self, name: &str) -> Option<(&User, &[Tag])> {
        self.find(name).map(|a| (&a.user, a.tags.as_slice()))
    }

    /// Every user with its tags, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&User, &[Tag])> {
        self.accounts.iter().map(|a| (&a.user, a.tags.as_slice()))
    }

    /// Adds `user`, or replaces the user of its name (password, tags and all).
    pub fn upsert(&mut self, user: User, tags: Vec<Tag>) {
        let account = Account { user, tags };
        match self
            .accounts
            .iter_mut()
            .find(|a| a.user.name == account.user.name)
        {
            Some(existing) => *existing = account,
            None => self.accounts.push(account),
        }
    }

    /// Removes user `name`; whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.accounts.len();
        self.accounts.retain(|a| a.user.name != name);
        self.accounts.len() != before
    }

    /// Checks a login. A refusal is counted for [`refusals_during`].
    pub fn check(&self, name: &str, password: &str, peer: IpAddr) -> Result<(), AuthFailure> {
        let verdict = self.verdict(name, password, peer);
        if verdict.is_err() {
            note_refusal();
        }
        verdict
    }

    fn verdict(&self, name: &str, password: &str, peer: IpAddr) -> Result<(), AuthFailure> {
        let account = self.find(name);
        // An unknown name costs the same hash as a known one, so timing does not tell which
        // names exist.
        let matches = match account {
            Some(a) => a.user.password.verify(password),
            None => {
                std::hint::black_box(UNKNOWN_USER.with(|h| h.verify(password)));
                false
            }
        };
        // A blank password never logs in, whatever is stored (RabbitMQ's internal backend
        // refuses it too).
        let Some(account) = account.filter(|_| matches && !password.is_empty()) else {
            return Err(AuthFailure::BadCredentials);
        };
        loopback_rule(account, peer)
    }

    /// Checks a login by TLS client certificate (AMQP `EXTERNAL`, MQTT and STOMP
    /// `ssl_cert_login`). `identity` is the user name the server took from the connection's
    /// verified certificate, `None` when there is none (a plain connection, no certificate
    /// presented). No password is checked, the certificate stands for it, as in RabbitMQ; the
    /// user must exist and its loopback rule holds. A refusal is counted for
    /// [`refusals_during`].
    pub fn check_certificate(
        &self,
        identity: Option<&str>,
        peer: IpAddr,
    ) -> Result<(), AuthFailure> {
        let verdict = match identity.and_then(|name| self.find(name)) {
            Some(account) => loopback_rule(account, peer),
            None => Err(AuthFailure::BadCredentials),
        };
        if verdict.is_err() {
            note_refusal();
        }
        verdict
    }
}

/// A loopback-only user may log in only from a loopback address.
fn loopback_rule(account: &Account, peer: IpAddr) -> Result<(), AuthFailure> {
    // An IPv4 client of a listener on `[::]` shows up as `::ffff:127.0.0.1`.
    if account.user.loopback_only && !peer.to_canonical().is_loopback() {
        return Err(AuthFailure::LoopbackOnly);
    }
    Ok(())
}

thread_local! {
    /// A stand-in checked for unknown user names.
    static UNKNOWN_USER: PasswordHash = PasswordHash::new("\u{0}unknown user");
    /// Refusals counted by the innermost [`refusals_during`] running on this thread; `None`
    /// outside one.
    static REFUSALS: Cell<Option<u32>> = const { Cell::new(None) };
}

fn note_refusal() {
    REFUSALS.with(|r| {
        if let Some(n) = r.get() {
            r.set(Some(n.saturating_add(1)));
        }
    });
}

/// Runs `f` and returns its result with the number of logins [`Users::check`] refused while it
/// ran. Front-ends check credentials synchronously inside their input handling, so wrapping
/// that call is enough to learn whether it refused someone. Refusals outside any such scope
/// (the management API's basic auth) are not counted here.
pub fn refusals_during<R>(f: impl FnOnce() -> R) -> (R, u32) {
    /// Puts the enclosing scope's count back, with this scope's refusals added, even if `f`
    /// panics.
    struct Restore(Option<u32>);
    impl Drop for Restore {
        fn drop(&mut self) {
            REFUSALS.with(|r| {
                let inner = r.get().unwrap_or(0);
                r.set(self.0.map(|outer| outer.saturating_add(inner)));
            });
        }
    }
    let restore = Restore(REFUSALS.with(|r| r.replace(Some(0))));
    let result = f();
    let refused = REFUSALS.with(|r| r.get()).unwrap_or(0);
    drop(restore);
    (result, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn guest() -> Users {
        Users::new(vec![User {
            name: "guest".into(),
            password: "guest".into(),
            loopback_only: true,
        }])
    }

    #[test]
    fn loopback_only_users_are_refused_from_elsewhere() {
        let users = guest();
        let local = ip("127.0.0.1");
        let remote = ip("10.1.2.3");
        assert_eq!(users.check("guest", "guest", local), Ok(()));
        assert_eq!(users.check("guest", "guest", ip("::1")), Ok(()));
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

    #[test]
    fn an_ipv4_loopback_client_of_an_ipv6_listener_counts_as_loopback() {
        let users = guest();
        assert_eq!(
            users.check("guest", "guest", ip("::ffff:127.0.0.1")),
            Ok(())
        );
        assert_eq!(
            users.check("guest", "guest", ip("::ffff:10.0.0.1")),
            Err(AuthFailure::LoopbackOnly)
        );
    }

    #[test]
    fn a_user_given_by_a_rabbitmq_hash_logs_in_with_its_password() {
        let hash = PasswordHash::parse("kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR")
            .expect("RabbitMQ's example hash of test12");
        let users = Users::tagged(vec![(
            User {
                name: "alice".into(),
                password: hash,
                loopback_only: false,
            },
            vec![Tag::Administrator],
        )]);
        let remote = ip("192.0.2.7");
        assert_eq!(users.check("alice", "test12", remote), Ok(()));
        assert_eq!(
            users.check("alice", "test1", remote),
            Err(AuthFailure::BadCredentials)
        );
        assert_eq!(users.tags("alice"), &[Tag::Administrator]);
        assert!(users.tags("bob").is_empty());
    }

    #[test]
    fn a_blank_password_never_logs_in() {
        let users = Users::new(vec![User {
            name: "blank".into(),
            password: "".into(),
            loopback_only: false,
        }]);
        assert_eq!(
            users.check("blank", "", ip("127.0.0.1")),
            Err(AuthFailure::BadCredentials)
        );
    }

    #[test]
    fn refusals_are_counted_only_inside_a_scope() {
        let users = guest();
        let local = ip("127.0.0.1");
        // Outside a scope nothing is kept for a later one.
        let _ = users.check("guest", "wrong", local);
        let ((), refused) = refusals_during(|| {
            assert!(users.check("guest", "guest", local).is_ok());
        });
        assert_eq!(refused, 0);
        let (outcome, refused) = refusals_during(|| {
            let _ = users.check("guest", "wrong", local);
            let _ = users.check("guest", "guest", ip("10.0.0.1"));
            "done"
        });
        assert_eq!((outcome, refused), ("done", 2));
    }

    #[test]
    fn a_nested_scope_adds_its_refusals_to_the_enclosing_one() {
        let users = guest();
        let local = ip("127.0.0.1");
        let ((), outer) = refusals_during(|| {
            let _ = users.check("guest", "wrong", local);
            let ((), inner) = refusals_during(|| {
                let _ = users.check("nobody", "x", local);
            });
            assert_eq!(inner, 1);
        });
        assert_eq!(outer, 2);
    }

    #[test]
    fn a_panicking_scope_leaves_no_count_behind() {
        let users = guest();
        let local = ip("127.0.0.1");
        let panicked = std::panic::catch_unwind(|| {
            refusals_during(|| {
                let _ = users.check("guest", "wrong", local);
                panic!("boom");
            })
        });
        assert!(panicked.is_err());
        assert_eq!(REFUSALS.with(|r| r.get()), None);
    }

    #[test]
    fn a_certificate_logs_in_as_a_known_user_without_a_password() {
        let users = Users::new(vec![User {
            name: "sensor-17".into(),
            password: PasswordHash::none(),
            loopback_only: false,
        }]);
        let remote = ip("192.0.2.7");
        assert_eq!(
            users.check("sensor-17", "", remote),
            Err(AuthFailure::BadCredentials)
        );
        let (verdicts, refused) = refusals_during(|| {
            [
                users.check_certificate(Some("sensor-17"), remote),
                users.check_certificate(Some("sensor-18"), remote),
                users.check_certificate(None, remote),
            ]
        });
        assert_eq!(
            verdicts,
            [
                Ok(()),
                Err(AuthFailure::BadCredentials),
                Err(AuthFailure::BadCredentials)
            ]
        );
        assert_eq!(refused, 2);
    }

    #[test]
    fn a_certificate_does_not_lift_the_loopback_rule() {
        let users = guest();
        assert_eq!(
            users.check_certificate(Some("guest"), ip("127.0.0.1")),
            Ok(())
        );
        assert_eq!(
            users.check_certificate(Some("guest"), ip("10.0.0.1")),
            Err(AuthFailure::LoopbackOnly)
        );
    }

    #[test]
    fn tags_have_rabbitmq_names() {
        for tag in Tag::ALL {
            assert_eq!(Tag::from_name(tag.name()), Some(tag));
        }
        assert_eq!(Tag::from_name("none"), None);
        assert_eq!(Tag::from_name("Administrator"), None);
    }
}
