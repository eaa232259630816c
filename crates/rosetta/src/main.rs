//! `rosetta`: runs the broker in the foreground, checks or prints its configuration, checks a
//! stopped broker's store, imports RabbitMQ definitions into it, or hashes a password for the
//! configuration.

use std::io::{BufRead, ErrorKind, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use rosetta_core::auth::PasswordHash;
use rosetta_server::config::{Config, DEFAULT_TOML};
use rosetta_server::definitions::Definitions;

/// Looked for in the working directory when no --config is given.
const LOCAL_CONFIG: &str = "broker.toml";

/// Message broker speaking AMQP 0-9-1, MQTT and STOMP on one routing core.
#[derive(Parser)]
#[command(name = "rosetta", version)]
struct Cli {
    /// Configuration file [default: ./broker.toml if it exists, else the built-in defaults]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration: prints "config OK", or the problem and exits with status 1
    CheckConfig,
    /// Print the built-in default configuration, every key with its default value
    PrintDefaultConfig,
    /// Verify a stopped broker's store and report what it finds: exits 0 if it is sound, 3 if
    /// it found bad records or dangling entries, 1 if it could not check (e.g. the broker runs)
    CheckStore {
        /// Move bad records to the quarantine directory, as the broker does when it starts,
        /// then check again
        #[arg(long)]
        repair: bool,
    },
    /// Read a password from the first line of standard input and print its hash for a user's
    /// `password_hash` (salted SHA-256 in RabbitMQ's format)
    HashPassword,
    /// Import a RabbitMQ definitions file (`rabbitmqctl export_definitions`) into a stopped
    /// broker's store: virtual hosts, users, permissions, exchanges, queues and bindings that
    /// are missing (users and permissions of broker.toml are left as they are). Exits
    /// 0 when everything was imported, 3 when some items could not be, 1 if nothing could be
    /// (e.g. the broker runs: import through its API, POST /api/definitions, instead)
    ImportDefinitions {
        /// The definitions file (JSON)
        file: PathBuf,
    },
}

/// Exit status of `check-store` when the store has problems; 1 stays "could not check".
const STORE_PROBLEMS: u8 = 3;
/// Exit status of `import-definitions` when some items could not be imported; 1 stays "could
/// not import".
const PARTIAL_IMPORT: u8 = 3;

fn main() -> ExitCode {
    match execute(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            // Operators read this, so one line with the reason, never a backtrace.
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::PrintDefaultConfig) => write_stdout(DEFAULT_TOML)?,
        Some(Command::CheckConfig) => {
            let config = load(cli.config.as_deref())?;
            rosetta_server::check_tls(&config)?;
            write_stdout("config OK\n")?;
        }
        Some(Command::HashPassword) => {
            let hash = PasswordHash::new(&read_password()?);
            write_stdout(&format!("{hash}\n"))?;
        }
        Some(Command::CheckStore { repair }) => {
            return check_store(&load(cli.config.as_deref())?, repair);
        }
        Some(Command::ImportDefinitions { file }) => {
            return import_definitions(&load(cli.config.as_deref())?, &file);
        }
        None => {
            // `run` installs logging from `config.log` itself.
            rosetta_server::run(load(cli.config.as_deref())?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first line of standard input, without its line ending. Nothing is echoed or prompted
/// for, so `printf %s "$PASSWORD" | rosetta hash-password` works in scripts; typed at a terminal
/// the password shows as it is typed.
fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (one line, shown as typed):");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        bail!("empty password: give the password on the first line of standard input, e.g. `printf %s 's3cret' | rosetta hash-password`");
    }
    Ok(password.to_owned())
}

fn check_store(config: &Config, repair: bool) -> Result<ExitCode> {
    let path = &config.storage.path;
    if repair {
        let moved = rosetta_store::check::repair(path)?;
        write_stdout(&format!(
            "repair: {moved} record(s) moved to {}\n",
            path.join(rosetta_store::quarantine::QUARANTINE_DIR)
                .display()
        ))?;
    }
    let report = rosetta_store::check::check(path)?;
    write_stdout(&report.to_string())?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(STORE_PROBLEMS)
    })
}

fn import_definitions(config: &Config, file: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let defs: Definitions = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a definitions file: {e}", file.display()))?;
    let report = rosetta_server::definitions::import_offline(config, &defs)?;
    let created = &report.created;
    let mut out = format!(
        "imported into {}: {} virtual host(s), {} exchange(s), {} queue(s), {} binding(s), {} \
         user(s), {} permission(s), {} topic permission(s) created\n",
        config.storage.path.display(),
        created.vhosts,
        created.exchanges,
        created.queues,
        created.bindings,
        created.users,
        created.permissions,
        created.topic_permissions
    );
    for skipped in &report.skipped {
        out.push_str(&format!("skipped: {skipped}\n"));
    }
    write_stdout(&out)?;
    for error in &report.errors {
        eprintln!("error: {error}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(PARTIAL_IMPORT)
    })
}

fn load(explicit: Option<&Path>) -> Result<Config> {
    let config = match explicit {
        Some(path) => Config::load(path)?,
        None if Path::new(LOCAL_CONFIG).is_file() => Config::load(Path::new(LOCAL_CONFIG))?,
        None => Config::from_toml_str(DEFAULT_TOML, "built-in default config")?,
    };
    // ROSETTA_DEFAULT_USER and its password: the administrator of a container deployment.
    Ok(config.with_default_user_from_env()?)
}

/// Writes to stdout; a closed pipe (`rosetta print-default-config | head`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}
