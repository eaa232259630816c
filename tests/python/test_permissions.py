"""RabbitMQ's permissions with pika, paho-mqtt and stomp.py: for each protocol one operation the
user may do and one it is refused, with the refusal each protocol's RabbitMQ clients expect.

bob may use `bob.*` queues and exchanges, the server-named queues behind STOMP topic
subscriptions, and `amq.topic` with `sensors.*` routing keys only.
"""

import threading
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
import stomp

from conftest import MQTT_CONFIG, STOMP_CONFIG

WAIT = 10.0

PERMISSIONS = r"""
[[users]]
name = "bob"
password = "bob"

[[permissions]]
user = "bob"
vhost = "/"
configure = "^(bob\\..*|amq\\.gen-.*)$"
write = "^(bob\\..*|amq\\.gen-.*|amq\\.topic)$"
read = "^(bob\\..*|amq\\.gen-.*|amq\\.topic)$"

[[topic_permissions]]
user = "bob"
vhost = "/"
exchange = "amq.topic"
write = "^sensors\\."
read = "^sensors\\."
"""


@pytest.fixture
def secured(make_broker):
    return make_broker(MQTT_CONFIG + STOMP_CONFIG + PERMISSIONS)


def name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


# --- AMQP (pika) --------------------------------------------------------------------------------


def test_pika_publish_to_an_exchange_without_write_permission_is_refused(secured):
    conn = secured.connect(user="bob", password="bob")
    channel = conn.channel()
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.basic_publish("amq.direct", "k", b"no")
    assert refused.value.reply_code == 403
    assert refused.value.reply_text == (
        "ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '/' refused for user 'bob'"
    )
    conn.close()


def test_pika_publish_with_an_allowed_routing_key_is_delivered(secured):
    conn = secured.connect(user="bob", password="bob")
    channel = conn.channel()
    channel.confirm_delivery()
    queue = name("bob")
    channel.queue_declare(queue)
    channel.queue_bind(queue, "amq.topic", "sensors.#")
    channel.basic_publish("amq.topic", "sensors.kitchen", b"21.5")
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"21.5"
    conn.close()


# --- MQTT (paho-mqtt) ---------------------------------------------------------------------------


class Paho:
    """A paho 5.0 client logged in as bob, whose SUBACKs and messages a test waits for."""

    def __init__(self, port):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name("bob"), protocol=mqtt.MQTTv5)
        self.client.username_pw_set("bob", "bob")
        self.cond = threading.Condition()
        self.subacks, self.messages, self.connected = [], [], []
        self.client.on_connect = lambda c, u, flags, rc, props: self._add(self.connected, rc)
        self.client.on_subscribe = lambda c, u, mid, codes, props: self._add(self.subacks, codes)
        self.client.on_message = lambda c, u, m: self._add(self.messages, m)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.wait(lambda: self.connected), "no CONNACK"
        assert not self.connected[0].is_failure, self.connected[0]

    def _add(self, items, value):
        with self.cond:
            items.append(value)
            self.cond.notify_all()

    def wait(self, predicate):
        with self.cond:
            return self.cond.wait_for(predicate, WAIT)

    def suback(self, topic):
        count = len(self.subacks)
        self.client.subscribe(topic, options=mqtt.SubscribeOptions(qos=1))
        assert self.wait(lambda: len(self.subacks) > count), f"no SUBACK for {topic}"
        return self.subacks[count]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_paho_subscription_outside_the_topic_permission_is_not_authorized(secured):
    client = Paho(secured.mqtt_port)
    try:
        (code,) = client.suback("alarms/#")
        assert code.is_failure and code.value == 0x87, code
    finally:
        client.close()


def test_paho_allowed_subscription_receives_allowed_publishes(secured):
    client = Paho(secured.mqtt_port)
    try:
        (code,) = client.suback("sensors/+")
        assert not code.is_failure, code
        info = client.client.publish("sensors/hall", b"19", qos=1)
        info.wait_for_publish(timeout=WAIT)
        assert client.wait(lambda: client.messages), "no message"
        assert client.messages[0].topic == "sensors/hall"
        assert client.messages[0].payload == b"19"
    finally:
        client.close()


# --- STOMP (stomp.py) ---------------------------------------------------------------------------


class Seen(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.errors, self.messages, self.receipts = [], [], []

    def _add(self, items, value):
        with self.cond:
            items.append(value)
            self.cond.notify_all()

    def on_error(self, frame):
        self._add(self.errors, frame)

    def on_message(self, frame):
        self._add(self.messages, frame)

    def on_receipt(self, frame):
        self._add(self.receipts, frame.headers.get("receipt-id"))

    def wait(self, predicate):
        with self.cond:
            return self.cond.wait_for(predicate, WAIT)


def stomp_as_bob(broker):
    conn = stomp.Connection12([("127.0.0.1", broker.stomp_port)], auto_decode=False)
    seen = Seen()
    conn.set_listener("seen", seen)
    conn.connect("bob", "bob", wait=True)
    return conn, seen


def test_stomp_send_outside_the_topic_permission_is_an_access_refused_error(secured):
    conn, seen = stomp_as_bob(secured)
    conn.send("/topic/alarms.hall", b"fire")
    assert seen.wait(lambda: seen.errors), "no ERROR"
    error = seen.errors[0]
    assert error.headers["message"] == "access_refused"
    assert error.body == (
        b"write access to topic 'alarms.hall' in exchange 'amq.topic' in vhost '/' refused for user 'bob'"
    )


def test_stomp_allowed_topic_subscription_receives_allowed_sends(secured):
    conn, seen = stomp_as_bob(secured)
    try:
        conn.subscribe("/topic/sensors.#", "s1", ack="auto", headers={"receipt": "sub"})
        assert seen.wait(lambda: "sub" in seen.receipts), "no RECEIPT for SUBSCRIBE"
        conn.send("/topic/sensors.hall", b"20")
        assert seen.wait(lambda: seen.messages), "no MESSAGE"
        assert seen.messages[0].body == b"20"
        assert not seen.errors
    finally:
        conn.disconnect()
