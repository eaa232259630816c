"""MQTT with paho-mqtt (3.1.1 and 5.0) and the mosquitto command-line clients against the real
broker, including kill -9 durability and the crossings with AMQP (pika).

mosquitto_pub and mosquitto_sub come from the Debian package mosquitto-clients, which
`tests/run` installs when it is missing.
"""

import queue
import shutil
import subprocess
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import MQTT_CONFIG

WAIT = 10.0  # seconds to wait for something that should happen
QUIET = 0.4  # seconds to watch for something that must not happen


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Client:
    """A paho client on its own network thread, whose events a test waits for with a deadline."""

    def __init__(self, port, client_id="", version=mqtt.MQTTv311, clean=True, session_expiry=None, will=None,
                 credentials=("guest", "guest")):
        self.version = version
        kwargs = {"clean_session": clean} if version != mqtt.MQTTv5 else {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, **kwargs)
        if credentials:
            self.client.username_pw_set(*credentials)
        if will:
            self.client.will_set(*will)
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put(codes)
        connect = {}
        if version == mqtt.MQTTv5:
            connect["clean_start"] = clean
            if session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = session_expiry
                connect["properties"] = props
        self.client.connect("127.0.0.1", port, keepalive=30, **connect)
        self.client.loop_start()
        self.flags, self.reason, self.properties = self.connacks.get(timeout=WAIT)
        assert not self.reason.is_failure, self.reason

    @property
    def session_present(self) -> bool:
        return bool(self.flags.session_present)

    def subscribe(self, topic, qos=1, properties=None, **options):
        if self.version == mqtt.MQTTv5:
            self.client.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **options), properties=properties)
        else:
            self.client.subscribe(topic, qos)
        codes = self.subacks.get(timeout=WAIT)
        assert all(not c.is_failure for c in codes), codes
        return codes

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published()

    def message(self):
        return self.messages.get(timeout=WAIT)

    def no_message(self):
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=QUIET)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients():
    made = []
    yield made
    for c in made:
        c.client.loop_stop()
        c.client.disconnect()


