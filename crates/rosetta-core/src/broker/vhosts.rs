//! Virtual hosts made and removed at run time (the management API, definitions imports), beside
//! the permanent ones the broker was opened with (the configuration's `[[vhosts]]`).
//!
//! A run-time virtual host is a record in the store's `vhosts` namespace, keyed by its name, so
//! it comes back after a restart with its description and tags even while it holds nothing.
//! Its exchanges, queues and bindings are stored as any other virtual host's.

use std::sync::Arc;

use super::Broker;
use crate::error::CoreError;
use crate::record_texts;
use crate::store::{Epoch, Store, StoreError};
use crate::vhost::VHost;

/// The store namespace of run-time virtual hosts.
const NS_VHOSTS: &str = "vhosts";
/// The first byte of a stored record: its encoding, so a later one can add fields.
const RECORD_VERSION: u8 = 1;

/// What an operator says about a virtual host (RabbitMQ's vhost metadata), and who created it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VHostMeta {
    pub description: String,
    pub tags: Vec<String>,
    /// The user who created it through the management API, who may use it (RabbitMQ grants
    /// the creator full permissions) after a restart too; `None` for one imported offline.
    pub creator: Option<String>,
}

/// A virtual host as the management API lists it.
#[derive(Debug, Clone)]
pub struct VHostInfo {
    pub vhost: Arc<VHost>,
    pub meta: VHostMeta,
    /// Opened with the broker (configured): it cannot be deleted.
    pub permanent: bool,
}

/// What [`Broker::put_vhost`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VHostPut {
    /// A new virtual host, rather than new metadata for an existing one.
    pub created: bool,
    /// The epoch the record waits for; `None` when nothing changed.
    pub durable_at: Option<Epoch>,
}

/// What [`Broker::delete_vhost`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VHostDeleted {
    pub queues: usize,
    pub exchanges: usize,
    pub messages: u64,
    /// The epoch the removals wait for.
    pub durable_at: Option<Epoch>,
}

impl Broker {
    /// Whether `name` is one of the virtual hosts the broker was opened with.
    pub fn is_permanent(&self, name: &str) -> bool {
        self.permanent.contains(name)
    }

    /// Every virtual host with its metadata, sorted by name.
    pub fn vhost_infos(&self) -> Vec<VHostInfo> {
        let mut all: Vec<VHostInfo> = self
            .vhosts()
            .into_iter()
            .map(|vhost| self.info(vhost))
            .collect();
        all.sort_by(|a, b| a.vhost.name.cmp(&b.vhost.name));
        all
    }

    pub fn vhost_info(&self, name: &str) -> Option<VHostInfo> {
        self.vhost(name).map(|vhost| self.info(vhost))
    }

    fn info(&self, vhost: Arc<VHost>) -> VHostInfo {
        VHostInfo {
            meta: self
                .meta
                .get(&vhost.name)
                .map(|m| m.clone())
                .unwrap_or_default(),
            permanent: self.is_permanent(&vhost.name),
            vhost,
        }
    }

    /// Creates virtual host `name` with the predeclared `amq.*` exchanges, or gives an existing
    /// one new metadata. The record is written and its fsync requested; the caller waits for
    /// `durable_at` before it confirms.
    pub fn put_vhost(&self, name: &str, meta: VHostMeta) -> Result<VHostPut, CoreError> {
        if name.is_empty() {
            return Err(CoreError::PreconditionFailed(
                "a virtual host needs a name".into(),
            ));
        }
        // One change at a time: a create racing a delete of the same name must not leave a
        // record without a virtual host, or one without its record.
        let _changing = self.vhost_changes.lock();
        let created = !self.vhosts.contains_key(name);
        let unchanged = self.meta.get(name).is_some_and(|m| *m == meta);
        if !created && unchanged {
            return Ok(VHostPut {
                created,
                durable_at: None,
            });
        }
        let store = &self.shared.store;
        let epoch = store.put_record(NS_VHOSTS, name.as_bytes(), &encode(&meta))?;
        store.request_sync(epoch);
        if created {
            self.vhosts
                .insert(name.to_owned(), VHost::new(name, self.shared.clone()));
            tracing::info!(vhost = name, "virtual host created");
        }
        self.meta.insert(name.to_owned(), meta);
        Ok(VHostPut {
            created,
            durable_at: Some(epoch),
        })
    }

