//! Queues of a virtual host: declare (with RabbitMQ's equivalence checks and server-named
//! queues), restore at startup, delete, purge. Deleting a queue takes the bindings to it along.
//! A queue a front-end makes for its own use records that front-end as its owner, and the
//! front-end deletes only queues it owns (see `queue_owner`).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{inequivalent, VHost, MAX_KEY_BYTES};
use crate::consumer::ConnectionId;
use crate::error::CoreError;
use crate::exchange::Destination;
use crate::message::Table;
use crate::queue::{Queue, QueueParams};
use crate::queue_config::{QueueConfig, QueueType};
use crate::queue_owner::QueueOwner;
use crate::store::{Epoch, QueueRecord};

#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    /// Empty asks the server to pick a name (`amq.gen-…`).
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Table,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    pub name: String,
    pub message_count: u64,
    pub consumer_count: u64,
    /// The store epoch the new queue's record waits for; `None` when nothing was written.
    pub durable_at: Option<Epoch>,
    /// Whether this declare made the queue (rather than finding it), so a caller that fails
    /// later knows whether undoing its work means deleting it.
    pub created: bool,
}

/// A deleted queue: what it held, and the store epoch its removal waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDeleted {
    /// Ready messages the queue held.
    pub messages: u64,
    /// `None` when nothing durable changed.
    pub durable_at: Option<Epoch>,
}

fn server_named_queue() -> String {
    // RandomState is seeded per process and per call, which is enough to make names unguessable
    // in practice without adding a random number crate.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let a = h.finish();
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u64(a);
    let b = h2.finish();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = (u128::from(a) << 64) | u128::from(b);
    let suffix: String = (0..22)
        .map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char)
        .collect();
    format!("amq.gen-{suffix}")
}

impl VHost {
    /// Declares a queue for a client or an operator: a new queue has no owner.
    pub fn declare_queue(
        &self,
        d: QueueDeclare,
        conn: ConnectionId,
    ) -> Result<QueueDeclared, CoreError> {
        self.declare(d, conn, None, |_| Ok(()))
    }

    /// Declares a queue for a client once `allow` accepts the name it will have. A server-named
    /// queue's name is chosen first, so a permission check sees the real name (as RabbitMQ's
    /// does) before anything is created.
    pub fn declare_queue_if(
        &self,
        d: QueueDeclare,
        conn: ConnectionId,
        allow: impl FnOnce(&str) -> Result<(), CoreError>,
    ) -> Result<QueueDeclared, CoreError> {
        self.declare(d, conn, None, allow)
    }

    /// Declares a queue a front-end makes for its own use: a new queue records `owner`, so
    /// that the front-end may remove it later ([`VHost::delete_owned_queue`]). A queue of that
    /// name that already exists is checked and used as it is, whoever owns it; its owner does
    /// not change.
    pub fn declare_owned_queue(
        &self,
        d: QueueDeclare,
        conn: ConnectionId,
        owner: QueueOwner,
    ) -> Result<QueueDeclared, CoreError> {
        self.declare(d, conn, Some(owner), |_| Ok(()))
    }

