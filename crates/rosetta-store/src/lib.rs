//! The sled implementation of [`rosetta_core::store::Store`].
//!
//! # Key layout
//!
//! One sled database, one tree per record kind, so each kind can be scanned on its own and a
//! message body is never confused with metadata:
//!
//! | tree        | key                                              | value                          |
//! |-------------|--------------------------------------------------|--------------------------------|
//! | `exchanges` | `vhost \0 name`                                  | encoded [`ExchangeRecord`]     |
//! | `queues`    | `vhost \0 name`                                  | encoded [`QueueRecord`]        |
//! | `bindings`  | `vhost \0` then source, destination (each u32 BE length + bytes), `q`/`e`, routing key (length-prefixed), encoded arguments | encoded [`BindingRecord`] |
//! | `bodies`    | message id, u64 big-endian                       | encoded [`Message`] (layouts 1 and 2 only; read until drained) |
//! | `entries`   | queue id (u64 BE) ++ seq (u64 BE)                | message id (u64 BE) ++ flags (bit 0: redelivered, 1: has priority, 2: has TTL) ++ body length (u64 BE) ++ priority (u8) ++ per-message TTL ms (u64 BE) ++ body location: segment (u32 BE), offset (u32 BE), record length (u32 BE) ++ CRC-32 of the bytes before it (u32 BE; from layout 4) |
//! | `delivered` | queue id (u64 BE)                                | highest seq delivered (u64 BE): entries at or below it recover as redelivered; folded into the entries' flags at recovery |
//! | `records`   | `namespace \0 key` (key bytes chosen by the front-end) | opaque bytes, encoded by the front-end |
//!
//! Message bodies are not in sled: they are appended to segment files in the `segments`
//! subdirectory (see `segments` for why and for the record layout), and an entry names its
//! body's place.
//!
//! Big-endian integers make sled's byte order numeric order, so a queue's entries come back in
//! sequence order from a prefix scan on its id. The default tree holds a format marker (layout
//! 4, which added checksums to metadata and entry values; layout 3, without them; layout 2,
//! whose entry values stop before the location and whose bodies are in the `bodies` tree, and
//! layout 1, whose entry values stop after the flags, are still read). Records that fail their
//! checksum or do not decode go to quarantine at recovery (see `quarantine`).
//!
//! An entry value carries the summary of its message (body length, priority, TTL), so recovery
//! rebuilds every queue from the `entries` tree alone and bodies stay on disk until a queue
//! reads them back with `load_message` (the core pages long queues out this way).
//!
//! # Bodies are stored once
//!
//! A message routed to several durable queues has one body and one entry per queue. An
//! in-memory reference count per message id (rebuilt by `recover`) decides when the last entry
//! is gone and the body is dead; a segment is deleted when its last body is.
//!
//! # Write-behind
//!
//! Queue entries and bodies are not written when a publisher hands them over: they wait in
//! memory (`pending`) and the commit thread writes each batch just before its fsyncs (segments,
//! then sled), so an entry acknowledged in the meantime is never written at all. Metadata
//! (exchanges, queues, bindings, records) is written at once.
//!
//! # Crash ordering
//!
//! Bodies are written before their entries and deleted after them (a segment file only once the
//! entry deletions that emptied it are durable). A crash in between leaves at worst a body
//! nobody references, which recovery deletes; it never leaves a confirmed entry pointing at
//! nothing (a damaged store may hold one anyway: recovery warns, and the queue drops the entry
//! with a warning when it fails to read the body). Within each step, writes go to sled in
//! bounded chunks rather than one batch (see `chunked`); the order above is what recovery
//! relies on, not batch atomicity.
//!
//! # Failed writes
//!
//! A commit whose write or fsync fails confirms nothing: its batch goes back to the pending set
//! and is written again, to a new segment, until a commit succeeds (see `commit` and
//! `segments`). sled's own files are outside this: after an I/O error sled refuses every further
//! write until it is reopened, so a failure there keeps everything pending until a restart.
//!
//! [`ExchangeRecord`]: rosetta_core::store::ExchangeRecord
//! [`QueueRecord`]: rosetta_core::store::QueueRecord
//! [`BindingRecord`]: rosetta_core::store::BindingRecord
//! [`Message`]: rosetta_core::message::Message

pub mod check;
mod chunked;
pub mod codec;
mod commit;
mod compact;
pub mod fs;
mod index;
mod journal;
mod keys;
mod pending;
pub mod quarantine;
mod recover;
mod refs;
mod segments;
mod sled_store;
mod wire;

pub use commit::{FailureFlag, FailureObserver, FlushObserver};
pub use quarantine::QuarantineObserver;
pub use rosetta_core::store::StoreError;
pub use sled_store::SledStore;