    /// Deletes a run-time virtual host with its exchanges, queues, bindings and messages. Its
    /// connections are the caller's to close: the virtual host is marked deleted
    /// ([`VHost::is_deleted`]) before anything in it goes, and new logins no longer find it.
    pub fn delete_vhost(&self, name: &str) -> Result<VHostDeleted, CoreError> {
        if self.is_permanent(name) {
            return Err(CoreError::PreconditionFailed(format!(
                "virtual host '{name}' is defined in the configuration and cannot be deleted"
            )));
        }
        let _changing = self.vhost_changes.lock();
        let Some((_, vhost)) = self.vhosts.remove(name) else {
            return Err(CoreError::NotFound(format!("no virtual host '{name}'")));
        };
        vhost.mark_deleted();
        self.meta.remove(name);
        let mut deleted = VHostDeleted::default();
        // Exclusive queues are deleted for their connection, which is about to be closed.
        let operator = self.new_connection_id();
        for q in vhost.queues() {
            let conn = q.exclusive_owner.unwrap_or(operator);
            let gone = vhost.delete_queue(&q.name, false, false, conn)?;
            deleted.queues += 1;
            deleted.messages += gone.messages;
            deleted.durable_at = deleted.durable_at.max(gone.durable_at);
        }
        for e in vhost.exchanges() {
            if e.name.starts_with("amq.") {
                continue;
            }
            deleted.durable_at = deleted
                .durable_at
                .max(vhost.delete_exchange(&e.name, false)?);
            deleted.exchanges += 1;
        }
        let store = &self.shared.store;
        let epoch = store.delete_record(NS_VHOSTS, name.as_bytes())?;
        store.request_sync(epoch);
        deleted.durable_at = deleted.durable_at.max(Some(epoch));
        tracing::info!(
            vhost = name,
            queues = deleted.queues,
            exchanges = deleted.exchanges,
            messages = deleted.messages,
            "virtual host deleted"
        );
        Ok(deleted)
    }
}

/// The run-time virtual hosts the store holds, with their metadata. A record that does not
/// decode still names its virtual host, which keeps empty metadata rather than vanishing.
pub(super) fn stored(store: &dyn Store) -> Result<Vec<(String, VHostMeta)>, StoreError> {
    let mut out = Vec::new();
    for (key, value) in store.scan_records(NS_VHOSTS, b"")? {
        let Ok(name) = String::from_utf8(key) else {
            tracing::warn!("a stored virtual host name is not UTF-8; skipped");
            continue;
        };
        let meta = decode(&value).unwrap_or_else(|| {
            tracing::warn!(vhost = %name, "stored virtual host metadata does not decode; using none");
            VHostMeta::default()
        });
        out.push((name, meta));
    }
    Ok(out)
}

/// Version byte, then length-prefixed texts (`record_texts`): description, creator (empty for
/// none), then each tag.
fn encode(meta: &VHostMeta) -> Vec<u8> {
    let head = [
        meta.description.as_str(),
        meta.creator.as_deref().unwrap_or(""),
    ];
    record_texts::encode(
        RECORD_VERSION,
        head.into_iter().chain(meta.tags.iter().map(String::as_str)),
    )
}