    fn declare(
        &self,
        d: QueueDeclare,
        conn: ConnectionId,
        owner: Option<QueueOwner>,
        allow: impl FnOnce(&str) -> Result<(), CoreError>,
    ) -> Result<QueueDeclared, CoreError> {
        if let Some(declared) = self.declare_direct_reply(&d.name) {
            return declared;
        }
        let name = if d.name.is_empty() && !d.passive {
            server_named_queue()
        } else {
            d.name.clone()
        };
        allow(&name)?;
        if name.starts_with("amq.") && !d.passive && !d.name.is_empty() {
            return Err(CoreError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if let Some(q) = self.queue(&name) {
            self.check_exclusive(&q, conn)?;
            if !d.passive {
                let what = "queue";
                if q.durable != d.durable {
                    return Err(inequivalent(
                        what, "durable", &name, &self.name, d.durable, q.durable,
                    ));
                }
                if q.exclusive_owner.is_some() != d.exclusive {
                    return Err(inequivalent(
                        what,
                        "exclusive",
                        &name,
                        &self.name,
                        d.exclusive,
                        q.exclusive_owner.is_some(),
                    ));
                }
                if q.auto_delete != d.auto_delete {
                    return Err(inequivalent(
                        what,
                        "auto_delete",
                        &name,
                        &self.name,
                        d.auto_delete,
                        q.auto_delete,
                    ));
                }
                let config = QueueConfig::parse(&d.arguments)?;
                if config != q.config {
                    return Err(CoreError::PreconditionFailed(format!(
                        "inequivalent arg for queue '{name}' in vhost '{}': arguments differ from the existing queue's",
                        self.name
                    )));
                }
            }
            q.touch();
            let stats = q.stats();
            return Ok(QueueDeclared {
                name,
                message_count: stats.ready,
                consumer_count: stats.consumers,
                durable_at: None,
                created: false,
            });
        }
        if d.passive {
            return Err(self.not_found_queue(&name));
        }
        let config = QueueConfig::parse(&d.arguments)?;
        self.check_queue_type(config.queue_type, &name, &d)?;
        if name.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "queue name of {} bytes is longer than {MAX_KEY_BYTES}",
                name.len()
            )));
        }
        let max = self.shared.limits.max_queues;
        if max > 0 && self.queues.len() as u64 >= max {
            return Err(CoreError::LimitReached(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' is reached ({max})",
                self.name
            )));
        }
        let id = self.shared.next_queue_id.fetch_add(1, Ordering::Relaxed);
        // Exclusive queues die with their connection, so they are never written to disk.
        let stored = d.durable && !d.exclusive;
        let mut durable_at = None;
        if stored {
            let record = QueueRecord {
                id,
                vhost: self.name.clone(),
                name: name.clone(),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
                owner: owner.clone(),
            };
            durable_at = Some(self.persist(|| self.shared.store.save_queue(&record))?);
        }
        let params = QueueParams {
            name: name.clone(),
            id,
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: d.exclusive.then_some(conn),
            arguments: d.arguments,
            config,
            owner,
            limits: self.shared.limits.clone(),
            counters: self.shared.counters.clone(),
        };
        let q = Queue::new(params, self.shared.store.clone(), self.me.clone());
        self.queues.insert(name.clone(), q);
        Ok(QueueDeclared {
            name,
            message_count: 0,
            consumer_count: 0,
            durable_at,
            created: true,
        })
    }

    /// Every queue here is a classic one. A quorum queue is taken as a durable classic queue
    /// only where the broker is configured to, and then with the properties RabbitMQ demands of
    /// one; a stream cannot be: its consumers read by offset and nothing is removed on ack.
    fn check_queue_type(
        &self,
        queue_type: QueueType,
        name: &str,
        d: &QueueDeclare,
    ) -> Result<(), CoreError> {
        let accepted = match queue_type {
            QueueType::Classic => return Ok(()),
            QueueType::Quorum => self.shared.limits.quorum_as_classic,
            QueueType::Stream => false,
        };
        if !accepted {
            let how = match queue_type {
                QueueType::Stream => "streams cannot be emulated by a classic queue",
                _ => {
                    "this broker is not configured to take quorum queues as durable classic queues"
                }
            };
            return Err(CoreError::PreconditionFailed(format!(
                "queue type '{}' is not supported; declare '{name}' as a classic queue ({how})",
                queue_type.as_str()
            )));
        }
        let refused = if !d.durable {
            Some("non-durable")
        } else if d.exclusive {
            Some("exclusive")
        } else if d.auto_delete {
            Some("auto-delete")
        } else {
            None
        };
        match refused {
            Some(property) => Err(CoreError::PreconditionFailed(format!(
                "invalid property '{property}' for queue '{name}' in vhost '{}': quorum queues are durable, shared and never auto-deleted",
                self.name
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn restore_queue(&self, r: &QueueRecord) -> Result<Arc<Queue>, CoreError> {
        let params = QueueParams {
            name: r.name.clone(),
            id: r.id,
            durable: true,
            auto_delete: r.auto_delete,
            exclusive_owner: None,
            arguments: r.arguments.clone(),
            config: QueueConfig::read(&r.arguments)?,
            owner: r.owner.clone(),
            limits: self.shared.limits.clone(),
            counters: self.shared.counters.clone(),
        };
        let q = Queue::new(params, self.shared.store.clone(), self.me.clone());
        self.queues.insert(r.name.clone(), q.clone());
        Ok(q)
    }

    /// Deletes a queue. Deleting a queue that does not exist succeeds (RabbitMQ 3.x
    /// behaviour).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> Result<QueueDeleted, CoreError> {
        let Some(q) = self.queue(name) else {
            return Ok(QueueDeleted {
                messages: 0,
                durable_at: None,
            });
        };
        self.check_exclusive(&q, conn)?;
        let (empty, unused) = q.is_ready_empty_and_unused();
        if if_unused && !unused {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && !empty {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        self.remove_queue(&q)
    }

    /// Deletes the queue `name` if `front_end` owns it (it made it with
    /// [`VHost::declare_owned_queue`] or adopted it). A queue owned by nobody, such as one an
    /// AMQP client declared, or by another front-end is left as it is, whatever its name.
    /// Returns `None` when nothing was deleted.
    pub fn delete_owned_queue(
        &self,
        name: &str,
        front_end: &str,
        conn: ConnectionId,
    ) -> Result<Option<QueueDeleted>, CoreError> {
        let Some(q) = self.queue(name).filter(|q| q.owned_by(front_end)) else {
            return Ok(None);
        };
        self.check_exclusive(&q, conn)?;
        self.remove_queue(&q).map(Some)
    }

    pub(super) fn remove_queue(&self, q: &Arc<Queue>) -> Result<QueueDeleted, CoreError> {
        let messages = q.mark_deleted();
        self.queues.remove_if(&q.name, |_, v| Arc::ptr_eq(v, q));
        let dest = Destination::Queue(q.name.clone());
        let mut written = None;
        for ex in self.exchanges() {
            let gone = ex.unbind_all_to(&dest);
            self.binding_count
                .fetch_sub(gone.len() as u64, Ordering::Relaxed);
            for b in gone {
                written = written.max(self.forget_binding(
                    &ex,
                    &b.destination,
                    &b.routing_key,
                    &b.arguments,
                )?);
            }
        }
        if q.durable && q.exclusive_owner.is_none() {
            written =
                written.max(Some(self.persist(|| {
                    self.shared.store.delete_queue(&self.name, &q.name, q.id)
                })?));
        }
        self.request_sync(written);
        Ok(QueueDeleted {
            messages,
            durable_at: written,
        })
    }

    pub fn purge_queue(&self, name: &str, conn: ConnectionId) -> Result<u64, CoreError> {
        Ok(self.usable_queue(name, conn)?.purge())
    }
}
