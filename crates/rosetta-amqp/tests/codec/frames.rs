//! The frames under test: every method the broker receives or sends, content and heartbeat.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

use crate::FRAME_MAX;

pub(crate) fn arguments() -> FieldTable {
    let mut capabilities = FieldTable::default();
    capabilities.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
    capabilities.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    t.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(1 << 40));
    t.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    t.insert("x-match".into(), AMQPValue::LongString("all".into()));
    t.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    t.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::ShortShortUInt(1),
            AMQPValue::Double(0.5),
            AMQPValue::Void,
        ])),
    );
    t.insert("raw".into(), AMQPValue::ByteArray(vec![0, 1, 255].into()));
    t
}

fn method(channel: u16, class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, class)
}

/// Every method a client sends to the broker, with non-default field values.
pub(crate) fn client_methods() -> Vec<AMQPFrame> {
    use AMQPClass::{Basic, Channel, Confirm, Connection, Exchange, Queue, Tx};
    vec![
        method(
            0,
            Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: arguments(),
                mechanism: "PLAIN".into(),
                response: LongString::from(&b"\0guest\0guest"[..]),
                locale: "en_US".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::SecureOk(connection::SecureOk {
                response: "answer".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: FRAME_MAX,
                heartbeat: 60,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "Goodbye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        ),
        method(1, Channel(channel::AMQPMethod::Open(channel::Open {}))),
        method(
            1,
            Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: false,
            })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 406,
                reply_text: "PRECONDITION_FAILED".into(),
                class_id: 50,
                method_id: 10,
            })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "orders".into(),
                kind: "topic".into(),
                passive: false,
                durable: true,
                auto_delete: true,
                internal: false,
                nowait: true,
                arguments: arguments(),
            })),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: "orders".into(),
                if_unused: true,
                nowait: false,
            })),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "dst".into(),
                source: "src".into(),
                routing_key: "a.*.#".into(),
                nowait: true,
                arguments: arguments(),
            })),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "dst".into(),
                source: "src".into(),
                routing_key: "a.*.#".into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: true,
                auto_delete: false,
                nowait: true,
                arguments: arguments(),
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "amq.topic".into(),
                routing_key: "sensors.*".into(),
                nowait: false,
                arguments: arguments(),
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "q".into(),
                nowait: true,
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "q".into(),
                if_unused: true,
                if_empty: false,
                nowait: true,
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "amq.topic".into(),
                routing_key: "sensors.*".into(),
                arguments: arguments(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 250,
                global: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "ctag-1".into(),
                no_local: false,
                no_ack: true,
                exclusive: true,
                nowait: false,
                arguments: arguments(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "ctag-1".into(),
                nowait: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "sensors.t1".into(),
                mandatory: true,
                immediate: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "q".into(),
                no_ack: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: u64::MAX,
                multiple: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 7,
                requeue: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                requeue: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Recover(basic::Recover {
                requeue: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 9,
                multiple: true,
                requeue: false,
            })),
        ),
        method(
            5,
            Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: true,
            })),
        ),
        method(6, Tx(tx::AMQPMethod::Select(tx::Select {}))),
        method(6, Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        method(6, Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))),
    ]
}

/// Every method the broker sends to a client.
pub(crate) fn server_methods() -> Vec<AMQPFrame> {
    use AMQPClass::{Basic, Channel, Confirm, Connection, Exchange, Queue, Tx};
    vec![
        method(
            0,
            Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: arguments(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Secure(connection::Secure {
                challenge: "challenge".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max: FRAME_MAX,
                heartbeat: 60,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 501,
                reply_text: "FRAME_ERROR - bad frame".into(),
                class_id: 60,
                method_id: 40,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "disk".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        ),
        method(1, Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}))),
        method(
            1,
            Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - no queue 'q'".into(),
                class_id: 50,
                method_id: 10,
            })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: "amq.gen-JzTY20BRgKO-HjmUJj0wLg".into(),
                message_count: 12,
                consumer_count: 3,
            })),
        ),
        method(3, Queue(queue::AMQPMethod::BindOk(queue::BindOk {}))),
        method(
            3,
            Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                message_count: 5,
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count: 6,
            })),
        ),
        method(3, Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {}))),
        method(4, Basic(basic::AMQPMethod::QosOk(basic::QosOk {}))),
        method(
            4,
            Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: "amq.ctag-1".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "amq.ctag-1".into(),
                nowait: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                consumer_tag: "amq.ctag-1".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "amq.ctag-1".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "amq.topic".into(),
                routing_key: "sensors.t1".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 43,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 99,
            })),
        ),
        method(4, Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {}))),
        method(
            4,
            Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "amq.direct".into(),
                routing_key: "nowhere".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 10,
                multiple: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 11,
                multiple: true,
                requeue: false,
            })),
        ),
        method(4, Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {}))),
        method(
            5,
            Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        ),
        method(6, Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {}))),
        method(6, Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
        method(6, Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {}))),
    ]
}

pub(crate) fn all_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("utf-8".into())
        .with_headers(arguments())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("c-1".into())
        .with_reply_to("replies".into())
        .with_expiration("1000".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("event".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cluster".into())
}

/// Content header and body frames, and a heartbeat.
pub(crate) fn content_frames() -> Vec<AMQPFrame> {
    vec![
        AMQPFrame::Header(
            7,
            AMQPContentHeader {
                class_id: 60,
                body_size: 11,
                properties: all_properties(),
            },
        ),
        AMQPFrame::Header(
            7,
            AMQPContentHeader {
                class_id: 60,
                body_size: 0,
                properties: BasicProperties::default(),
            },
        ),
        AMQPFrame::Header(
            7,
            AMQPContentHeader {
                class_id: 60,
                body_size: 1 << 33,
                properties: BasicProperties::default().with_delivery_mode(1),
            },
        ),
        AMQPFrame::Body(7, b"hello world".to_vec()),
        AMQPFrame::Body(7, Vec::new()),
        AMQPFrame::Body(65_535, (0..=255).collect()),
        AMQPFrame::Heartbeat,
    ]
}

pub(crate) fn every_frame() -> Vec<AMQPFrame> {
    let mut frames = client_methods();
    frames.extend(server_methods());
    frames.extend(content_frames());
    frames
}
