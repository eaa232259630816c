//! State every soak task shares: where the broker listens right now (ports change with each
//! restart, and nothing listens while it is down), which phase the run is in, and the ledger.

use crate::ledger::{Counts, Ledger};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// How long any single step (connect, confirm, receipt, frame) may take before the client
/// gives up on the connection and starts over. Generous: a restart replays the store.
pub const STEP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub amqp: SocketAddr,
    pub mqtt: SocketAddr,
    pub stomp: SocketAddr,
}

pub struct World {
    pub seed: u64,
    addrs: RwLock<Option<Addrs>>,
    /// Publishers run while this is set.
    publishing: AtomicBool,
    /// Clients drop their connections at random while this is set; during the final drain they
    /// stay connected so the backlog empties quickly.
    chaos: AtomicBool,
    /// Every task ends once this is set.
    stop: AtomicBool,
    /// Broker kills so far: a client compares it before and after a connection to tell a
    /// broker that was stuck from one that was killed while the client waited.
    kills: AtomicU64,
    pub ledger: Ledger,
    /// Reconnections per client kind.
    pub reconnects: Counts,
    /// Why connections ended, per client kind (broker killed, confirm timed out, ...).
    pub errors: Counts,
    /// Hostile clients run, per kind.
    pub hostile: Counts,
}

impl World {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            addrs: RwLock::new(None),
            publishing: AtomicBool::new(true),
            chaos: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            kills: AtomicU64::new(0),
            ledger: Ledger::default(),
            reconnects: Counts::default(),
            errors: Counts::default(),
            hostile: Counts::default(),
        }
    }

    pub fn set_addrs(&self, addrs: Option<Addrs>) {
        if addrs.is_none() {
            self.kills.fetch_add(1, Ordering::SeqCst);
        }
        *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    fn current(&self) -> Option<Addrs> {
        *self.addrs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker's addresses, waiting while it is down; `None` once the run stops.
    pub async fn addrs(&self) -> Option<Addrs> {
        loop {
            if self.stopped() {
                return None;
            }
            if let Some(addrs) = self.current() {
                return Some(addrs);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn publishing(&self) -> bool {
        self.publishing.load(Ordering::SeqCst) && !self.stopped()
    }

    pub fn stop_publishing(&self) {
        self.publishing.store(false, Ordering::SeqCst);
    }

    pub fn chaos(&self) -> bool {
        self.chaos.load(Ordering::SeqCst)
    }

    pub fn end_chaos(&self) {
        self.chaos.store(false, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A random pause of `min..max` milliseconds.
pub async fn pause(rng: &mut fastrand::Rng, min_ms: u64, max_ms: u64) {
    tokio::time::sleep(Duration::from_millis(
        rng.u64(min_ms..max_ms.max(min_ms + 1)),
    ))
    .await;
}

/// How long a consumer stays away between connections: usually a moment, but one time in
/// five long enough for a backlog to build up, so that kills find messages on disk, in
/// flight and unacknowledged alike. Short once the chaos is over.
pub async fn away(world: &World, rng: &mut fastrand::Rng) {
    if world.chaos() && rng.u8(..5) == 0 {
        pause(rng, 1000, 6000).await;
    } else {
        pause(rng, 10, 300).await;
    }
}

/// How long a client keeps its connection before dropping it on purpose: 0.5 to 8 s.
pub fn lifetime(rng: &mut fastrand::Rng) -> Duration {
    Duration::from_millis(rng.u64(500..8000))
}

/// Runs `step` with the [`STEP`] deadline, folding a timeout into the error.
pub async fn step<T, E: std::fmt::Debug>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e:?}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

impl World {
    /// The number of kills so far; taken when a connection starts, handed back to
    /// [`World::connection_ended`].
    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::SeqCst)
    }

    /// Records why a `kind` connection ended (an error string reduced to its first words, so
    /// the figures group alike causes) and counts the reconnection that follows. A timeout on a
    /// connection that a kill ended meanwhile is told apart ("across a kill"): the client
    /// library may have missed its socket closing, but the broker was not stuck.
    pub fn connection_ended(&self, kind: &str, kills_before: u64, result: Result<(), String>) {
        if let Err(error) = result {
            // An ERROR frame's message says why the broker refused; anything else is grouped
            // by the step that failed.
            let summary = if error.starts_with("stomp ERROR") {
                error
            } else {
                let cause = if error.contains("timed out") && self.kills() != kills_before {
                    "timed out across a kill"
                } else if error.contains("timed out") {
                    "timed out"
                } else {
                    "connection lost"
                };
                format!("{}: {cause}", error.split(':').next().unwrap_or(""))
            };
            self.errors.add(format!("{kind}: {summary}"));
        }
        self.reconnects.add(kind.to_string());
    }
}

/// A publisher's life: connect, publish for a while through `session`, end (by choice, a kill
/// or an error), pause, reconnect, until the run stops publishing. Each protocol supplies the
/// session; `seq` runs on across connections so every message of this publisher is unique.
pub async fn publish_until_stopped(
    world: std::sync::Arc<World>,
    task: u64,
    kind: &str,
    addr_of: fn(&Addrs) -> SocketAddr,
    mut session: impl AsyncFnMut(
        &World,
        &mut fastrand::Rng,
        SocketAddr,
        u64,
        &mut u64,
    ) -> Result<(), String>,
) {
    let mut rng = crate::ledger::rng_for(world.seed, task);
    let publisher = crate::ledger::next_publisher();
    let mut seq = 0;
    while world.publishing() {
        let Some(addrs) = world.addrs().await else {
            break;
        };
        let kills = world.kills();
        let result = session(&world, &mut rng, addr_of(&addrs), publisher, &mut seq).await;
        world.connection_ended(kind, kills, result);
        pause(&mut rng, 10, 300).await;
    }
}