fn decode(bytes: &[u8]) -> Option<VHostMeta> {
    let mut texts = record_texts::decode(RECORD_VERSION, bytes)?.into_iter();
    let description = texts.next()?;
    let creator = texts.next()?;
    Some(VHostMeta {
        description,
        creator: (!creator.is_empty()).then_some(creator),
        tags: texts.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::CoreLimits;
    use crate::exchange::Destination;
    use crate::memory_store::MemoryStore;
    use crate::message::Table;
    use crate::vhost::{ExchangeDeclare, QueueDeclare};

    fn open(store: &Arc<MemoryStore>) -> Arc<Broker> {
        let store: Arc<dyn Store> = store.clone();
        Broker::open(store, &["/".to_owned()], CoreLimits::default()).expect("broker opens")
    }

    fn meta(description: &str) -> VHostMeta {
        VHostMeta {
            description: description.into(),
            tags: vec!["t".into()],
            creator: None,
        }
    }

    #[test]
    fn a_runtime_vhost_comes_back_after_a_restart_until_deleted_with_its_topology() {
        let store = Arc::new(MemoryStore::default());
        let broker = open(&store);
        let put = broker.put_vhost("tenant", meta("first")).expect("put");
        assert!(put.created && put.durable_at.is_some());
        let again = broker.put_vhost("tenant", meta("first")).expect("again");
        assert_eq!((again.created, again.durable_at), (false, None));
        let vhost = broker.vhost("tenant").expect("created");
        assert!(
            vhost.exchange("amq.topic").is_some(),
            "predeclared exchanges"
        );
        vhost
            .declare_exchange(ExchangeDeclare {
                name: "x".into(),
                kind: "topic".into(),
                durable: true,
                ..ExchangeDeclare::default()
            })
            .expect("exchange");
        let q = QueueDeclare {
            name: "q".into(),
            durable: true,
            ..QueueDeclare::default()
        };
        vhost.declare_queue(q, 1).expect("queue");
        vhost
            .bind_deferred("x", Destination::Queue("q".into()), "k", Table::new(), 1)
            .expect("bind");

        let reopened = open(&store);
        let info = reopened.vhost_info("tenant").expect("back after a restart");
        assert_eq!(info.meta, meta("first"));
        assert!(!info.permanent);
        assert!(reopened.is_permanent("/"));
        // (The memory store keeps queues, not exchanges: deleting them is tested on `broker`.)
        let vhost = reopened.vhost("tenant").expect("vhost");
        assert!(vhost.queue("q").is_some());
        drop(reopened);

        let old = broker.vhost("tenant").expect("vhost");
        let deleted = broker.delete_vhost("tenant").expect("delete");
        assert_eq!((deleted.queues, deleted.exchanges), (1, 1));
        assert!(old.is_deleted());
        assert!(old.queue("q").is_none() && old.exchange("x").is_none());
        assert!(broker.vhost("tenant").is_none());
        assert!(store.recover().expect("recover").queues.is_empty());
        assert!(open(&store).vhost("tenant").is_none(), "gone for good");
    }

    #[test]
    fn configured_vhosts_cannot_be_deleted() {
        let broker = open(&Arc::new(MemoryStore::default()));
        let refused = broker.delete_vhost("/").expect_err("refused");
        assert!(refused.to_string().contains("configuration"), "{refused}");
        assert!(broker.vhost("/").is_some());
        assert!(matches!(
            broker.delete_vhost("nowhere"),
            Err(CoreError::NotFound(_))
        ));
    }

    #[test]
    fn metadata_survives_its_encoding() {
        let meta = VHostMeta {
            description: "orders, EU".into(),
            tags: vec!["prod".into(), "".into(), "é".into()],
            creator: Some("admin".into()),
        };
        assert_eq!(decode(&encode(&meta)), Some(meta));
        assert_eq!(
            decode(&encode(&VHostMeta::default())),
            Some(VHostMeta::default())
        );
        assert_eq!(decode(&[RECORD_VERSION, 0, 0, 0, 9, b'x']), None);
        assert_eq!(decode(&[]), None);
    }
}
