"""AMQP 0-9-1 with pika, the reference Python client, against the real broker.

The expected behaviour is RabbitMQ 3.x's.
"""

import tomllib
import uuid

import pika
import pika.exceptions
import pytest

from conftest import parse_listener, render_config

QUIET = 0.3  # seconds to watch for something that must not happen


def name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def ready_count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def drain(channel, queue: str):
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def connection_sleep(channel, seconds: float):
    """Waits while keeping the connection serviced (heartbeats, frames)."""
    channel.connection.sleep(seconds)


def test_listener_log_lines_are_parsed():
    assert parse_listener(
        "2024-01-01T00:00:00Z  INFO rosetta_server::listener: listener opened protocol=amqp addr=127.0.0.1:40123"
    ) == ("amqp", "127.0.0.1", 40123)
    assert parse_listener(
        '\x1b[32m INFO\x1b[0m listener opened \x1b[3mprotocol\x1b[0m=\x1b[0m"mqtt" addr="127.0.0.1:1883"'
    ) == ("mqtt", "127.0.0.1", 1883)
    assert parse_listener("connection opened protocol=amqp addr=127.0.0.1:1") is None


def test_publish_and_consume_round_trip_on_the_default_exchange(channel):
    queue = name("py.roundtrip")
    channel.queue_declare(queue)
    props = pika.BasicProperties(
        content_type="text/plain",
        correlation_id="c-1",
        message_id="m-1",
        headers={"origin": "pika", "n": 7},
    )
    channel.basic_publish(exchange="", routing_key=queue, body=b"hello", properties=props)
    received = []
    for method, properties, body in channel.consume(queue, inactivity_timeout=10):
        assert method is not None, "no delivery within 10 s"
        received.append((method, properties, body))
        channel.basic_ack(method.delivery_tag)
        break
    channel.cancel()
    method, properties, body = received[0]
    assert body == b"hello"
    assert method.routing_key == queue
    assert method.exchange == ""
    assert not method.redelivered
    assert properties.content_type == "text/plain"
    assert properties.correlation_id == "c-1"
    assert properties.message_id == "m-1"
    assert properties.headers == {"origin": "pika", "n": 7}
    assert ready_count(channel, queue) == 0


def test_topic_exchange_routes_by_pattern(channel):
    exchange = name("py.topic")
    channel.exchange_declare(exchange, exchange_type="topic")
    queues = {}
    for pattern in ["*.error", "app.#", "#"]:
        queue = name("py.topic-q")
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, routing_key=pattern)
        queues[pattern] = queue
    channel.confirm_delivery()
    for key in ["app.error", "db.error", "app.web.info", "app", "misc"]:
        channel.basic_publish(exchange, key, key.encode())
    assert drain(channel, queues["*.error"]) == [b"app.error", b"db.error"]
    assert drain(channel, queues["app.#"]) == [b"app.error", b"app.web.info", b"app"]
    assert drain(channel, queues["#"]) == [
        b"app.error",
        b"db.error",
        b"app.web.info",
        b"app",
        b"misc",
    ]


def test_publisher_confirms_ack_every_publish(channel):
    queue = name("py.confirms")
    channel.queue_declare(queue)
    channel.confirm_delivery()
    for i in range(100):
        # Raises NackError / UnroutableError if the broker does not ack.
        channel.basic_publish("", queue, f"m{i}".encode())
    assert ready_count(channel, queue) == 100


def test_mandatory_unroutable_publish_raises_unroutable_error(channel):
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as raised:
        channel.basic_publish("amq.direct", name("py.nobody"), b"bounce", mandatory=True)
    returned = raised.value.messages
    assert len(returned) == 1
    assert returned[0].body == b"bounce"
    assert returned[0].method.reply_code == 312
    # The channel stays usable.
    queue = name("py.after-return")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"fine", mandatory=True)
    assert drain(channel, queue) == [b"fine"]


