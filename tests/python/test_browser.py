"""MQTT and STOMP over WebSocket from a real browser: headless Chromium (Debian's) driven by
Playwright, on a page that loads MQTT.js and stomp.js from npm, served from this machine.

The browser publishes over MQTT/WebSocket and an AMQP consumer (pika) receives the message; an
AMQP publisher's message reaches the browser over STOMP/WebSocket. `tests/run` installs
Chromium, Playwright and the two npm packages (into `.cache/browser`); without them, these tests
are skipped unless ROSETTA_REQUIRE_BROWSER=1, which `tests/run` sets.
"""

import http.server
import os
import shutil
import threading
import time
import uuid

import pytest

from conftest import MQTT_CONFIG, REPO, STOMP_CONFIG

MODULES = REPO / ".cache" / "browser" / "node_modules"
SCRIPTS = {
    "/mqtt.min.js": MODULES / "mqtt" / "dist" / "mqtt.min.js",
    "/stomp.umd.min.js": MODULES / "@stomp" / "stompjs" / "bundles" / "stomp.umd.min.js",
}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 15_000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rosetta websocket</title>
<script src="/mqtt.min.js"></script>
<script src="/stomp.umd.min.js"></script>
</head><body>
<script>
window.results = {
  mqttPublished: false, stompMessages: [], stompMessageTypes: [], stompProtocol: null, errors: [],
};

// MQTT over WebSocket: connect, publish once (QoS 1), note the PUBACK.
window.publishMqtt = (url, topic, text) => {
  const client = mqtt.connect(url, {
    username: "guest", password: "guest", protocolVersion: 4, reconnectPeriod: 0,
  });
  client.on("error", (e) => window.results.errors.push("mqtt: " + e.message));
  client.on("connect", () => {
    client.publish(topic, text, { qos: 1 }, (err) => {
      if (err) { window.results.errors.push("mqtt publish: " + err.message); return; }
      window.results.mqttPublished = true;
      client.end();
    });
  });
};

// STOMP over WebSocket: subscribe to an existing queue and keep what arrives, and what kind of
// WebSocket message (text arrives as a string) carried the frames.
window.subscribeStomp = (url, destination) => {
  const client = new StompJs.Client({
    webSocketFactory: () => {
      const ws = new WebSocket(url, ["v12.stomp", "v11.stomp", "v10.stomp"]);
      ws.addEventListener("open", () => { window.results.stompProtocol = ws.protocol; });
      ws.addEventListener("message", (e) => window.results.stompMessageTypes.push(typeof e.data));
      return ws;
    },
    connectHeaders: { login: "guest", passcode: "guest", host: "/" },
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
  });
  client.onStompError = (frame) => window.results.errors.push("stomp: " + frame.headers.message);
  client.onWebSocketError = () => window.results.errors.push("stomp: WebSocket error");
  client.onConnect = () => {
    client.subscribe(destination, (message) => {
      window.results.stompMessages.push(message.body);
    });
  };
  client.activate();
};
</script>
</body></html>
"""


def browser_dependencies():
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed"
    if not os.path.exists(CHROMIUM):
        return "chromium is not installed"
    missing = [str(path) for path in SCRIPTS.values() if not path.exists()]
    if missing:
        return f"npm packages not installed: {missing}"
    return None


@pytest.fixture(scope="module")
def browser_page_server():
    """Serves the page and the two scripts from node_modules on a loopback port."""
    reason = browser_dependencies()
    if reason:
        if os.environ.get("ROSETTA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test dependencies missing: {reason}")
        pytest.skip(reason)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/":
                body, kind = PAGE.encode(), "text/html; charset=utf-8"
            elif self.path in SCRIPTS:
                body, kind = SCRIPTS[self.path].read_bytes(), "text/javascript"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(browser_page_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            # As root (CI) Chromium needs --no-sandbox; the rest keeps it off the network,
            # which this machine does not have anyway.
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            console = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(browser_page_server)
            page.wait_for_function("typeof mqtt !== 'undefined' && typeof StompJs !== 'undefined'")
            yield page
            print("---- browser console ----\n" + "\n".join(console))
        finally:
            browser.close()


@pytest.fixture
def ws_broker(make_broker):
    return make_broker(MQTT_CONFIG + STOMP_CONFIG)


def wait_for(condition, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_browser_publishes_over_mqtt_websocket_to_an_amqp_consumer(ws_broker, page):
    name = f"browser-out-{uuid.uuid4().hex[:8]}"
    conn = ws_broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(name, exclusive=True)
        ch.queue_bind(name, "amq.topic", routing_key=f"{name}.readings")
        url = f"ws://127.0.0.1:{ws_broker.port('mqtt-ws')}/ws"
        page.evaluate(
            "([url, topic, text]) => publishMqtt(url, topic, text)",
            [url, f"{name}/readings", "hello from chromium"],
        )
        page.wait_for_function(
            "window.results.mqttPublished || window.results.errors.length > 0", timeout=WAIT_MS
        )
        assert page.evaluate("window.results.errors") == []

        def get():
            method, _, body = ch.basic_get(name, auto_ack=True)
            return body if method else None

        assert wait_for(get, "the MQTT message in the AMQP queue") == b"hello from chromium"
    finally:
        conn.close()


def test_amqp_publisher_reaches_the_browser_over_stomp_websocket(ws_broker, page):
    name = f"browser-in-{uuid.uuid4().hex[:8]}"
    conn = ws_broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(name)
        ch.basic_publish("", name, "hello, browser".encode())
        url = f"ws://127.0.0.1:{ws_broker.port('stomp-ws')}/ws"
        page.evaluate(
            "([url, destination]) => subscribeStomp(url, destination)",
            [url, f"/amq/queue/{name}"],
        )
        page.wait_for_function(
            "window.results.stompMessages.length > 0 || window.results.errors.length > 0",
            timeout=WAIT_MS,
        )
        assert page.evaluate("window.results.errors") == []
        assert page.evaluate("window.results.stompMessages") == ["hello, browser"]
        assert page.evaluate("window.results.stompProtocol") == "v12.stomp"
        # CONNECTED and MESSAGE, in text WebSocket messages as stomp.js expects.
        types = page.evaluate("window.results.stompMessageTypes")
        assert types and set(types) == {"string"}, types
        # Published after the browser subscribed: delivered as it happens.
        ch.basic_publish("", name, "and once more".encode())
        page.wait_for_function("window.results.stompMessages.length > 1", timeout=WAIT_MS)
        assert page.evaluate("window.results.stompMessages[1]") == "and once more"
    finally:
        conn.close()
