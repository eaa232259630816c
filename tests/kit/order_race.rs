//! The race MQTT's order of input decides: one client's SUBSCRIBE and another's matching
//! PUBLISH reach the broker at the same moment, the SUBSCRIBE first. Mosquitto, whose one thread
//! reads its ready sockets in turn, always delivers the message to the new subscriber; so does
//! Rosetta, which takes MQTT input up in the order it arrived. Run over every transport, and
//! while other clients misbehave.

use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::mqtt3::{self, Mqtt3, Packet};

/// The broker's count of publishing MQTT input that went ahead without waiting any longer for
/// input that arrived before it, from `/metrics` at `http`: 0 unless the order was given up.
pub fn input_order_timeouts(http: SocketAddr) -> f64 {
    crate::metric(http, "rosetta_mqtt_input_order_timeouts_total")
        .expect("rosetta_mqtt_input_order_timeouts_total is not on /metrics")
}

/// Client `a` sends SUBSCRIBE and, without waiting for SUBACK, client `b` at once sends a
/// PUBLISH that matches it: both sockets become readable together, `a`'s first. Returns in how
/// many of `rounds` rounds `a` missed the message. Each round has a topic of its own under
/// `base`, which no other test may use. Many rounds, since one round hits the window only
/// sometimes.
pub fn publishes_missed_by_an_early_subscriber<A, B>(
    a: &mut Mqtt3<A>,
    b: &mut Mqtt3<B>,
    base: &str,
    rounds: u16,
) -> u32
where
    A: Read + Write,
    B: Read + Write,
{
    let mut missed = 0;
    for round in 1..=rounds {
        let topic = format!("{base}/{round}");
        let subscribe = mqtt3::subscribe(round, &topic, 0);
        let first = mqtt3::publish(&topic, b"first");
        a.send(&subscribe);
        b.send(&first);
        // The marker is sent once `a` is subscribed for certain, so it always arrives; whether
        // "first" came before it tells whether the race was lost.
        match a.read() {
            Packet::Suback { id, .. } => assert_eq!(id, round),
            Packet::Publish { payload, .. } => {
                assert_eq!(payload, b"first");
                assert!(matches!(a.read(), Packet::Suback { id, .. } if id == round));
                continue;
            }
            other => panic!("round {round}: expected SUBACK, got {other:?}"),
        }
        b.send(&mqtt3::publish(&topic, b"marker"));
        if payloads_until(a, b"marker").first().map(Vec::as_slice) != Some(b"first".as_slice()) {
            missed += 1;
        }
    }
    missed
}

/// The payloads of the next PUBLISHes, read until one carries `last`.
#[track_caller]
fn payloads_until<S: Read + Write>(client: &mut Mqtt3<S>, last: &[u8]) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        match client.read() {
            Packet::Publish { payload, .. } => {
                let done = payload == last;
                got.push(payload);
                if done {
                    return got;
                }
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}