@pytest.mark.parametrize("version", [mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1", "3.1.1", "5.0"])
def test_paho_publishes_at_every_qos_to_wildcard_subscribers(mqtt_broker, clients, version):
    port = mqtt_broker.mqtt_port
    sub = Client(port, name("sub"), version)
    pub = Client(port, name("pub"), version)
    clients += [sub, pub]
    sub.subscribe("paho/+/reading", qos=2)
    for qos in (0, 1, 2):
        pub.publish(f"paho/s{qos}/reading", f"v{qos}", qos=qos)
        m = sub.message()
        assert (m.topic, m.payload, m.qos) == (f"paho/s{qos}/reading", f"v{qos}".encode(), qos)
    pub.publish("paho/s1/other", "x")
    sub.no_message()


def test_paho_5_request_response_with_properties(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    server = Client(port, name("server"), mqtt.MQTTv5)
    requester = Client(port, name("requester"), mqtt.MQTTv5)
    clients += [server, requester]
    server.subscribe("rpc/add")
    reply_to = f"rpc/replies/{uuid.uuid4().hex[:8]}"
    requester.subscribe(reply_to)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_to
    props.CorrelationData = b"call-1"
    props.UserProperty = [("tenant", "t1")]
    props.ContentType = "application/json"
    requester.publish("rpc/add", b"[1,2]", properties=props)
    request = server.message()
    assert request.properties.ResponseTopic == reply_to
    assert request.properties.CorrelationData == b"call-1"
    assert request.properties.UserProperty == [("tenant", "t1")]
    assert request.properties.ContentType == "application/json"
    answer = Properties(PacketTypes.PUBLISH)
    answer.CorrelationData = request.properties.CorrelationData
    server.publish(request.properties.ResponseTopic, b"3", properties=answer)
    reply = requester.message()
    assert (reply.payload, reply.properties.CorrelationData) == (b"3", b"call-1")


def test_paho_5_message_carries_the_ids_of_every_matching_subscription(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    sub = Client(port, name("sub"), mqtt.MQTTv5)
    pub = Client(port, name("pub"), mqtt.MQTTv5)
    clients += [sub, pub]
    for topic, sub_id in (("ids/#", 7), ("ids/+/temp", 300), ("elsewhere/#", 9)):
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = sub_id
        sub.subscribe(topic, properties=props)
    pub.publish("ids/kitchen/temp", "21")
    m = sub.message()
    assert m.payload == b"21"
    # paho keeps every Subscription Identifier of a PUBLISH, in a list.
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 300]
    sub.no_message()


def test_paho_without_credentials_logs_in_as_guest_and_is_refused_once_guest_is_gone(make_broker, clients):
    # Over loopback a client without a user name logs in as guest, as with RabbitMQ, so
    # `mosquitto_pub -h localhost` works out of the box.
    default = make_broker(MQTT_CONFIG)
    for version in (mqtt.MQTTv311, mqtt.MQTTv5):
        anon = Client(default.mqtt_port, name("anon"), version, credentials=None)
        clients.append(anon)
        anon.subscribe("anon/t")
        anon.publish("anon/t", "hi")
        assert anon.message().payload == b"hi"

    # Without guest there is nobody to log in as.
    guestless = make_broker(MQTT_CONFIG + '\n[[users]]\nname = "alice"\npassword = "pw"\n')
    refused = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name("anon"), protocol=mqtt.MQTTv311)
    codes = queue.Queue()
    refused.on_connect = lambda c, u, flags, rc, props: codes.put(rc)
    refused.connect("127.0.0.1", guestless.mqtt_port, keepalive=30)
    refused.loop_start()
    try:
        rc = codes.get(timeout=WAIT)
        # 3.1.1 return code 4, which paho reports as "Bad user name or password".
        assert rc.is_failure and "user name or password" in str(rc).lower(), rc
    finally:
        refused.loop_stop()

    # allow_anonymous accepts such clients from anywhere, as user anonymous.
    open_broker = make_broker(MQTT_CONFIG + "allow_anonymous = true\n")
    for version in (mqtt.MQTTv311, mqtt.MQTTv5):
        anon = Client(open_broker.mqtt_port, name("anon"), version, credentials=None)
        clients.append(anon)
        anon.subscribe("anon/t")
        anon.publish("anon/t", "hi")
        assert anon.message().payload == b"hi"


def test_paho_5_publish_to_a_300_byte_topic_gets_0x90_and_keeps_the_connection(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    sub = Client(port, name("sub"), mqtt.MQTTv5)
    pub = Client(port, name("pub"), mqtt.MQTTv5)
    clients += [sub, pub]
    acks = queue.Queue()
    pub.client.on_publish = lambda c, u, mid, rc, props: acks.put((mid, rc))
    # Its routing key could not travel in an AMQP short string (255 bytes).
    info = pub.client.publish("long/" + "x" * 295, "too long", qos=1)
    mid, rc = acks.get(timeout=WAIT)
    assert (mid, rc.value) == (info.mid, 0x90)
    sub.subscribe("after/long")
    pub.publish("after/long", "fine")
    assert sub.message().payload == b"fine"


def test_paho_5_shared_subscription_splits_messages(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    group = name("workers")
    a = Client(port, name("a"), mqtt.MQTTv5)
    b = Client(port, name("b"), mqtt.MQTTv5)
    pub = Client(port, name("pub"), mqtt.MQTTv5)
    clients += [a, b, pub]
    a.subscribe(f"$share/{group}/tasks")
    b.subscribe(f"$share/{group}/tasks")
    for i in range(20):
        pub.publish("tasks", str(i))
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < 20 and time.monotonic() < deadline:
        for c in (a, b):
            try:
                got.append((c, c.messages.get(timeout=0.05).payload))
            except queue.Empty:
                pass
    assert sorted(int(p) for _, p in got) == list(range(20)), "each task exactly once"
    assert {id(c) for c, _ in got} == {id(a), id(b)}, "both workers took tasks"


def test_paho_persistent_session_and_retained_message_survive_kill_9(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    client_id = name("durable")
    first = Client(port, client_id, mqtt.MQTTv311, clean=False)
    first.subscribe("kill/#", qos=1)
    first.close()
    pub = Client(port, name("pub"), mqtt.MQTTv311)
    pub.publish("kill/queued", "while away", qos=1)
    pub.publish("kill/retained", "last value", qos=1, retain=True)
    pub.close()

    mqtt_broker.kill9()
    mqtt_broker.restart()
    port = mqtt_broker.mqtt_port

    back = Client(port, client_id, mqtt.MQTTv311, clean=False)
    clients.append(back)
    assert back.session_present
    payloads = sorted([back.message().payload, back.message().payload])
    assert payloads == [b"last value", b"while away"]
    fresh = Client(port, name("fresh"), mqtt.MQTTv311)
    clients.append(fresh)
    fresh.subscribe("kill/+")
    m = fresh.message()
    assert (m.topic, m.payload, m.retain) == ("kill/retained", b"last value", True)


def test_paho_5_session_expiry_and_session_present(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    client_id = name("expiring")
    first = Client(port, client_id, mqtt.MQTTv5, clean=True, session_expiry=600)
    assert not first.session_present
    first.subscribe("exp/t")
    first.close()
    again = Client(port, client_id, mqtt.MQTTv5, clean=False, session_expiry=600)
    assert again.session_present
    again.close()
    fresh = Client(port, client_id, mqtt.MQTTv5, clean=True, session_expiry=0)
    clients.append(fresh)
    assert not fresh.session_present


def test_paho_will_reaches_a_subscriber_when_the_client_vanishes(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    watcher = Client(port, name("watcher"), mqtt.MQTTv311)
    clients.append(watcher)
    watcher.subscribe("status/#")
    doomed = Client(port, name("doomed"), mqtt.MQTTv311, will=("status/doomed", "offline", 1, True))
    # Close the socket without DISCONNECT, as a crash or a cut cable would.
    doomed.client.loop_stop()
    doomed.client.socket().close()
    m = watcher.message()
    assert (m.topic, m.payload) == ("status/doomed", b"offline")


def test_mqtt_and_amqp_clients_exchange_messages_through_amq_topic(mqtt_broker, clients):
    port = mqtt_broker.mqtt_port
    conn = mqtt_broker.connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", routing_key="meters.*.kwh")
        sub = Client(port, name("sub"), mqtt.MQTTv5)
        pub = Client(port, name("pub"), mqtt.MQTTv5)
        clients += [sub, pub]
        sub.subscribe("meters/+/kwh")
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("site", "north")]
        pub.publish("meters/m1/kwh", "12.5", properties=props)
        method, header, body = None, None, None
        deadline = time.monotonic() + WAIT
        while method is None and time.monotonic() < deadline:
            method, header, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                time.sleep(0.02)
        assert method is not None, "the AMQP queue got nothing"
        assert (method.routing_key, body) == ("meters.m1.kwh", b"12.5")
        assert header.headers["site"] == "north"
        assert sub.message().payload == b"12.5"

        ch.basic_publish(
            "amq.topic",
            "meters.m2.kwh",
            b"7",
            pika.BasicProperties(delivery_mode=2, headers={"site": "south"}),
        )
        m = sub.message()
        assert (m.topic, m.payload, m.qos) == ("meters/m2/kwh", b"7", 1)
        assert ("site", "south") in m.properties.UserProperty
    finally:
        conn.close()


mosquitto = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto-clients is not installed (tests/run installs it)",
)

VERSIONS = {"3.1": "mqttv31", "3.1.1": "mqttv311", "5.0": "mqttv5"}


def cli(tool, port, *args, timeout=WAIT):
    return subprocess.run(
        [tool, "-h", "127.0.0.1", "-p", str(port), "-u", "guest", "-P", "guest", *args],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
    )


def start_sub(port, *args):
    """mosquitto_sub in the background; returns once its subscription is in place (its debug
    output says SUBACK; stdbuf makes it line-buffered on a pipe)."""
    proc = subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", "guest", "-P", "guest", "-d", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        if "SUBACK" in line:
            return proc
    raise AssertionError(f"mosquitto_sub never got its SUBACK (exit {proc.wait()})")


def messages(proc, prefix):
    """The `topic payload` lines a verbose mosquitto_sub printed, without its debug lines."""
    out, _ = proc.communicate(timeout=WAIT + 5)
    return [line for line in out.splitlines() if line.startswith(prefix)]


@mosquitto
@pytest.mark.parametrize("version", VERSIONS.keys())
def test_mosquitto_clients_round_trip(mqtt_broker, version):
    port = mqtt_broker.mqtt_port
    v = VERSIONS[version]
    sub = start_sub(port, "-V", v, "-i", name("sub"), "-t", "cli/+/x", "-q", "2", "-C", "3", "-W", str(int(WAIT)), "-v")
    for qos in ("0", "1", "2"):
        done = cli("mosquitto_pub", port, "-V", v, "-i", name("pub"), "-t", f"cli/q{qos}/x", "-m", f"hello {qos}", "-q", qos)
        assert done.returncode == 0, done.stderr
    assert messages(sub, "cli/") == ["cli/q0/x hello 0", "cli/q1/x hello 1", "cli/q2/x hello 2"]


@mosquitto
def test_mosquitto_retained_message_reaches_a_wildcard_subscriber(mqtt_broker):
    port = mqtt_broker.mqtt_port
    done = cli("mosquitto_pub", port, "-t", "cli/retained/a", "-m", "kept", "-r", "-q", "1")
    assert done.returncode == 0, done.stderr
    got = cli("mosquitto_sub", port, "-t", "cli/#", "-C", "1", "-W", str(int(WAIT)), "-v")
    assert got.stdout.split("\n")[0] == "cli/retained/a kept"
    # `#` alone does not see `$` topics.
    cli("mosquitto_pub", port, "-t", "$app/cli", "-m", "hidden", "-r")
    quiet = cli("mosquitto_sub", port, "-t", "#", "-W", "1", "-v", timeout=1)
    assert "hidden" not in quiet.stdout


@mosquitto
def test_mosquitto_sub_reads_the_sys_tree(make_broker):
    broker = make_broker(MQTT_CONFIG + "sys_interval = 1\n")
    # The retained tree first, then each second's changes; a tab between topic and payload,
    # since one topic holds a space.
    got = cli("mosquitto_sub", broker.mqtt_port, "-t", "$SYS/#", "-C", "40", "-W", str(int(WAIT)), "-F", "%t\t%p")
    assert got.returncode == 0, got.stderr
    values = dict(line.split("\t", 1) for line in got.stdout.splitlines())
    assert values["$SYS/broker/version"].startswith("rosetta version ")
    uptime, unit = values["$SYS/broker/uptime"].split(" ")
    assert uptime.isdigit() and unit == "seconds"
    for topic in ("clients/connected", "clients/total", "clients/disconnected", "clients/maximum",
                  "messages/received", "messages/sent", "bytes/received", "bytes/sent", "subscriptions/count",
                  "retained messages/count", "store/messages/count"):
        assert values[f"$SYS/broker/{topic}"].isdigit(), topic
    assert int(values["$SYS/broker/clients/connected"]) >= 1
    for kind in ("messages/received", "messages/sent", "bytes/received", "bytes/sent"):
        for window in ("1min", "5min", "15min"):
            whole, cents = values[f"$SYS/broker/load/{kind}/{window}"].split(".")
            assert whole.isdigit() and len(cents) == 2, (kind, window)
    # A client's publish to $SYS is dropped; the broker's own values stay.
    done = cli("mosquitto_pub", broker.mqtt_port, "-t", "$SYS/broker/version", "-m", "spoofed", "-r", "-q", "1")
    assert done.returncode == 0, done.stderr
    again = cli("mosquitto_sub", broker.mqtt_port, "-t", "$SYS/broker/version", "-C", "1", "-W", str(int(WAIT)))
    assert again.stdout.startswith("rosetta version "), again.stdout


@mosquitto
def test_mosquitto_sub_persistent_session_survives_kill_9(mqtt_broker):
    port = mqtt_broker.mqtt_port
    client_id = name("cli-durable")
    first = start_sub(port, "-i", client_id, "-c", "-q", "1", "-t", "cli/durable", "-W", "1")
    first.communicate(timeout=WAIT)
    for i in range(3):
        done = cli("mosquitto_pub", port, "-t", "cli/durable", "-m", f"m{i}", "-q", "1")
        assert done.returncode == 0, done.stderr
    mqtt_broker.kill9()
    mqtt_broker.restart()
    port = mqtt_broker.mqtt_port
    got = cli("mosquitto_sub", port, "-i", client_id, "-c", "-q", "1", "-t", "cli/durable", "-C", "3", "-W", str(int(WAIT)))
    assert got.stdout.split() == ["m0", "m1", "m2"], got.stderr


@mosquitto
def test_mosquitto_pub_reaches_a_pika_consumer(mqtt_broker):
    port = mqtt_broker.mqtt_port
    conn = mqtt_broker.connect()
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, "amq.topic", routing_key="cli.#")
        done = cli("mosquitto_pub", port, "-V", "mqttv5", "-t", "cli/amqp/x", "-m", "crossed", "-q", "1", "-D", "publish", "user-property", "k", "v")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            method, header, body = ch.basic_get(q, auto_ack=True)
            if method:
                assert (method.routing_key, body, header.headers["k"]) == ("cli.amqp.x", b"crossed", "v")
                return
            time.sleep(0.02)
        raise AssertionError("no message in the AMQP queue")
    finally:
        conn.close()
