//! Spawning the real broker binary and finding its ports.

use crate::config::ConfigFile;
use crate::logscan::{parse_listener, strip_ansi};
use rustix::process::{kill_process, Pid, Signal};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a broker may take to open its listeners.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a broker may take to exit after SIGTERM, and the log pipes to drain after an exit.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// The workspace root: the parent of this package's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The broker binary: `$ROSETTA_BIN` if set, else `<target dir>/debug/rosetta` where the target
/// dir is `$CARGO_TARGET_DIR` (relative paths taken from the workspace root) or `<root>/target`.
pub fn broker_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ROSETTA_BIN") {
        return PathBuf::from(bin);
    }
    let root = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        None => root.join("target"),
    };
    target
        .join("debug")
        .join(format!("rosetta{}", std::env::consts::EXE_SUFFIX))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lines read from one run of the broker (stdout and stderr interleaved as they arrive).
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    lines: Vec<String>,
    /// Pipes that reached end of file (2 once the process and its pipes are gone).
    closed_pipes: usize,
}

impl Output {
    fn push(&self, line: String) {
        lock(&self.state).lines.push(line);
        self.changed.notify_all();
    }

    fn close_pipe(&self) {
        lock(&self.state).closed_pipes += 1;
        self.changed.notify_all();
    }

    fn text(&self) -> String {
        let state = lock(&self.state);
        let mut text = state.lines.join("\n");
        text.push('\n');
        text
    }
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    output: Arc<Output>,
    echo: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                    if echo {
                        eprintln!("[rosetta] {line}");
                    }
                    output.push(line);
                }
            }
        }
        output.close_pipe();
    })
}

/// One running (or stopped) broker process and the state it keeps across restarts.
struct Run {
    child: Child,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
}

