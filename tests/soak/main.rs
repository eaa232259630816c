//! The chaos soak: clients of all three protocols publish persistent messages and count only
//! what the broker confirmed (publisher confirm, PUBACK, RECEIPT); consumers record every
//! delivery before acknowledging it; clients drop their connections at random, hostile clients
//! come and go, and the broker is killed with SIGKILL and restarted at random moments. At the
//! end every confirmed message must have reached every durable queue (or MQTT session) its
//! route leads to, at least once.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ROSETTA_SOAK_SECONDS` | 70 | how long publishing and killing go on |
//! | `ROSETTA_SOAK_KILL_EVERY` | 8 | mean seconds between kills (uniform over half to 1.5 times) |
//! | `ROSETTA_SOAK_SEED` | from the clock | seeds every random choice; printed, to replay a run |
//! | `ROSETTA_SOAK_DRAIN` | 90 | seconds the consumers get, after the last kill, to catch up |
//!
//! Run with `-- --nocapture` to see progress and the figures.

mod amqp;
mod hostile;
mod ledger;
mod mqtt;
mod stomp;
mod world;

use ledger::{rng_for, PROTOCOLS, SINKS};
use rosetta_tests::Broker;
use std::sync::Arc;
use std::time::{Duration, Instant};
use world::{Addrs, World};

struct Settings {
    seconds: u64,
    kill_every: f64,
    seed: u64,
    drain: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let clock_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self {
            seconds: env_or("ROSETTA_SOAK_SECONDS", 70),
            kill_every: env_or("ROSETTA_SOAK_KILL_EVERY", 8.0),
            seed: env_or("ROSETTA_SOAK_SEED", clock_seed),
            drain: Duration::from_secs(env_or("ROSETTA_SOAK_DRAIN", 90)),
        }
    }
}

fn addrs_of(broker: &Broker) -> Addrs {
    Addrs {
        amqp: broker.amqp_addr(),
        mqtt: broker
            .addr("mqtt")
            .expect("the broker has no MQTT listener"),
        stomp: broker.stomp_addr(),
    }
}

/// Fails the test with the broker's log when it is no longer running although nobody killed
/// it: a crash is what the soak exists to catch.
#[track_caller]
fn assert_alive(broker: &mut Broker, when: &str) {
    assert!(
        broker.is_running(),
        "the broker died on its own {when}\n{}",
        broker.log()
    );
}

