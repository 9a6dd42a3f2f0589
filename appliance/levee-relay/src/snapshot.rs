//! The runtime snapshot: the config and everything derived from it or read beside it when
//! mail is judged (network checks, rules, policies, lists, the model), as one immutable
//! value swapped as one `Arc`. A reader takes the snapshot once and sees all old or all new;
//! before, reload swapped three locks one after another and a message could be judged with
//! the new config's thresholds and the old rules' scores.
//!
//! Writers (reload, a rules upload, a list edit, learning) go through [`Runtime::update`],
//! one at a time, each building the next snapshot from the current one, so two writers
//! never lose each other's change.

use std::sync::{Arc, Mutex, RwLock};

use levee_config::Config;

use crate::Policies;

/// What one judgement reads, consistent with itself.
#[derive(Clone)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub net: Option<Arc<levee_netcheck::NetChecks>>,
    /// SpamAssassin-language rules (`[rules]`), if loaded.
    pub rules: Option<Arc<levee_filter::sa::Loaded>>,
    /// Built from `config` and `rules` (the rules' scores), so swapped with them.
    pub(crate) policies: Arc<Policies>,
    pub lists: Arc<Vec<levee_types::list::ListEntry>>,
    pub bayes: Arc<levee_filter::bayes::Model>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("hostname", &self.config.hostname.0)
            .field("net", &self.net.is_some())
            .field("rules", &self.rules.as_ref().map(|r| r.set.len()))
            .field("lists", &self.lists.len())
            .field("bayes", &self.bayes.counts())
            .finish_non_exhaustive()
    }
}

/// The one owner of the current [`Snapshot`].
#[derive(Debug)]
pub struct Runtime {
    current: RwLock<Arc<Snapshot>>,
    writer: Mutex<()>,
}

impl Runtime {
    pub fn new(first: Snapshot) -> Runtime {
        Runtime { current: RwLock::new(Arc::new(first)), writer: Mutex::new(()) }
    }

    /// The snapshot in use; hold it for as long as one consistent view is needed.
    pub fn get(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builds the next snapshot from the current one and swaps it in. Writers are serialised,
    /// so `next` always starts from the latest; it must not block on I/O (build the parts
    /// first, then call this).
    pub fn update(&self, next: impl FnOnce(&Snapshot) -> Snapshot) {
        let _one = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let built = Arc::new(next(&self.get()));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = built;
    }
}
