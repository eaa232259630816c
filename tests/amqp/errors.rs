//! Bad input on the wire, sent with hand-built frames. After each, the broker must still serve
//! other clients and keep their data. Each test has its own broker.

use crate::support::*;
use rosetta_tests::raw::{
    method, Args, Close, RawConnection, FRAME_BODY, FRAME_METHOD, PROTOCOL_HEADER, REPLY_DEADLINE,
};
use rosetta_tests::Broker;
use std::time::Duration;

const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Puts three persistent messages in a durable queue before the bad client shows up.
async fn seed(broker: &Broker) -> String {
    let client = connect(broker).await;
    let channel = client.confirm_channel().await;
    let queue = unique("err.witness");
    declare(
        &channel,
        &queue,
        lapin::options::QueueDeclareOptions::durable(),
        Default::default(),
    )
    .await;
    for body in ["w1", "w2", "w3"] {
        publish_persistent(&channel, &queue, body).await;
    }
    client.close().await;
    queue
}

/// A new lapin connection works and the seeded queue is intact.
async fn assert_still_serving(broker: &Broker, queue: &str) {
    let client = connect(broker).await;
    let channel = client.confirm_channel().await;
    assert_eq!(drain(&channel, queue).await, vec!["w1", "w2", "w3"]);
    let scratch = unique("err.after");
    declare_queue(&channel, &scratch).await;
    publish_all(&channel, &scratch, &["ok"]).await;
    assert_eq!(drain(&channel, &scratch).await, vec!["ok"]);
    client.close().await;
}

/// Reads the `connection.close` the server sends, answers it, and checks the socket closes.
fn expect_close_then_eof(conn: &mut RawConnection) -> Close {
    let close = conn
        .expect_connection_close(REPLY_DEADLINE)
        .expect("connection.close from the broker");
    let _ = conn.send_connection_close_ok();
    assert!(
        conn.closes_within(CLOSE_DEADLINE),
        "socket still open after connection.close"
    );
    close
}

