//! Where allocation state lives.
//!
//! The allocator only sees a [`State`]; a store loads it and applies changes
//! atomically with respect to other plugin processes. The file store serves
//! one node; a cluster-wide store (etcd) implements the same trait.

pub mod etcd;
pub mod file;
pub mod journal;
mod mapped;
pub mod snapshot;
mod view;

use cni::Result;

use crate::allocator::{Ledger, State};
use crate::config::StoreConfig;

pub trait Store {
    /// The state of `network` as last committed (empty if never written).
    fn load(&self, network: &str) -> Result<State>;

    /// Run `f` on the current state with every other writer excluded, and
    /// commit the result if `f` succeeds and changed it. When `f` fails
    /// nothing is written.
    fn update(&self, network: &str, f: &mut dyn FnMut(&mut State) -> Result<()>) -> Result<()>;

    /// Networks that have state in this store.
    fn networks(&self) -> Result<Vec<String>>;

    /// Like [`Store::update`], but `f` sees only the lookups of a [`Ledger`],
    /// which lets a store answer them without materialising every record
    /// (what keeps ADD and DEL flat in the number of records). The default
    /// runs `f` on the whole state.
    fn transact(
        &self,
        network: &str,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<()>,
    ) -> Result<()> {
        self.update(network, &mut |s| f(s))
    }

    /// Read-only lookups (CHECK) through a [`Ledger`], writing nothing and
    /// excluding no writer. The default runs `f` on the loaded state; the
    /// etcd store answers from the attachment's index keys instead.
    fn inspect(&self, network: &str, f: &mut dyn FnMut(&dyn Ledger) -> Result<()>) -> Result<()> {
        f(&self.load(network)?)
    }
}

/// [`Store::transact`] returning a value from the closure (see [`update`]).
pub fn transact<T>(
    store: &dyn Store,
    network: &str,
    mut f: impl FnMut(&mut dyn Ledger) -> Result<T>,
) -> Result<T> {
    let mut out = None;
    store.transact(network, &mut |l| {
        out = Some(f(l)?);
        Ok(())
    })?;
    out.ok_or_else(|| cni::Error::plugin(cni::error::code::INTERNAL, "store skipped an update"))
}

/// [`Store::update`] returning a value from the closure. The closure may run
/// more than once (a store with optimistic concurrency retries it on a
/// conflict); the value of the committed run is returned.
pub fn update<T>(
    store: &dyn Store,
    network: &str,
    mut f: impl FnMut(&mut State) -> Result<T>,
) -> Result<T> {
    let mut out = None;
    store.update(network, &mut |s| {
        out = Some(f(s)?);
        Ok(())
    })?;
    out.ok_or_else(|| cni::Error::plugin(cni::error::code::INTERNAL, "store skipped an update"))
}

/// The configured store. Opening the etcd store reads its TLS files and
/// password (a bad one is a code 7 naming the field); it connects lazily.
pub fn open(cfg: &StoreConfig) -> Result<Box<dyn Store>> {
    Ok(match cfg {
        StoreConfig::File { data_dir } => Box::new(file::FileStore::new(data_dir.clone())),
        StoreConfig::Etcd(e) => Box::new(etcd::EtcdStore::open(e)?),
    })
}
