"""Fixtures for the Python client tests: a real `rosetta` broker per test.

The broker is started like the Rust test kit does it: a temporary directory holding the config
and the data, every listener on 127.0.0.1 port 0, and the chosen ports read back from the
broker's "listener opened" log lines. Nothing is built here: `tests/run` (or
`cargo build -p rosetta`) builds the binary first.
"""

import os
import pathlib
import re
import signal
import subprocess
import threading
import time
import tomllib

import pika
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
START_DEADLINE = 20.0
STOP_DEADLINE = 15.0

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*(\x07|\x1b\\)|\x1b.")
PROTOCOL = re.compile(r'(?:^|[\s,{(])"?protocol"?[=:]\s*"?([A-Za-z0-9_-]+)"?')
ADDR = re.compile(r'(?:^|[\s,{(])"?addr(?:ess)?"?[=:]\s*"?(\[[0-9a-fA-F:.]+\]:\d+|[0-9.]+:\d+)"?')


def broker_binary() -> pathlib.Path:
    if os.environ.get("ROSETTA_BIN"):
        return pathlib.Path(os.environ["ROSETTA_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "rosetta"


def parse_listener(line: str):
    """Returns (protocol, host, port) for a "listener opened" log line, else None."""
    line = ANSI.sub("", line)
    if "listener opened" not in line:
        return None
    protocol, addr = PROTOCOL.search(line), ADDR.search(line)
    if not protocol or not addr:
        return None
    host, _, port = addr.group(1).rpartition(":")
    return protocol.group(1).lower(), host.strip("[]"), int(port)


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(data_dir: pathlib.Path, extra: str = "") -> str:
    """The kit's default config (data in `data_dir`, AMQP on 127.0.0.1:0, other listeners off)
    with `extra` TOML merged in by section: a `key = value` replaces the same key of its section,
    so `[mqtt]\nenabled = true` turns a listener on. `[[tables]]` are appended as they are."""
    sections = {
        "storage": {"path": toml_string(str(data_dir))},
        "amqp": {"listen": '"127.0.0.1:0"'},
        # The WebSocket listeners open with their section: ephemeral ports, not 15675/15674.
        "mqtt": {"enabled": "false", "ws_listen": '"127.0.0.1:0"'},
        "stomp": {"enabled": "false", "ws_listen": '"127.0.0.1:0"'},
        "http": {"enabled": "false"},
    }
    verbatim = []
    current, in_verbatim = None, False
    for raw in extra.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            in_verbatim = True
            verbatim.append(line)
        elif line.startswith("["):
            in_verbatim = False
            current = line.strip("[] ")
            sections.setdefault(current, {})
        elif in_verbatim:
            verbatim.append(line)
        elif "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            sections.setdefault(current or "", {})[key] = value
    out = [f"{k} = {v}" for k, v in sections.pop("", {}).items()]
    for name, keys in sections.items():
        out.append(f"\n[{name}]")
        out.extend(f"{k} = {v}" for k, v in keys.items())
    if verbatim:
        out.append("")
        out.extend(verbatim)
    return "\n".join(out) + "\n"


class Broker:
    """The real broker process on ephemeral ports with its own data directory."""

    def __init__(self, directory: pathlib.Path, extra_config: str = ""):
        self.dir = directory
        self.data_dir = directory / "data"
        self.config_path = directory / "broker.toml"
        text = render_config(self.data_dir, extra_config)
        self.config_path.write_text(text)
        config = tomllib.loads(text)
        # Wait for every listener the config leaves enabled.
        self.expected = [
            protocol
            for protocol in ("amqp", "mqtt", "stomp", "http")
            if protocol in config and config[protocol].get("enabled", True)
        ]
        # A TLS listener logs as "amqps", "mqtts", "stomps" or "https".
        self.expected += [
            protocol + "s"
            for protocol in ("amqp", "mqtt", "stomp", "http")
            if protocol in self.expected and "tls_listen" in config[protocol]
        ]
        # MQTT and STOMP open their WebSocket listeners with them ("mqtt-ws", "stomp-ws"; over
        # TLS "mqtt-wss", "stomp-wss"), unless `ws_listen = false`.
        for protocol in ("mqtt", "stomp"):
            if protocol in self.expected:
                if config[protocol].get("ws_listen", True) is not False:
                    self.expected.append(protocol + "-ws")
                if "ws_tls_listen" in config[protocol]:
                    self.expected.append(protocol + "-wss")
        self.process = None
        self.lines = []
        self.listeners = {}
        self._lock = threading.Lock()
        self._found = threading.Condition(self._lock)
        self.start()

    def start(self):
        binary = broker_binary()
        if not binary.exists():
            raise RuntimeError(f"{binary} not found: build it with `cargo build -p rosetta`")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.listeners = {}
        self.process = subprocess.Popen(
            [str(binary), "--config", str(self.config_path)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + START_DEADLINE
        with self._found:
            while not all(p in self.listeners for p in self.expected):
                if self.process.poll() is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._found.wait(min(left, 0.1))
        if not all(p in self.listeners for p in self.expected):
            status = self.process.poll()
            self.kill9()
            raise RuntimeError(
                f"broker did not log `listener opened` for {self.expected} "
                f"(found {sorted(self.listeners)}, exit status {status})\n{self.log()}"
            )

    def _read(self, process):
        for raw in process.stdout:
            line = ANSI.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._found:
                self.lines.append(line)
                parsed = parse_listener(line)
                if parsed and process is self.process:
                    protocol, host, port = parsed
                    self.listeners.setdefault(protocol, (host, port))
                self._found.notify_all()

    @property
    def amqp_port(self) -> int:
        return self.listeners["amqp"][1]

    @property
    def stomp_port(self) -> int:
        """The STOMP listener's port (enable it with STOMP_CONFIG or `[stomp] enabled = true`)."""
        return self.listeners["stomp"][1]

    @property
    def mqtt_port(self) -> int:
        """The MQTT listener's port (enable it with MQTT_CONFIG or `[mqtt] enabled = true`)."""
        return self.listeners["mqtt"][1]

    def port(self, listener: str) -> int:
        """The port of a listener as logged: "amqp", "amqps", "mqtts", ..."""
        return self.listeners[listener][1]

    def params(self, user="guest", password="guest", **kwargs) -> pika.ConnectionParameters:
        kwargs.setdefault("connection_attempts", 1)
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("blocked_connection_timeout", 30)
        return pika.ConnectionParameters(
            host="127.0.0.1",
            port=self.amqp_port,
            virtual_host="/",
            credentials=pika.PlainCredentials(user, password),
            **kwargs,
        )

    def connect(self, **kwargs) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**kwargs))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Whether `text` shows up in the log within `timeout` seconds: lines reach the log
        through a reader thread, so a line the broker has written may not be there yet."""
        deadline = time.monotonic() + timeout
        with self._found:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._found.wait(left)
            return True

    def kill9(self):
        """SIGKILL, as in a crash, and wait for the process to go."""
        if self.process and self.process.poll() is None:
            self.process.kill()
        if self.process:
            self.process.wait(timeout=STOP_DEADLINE)

    def stop(self) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"broker ignored SIGTERM for {STOP_DEADLINE}s\n{self.log()}")

    def restart(self):
        """Starts again on the same config and data directory (new port)."""
        if self.process and self.process.poll() is None:
            self.stop()
        with self._lock:
            self.lines.append("---- broker restarted ----")
        self.start()


@pytest.fixture
def make_broker(tmp_path):
    """Starts brokers with extra TOML merged into the default config (see `render_config`).
    All of them are killed afterwards."""
    started = []

    def make(extra_config: str = "") -> Broker:
        directory = tmp_path / f"broker{len(started)}"
        directory.mkdir()
        instance = Broker(directory, extra_config)
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.kill9()
        # Shown by pytest only when the test failed.
        print(f"---- broker log ({instance.dir}) ----\n{instance.log()}\n---- end of broker log ----")


@pytest.fixture
def broker(make_broker):
    return make_broker()


# The STOMP listener on an ephemeral loopback port; more `[stomp]` keys may follow it.
STOMP_CONFIG = '[stomp]\nenabled = true\nlisten = "127.0.0.1:0"\n'


@pytest.fixture
def stomp_broker(make_broker):
    """A broker with the STOMP listener on too."""
    return make_broker(STOMP_CONFIG)


@pytest.fixture
def connection(broker):
    conn = broker.connect()
    yield conn
    if conn.is_open:
        try:
            conn.close()
        except Exception:  # the broker may already be gone
            pass


@pytest.fixture
def channel(connection):
    return connection.channel()


# The MQTT listener on an ephemeral loopback port; more `[mqtt]` keys may follow it.
MQTT_CONFIG = '[mqtt]\nenabled = true\nlisten = "127.0.0.1:0"\n'


@pytest.fixture
def mqtt_broker(make_broker):
    """A broker with the MQTT listener on too."""
    return make_broker(MQTT_CONFIG)


@pytest.fixture
def mqtt_stomp_broker(make_broker):
    """A broker with both the MQTT and the STOMP listeners on, for the crossings between them."""
    return make_broker(MQTT_CONFIG + STOMP_CONFIG)