def test_basic_get_returns_messages_then_get_empty(channel):
    queue = name("py.get")
    channel.queue_declare(queue)
    method, _, _ = channel.basic_get(queue)
    assert method is None
    channel.confirm_delivery()
    for body in [b"1", b"2", b"3"]:
        channel.basic_publish("", queue, body)
    method, _props, body = channel.basic_get(queue, auto_ack=False)
    assert body == b"1"
    assert method.message_count == 2
    channel.basic_ack(method.delivery_tag)
    assert drain(channel, queue) == [b"2", b"3"]
    assert channel.basic_get(queue) == (None, None, None)


def test_prefetch_limits_unacked_deliveries(connection):
    publisher = connection.channel()
    queue = name("py.prefetch")
    publisher.queue_declare(queue)
    publisher.confirm_delivery()
    for i in range(6):
        publisher.basic_publish("", queue, f"m{i}".encode())
    channel = connection.channel()
    channel.basic_qos(prefetch_count=2)
    deliveries = []
    for method, _props, body in channel.consume(queue, inactivity_timeout=QUIET):
        if method is None:
            break
        deliveries.append((method, body))
        assert len(deliveries) <= 2, "more deliveries than the prefetch count"
    assert [b for _, b in deliveries] == [b"m0", b"m1"]
    channel.basic_ack(deliveries[0][0].delivery_tag)
    more = []
    for method, _props, body in channel.consume(queue, inactivity_timeout=QUIET):
        if method is None:
            break
        more.append(body)
    assert more == [b"m2"]
    channel.cancel()


def test_reject_with_requeue_redelivers_flagged(channel):
    queue = name("py.reject")
    channel.queue_declare(queue)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"again")
    channel.basic_publish("", queue, b"next")
    method, _, body = channel.basic_get(queue)
    assert body == b"again" and not method.redelivered
    channel.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = channel.basic_get(queue)
    assert body == b"again"
    assert method.redelivered
    channel.basic_ack(method.delivery_tag)
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"next" and not method.redelivered


def test_dead_lettered_message_carries_x_death(channel):
    dlx, dlq, source, queue = name("py.dlx"), name("py.dlq"), name("py.src"), name("py.work")
    channel.exchange_declare(dlx, exchange_type="fanout")
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, dlx)
    channel.exchange_declare(source, exchange_type="direct")
    channel.queue_declare(queue, arguments={"x-dead-letter-exchange": dlx})
    channel.queue_bind(queue, source, routing_key="jobs")
    channel.confirm_delivery()
    channel.basic_publish(source, "jobs", b"poison")
    method, _, _ = channel.basic_get(queue)
    channel.basic_reject(method.delivery_tag, requeue=False)
    for _ in range(200):
        method, props, body = channel.basic_get(dlq, auto_ack=True)
        if method is not None:
            break
        connection_sleep(channel, 0.05)
    assert method is not None, "message was not dead-lettered"
    assert body == b"poison"
    deaths = props.headers["x-death"]
    assert len(deaths) == 1
    death = deaths[0]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == queue
    assert death["exchange"] == source
    assert death["routing-keys"] == ["jobs"]
    assert death["time"] is not None
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == queue
    assert props.headers["x-first-death-exchange"] == source


def test_durable_persistent_messages_survive_kill9_and_restart(broker):
    queue = name("py.durable")
    conn = broker.connect()
    channel = conn.channel()
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    for i in range(50):
        channel.basic_publish("", queue, f"p{i}".encode(), properties=persistent)
    broker.kill9()
    try:
        conn.close()
    except Exception:  # the broker is gone
        pass
    broker.restart()
    conn = broker.connect()
    channel = conn.channel()
    assert drain(channel, queue) == [f"p{i}".encode() for i in range(50)]
    conn.close()


