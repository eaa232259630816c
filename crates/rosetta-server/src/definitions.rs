//! RabbitMQ's definitions files: the broker's users, virtual hosts, permissions, exchanges,
//! queues and bindings as one JSON document, exported and imported through the management API
//! (`GET`/`POST /api/definitions`) or, before the broker first starts, imported offline with
//! `rosetta import-definitions` (see docs/operations.md).
//!
//! - `format`: the file's types;
//! - `accounts`: users and permissions, exported and imported as run-time entries;
//! - `arguments`: argument tables as JSON and back;
//! - `export`: the broker as a file;
//! - `import`: a file applied to the broker.

mod accounts;
pub(crate) mod arguments;
mod export;
pub mod format;
mod import;

use std::sync::Arc;

use rosetta_core::store::{Epoch, Store};
use rosetta_core::{Broker, CoreLimits};

pub use accounts::AccountDefs;
pub use format::Definitions;
pub use import::ImportReport;

use crate::accounts::{Accounts, Configured};
use crate::config::Config;
use crate::Error;

pub(crate) use accounts::export as export_accounts;
pub(crate) use export::{all as export_all, one as export_vhost};
pub(crate) use import::apply;

/// What an import does beside the topology, which differs between the running broker and an
/// offline import.
pub(crate) trait Hooks {
    /// Who creates the virtual hosts the file adds (see `VHostMeta::creator`).
    fn creator(&self) -> Option<&str>;
    /// Virtual host `name` was just created; the epoch what that gave its users waits for.
    fn vhost_created(&self, name: &str) -> Option<Epoch>;
    /// The run-time users and permissions the file's go into.
    fn accounts(&self) -> Accounts<'_>;
}

/// Offline nobody can log in yet: the users and permissions go to the store, beside a
/// directory built from the configuration as the broker's next start will build it.
struct Offline<'a> {
    accounts: Accounts<'a>,
}

impl Hooks for Offline<'_> {
    fn creator(&self) -> Option<&str> {
        None
    }

    fn vhost_created(&self, name: &str) -> Option<Epoch> {
        crate::vhost_access::open(&self.accounts, name, None)
    }

    fn accounts(&self) -> Accounts<'_> {
        self.accounts
    }
}

/// Imports `defs` into the store of a broker that is not running, as `rosetta
/// import-definitions` does before a first start. The virtual hosts of `config` exist as they
/// would at startup; what the file adds (users and permissions included, as run-time entries)
/// is written and synced before this returns.
pub fn import_offline(config: &Config, defs: &Definitions) -> Result<ImportReport, Error> {
    let path = &config.storage.path;
    let store = rosetta_store::SledStore::open(path).map_err(|e| Error::Storage {
        path: path.display().to_string(),
        reason: format!(
            "cannot open the store ({e}); if the broker is running, stop it first or import \
             through its management API (POST /api/definitions)"
        ),
    })?;
    let store: Arc<dyn Store> = Arc::new(store);
    let vhosts: Vec<String> = config.vhosts.iter().map(|v| v.name.clone()).collect();
    // Limits are the broker's to enforce on clients; an operator's import takes what it names.
    let broker = Broker::open(store.clone(), &vhosts, CoreLimits::default())?;
    let storage_error = |reason: String| Error::Storage {
        path: path.display().to_string(),
        reason,
    };
    let directory = config.core_directory()?;
    let configured = Configured::of(&directory.contents(), config.permissions_are_implicit());
    crate::accounts::load(&directory, store.as_ref(), &broker, &configured)
        .map_err(|e| storage_error(format!("cannot read the stored users: {e}")))?;
    let hooks = Offline {
        accounts: Accounts {
            directory: &directory,
            store: store.as_ref(),
            broker: &broker,
            configured: &configured,
        },
    };
    let report = apply(&broker, defs, None, &hooks);
    store
        .sync()
        .map_err(|e| storage_error(format!("cannot sync the store after the import: {e}")))?;
    Ok(report)
}
