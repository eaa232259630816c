"""pika, paho-mqtt and stomp.py over TLS against the real broker, with a certificate authority
and certificates the test makes (trustme), and client certificates with `verify_peer`.
"""

import queue
import ssl
import threading
import types
import uuid

import paho.mqtt.client as mqtt
import pika
import pika.exceptions
import pytest
import stomp
import trustme

from conftest import MQTT_CONFIG, STOMP_CONFIG, toml_string

WAIT = 10.0  # seconds to wait for something that should happen
TLS_LISTEN = 'tls_listen = "127.0.0.1:0"\n'


def name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pki(tmp_path):
    """A certificate authority, and the broker's certificate for 127.0.0.1 and localhost, in files."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = tmp_path / "tls"
    files.mkdir()
    paths = types.SimpleNamespace(
        ca=ca, cert=files / "server.pem", key=files / "server.key", ca_file=files / "ca.pem"
    )
    with open(paths.cert, "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    server.private_key_pem.write_to_path(str(paths.key))
    ca.cert_pem.write_to_path(str(paths.ca_file))
    return paths


def tls_config(pki, extra_tls: str = "") -> str:
    """Every client listener on, plain and TLS, with the broker certificate of `pki`."""
    return (
        f"[tls]\ncert_file = {toml_string(str(pki.cert))}\nkey_file = {toml_string(str(pki.key))}\n"
        f"ca_file = {toml_string(str(pki.ca_file))}\n{extra_tls}"
        f"[amqp]\n{TLS_LISTEN}" + MQTT_CONFIG + TLS_LISTEN + STOMP_CONFIG + TLS_LISTEN
    )


def client_context(pki, identity=None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    pki.ca.configure_trust(context)
    if identity is not None:
        identity.configure_cert(context)
    return context


def pika_params(broker, context) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=broker.port("amqps"),
        credentials=pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, "localhost"),
        connection_attempts=1,
        socket_timeout=WAIT,
    )


def test_pika_publishes_and_gets_over_tls(make_broker, pki):
    broker = make_broker(tls_config(pki))
    connection = pika.BlockingConnection(pika_params(broker, client_context(pki)))
    try:
        channel = connection.channel()
        q = name("tls")
        channel.queue_declare(q)
        channel.basic_publish("", q, b"over tls")
        method, _props, body = None, None, None
        for _ in range(50):
            method, _props, body = channel.basic_get(q, auto_ack=True)
            if method is not None:
                break
            connection.sleep(0.1)
        assert body == b"over tls"
    finally:
        connection.close()
    # The plain listener still serves.
    plain = broker.connect()
    plain.close()


def test_pika_with_a_client_certificate_when_the_broker_requires_one(make_broker, pki):
    broker = make_broker(tls_config(pki, "verify_peer = true\nfail_if_no_peer_cert = true\n"))
    identity = pki.ca.issue_cert("app-1@example.com")
    connection = pika.BlockingConnection(pika_params(broker, client_context(pki, identity)))
    assert connection.is_open
    connection.close()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(broker, client_context(pki)))
    # A certificate from another authority is refused too.
    stranger = trustme.CA().issue_cert("intruder@example.com")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(broker, client_context(pki, stranger)))


def test_paho_mqtt_subscribes_and_publishes_over_tls(make_broker, pki):
    broker = make_broker(tls_config(pki))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name("tls"), protocol=mqtt.MQTTv311)
    client.username_pw_set("guest", "guest")
    client.tls_set(ca_certs=str(pki.ca_file))
    connacks, subacks, messages = queue.Queue(), queue.Queue(), queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: connacks.put(rc)
    client.on_subscribe = lambda c, u, mid, codes, props: subacks.put(codes)
    client.on_message = lambda c, u, m: messages.put(m)
    client.connect("127.0.0.1", broker.port("mqtts"), keepalive=30)
    client.loop_start()
    try:
        assert connacks.get(timeout=WAIT) == 0
        client.subscribe("tls/paho", qos=1)
        subacks.get(timeout=WAIT)
        client.publish("tls/paho", b"over tls", qos=1)
        message = messages.get(timeout=WAIT)
        assert (message.topic, message.payload) == ("tls/paho", b"over tls")
    finally:
        client.disconnect()
        client.loop_stop()


class Collector(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.connected = threading.Event()

    def on_connected(self, frame):
        self.connected.set()

    def on_message(self, frame):
        self.messages.put(frame)


def test_stomp_py_sends_and_receives_over_tls(make_broker, pki):
    broker = make_broker(tls_config(pki))
    host = ("127.0.0.1", broker.port("stomps"))
    connection = stomp.Connection12([host], heartbeats=(0, 0))
    connection.set_ssl(for_hosts=[host], ca_certs=str(pki.ca_file))
    collector = Collector()
    connection.set_listener("collector", collector)
    connection.connect("guest", "guest", wait=True)
    try:
        assert collector.connected.wait(WAIT)
        destination = "/queue/" + name("tls")
        connection.subscribe(destination, id="1", ack="auto")
        connection.send(destination, "over tls")
        frame = collector.messages.get(timeout=WAIT)
        assert frame.body == "over tls"
    finally:
        connection.disconnect()


# Users for the certificate logins: `app-1` is the CN of the client certificates below, and
# there is no guest, so a client let in without credentials was let in by its certificate.
CERT_USERS = '[[users]]\nname = "app-1"\npassword = "app-1-secret"\n'


def identity_files(tmp_path, identity):
    """The client certificate and key of `identity`, in files, as paho-mqtt takes them."""
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    with open(cert, "wb") as f:
        for blob in identity.cert_chain_pems:
            f.write(blob.bytes())
    identity.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def test_pika_logs_in_with_external_credentials_as_the_certificate_cn(make_broker, pki):
    broker = make_broker(
        tls_config(pki, "verify_peer = true\n") + "[amqp]\nssl_cert_login = true\n" + CERT_USERS
    )
    identity = pki.ca.issue_cert("app-1.example.com", common_name="app-1")
    params = pika_params(broker, client_context(pki, identity))
    params.credentials = pika.credentials.ExternalCredentials()
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        q = name("external")
        channel.queue_declare(q)
        channel.basic_publish("", q, b"by certificate")
        method = None
        for _ in range(50):
            method, _props, body = channel.basic_get(q, auto_ack=True)
            if method is not None:
                break
            connection.sleep(0.1)
        assert body == b"by certificate"
    finally:
        connection.close()
    assert broker.wait_for_log('user=app-1 vhost="/" protocol="amqp"'), broker.log()
    # Without a certificate EXTERNAL is not offered, and pika gives up.
    params = pika_params(broker, client_context(pki))
    params.credentials = pika.credentials.ExternalCredentials()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)


def test_paho_mqtt_logs_in_by_certificate_with_ssl_cert_login(make_broker, pki, tmp_path):
    broker = make_broker(
        tls_config(pki, "verify_peer = true\n") + "[mqtt]\nssl_cert_login = true\n" + CERT_USERS
    )
    identity = pki.ca.issue_cert("app-1.example.com", common_name="app-1")
    certfile, keyfile = identity_files(tmp_path, identity)

    def connect(with_certificate: bool):
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=name("cert"), protocol=mqtt.MQTTv311
        )
        if with_certificate:
            client.tls_set(ca_certs=str(pki.ca_file), certfile=certfile, keyfile=keyfile)
        else:
            client.tls_set(ca_certs=str(pki.ca_file))
        connacks, messages = queue.Queue(), queue.Queue()
        client.on_connect = lambda c, u, flags, rc, props: connacks.put(rc)
        client.on_message = lambda c, u, m: messages.put(m)
        client.connect("127.0.0.1", broker.port("mqtts"), keepalive=30)
        client.loop_start()
        return client, connacks.get(timeout=WAIT), messages

    client, rc, messages = connect(with_certificate=True)
    try:
        assert rc == 0
        client.subscribe("tls/cert", qos=1)
        client.publish("tls/cert", b"by certificate", qos=1)
        message = messages.get(timeout=WAIT)
        assert message.payload == b"by certificate"
    finally:
        client.disconnect()
        client.loop_stop()
    assert broker.wait_for_log('user="app-1" protocol="mqtt"'), broker.log()
    # No certificate, no credentials: refused (there is no guest to fall back on).
    client, rc, _ = connect(with_certificate=False)
    client.loop_stop()
    assert rc != 0