/// Configures a broker before starting it.
#[derive(Debug)]
pub struct BrokerBuilder {
    binary: Option<PathBuf>,
    extra: Vec<String>,
    expected: Vec<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerBuilder {
    pub fn new() -> Self {
        Self {
            binary: None,
            extra: Vec::new(),
            expected: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Runs this program instead of [`broker_binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Merges TOML into the configuration, by section (see [`ConfigFile::merge`]).
    pub fn config(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_string());
        self
    }

    /// Also waits for this protocol's listener before `start` returns. Listeners whose config
    /// section is present and not `enabled = false` are waited for anyway.
    pub fn wait_for_listener(mut self, protocol: &str) -> Self {
        self.expected.push(protocol.to_ascii_lowercase());
        self
    }

    /// Extra command-line arguments after `--config <file>`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// An environment variable for the broker process (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Enables the HTTP endpoint (metrics, health, management API) on an ephemeral loopback
    /// port, found like the others in the `listener opened protocol=http` line.
    pub fn with_http(self) -> Self {
        self.config("[http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n")
    }

    /// Writes the configuration into a new temporary directory and starts the broker.
    /// Panics (with the broker's log) if it does not open its listeners within 20 s.
    pub fn start(self) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("rosetta-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let data_dir = dir.path().join("data");
        let mut config = ConfigFile::defaults(&data_dir);
        for extra in &self.extra {
            config.merge(extra);
        }
        let mut expected = self.expected;
        for protocol in ["amqp", "mqtt", "stomp", "http"] {
            if config.listener_enabled(protocol) && !expected.iter().any(|p| p == protocol) {
                expected.push(protocol.to_string());
            }
            // A TLS listener logs as `amqps`, `mqtts`, `stomps`, `https`.
            let tls = format!("{protocol}s");
            if config.listener_enabled(protocol)
                && config.get(protocol, "tls_listen").is_some()
                && !expected.contains(&tls)
            {
                expected.push(tls);
            }
        }
        // MQTT and STOMP open their WebSocket listeners with them (`mqtt-ws`, and `mqtt-wss`
        // with `ws_tls_listen`), unless `ws_listen = false`.
        for protocol in ["mqtt", "stomp"] {
            if !config.listener_enabled(protocol) {
                continue;
            }
            for (key, name) in [("ws_listen", "ws"), ("ws_tls_listen", "wss")] {
                let name = format!("{protocol}-{name}");
                let on = match config.get(protocol, key) {
                    Some(value) => value != "false",
                    None => key == "ws_listen",
                };
                if on && !expected.contains(&name) {
                    expected.push(name);
                }
            }
        }
        let config_path = dir.path().join("broker.toml");
        std::fs::write(&config_path, config.render())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let mut broker = Broker {
            binary: self.binary.unwrap_or_else(broker_binary),
            dir,
            config_path,
            data_dir,
            expected,
            args: self.args,
            envs: self.envs,
            run: None,
            listeners: HashMap::new(),
            history: Vec::new(),
        };
        broker.spawn();
        broker
    }
}

/// A real `rosetta` process on ephemeral loopback ports with its own temporary data directory.
///
/// Dropping it kills the process (SIGKILL) and removes the directory; if the current thread is
/// panicking, the broker's log is printed first so the failing test shows it.
pub struct Broker {
    binary: PathBuf,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    data_dir: PathBuf,
    expected: Vec<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    run: Option<Run>,
    listeners: HashMap<String, SocketAddr>,
    /// Logs of earlier runs (before restarts).
    history: Vec<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config_path)
            .field("listeners", &self.listeners)
            .field("running", &self.run.is_some())
            .finish()
    }
}

impl Broker {
    /// Starts a broker with the kit's default configuration.
    pub fn start() -> Broker {
        BrokerBuilder::new().start()
    }

    /// Starts a broker with extra TOML merged into the default configuration.
    pub fn start_with(config_toml_extra: &str) -> Broker {
        BrokerBuilder::new().config(config_toml_extra).start()
    }

    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::new()
    }

    fn spawn(&mut self) {
        let binary = self.binary.clone();
        assert!(
            binary.exists(),
            "broker binary {} not found: build it first with `cargo build -p rosetta`",
            binary.display()
        );
        let echo = std::env::var_os("ROSETTA_TEST_ECHO").is_some_and(|v| !v.is_empty() && v != "0");
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&self.config_path)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let output = Arc::new(Output::default());
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(spawn_reader(stdout, output.clone(), echo));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(spawn_reader(stderr, output.clone(), echo));
        }
        self.run = Some(Run {
            child,
            output,
            readers,
        });
        self.listeners.clear();
        self.await_listeners();
    }

    /// Blocks until every expected listener has been logged; panics with the log otherwise.
    fn await_listeners(&mut self) {
        let Some(run) = self.run.as_mut() else {
            panic!("broker is not running");
        };
        let end = Instant::now() + START_DEADLINE;
        let mut scanned = 0;
        let mut found: HashMap<String, SocketAddr> = HashMap::new();
        let failure = loop {
            {
                let state = lock(&run.output.state);
                for line in &state.lines[scanned..] {
                    if let Some((protocol, addr)) = parse_listener(line) {
                        found.entry(protocol).or_insert(addr);
                    }
                }
                scanned = state.lines.len();
            }
            if self.expected.iter().all(|p| found.contains_key(p)) {
                break None;
            }
            match run.child.try_wait() {
                Ok(Some(status)) => {
                    // Let the readers drain what the process wrote before it died.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    let mut state = lock(&run.output.state);
                    while state.closed_pipes < run.readers.len() && Instant::now() < deadline {
                        state = run
                            .output
                            .changed
                            .wait_timeout(state, Duration::from_millis(50))
                            .map(|(s, _)| s)
                            .unwrap_or_else(|p| p.into_inner().0);
                    }
                    break Some(format!(
                        "broker exited with {status} before opening its listeners"
                    ));
                }
                Ok(None) => {}
                Err(e) => break Some(format!("cannot poll the broker process: {e}")),
            }
            if Instant::now() >= end {
                break Some(format!(
                    "broker did not log `listener opened` for {:?} within {START_DEADLINE:?} (found {found:?})",
                    self.expected
                ));
            }
            let state = lock(&run.output.state);
            if state.lines.len() == scanned {
                let _unused = run
                    .output
                    .changed
                    .wait_timeout(state, Duration::from_millis(100));
            }
        };
        if let Some(reason) = failure {
            let log = run.output.text();
            let _ = run.child.kill();
            let _ = run.child.wait();
            self.run = None;
            panic!(
                "{reason}\nconfig ({}):\n{}\nbroker log:\n{log}",
                self.config_path.display(),
                std::fs::read_to_string(&self.config_path).unwrap_or_default()
            );
        }
        self.listeners = found;
    }

    /// The address a protocol's listener opened on (as logged), if any.
    pub fn addr(&self, protocol: &str) -> Option<SocketAddr> {
        self.listeners.get(&protocol.to_ascii_lowercase()).copied()
    }

    /// Every listener the current run logged, by protocol.
    pub fn listeners(&self) -> &HashMap<String, SocketAddr> {
        &self.listeners
    }

    /// The HTTP endpoint's address (see [`BrokerBuilder::with_http`]).
    pub fn http_addr(&self) -> SocketAddr {
        self.addr("http")
            .expect("the broker has no HTTP listener (BrokerBuilder::with_http)")
    }

    /// The AMQP listener's address.
    pub fn amqp_addr(&self) -> SocketAddr {
        self.addr("amqp").expect("the broker has no AMQP listener")
    }

    pub fn amqp_port(&self) -> u16 {
        self.amqp_addr().port()
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn amqp_url(&self) -> String {
        let addr = self.amqp_addr();
        format!("amqp://guest:guest@{}:{}/%2f", addr.ip(), addr.port())
    }

    /// The STOMP listener's address (enable it with `[stomp] enabled = true`).
    pub fn stomp_addr(&self) -> SocketAddr {
        self.addr("stomp")
            .expect("the broker has no STOMP listener")
    }

    /// The store's directory (`<tempdir>/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The configuration file the broker runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory holding the config and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the current run.
    pub fn pid(&self) -> Option<u32> {
        self.run.as_ref().map(|run| run.child.id())
    }

    /// Whether the current run's process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.run.as_mut() {
            Some(run) => matches!(run.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The broker's log, all runs so far, ANSI escapes removed.
    pub fn log(&self) -> String {
        let mut text = self.history.join("");
        if let Some(run) = &self.run {
            text.push_str(&run.output.text());
        }
        text
    }

    /// Whether any run's log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.history.iter().any(|h| h.contains(needle))
            || self.run.as_ref().is_some_and(|run| {
                lock(&run.output.state)
                    .lines
                    .iter()
                    .any(|line| line.contains(needle))
            })
    }

    /// Waits (up to `deadline`) for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> bool {
        crate::wait_until(deadline, || self.log_contains(needle))
    }

    fn signal(&self, signal: Signal) {
        if let Some(run) = &self.run {
            let pid = i32::try_from(run.child.id()).ok().and_then(Pid::from_raw);
            if let Some(pid) = pid {
                // ESRCH (already exited, not yet reaped) is fine: the wait below collects it.
                let _ = kill_process(pid, signal);
            }
        }
    }

    /// Waits for the process to exit and for its log pipes to drain; `None` on timeout.
    fn reap(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let run = self.run.as_mut()?;
        let end = Instant::now() + deadline;
        let status = loop {
            match run.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => return None,
                Err(e) => panic!("cannot wait for the broker: {e}"),
            }
        };
        // The pipes close when the process is gone (unless it left children holding them).
        let mut state = lock(&run.output.state);
        while state.closed_pipes < run.readers.len() && Instant::now() < end {
            state = run
                .output
                .changed
                .wait_timeout(state, Duration::from_millis(50))
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let drained = state.closed_pipes >= run.readers.len();
        drop(state);
        let mut run = self.run.take()?;
        if drained {
            for reader in run.readers.drain(..) {
                let _ = reader.join();
            }
        }
        self.history.push(run.output.text());
        self.history
            .push(format!("---- broker exited: {status} ----\n"));
        Some(status)
    }

    /// Kills the broker with SIGKILL and waits for it to exit (a crash, as far as the store knows).
    pub fn kill9(&mut self) {
        if self.run.is_none() {
            return;
        }
        self.signal(Signal::KILL);
        if self.reap(STOP_DEADLINE).is_none() {
            panic!("broker did not exit after SIGKILL\n{}", self.log());
        }
    }

    /// Sends SIGHUP: the broker reloads its TLS certificates.
    pub fn hangup(&self) {
        self.signal(Signal::HUP);
    }

    /// Sends SIGTERM and returns at once, so a test can watch the shutdown as it happens;
    /// [`Broker::wait_for_exit`] collects the process.
    pub fn terminate(&self) {
        self.signal(Signal::TERM);
    }

    /// Waits for the process to exit and returns its status; `None` if it still runs after
    /// `deadline`.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        self.reap(deadline)
    }

    /// Sends SIGTERM and waits for a graceful exit; returns the exit status.
    /// Panics (after a SIGKILL) if the broker is still running after 15 s.
    pub fn stop(&mut self) -> ExitStatus {
        assert!(self.run.is_some(), "broker is not running");
        self.signal(Signal::TERM);
        match self.reap(STOP_DEADLINE) {
            Some(status) => status,
            None => {
                self.signal(Signal::KILL);
                let _ = self.reap(STOP_DEADLINE);
                panic!(
                    "broker did not exit within {STOP_DEADLINE:?} of SIGTERM\n{}",
                    self.log()
                );
            }
        }
    }

    /// Starts the broker again on the same configuration and data directory (new ports).
    /// A broker that is still running is stopped gracefully first.
    pub fn restart(&mut self) {
        if self.run.is_some() {
            self.stop();
        }
        self.history
            .push("---- broker restarted ----\n".to_string());
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- rosetta broker log ({}) ----\n{}---- end of broker log ----",
                self.config_path.display(),
                self.log()
            );
        }
        if let Some(run) = self.run.as_mut() {
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
    }
}

type SharedMap = Mutex<HashMap<String, Weak<Broker>>>;

/// A broker shared by the tests that ask for the same `key` (e.g. a module name) while any of
/// them holds it; the last holder's drop stops it, so no process outlives the test binary.
/// Tests sharing a broker must use their own queue and exchange names.
pub fn shared_broker(key: &str) -> Arc<Broker> {
    static SHARED: OnceLock<SharedMap> = OnceLock::new();
    let map = SHARED.get_or_init(Default::default);
    let mut map = lock(map);
    if let Some(broker) = map.get(key).and_then(Weak::upgrade) {
        return broker;
    }
    let broker = Arc::new(Broker::start());
    map.insert(key.to_string(), Arc::downgrade(&broker));
    broker
}
