//! Who made a queue for its own use, and so may remove it on its own initiative.
//!
//! A protocol front-end makes queues behind its clients' backs: an MQTT session's queue, a
//! shared subscription's queue, a STOMP durable subscription's queue. It must clean those up
//! (when the session ends, when the last member leaves, at startup after a crash), and only
//! those: a queue an AMQP client or an operator declared is not the front-end's to delete,
//! whatever its name. So every queue carries its owner, stored with its record, rather than
//! leaving the name to say whose it is.

/// The front-end that made a queue, and the client it made it for when there is one.
///
/// Queues declared by AMQP clients or through the management API have no owner: only an
/// explicit delete (or the queue's own `exclusive`, `auto_delete` and `x-expires` rules)
/// removes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueOwner {
    /// The front-end, by the name it gives itself (`mqtt`, `stomp`). The core only compares it.
    pub front_end: String,
    /// The client the queue serves within that front-end (an MQTT client id, a STOMP
    /// `client-id`); `None` when the queue is shared by several or the client gave no id.
    pub client: Option<String>,
}

impl QueueOwner {
    /// A queue made by `front_end` for no client in particular.
    pub fn front_end(front_end: &str) -> Self {
        QueueOwner {
            front_end: front_end.to_owned(),
            client: None,
        }
    }

    /// A queue made by `front_end` for `client`.
    pub fn client(front_end: &str, client: &str) -> Self {
        QueueOwner {
            front_end: front_end.to_owned(),
            client: Some(client.to_owned()),
        }
    }
}