def test_wrong_password_raises_probable_authentication_error(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        broker.connect(password="wrong")
    # The broker still accepts the right password.
    conn = broker.connect()
    assert conn.is_open
    conn.close()


def test_exclusive_queue_is_locked_for_other_connections(broker):
    owner = broker.connect()
    owner_channel = owner.channel()
    queue = name("py.exclusive")
    owner_channel.queue_declare(queue, exclusive=True)
    other = broker.connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
        other.channel().queue_declare(queue, passive=True)
    assert raised.value.reply_code == 405
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
        other.channel().basic_consume(queue, lambda *args: None)
    assert raised.value.reply_code == 405
    owner.close()
    other.close()


def test_extra_config_is_merged_into_the_default_sections(tmp_path):
    text = render_config(
        tmp_path / "data",
        '[mqtt]\nenabled = true\nlisten = "127.0.0.1:0"\n[limits]\nframe_max = 8192\n',
    )
    config = tomllib.loads(text)
    assert config["storage"]["path"] == str(tmp_path / "data")
    assert config["amqp"]["listen"] == "127.0.0.1:0"
    # The kit keeps the WebSocket listener on an ephemeral port.
    assert config["mqtt"] == {"enabled": True, "listen": "127.0.0.1:0", "ws_listen": "127.0.0.1:0"}
    assert config["stomp"]["enabled"] is False
    assert config["limits"]["frame_max"] == 8192


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def test_rpc_over_direct_reply_to_as_in_tutorial_six(broker):
    """RabbitMQ's tutorial 6 with direct reply-to: no reply queue is declared."""
    server = broker.connect()
    server_channel = server.channel()
    rpc_queue = name("py.rpc")
    server_channel.queue_declare(rpc_queue)
    seen_reply_to = []

    def on_request(ch, method, props, body):
        seen_reply_to.append(props.reply_to)
        response = str(fib(int(body))).encode()
        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=response,
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)

    server_channel.basic_qos(prefetch_count=1)
    server_channel.basic_consume(queue=rpc_queue, on_message_callback=on_request)

    client = broker.connect()
    client_channel = client.channel()
    responses = {}

    def on_response(ch, method, props, body):
        responses[props.correlation_id] = body

    client_channel.basic_consume(
        queue="amq.rabbitmq.reply-to", on_message_callback=on_response, auto_ack=True
    )
    corr_id = str(uuid.uuid4())
    client_channel.basic_publish(
        exchange="",
        routing_key=rpc_queue,
        properties=pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=corr_id),
        body=b"10",
    )
    for _ in range(100):
        if corr_id in responses:
            break
        server.process_data_events(time_limit=0.05)
        client.process_data_events(time_limit=0.05)
    assert responses.get(corr_id) == b"55"
    assert seen_reply_to[0].startswith("amq.rabbitmq.reply-to.")
    assert seen_reply_to[0] != "amq.rabbitmq.reply-to"
    client.close()
    server.close()


def test_direct_reply_to_refuses_an_acknowledging_consumer(channel):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
        channel.basic_consume("amq.rabbitmq.reply-to", lambda *args: None, auto_ack=False)
    assert raised.value.reply_code == 406


def test_consumer_priority_prefers_the_high_consumer_until_its_prefetch_is_full(connection):
    queue = name("py.consumer-priority")
    publisher = connection.channel()
    publisher.queue_declare(queue)
    publisher.confirm_delivery()
    got = {"high": [], "low": []}

    def collect(who):
        return lambda ch, method, props, body: got[who].append(body)

    low = connection.channel()
    low.basic_qos(prefetch_count=10)
    low.basic_consume(queue, collect("low"), arguments={"x-priority": 0})
    high = connection.channel()
    high.basic_qos(prefetch_count=1)
    high.basic_consume(queue, collect("high"), arguments={"x-priority": 10})

    for i in range(3):
        publisher.basic_publish("", queue, f"m{i}".encode())
    for _ in range(100):
        if len(got["high"]) + len(got["low"]) == 3:
            break
        connection.process_data_events(time_limit=0.05)
    connection_sleep(publisher, QUIET)
    assert got == {"high": [b"m0"], "low": [b"m1", b"m2"]}
