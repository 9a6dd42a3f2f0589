//! What the counters report ([`crate::backend::Counters`]): counts kept on write, so
//! statistics and metrics read a few values instead of the log.

use std::collections::BTreeMap;

/// The kinds of per-hour top lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopKind {
    /// A finding with positive weight.
    Reason,
    /// The envelope sender, lower-case; `<>` for the null sender.
    Sender,
    /// An envelope recipient, lower-case.
    Recipient,
}

/// Everything the counters hold that a recount can reproduce (the `_total` counters
/// cannot be: they remember removed records).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub log: u64,
    pub quarantine: u64,
    pub log_by_action: BTreeMap<String, u64>,
    /// (hour, action) → records received in that hour (hour = unix seconds / 3600).
    pub log_by_hour: BTreeMap<(u64, String), u64>,
    /// (hour, kind, name) → count.
    pub top_by_hour: BTreeMap<(u64, TopKind, String), u64>,
}
