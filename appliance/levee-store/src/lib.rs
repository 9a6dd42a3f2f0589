//! The store: queue state, the message log, the quarantine index, lists, the console's
//! accounts and safe learning's state, behind [`Backend`] so that the storage engine
//! can change without touching callers.
//!
//! - The record types ([`LogEntry`], [`QueueEntry`], ...) are the data, whatever the engine.
//! - [`backend`] is the interface: one trait per table, gathered in [`Backend`].
//! - [`SledBackend`] is the embedded default and the only user of sled.
//! - [`Store`] is the handle the engine passes around: an `Arc<dyn Backend>` plus the
//!   typed helpers a trait object cannot have (generic closures, typed JSON).
//! - `conformance` (tests, or the `conformance` feature) checks any backend.

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use levee_types::QueueId;
use thiserror::Error;

pub mod backend;
mod console;
mod counters;
mod learning;
mod lists;
mod quarantine;
mod records;
mod sled_backend;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use backend::Backend;
pub use console::{ApiToken, Frequency, ReportSchedule, Role, Session, Throttle, User};
pub use counters::{Counts, TopKind};
pub use learning::{LEARN_GLOBAL, LEARN_HELDBACK};
pub use lists::StoredListEntry;
pub use quarantine::{QuarantineEntry, QuarantineQuery};
use records::qid;
pub use records::{
    DeliveryAttempt, DeliveryOutcome, LogAction, LogEntry, QueueEntry, RcptState, RcptStatus,
    Release,
};
pub use sled_backend::SledBackend;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {op}: {message}")]
    Db { op: &'static str, message: String },
    #[error("store record for {what} is unreadable: {message}")]
    Codec { what: String, message: String },
    #[error("no message {0} in the log")]
    NotFound(QueueId),
    #[error("store schema version {0:?} is not supported")]
    Schema(String),
    #[error("no randomness for the install secret: {0}")]
    Random(String),
}

/// The engine's handle on the store. Cheap to clone: every clone shares one backend.
///
/// It derefs to `dyn Backend`, so `store.queue_get(..)` reaches the backend without
/// importing a trait; the methods defined here shadow the trait's object-safe ones with
/// generic versions (`queue_update(id, |e| ..)`), so call sites read as before the
/// interface existed.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Store")
            .field("log", &self.log_len().ok())
            .field("quarantine", &self.quarantine_len().ok())
            .finish_non_exhaustive()
    }
}

impl Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl Store {
    /// Opens or creates the embedded (sled) store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(Arc::new(SledBackend::open(path)?)))
    }

    /// A handle on any backend.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// See [`backend::QueueStore::queue_update`]: `f` may run more than once.
    pub fn queue_update<F>(&self, id: &QueueId, mut f: F) -> Result<Option<QueueEntry>, StoreError>
    where
        F: FnMut(&mut QueueEntry),
    {
        self.backend.queue_update(id, &mut f)
    }

    /// See [`backend::QuarantineStore::quarantine_update`]: `f` may run more than once.
    pub fn quarantine_update(
        &self,
        id: &QueueId,
        mut f: impl FnMut(&mut QuarantineEntry),
    ) -> Result<Option<QuarantineEntry>, StoreError> {
        self.backend.quarantine_update(id, &mut f)
    }

    /// See [`backend::AccountStore::user_update`]: `f` may run more than once.
    pub fn user_update(
        &self,
        name: &str,
        mut f: impl FnMut(&mut User),
    ) -> Result<Option<User>, StoreError> {
        self.backend.user_update(name, &mut f)
    }

    /// See [`backend::AccountStore::session_update`]: `f` may run more than once.
    pub fn session_update(
        &self,
        digest: &str,
        mut f: impl FnMut(&mut Session),
    ) -> Result<Option<Session>, StoreError> {
        self.backend.session_update(digest, &mut f)
    }

    /// See [`backend::AccountStore::schedule_update`]: `f` may run more than once.
    pub fn schedule_update(
        &self,
        id: u64,
        mut f: impl FnMut(&mut ReportSchedule),
    ) -> Result<Option<ReportSchedule>, StoreError> {
        self.backend.schedule_update(id, &mut f)
    }

    /// See [`backend::AccountStore::throttle_update`]: `f` may run more than once.
    pub fn throttle_update(
        &self,
        key: &str,
        mut f: impl FnMut(Throttle) -> Throttle,
    ) -> Result<(Throttle, Throttle), StoreError> {
        self.backend.throttle_update(key, &mut f)
    }

    /// Drops sessions that `expired` says are over; returns how many.
    pub fn sessions_prune(&self, expired: impl Fn(&Session) -> bool) -> Result<usize, StoreError> {
        self.backend.sessions_prune(&expired)
    }
}
