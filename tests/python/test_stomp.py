"""STOMP with stomp.py against the real broker, and the crossings between STOMP and AMQP (pika).

The expected behaviour is RabbitMQ's STOMP plugin's (destinations, headers, acknowledgement),
so clients move over unchanged. stomp.py sends the server's address as the `host` header, which
the broker reads as its default virtual host.
"""

import threading
import time
import uuid

import pika
import pytest
import stomp

WAIT = 10.0  # seconds to wait for something that should happen
QUIET = 0.3  # seconds to watch for something that must not happen

CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


def name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


class Collector(stomp.ConnectionListener):
    """Records what the broker sends, and lets a test wait for it with a deadline."""

    def __init__(self):
        self.cond = threading.Condition()
        self.messages = []
        self.receipts = []
        self.errors = []
        self.disconnected = False

    def _add(self, attr, value):
        with self.cond:
            getattr(self, attr).append(value)
            self.cond.notify_all()

    def on_message(self, frame):
        self._add("messages", frame)

    def on_receipt(self, frame):
        self._add("receipts", frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self._add("errors", frame)

    def on_disconnected(self):
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def wait(self, predicate, timeout=WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def messages_at_least(self, count: int, timeout=WAIT):
        assert self.wait(lambda: len(self.messages) >= count, timeout), (
            f"expected {count} messages, got {len(self.messages)}: {self.messages}"
        )
        return list(self.messages)

    def take(self, count: int = 1):
        got = self.messages_at_least(count)
        with self.cond:
            del self.messages[:count]
        return got[:count]

    def stays_quiet(self, count: int) -> bool:
        """True if no more than `count` messages arrive within QUIET."""
        return not self.wait(lambda: len(self.messages) > count, QUIET)


class Client:
    """A stomp.py connection with its collector; `receipt` sends a frame and waits for it."""

    def __init__(self, broker, version="1.2", heartbeats=(0, 0)):
        self.version = version
        options = {"auto_decode": False}
        if version != "1.0":  # heart-beating arrived with STOMP 1.1
            options["heartbeats"] = heartbeats
        self.conn = CONNECTIONS[version]([("127.0.0.1", broker.stomp_port)], **options)
        self.seen = Collector()
        self.conn.set_listener("collector", self.seen)
        self.conn.connect("guest", "guest", wait=True)

    def with_receipt(self, method, *args, headers=None, **kwargs):
        receipt = name("r")
        headers = dict(headers or {}, receipt=receipt)
        getattr(self.conn, method)(*args, headers=headers, **kwargs)
        assert self.seen.wait(lambda: receipt in self.seen.receipts), f"no RECEIPT {receipt}"

    def subscribe(self, destination, sub_id, ack="auto", headers=None):
        self.with_receipt("subscribe", destination, sub_id, ack=ack, headers=headers)

    def ack(self, frame):
        if self.version == "1.2":
            self.conn.ack(frame.headers["ack"])
        else:
            self.conn.ack(frame.headers["message-id"], frame.headers["subscription"])

    def nack(self, frame):
        # With a receipt: a check made on another connection right after must find the
        # NACK already processed.
        receipt = name("r")
        if self.version == "1.2":
            self.conn.nack(frame.headers["ack"], receipt=receipt)
        else:
            self.conn.nack(frame.headers["message-id"], frame.headers["subscription"], receipt=receipt)
        assert self.seen.wait(lambda: receipt in self.seen.receipts), f"no RECEIPT {receipt}"

    def close(self):
        if self.conn.is_connected():
            self.conn.disconnect()


@pytest.fixture
def client(stomp_broker):
    c = Client(stomp_broker)
    yield c
    c.close()


@pytest.fixture
def amqp(stomp_broker):
    conn = stomp_broker.connect()
    yield conn.channel()
    if conn.is_open:
        conn.close()


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_send_and_subscribe_round_trip_in_every_version(stomp_broker, version):
    c = Client(stomp_broker, version)
    queue = f"/queue/{name('rt')}"
    c.subscribe(queue, "s1", ack="client")
    c.conn.send(queue, b"hello \x00 binary", headers={"x-app": "demo"})
    [frame] = c.seen.take()
    assert frame.body == b"hello \x00 binary"
    assert frame.headers["destination"] == queue
    assert frame.headers["x-app"] == "demo"
    assert frame.headers["redelivered"] == "false"
    c.ack(frame)
    c.close()


def test_nack_gives_the_message_back_flagged_redelivered(client):
    queue = f"/queue/{name('nack')}"
    client.subscribe(queue, "s", ack="client-individual")
    client.conn.send(queue, b"again")
    [first] = client.seen.take()
    client.nack(first)
    [second] = client.seen.take()
    assert second.body == b"again"
    assert second.headers["redelivered"] == "true"
    client.ack(second)
    assert client.seen.stays_quiet(0)


def test_unacked_messages_come_back_redelivered_after_a_disconnect(stomp_broker):
    queue = f"/queue/{name('unacked')}"
    first = Client(stomp_broker)
    first.subscribe(queue, "s", ack="client")
    for i in range(3):
        first.conn.send(queue, f"m{i}".encode())
    first.seen.messages_at_least(3)
    first.close()
    second = Client(stomp_broker)
    second.subscribe(queue, "s", ack="auto")
    again = second.seen.take(3)
    assert [f.body for f in again] == [b"m0", b"m1", b"m2"]
    assert all(f.headers["redelivered"] == "true" for f in again)
    second.close()


def test_sends_in_a_transaction_arrive_only_on_commit(client):
    queue = f"/queue/{name('tx')}"
    client.subscribe(queue, "s")
    tx = client.conn.begin()
    client.conn.send(queue, b"one", transaction=tx)
    client.conn.send(queue, b"two", transaction=tx)
    assert client.seen.stays_quiet(0), "transactional sends delivered before COMMIT"
    client.with_receipt("commit", tx)
    assert [f.body for f in client.seen.take(2)] == [b"one", b"two"]
    dropped = client.conn.begin()
    client.conn.send(queue, b"never", transaction=dropped)
    client.with_receipt("abort", dropped)
    assert client.seen.stays_quiet(0)


def test_an_ack_in_an_aborted_transaction_leaves_the_message_unacknowledged(stomp_broker):
    queue = f"/queue/{name('txack')}"
    c = Client(stomp_broker)
    c.subscribe(queue, "s", ack="client-individual")
    c.conn.send(queue, b"kept")
    c.conn.send(queue, b"settled")
    kept, settled = c.seen.take(2)
    tx = c.conn.begin()
    c.conn.ack(kept.headers["ack"], transaction=tx)
    c.conn.abort(tx)
    tx = c.conn.begin()
    c.conn.ack(settled.headers["ack"], transaction=tx)
    c.with_receipt("commit", tx)
    c.close()
    other = Client(stomp_broker)
    other.subscribe(queue, "s")
    [back] = other.seen.take()
    assert back.body == b"kept"
    assert other.seen.stays_quiet(0)
    other.close()


def test_prefetch_count_bounds_the_messages_in_flight(client):
    queue = f"/queue/{name('prefetch')}"
    client.subscribe(queue, "s", ack="client-individual", headers={"prefetch-count": "2"})
    for i in range(5):
        client.conn.send(queue, f"p{i}".encode())
    got = client.seen.messages_at_least(2)
    assert client.seen.stays_quiet(2), "more than prefetch-count messages in flight"
    client.ack(got[0])
    assert len(client.seen.messages_at_least(3)) == 3


def test_a_topic_fans_out_to_every_subscriber(stomp_broker):
    topic = f"/topic/{name('fan')}"
    a, b = Client(stomp_broker), Client(stomp_broker)
    a.subscribe(topic, "a")
    b.subscribe(topic, "b")
    a.conn.send(topic, b"to all")
    assert [f.body for f in a.seen.take()] == [b"to all"]
    assert [f.body for f in b.seen.take()] == [b"to all"]
    a.close()
    b.close()


def test_topic_wildcards_follow_amqp_topic_matching(client):
    prefix = name("wild").replace(".", "-")
    client.subscribe(f"/topic/{prefix}.*.temp", "w")
    client.conn.send(f"/topic/{prefix}.kitchen.temp", b"21")
    client.conn.send(f"/topic/{prefix}.kitchen.humidity", b"40")
    [frame] = client.seen.take()
    assert frame.body == b"21"
    assert frame.headers["destination"] == f"/topic/{prefix}.kitchen.temp"
    assert client.seen.stays_quiet(0)


def test_exchange_destinations_route_through_the_named_exchange(client):
    key = name("k")
    client.subscribe(f"/exchange/amq.direct/{key}", "x")
    client.conn.send(f"/exchange/amq.direct/{key}", b"direct")
    [frame] = client.seen.take()
    assert frame.body == b"direct"
    assert frame.headers["destination"] == f"/exchange/amq.direct/{key}"


def test_temp_queue_reply_to_is_rewritten_and_the_reply_comes_back(stomp_broker):
    requests = f"/queue/{name('rpc')}"
    server, requester = Client(stomp_broker), Client(stomp_broker)
    server.subscribe(requests, "srv")
    requester.conn.send(requests, b"ping", headers={"reply-to": "/temp-queue/answers"})
    [request] = server.seen.take()
    reply_to = request.headers["reply-to"]
    assert reply_to.startswith("/reply-queue/amq.gen-"), reply_to
    server.conn.send(reply_to, b"pong", headers={"correlation-id": "c-1"})
    [reply] = requester.seen.take()
    assert reply.body == b"pong"
    assert reply.headers["subscription"] == "/temp-queue/answers"
    assert reply.headers["correlation-id"] == "c-1"
    server.close()
    requester.close()


def test_disconnect_with_a_receipt_is_answered_before_the_close(stomp_broker):
    c = Client(stomp_broker)
    c.conn.send(f"/queue/{name('bye')}", b"last", headers={"persistent": "true"})
    c.conn.disconnect(receipt="bye")
    assert "bye" in c.seen.receipts
    assert c.seen.wait(lambda: c.seen.disconnected)


def test_heartbeats_are_negotiated_with_stomp_py(make_broker):
    from conftest import STOMP_CONFIG

    broker = make_broker(STOMP_CONFIG + "heartbeat_ms = 500\n")
    c = Client(broker, heartbeats=(1000, 1000))
    queue = f"/queue/{name('hb')}"
    c.subscribe(queue, "s")
    # Several heart-beat intervals pass; the connection stays up in both directions.
    time.sleep(2.5)
    c.conn.send(queue, b"still here")
    assert [f.body for f in c.seen.take()] == [b"still here"]
    assert not c.seen.errors
    c.close()


# --- RabbitMQ's STOMP behaviour ------------------------------------------------------------


class ConnectedHeaders(stomp.ConnectionListener):
    def __init__(self):
        self.headers = None

    def on_connected(self, frame):
        self.headers = frame.headers


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_connected_carries_heart_beat_0_0_when_none_was_offered(stomp_broker, version):
    # stomp.py sends no heart-beat for 1.0 and `0,0` by default for 1.1 and 1.2.
    conn = CONNECTIONS[version]([("127.0.0.1", stomp_broker.stomp_port)], auto_decode=False)
    seen = ConnectedHeaders()
    conn.set_listener("connected", seen)
    conn.connect("guest", "guest", wait=True)
    try:
        assert seen.headers["heart-beat"] == "0,0"
    finally:
        conn.disconnect()


def test_boolean_headers_take_python_style_capitals(client):
    queue = f"/queue/{name('bool')}"
    client.subscribe(queue, "s", ack="client-individual")
    client.conn.send(queue, b"x", headers={"persistent": "True"})
    [frame] = client.seen.take()
    assert frame.headers["persistent"] == "true"
    # `requeue:False` drops the message instead of giving it back.
    receipt = name("r")
    client.conn.nack(frame.headers["ack"], receipt=receipt, requeue="False")
    assert client.seen.wait(lambda: receipt in client.seen.receipts), f"no RECEIPT {receipt}"
    assert client.seen.stays_quiet(0)


def test_a_send_with_message_id_is_refused(client):
    client.conn.send("/nowhere/x", b"x", headers={"message-id": "m-1"})
    assert client.seen.wait(lambda: client.seen.errors)
    error = client.seen.errors[0]
    assert error.headers["message"] == "Invalid header"
    assert error.body.startswith(b"'message-id' is not allowed on 'SEND'.\n")
    assert client.seen.wait(lambda: client.seen.disconnected)


def test_a_send_to_an_exchange_without_key_comes_back_with_that_destination(client):
    client.subscribe("/exchange/amq.fanout", "f")
    client.conn.send("/exchange/amq.fanout", b"all")
    [frame] = client.seen.take()
    assert frame.body == b"all"
    assert frame.headers["destination"] == "/exchange/amq.fanout"


# --- crossings between protocols ------------------------------------------------------------
#
# Each asserts that body bytes, content type, correlation id, reply-to, message id, expiry and
# custom headers arrive. docs/protocols.md holds the full mapping.


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def test_amqp_to_stomp_carries_body_properties_and_headers(stomp_broker, amqp):
    queue = name("cross.a2s")
    amqp.queue_declare(queue)
    c = Client(stomp_broker)
    c.subscribe(f"/queue/{queue}", "s")
    props = pika.BasicProperties(
        content_type="application/octet-stream",
        correlation_id="corr-1",
        reply_to="replies",
        message_id="msg-1",
        expiration="60000",
        delivery_mode=2,
        priority=3,
        type="greeting",
        app_id="pika-app",
        headers={"x-custom": "value", "count": 7, "flag": True},
    )
    body = b"\x00\x01binary\xff\x00"
    amqp.basic_publish("", queue, body, props)
    [frame] = c.seen.take()
    h = frame.headers
    assert frame.body == body
    assert h["content-type"] == "application/octet-stream"
    assert h["correlation-id"] == "corr-1"
    assert h["reply-to"] == "replies"
    assert h["amqp-message-id"] == "msg-1"
    assert h["expiration"] == "60000"
    assert h["persistent"] == "true"
    assert h["priority"] == "3"
    assert h["type"] == "greeting"
    assert h["app-id"] == "pika-app"
    assert (h["x-custom"], h["count"], h["flag"]) == ("value", "7", "true")
    assert h["destination"] == f"/queue/{queue}"
    # The MESSAGE's own message-id is the broker's delivery id, not the AMQP one.
    assert h["message-id"] != "msg-1"
    c.close()


def test_stomp_to_amqp_carries_body_properties_and_headers(stomp_broker, amqp):
    queue = name("cross.s2a")
    amqp.queue_declare(queue)
    c = Client(stomp_broker)
    body = b"\x00stomp\x00body"
    c.with_receipt(
        "send",
        f"/queue/{queue}",
        body,
        content_type="application/json",
        headers={
            "correlation-id": "corr-2",
            "reply-to": "/queue/answers",
            "amqp-message-id": "msg-2",
            "expiration": "60000",
            "persistent": "true",
            "priority": "4",
            "x-custom": "value",
        },
    )
    method, props, got = amqp.basic_get(queue, auto_ack=True)
    assert method is not None, "message did not reach the AMQP queue"
    assert got == body
    assert props.content_type == "application/json"
    assert props.correlation_id == "corr-2"
    assert props.reply_to == "/queue/answers"
    assert props.message_id == "msg-2"
    assert props.expiration == "60000"
    assert props.delivery_mode == 2
    assert props.priority == 4
    assert {k: text(v) for k, v in props.headers.items()} == {"x-custom": "value"}
    c.close()


def test_stomp_absolute_expires_becomes_an_amqp_ttl(stomp_broker, amqp):
    queue = name("cross.expires")
    amqp.queue_declare(queue)
    c = Client(stomp_broker)
    expires = int(time.time() * 1000) + 60_000
    c.with_receipt("send", f"/queue/{queue}", b"ttl", headers={"expires": str(expires)})
    method, props, _ = amqp.basic_get(queue, auto_ack=True)
    assert method is not None
    assert 50_000 <= int(props.expiration) <= 60_000, props.expiration
    c.close()


def test_stomp_topic_send_reaches_an_amqp_queue_bound_to_amq_topic(stomp_broker, amqp):
    queue = name("cross.topic")
    key = name("sensors").replace(".", "-") + ".t1"
    amqp.queue_declare(queue)
    amqp.queue_bind(queue, "amq.topic", routing_key=key)
    c = Client(stomp_broker)
    c.with_receipt("send", f"/topic/{key}", b"21.5")
    method, _props, body = amqp.basic_get(queue, auto_ack=True)
    assert method is not None
    assert (method.exchange, method.routing_key, body) == ("amq.topic", key, b"21.5")
    c.close()


def test_amqp_publish_to_amq_topic_reaches_a_stomp_topic_subscriber(stomp_broker, amqp):
    prefix = name("events").replace(".", "-")
    c = Client(stomp_broker)
    c.subscribe(f"/topic/{prefix}.#", "t")
    amqp.basic_publish("amq.topic", f"{prefix}.user.created", b"{}", pika.BasicProperties(content_type="application/json"))
    [frame] = c.seen.take()
    assert frame.headers["destination"] == f"/topic/{prefix}.user.created"
    assert frame.headers["content-type"] == "application/json"
    assert frame.body == b"{}"
    c.close()


def test_a_stomp_nack_returns_an_amqp_message_to_its_queue(stomp_broker, amqp):
    queue = name("cross.nack")
    amqp.queue_declare(queue)
    amqp.basic_publish("", queue, b"retry me")
    c = Client(stomp_broker)
    c.subscribe(f"/queue/{queue}", "s", ack="client-individual")
    [frame] = c.seen.take()
    c.with_receipt("unsubscribe", "s")
    c.nack(frame)
    c.close()
    method, _props, body = amqp.basic_get(queue, auto_ack=True)
    assert method is not None and method.redelivered
    assert body == b"retry me"


def test_x_queue_name_lets_amqp_reach_a_topic_subscription_by_the_default_exchange(stomp_broker, amqp):
    key = name("named").replace(".", "-")
    queue = name("stomp-named")
    c = Client(stomp_broker)
    c.subscribe(f"/topic/{key}", "t", headers={"x-queue-name": queue})
    # Published by name through the default exchange, not through amq.topic.
    amqp.basic_publish("", queue, b"by name")
    [frame] = c.seen.take()
    assert frame.body == b"by name"
    assert frame.headers["subscription"] == "t"

    # A durable subscription's named queue outlives it, and an AMQP consumer can read it.
    durable = name("stomp-durable-named")
    c.subscribe(f"/topic/{key}", "d", headers={"x-queue-name": durable, "durable": "true"})
    c.with_receipt("unsubscribe", "d")
    c.with_receipt("send", f"/topic/{key}", b"kept for amqp", headers={"persistent": "true"})
    method, _props, body = amqp.basic_get(durable, auto_ack=True)
    assert method is not None, f"nothing in {durable}"
    assert body == b"kept for amqp"
    c.close()


def test_queue_argument_headers_declare_a_queue_pika_can_redeclare_with_the_same_arguments(stomp_broker, amqp):
    queue = name("args")
    arguments = {"x-max-length": 5, "x-message-ttl": 60000, "x-dead-letter-exchange": "amq.fanout"}
    c = Client(stomp_broker)
    c.with_receipt(
        "send",
        f"/queue/{queue}",
        b"first",
        headers={k: str(v) for k, v in arguments.items()},
    )
    # pika sends the numbers as integers; the broker declared them as integers too.
    declared = amqp.queue_declare(queue, durable=True, arguments=arguments)
    assert declared.method.message_count == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        amqp.queue_declare(queue, durable=True, arguments=dict(arguments, **{"x-max-length": 6}))
    assert refused.value.reply_code == 406
    c.close()


def test_receipts_of_transactional_sends_come_at_commit_and_never_after_abort(client):
    queue = f"/queue/{name('txreceipt')}"
    client.subscribe(queue, "s")
    tx = client.conn.begin()
    client.conn.send(queue, b"one", transaction=tx, headers={"receipt": "send-in-tx", "persistent": "true"})
    # Frames come in order: by the marker's receipt, an earlier receipt would have come, and
    # a message published earlier would come before the marker.
    client.with_receipt("send", queue, b"marker")
    assert "send-in-tx" not in client.seen.receipts, "receipt before COMMIT"
    assert [f.body for f in client.seen.take()] == [b"marker"], "message before COMMIT"
    client.with_receipt("commit", tx)
    receipts = client.seen.receipts
    assert "send-in-tx" in receipts
    # The SEND's receipt comes before the COMMIT's.
    assert receipts.index("send-in-tx") == len(receipts) - 2, receipts
    assert [f.body for f in client.seen.take()] == [b"one"]

    dropped = client.conn.begin()
    client.conn.send(queue, b"never", transaction=dropped, headers={"receipt": "send-in-aborted"})
    client.with_receipt("abort", dropped)
    client.with_receipt("send", queue, b"marker")
    assert "send-in-aborted" not in client.seen.receipts
    assert [f.body for f in client.seen.take()] == [b"marker"], "an aborted message arrived"
