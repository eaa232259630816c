//! The users and their permissions as one shared directory that every front-end and the
//! management API read, and that may be replaced or changed while the broker runs.
//!
//! Readers take a snapshot (`Arc<Contents>`) under a read lock held for a pointer copy, so a
//! login's password hash is computed without the lock. Each change bumps a generation counter,
//! which per-session [`Grant`](super::Grant)s compare against before trusting what they cached.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::permissions::{vhost_refusal, Permissions};
use super::{AuthFailure, Grant, Tag, Users};
use crate::error::CoreError;
use crate::vhost::VHost;

/// What the directory holds at one generation.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub users: Users,
    pub permissions: Permissions,
}

#[derive(Debug, Default)]
pub struct Directory {
    contents: RwLock<Arc<Contents>>,
    generation: AtomicU64,
}

impl Directory {
    pub fn new(users: Users, permissions: Permissions) -> Directory {
        Directory {
            contents: RwLock::new(Arc::new(Contents { users, permissions })),
            generation: AtomicU64::new(0),
        }
    }

    /// The contents now; later changes do not affect the snapshot.
    pub fn contents(&self) -> Arc<Contents> {
        self.contents.read().clone()
    }

    /// Bumped by every change; a grant's cache is good while it has not moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces users and permissions at once.
    pub fn replace(&self, users: Users, permissions: Permissions) {
        self.update(|c| *c = Contents { users, permissions });
    }

    /// Changes the contents with `f`, applied to a copy that then replaces them, so readers
    /// never see half a change.
    pub fn update<R>(&self, f: impl FnOnce(&mut Contents) -> R) -> R {
        let mut guard = self.contents.write();
        let mut next = Contents::clone(&guard);
        let result = f(&mut next);
        *guard = Arc::new(next);
        // Under the write lock, so a grant that sees the new generation reads the new contents.
        self.generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Checks a login (see [`Users::check`]).
    pub fn check(&self, name: &str, password: &str, peer: IpAddr) -> Result<(), AuthFailure> {
        self.contents().users.check(name, password, peer)
    }

    /// Checks a login by client certificate (see [`Users::check_certificate`]).
    pub fn check_certificate(
        &self,
        identity: Option<&str>,
        peer: IpAddr,
    ) -> Result<(), AuthFailure> {
        self.contents().users.check_certificate(identity, peer)
    }

    /// The tags of user `name`; none for an unknown user.
    pub fn tags(&self, name: &str) -> Vec<Tag> {
        self.contents().users.tags(name).to_vec()
    }

    /// Whether `user` has a permission entry for `vhost`, which is what using it takes.
    pub fn vhost_access(&self, user: &str, vhost: &str) -> bool {
        self.contents.read().permissions.get(user, vhost).is_some()
    }

    /// The grant one session checks its operations with, or RabbitMQ's refusal of the virtual
    /// host (`access to vhost '/' refused for user 'bob'`) when the user may not use it.
    pub fn grant(self: &Arc<Self>, user: &str, vhost: &Arc<VHost>) -> Result<Grant, CoreError> {
        if !self.vhost_access(user, &vhost.name) {
            return Err(CoreError::AccessRefused(vhost_refusal(user, &vhost.name)));
        }
        Ok(Grant::new(self.clone(), user, vhost.clone()))
    }
}
