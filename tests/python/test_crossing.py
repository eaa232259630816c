"""Crossings between MQTT 5.0 (paho-mqtt) and STOMP 1.2 (stomp.py) through `amq.topic`.

Each test publishes on one protocol and checks what the other one receives against the mapping
in docs/protocols.md: body bytes, content type, correlation id, reply-to / Response Topic,
message id, expiry and custom headers / user properties, and, where a field cannot exist on the
receiving side, what the mapping does with it instead.
"""

import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from test_mqtt import Client as MqttClient
from test_mqtt import clients  # noqa: F401 (the fixture that disconnects paho clients)
from test_stomp import Client as StompClient


def prefix() -> str:
    """A topic level (and routing-key word) no other test uses: no `.`, `/` or wildcards."""
    return f"cross-{uuid.uuid4().hex[:12]}"


def publish_properties(**values) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        setattr(props, key, value)
    return props


def test_mqtt_to_stomp_carries_body_properties_and_user_properties(mqtt_stomp_broker, clients):
    p = prefix()
    stomp_sub = StompClient(mqtt_stomp_broker)
    stomp_sub.subscribe(f"/topic/{p}.readings", "s")
    pub = MqttClient(mqtt_stomp_broker.mqtt_port, f"{p}-pub", mqtt.MQTTv5)
    clients.append(pub)
    body = b"\x00\x01mqtt\xff\x00"
    pub.publish(
        f"{p}/readings",
        body,
        qos=1,
        properties=publish_properties(
            ContentType="application/octet-stream",
            ResponseTopic=f"replies/{p}",
            CorrelationData=b"corr-7",
            MessageExpiryInterval=60,
            UserProperty=[("site", "north"), ("note", "a:b")],
        ),
    )
    [frame] = stomp_sub.seen.take()
    h = frame.headers
    assert frame.body == body
    assert h["destination"] == f"/topic/{p}.readings"
    assert h["content-type"] == "application/octet-stream"
    # UTF-8 Correlation Data of at most 255 bytes is the correlation id.
    assert h["correlation-id"] == "corr-7"
    # The Response Topic travels as a routing key, and STOMP shows reply_to verbatim.
    assert h["reply-to"] == f"replies.{p}"
    # Message Expiry Interval x 1000 is the TTL, and the publish time the timestamp.
    assert h["expiration"] == "60000"
    assert int(h["timestamp"]) > 0
    # QoS 1 means delivery mode 2; the published QoS travels as RabbitMQ's header.
    assert h["persistent"] == "true"
    assert h["x-mqtt-publish-qos"] == "1"
    # User properties are custom headers; STOMP 1.2 escaping carries the `:` through.
    assert (h["site"], h["note"]) == ("north", "a:b")
    # MQTT has no message id: no `amqp-message-id`, and `message-id` is the delivery id.
    assert "amqp-message-id" not in h
    assert h["message-id"]
    assert "x-mqtt-retain" not in h
    stomp_sub.close()


def test_mqtt_fields_without_a_stomp_form_are_left_out(mqtt_stomp_broker, clients):
    p = prefix()
    stomp_sub = StompClient(mqtt_stomp_broker)
    stomp_sub.subscribe(f"/topic/{p}.raw", "s")
    pub = MqttClient(mqtt_stomp_broker.mqtt_port, f"{p}-pub", mqtt.MQTTv5)
    clients.append(pub)
    pub.publish(
        f"{p}/raw",
        b"payload",
        qos=0,
        properties=publish_properties(
            # Not UTF-8: kept as bytes in `x-mqtt-correlation-data`, which STOMP cannot show.
            CorrelationData=b"\xff\xfe\x00",
            # A repeated name becomes an array of strings, which STOMP cannot show either.
            UserProperty=[("tag", "a"), ("tag", "b"), ("single", "one")],
        ),
    )
    [frame] = stomp_sub.seen.take()
    h = frame.headers
    assert frame.body == b"payload"
    assert "correlation-id" not in h
    assert "x-mqtt-correlation-data" not in h
    assert "tag" not in h
    assert h["single"] == "one"
    # QoS 0: delivery mode 1, and no expiry without a Message Expiry Interval.
    assert "persistent" not in h
    assert h["x-mqtt-publish-qos"] == "0"
    assert "expiration" not in h
    assert "reply-to" not in h
    stomp_sub.close()


def test_stomp_to_mqtt_carries_body_properties_and_headers(mqtt_stomp_broker, clients):
    p = prefix()
    sub = MqttClient(mqtt_stomp_broker.mqtt_port, f"{p}-sub", mqtt.MQTTv5)
    clients.append(sub)
    sub.subscribe(f"{p}/orders/#", qos=2)
    sender = StompClient(mqtt_stomp_broker)
    body = b"\x00stomp\x00body"
    sender.with_receipt(
        "send",
        f"/topic/{p}.orders.new",
        body,
        content_type="application/json",
        headers={
            "correlation-id": "corr-8",
            "reply-to": f"answers.{p}",
            "amqp-message-id": "msg-8",
            "expiration": "60000",
            "persistent": "true",
            "x-custom": "a:b",
        },
    )
    m = sub.message()
    props = m.properties
    assert m.topic == f"{p}/orders/new"
    assert m.payload == body
    assert props.ContentType == "application/json"
    assert props.CorrelationData == b"corr-8"
    assert props.ResponseTopic == f"answers/{p}"
    # What is left of the 60 s TTL, rounded up ([MQTT-3.3.2-6]).
    assert 50 <= props.MessageExpiryInterval <= 60, props.MessageExpiryInterval
    # Without `x-mqtt-publish-qos`, a persistent message goes out at QoS 1 (RabbitMQ's rule),
    # below the QoS 2 the subscription was granted.
    assert m.qos == 1
    # Custom headers are user properties; the message id has no MQTT field and is not one.
    assert props.UserProperty == [("x-custom", "a:b")]
    sender.close()


def test_stomp_reply_to_destination_and_transient_send_reach_mqtt_as_documented(mqtt_stomp_broker, clients):
    p = prefix()
    sub = MqttClient(mqtt_stomp_broker.mqtt_port, f"{p}-sub", mqtt.MQTTv5)
    clients.append(sub)
    sub.subscribe(f"{p}/plain", qos=1)
    sender = StompClient(mqtt_stomp_broker)
    sender.with_receipt("send", f"/topic/{p}.plain", b"hello", headers={"reply-to": "/queue/answers"})
    m = sub.message()
    # A `/` inside a routing-key word is a level separator: the STOMP destination stays readable.
    assert m.properties.ResponseTopic == "/queue/answers"
    # Neither persistent nor QoS-tagged: QoS 0, no expiry, no correlation data, no content type.
    assert m.qos == 0
    for absent in ("MessageExpiryInterval", "CorrelationData", "ContentType", "UserProperty"):
        assert not hasattr(m.properties, absent), (absent, m.properties)
    assert m.payload == b"hello"
    sender.close()