#[test]
fn every_confirmed_message_is_delivered_through_kills_and_hostile_clients() {
    let settings = Settings::from_env();
    println!(
        "soak: seed {} ({}s, a kill every ~{}s); replay with ROSETTA_SOAK_SEED={}",
        settings.seed, settings.seconds, settings.kill_every, settings.seed
    );
    let started = Instant::now();
    let mut broker = Broker::builder()
        .config("[mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"\n")
        .config("[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n")
        .start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let world = Arc::new(World::new(settings.seed));
    let first = addrs_of(&broker);
    world.set_addrs(Some(first));
    runtime.block_on(async {
        amqp::declare_topology(first.amqp)
            .await
            .expect("declare the durable queues");
        mqtt::create_session(first.mqtt)
            .await
            .expect("create the persistent MQTT session");
    });

    // Task numbers seed each task's random choices; 0 is the killer's.
    let mut publishers = Vec::new();
    let mut others = Vec::new();
    let mut task = 0;
    let mut next_task = || {
        task += 1;
        task
    };
    for _ in 0..2 {
        publishers.push(runtime.spawn(amqp::publisher(world.clone(), next_task())));
        publishers.push(runtime.spawn(mqtt::publisher(world.clone(), next_task())));
        publishers.push(runtime.spawn(stomp::publisher(world.clone(), next_task())));
        others.push(runtime.spawn(amqp::consumer(world.clone(), next_task())));
        others.push(runtime.spawn(hostile::run(world.clone(), next_task())));
    }
    others.push(runtime.spawn(mqtt::subscriber(world.clone(), next_task())));
    others.push(runtime.spawn(stomp::consumer(
        world.clone(),
        next_task(),
        "/queue/soak.s",
        ledger::Sink::StompQueue,
    )));
    others.push(runtime.spawn(stomp::consumer(
        world.clone(),
        next_task(),
        "/amq/queue/soak.x",
        ledger::Sink::CrossQueue,
    )));

    // The killer runs here: the kit's broker handle is synchronous.
    let mut rng = rng_for(settings.seed, 0);
    let chaos_for = Duration::from_secs(settings.seconds);
    let chaos_started = Instant::now();
    let mut kills = 0u64;
    let mut slowest_restart = Duration::ZERO;
    let mut last_progress = Instant::now();
    loop {
        let left = chaos_for.saturating_sub(chaos_started.elapsed());
        if left.is_zero() {
            break;
        }
        let interval = settings.kill_every * (0.5 + rng.f64());
        std::thread::sleep(Duration::from_secs_f64(interval).min(left));
        if chaos_started.elapsed() >= chaos_for {
            break;
        }
        assert_alive(&mut broker, "between kills");
        world.set_addrs(None);
        broker.kill9();
        kills += 1;
        // Sometimes the broker comes back at once, sometimes clients find nothing listening.
        std::thread::sleep(Duration::from_millis(rng.u64(0..1000)));
        let restarting = Instant::now();
        broker.restart();
        slowest_restart = slowest_restart.max(restarting.elapsed());
        world.set_addrs(Some(addrs_of(&broker)));
        if last_progress.elapsed() >= Duration::from_secs(60) {
            last_progress = Instant::now();
            println!(
                "soak: {:>5}s, {kills} kills, {} confirmed, {} awaiting delivery",
                chaos_started.elapsed().as_secs(),
                world.ledger.confirmed_total(),
                world.ledger.outstanding()
            );
        }
    }
    let chaos_took = chaos_started.elapsed();

    // Publishers finish their burst (a confirm may still arrive for it), then the consumers,
    // connected for good now, drain what is left.
    world.stop_publishing();
    world.end_chaos();
    runtime.block_on(async {
        for publisher in publishers {
            tokio::time::timeout(Duration::from_secs(60), publisher)
                .await
                .expect("publishers stop within a minute")
                .expect("publisher task");
        }
    });
    let drain_started = Instant::now();
    while world.ledger.outstanding() > 0 && drain_started.elapsed() < settings.drain {
        std::thread::sleep(Duration::from_millis(500));
    }
    let drain_took = drain_started.elapsed();
    assert_alive(&mut broker, "after the chaos");
    world.stop();
    runtime.block_on(async {
        for task in others {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    });

    let tally = world.ledger.tally();
    let lost_sessions = world
        .ledger
        .lost_mqtt_sessions
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("soak figures (seed {}):", settings.seed);
    println!(
        "  duration: {:.0}s of chaos, {:.1}s drain, {:.0}s in all",
        chaos_took.as_secs_f64(),
        drain_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("  broker kills (SIGKILL + restart): {kills}, slowest restart {slowest_restart:?}");
    println!("  messages sent: {}", tally.sent);
    for protocol in PROTOCOLS {
        println!(
            "  confirmed {protocol:?}: {} (refused: {})",
            tally.confirmed.get(&protocol).copied().unwrap_or(0),
            tally.refused.get(&protocol).copied().unwrap_or(0)
        );
    }
    for sink in SINKS {
        println!(
            "  {sink:?}: expected {}, delivered {}, duplicates {}, missing {}",
            tally.expected[&sink],
            tally.delivered[&sink],
            tally.duplicates[&sink],
            tally.missing[&sink].0
        );
    }
    println!(
        "  delivered although never confirmed: {}",
        tally.delivered_unconfirmed
    );
    println!("  lost MQTT sessions: {lost_sessions}");
    println!("  reconnects: {:?}", world.reconnects.snapshot());
    println!("  hostile clients: {:?}", world.hostile.snapshot());
    println!("  connections ended by: {:?}", world.errors.snapshot());
    println!("  broker log: {} lines", broker.log().lines().count());

    let missing: Vec<_> = tally
        .missing
        .iter()
        .filter(|(_, (count, _))| *count > 0)
        .collect();
    assert!(
        missing.is_empty(),
        "confirmed messages never delivered (seed {}), per sink (count, first ids): {missing:?}",
        settings.seed
    );
    assert!(
        tally.strangers.is_empty(),
        "deliveries nobody sent: {:?}",
        tally.strangers
    );
    assert_eq!(lost_sessions, 0, "the persistent MQTT session was lost");
    for protocol in PROTOCOLS {
        assert!(
            tally.confirmed.get(&protocol).copied().unwrap_or(0) > 0,
            "no {protocol:?} message was confirmed: the soak tested nothing there"
        );
    }
    assert!(
        kills > 0,
        "the broker was never killed (ROSETTA_SOAK_SECONDS too short?)"
    );
    assert!(world.hostile.total() > 0, "no hostile client ran");
    // A kill ends connections at once (the sockets close with the process, and a restart
    // listens on new ports), so a client that waited a whole step for an answer, with no kill
    // in between, met a broker that was up and stuck.
    let stuck: Vec<_> = world
        .errors
        .snapshot()
        .into_iter()
        .filter(|(cause, _)| cause.ends_with("timed out"))
        .collect();
    assert!(
        stuck.is_empty(),
        "clients waited over {:?} for a live broker: {stuck:?}",
        world::STEP
    );
    let log = broker.log();
    assert!(
        !log.contains("panicked"),
        "the broker logged a panic:\n{log}"
    );
}