#[test]
fn garbage_gets_the_protocol_header_back_and_the_socket_closes() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        conn.send_raw(b"GET / HTTP/1.1\r\n").expect("send");
        let reply = conn
            .read_until_closed(CLOSE_DEADLINE)
            .expect("socket closes");
        assert_eq!(reply, PROTOCOL_HEADER.to_vec());
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn wrong_protocol_version_gets_the_supported_header_back_and_the_socket_closes() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        for header in [
            &b"AMQP\x00\x00\x08\x00"[..],
            b"AMQP\x01\x01\x00\x0a",
            b"AMQP\x00\x01\x00\x00",
        ] {
            let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
            conn.send_raw(header).expect("send");
            let reply = conn
                .read_until_closed(CLOSE_DEADLINE)
                .expect("socket closes");
            assert_eq!(
                reply,
                PROTOCOL_HEADER.to_vec(),
                "reply to header {header:?}"
            );
        }
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn oversize_frame_gets_connection_close_frame_error() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        let tune = conn.handshake().expect("handshake");
        conn.open_channel(1).expect("channel.open");
        // A method frame header claiming far more than frame_max, then a little of its payload.
        let claimed = tune.frame_max + 1_000_000;
        let mut frame = vec![FRAME_METHOD, 0, 1];
        frame.extend_from_slice(&claimed.to_be_bytes());
        frame.extend_from_slice(&[0u8; 64]);
        conn.send_raw(&frame).expect("send");
        let close = expect_close_then_eof(&mut conn);
        assert_eq!(close.reply_code, code::FRAME_ERROR, "{close:?}");
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn frame_with_a_bad_end_octet_gets_connection_close_frame_error() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        conn.handshake().expect("handshake");
        let mut frame =
            rosetta_tests::raw::encode_method(1, method::CHANNEL_OPEN, &Args::new().shortstr(""));
        if let Some(end) = frame.last_mut() {
            *end = 0x00;
        }
        conn.send_raw(&frame).expect("send");
        let close = expect_close_then_eof(&mut conn);
        assert_eq!(close.reply_code, code::FRAME_ERROR, "{close:?}");
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn unknown_class_and_method_gets_connection_close() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        conn.handshake().expect("handshake");
        conn.open_channel(1).expect("channel.open");
        conn.send_method(1, (0x1234, 0x0042), Args::new().u32(7))
            .expect("send");
        let close = expect_close_then_eof(&mut conn);
        assert!(
            [code::NOT_IMPLEMENTED, code::COMMAND_INVALID].contains(&close.reply_code),
            "expected 540 or 503, got {close:?}"
        );
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn method_on_an_unopened_channel_gets_connection_close_channel_error() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        conn.handshake().expect("handshake");
        // queue.declare on channel 5, which was never opened.
        conn.send_method(
            5,
            method::QUEUE_DECLARE,
            Args::new()
                .u16(0)
                .shortstr("err.never")
                .bits(&[false; 5])
                .table(&Vec::new()),
        )
        .expect("send");
        let close = expect_close_then_eof(&mut conn);
        assert_eq!(close.reply_code, code::CHANNEL_ERROR, "{close:?}");
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn method_on_a_closed_channel_gets_connection_close_channel_error() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        conn.handshake().expect("handshake");
        conn.open_channel(2).expect("channel.open");
        conn.send_method(
            2,
            method::CHANNEL_CLOSE,
            Args::new().u16(200).shortstr("bye").u16(0).u16(0),
        )
        .expect("channel.close");
        let reply = conn.read_method(REPLY_DEADLINE).expect("close-ok");
        assert!(
            reply.is_method(method::CHANNEL_CLOSE_OK),
            "{:?}",
            reply.method_id()
        );
        conn.send_method(
            2,
            method::QUEUE_DECLARE,
            Args::new()
                .u16(0)
                .shortstr("err.closed")
                .bits(&[false; 5])
                .table(&Vec::new()),
        )
        .expect("send");
        let close = expect_close_then_eof(&mut conn);
        assert_eq!(close.reply_code, code::CHANNEL_ERROR, "{close:?}");
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn content_body_without_a_publish_gets_connection_close_unexpected_frame() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        conn.handshake().expect("handshake");
        conn.open_channel(1).expect("channel.open");
        conn.send_frame(FRAME_BODY, 1, b"orphan body")
            .expect("send");
        let close = expect_close_then_eof(&mut conn);
        assert_eq!(close.reply_code, code::UNEXPECTED_FRAME, "{close:?}");
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn truncated_method_arguments_get_connection_close() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
        conn.handshake().expect("handshake");
        conn.open_channel(1).expect("channel.open");
        // queue.declare whose queue-name length runs past the end of the frame.
        conn.send_method(
            1,
            method::QUEUE_DECLARE,
            Args::new().u16(0).u8(200).u8(b'q'),
        )
        .expect("send");
        let close = expect_close_then_eof(&mut conn);
        assert!(
            [code::FRAME_ERROR, code::SYNTAX_ERROR, code::COMMAND_INVALID]
                .contains(&close.reply_code),
            "expected a frame or syntax error, got {close:?}"
        );
        assert_still_serving(&broker, &queue).await;
    });
}

#[test]
fn abrupt_disconnects_mid_handshake_and_mid_frame_leave_the_broker_serving() {
    let broker = Broker::start();
    run(async {
        let queue = seed(&broker).await;
        for cut in 0..4 {
            let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
            match cut {
                0 => {}
                1 => conn.send_raw(b"AMQ").expect("send"),
                2 => {
                    conn.start().expect("start");
                }
                _ => {
                    conn.handshake().expect("handshake");
                    conn.send_raw(&[FRAME_METHOD, 0, 1, 0, 0, 0, 50, 0, 50])
                        .expect("send");
                }
            }
            drop(conn);
        }
        assert_still_serving(&broker, &queue).await;
    });
}
