//! The storage interface: one trait per table, gathered in [`Backend`], so a second
//! engine (PostgreSQL, for a cluster) can sit beside the embedded sled one.
//!
//! Shape:
//! - Synchronous. Most calls are a lookup in sled's page cache (microseconds), made
//!   from sync code (the spool's group commit calls `flush`, startup, the CLI) and
//!   from async handlers alike; long scans (`log_prune`) already go through
//!   `spawn_blocking`. An async trait would colour every caller for the sake of a
//!   backend that does not exist yet; a network backend can block on its pool here,
//!   and callers that may wait long move to `spawn_blocking` as pruning did.
//! - Object-safe: the engine holds `Arc<dyn Backend>` (inside [`crate::Store`]), so
//!   the backend is chosen at run time by configuration without making every crate
//!   generic. Closures are `&mut dyn FnMut`; typed JSON (`learning`) is bytes here
//!   and typed in `Store`.
//! - Atomic where callers read-modify-write: the `*_update` methods and
//!   `log_add_attempt` apply a change to the record as stored (a CAS loop in sled, a
//!   `SELECT … FOR UPDATE` in SQL), and may run the closure more than once.
//! - Counters are part of the contract: `log_len`, `counts` and `quarantine_len` must
//!   equal [`Counters::recount`] after every write (sled keeps them in the same
//!   transaction; SQL may count with an index).
//!
//! [`crate::conformance`] holds the tests every backend must pass.

use std::collections::BTreeMap;

use levee_types::list::ListEntry;
use levee_types::QueueId;

use crate::{
    ApiToken, Counts, DeliveryAttempt, LogEntry, QuarantineEntry, QuarantineQuery, QueueEntry,
    ReportSchedule, Session, StoreError, StoredListEntry, Throttle, User,
};

/// Delivery state of queued messages, by queue id.
pub trait QueueStore {
    /// Adds or replaces an entry.
    fn queue_put(&self, e: &QueueEntry) -> Result<(), StoreError>;

    fn queue_get(&self, id: &QueueId) -> Result<Option<QueueEntry>, StoreError>;

    /// Changes an entry with `f` in one atomic step; `f` may run more than once (each
    /// time on the entry as now stored) and must do nothing but change its argument.
    /// Nothing happens when there is no entry, so a message deleted meanwhile stays
    /// deleted. Returns the entry as stored, or `None` if there was none.
    fn queue_update(
        &self,
        id: &QueueId,
        f: &mut dyn FnMut(&mut QueueEntry),
    ) -> Result<Option<QueueEntry>, StoreError>;

    fn queue_remove(&self, id: &QueueId) -> Result<(), StoreError>;

    /// Every entry, oldest first.
    fn queue_all(&self) -> Result<Vec<QueueEntry>, StoreError>;

    /// Entries waiting for delivery (not held), without a scan: metrics read it often.
    fn queue_waiting(&self) -> u64;
}

/// One [`LogEntry`] per received message, newest first by queue id (ids put the receipt
/// time in their high bits).
pub trait MessageLog {
    /// Records a received message (replaces an earlier record of the same id), with its
    /// counters.
    fn log_put(&self, e: &LogEntry) -> Result<(), StoreError>;

    fn log_get(&self, id: &QueueId) -> Result<Option<LogEntry>, StoreError>;

    /// Up to `limit` records older than `before` (or the newest, with `None`), newest
    /// first: the console pages with the last id of the previous page.
    fn log_page(&self, before: Option<&QueueId>, limit: usize)
        -> Result<Vec<LogEntry>, StoreError>;

    /// The newest `limit` records, newest first.
    fn log_recent(&self, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.log_page(None, limit)
    }

    /// Appends a delivery attempt to a record, atomically: concurrent appends all stay.
    /// [`StoreError::NotFound`] when there is no record.
    fn log_add_attempt(&self, id: &QueueId, a: DeliveryAttempt) -> Result<(), StoreError>;

    /// Removes records received before `cutoff` (unix seconds); returns how many went.
    fn log_prune(&self, cutoff: u64) -> Result<usize, StoreError>;

    /// Number of records (a counter read, not a scan).
    fn log_len(&self) -> Result<usize, StoreError>;
}

/// Statistics kept on write, so pages and metrics need no scan of the log.
pub trait Counters {
    /// Record counts, log records by action, and log records by hour from hour
    /// `from_hour` (unix seconds / 3600) on; with `tops`, also the per-hour counts of
    /// reasons, senders and recipients.
    fn counts(&self, from_hour: u64, tops: bool) -> Result<Counts, StoreError>;

    /// Log records ever written, by action; never decreasing (Prometheus counters). A
    /// record rewritten with another action counts under both.
    fn log_written(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// What `counts(0, true)` should read, counted from scratch: for checks and tests.
    fn recount(&self) -> Result<Counts, StoreError>;
}

/// The index of held messages (the messages themselves stay in the spool).
pub trait QuarantineStore {
    /// Adds or replaces an entry.
    fn quarantine_put(&self, e: &QuarantineEntry) -> Result<(), StoreError>;

    fn quarantine_get(&self, id: &QueueId) -> Result<Option<QuarantineEntry>, StoreError>;

    /// Changes an entry with `f` atomically, as `QueueStore::queue_update` does: never
    /// brings back an entry removed meanwhile (a released message), never loses a
    /// concurrent change (two users dropping their own recipients).
    fn quarantine_update(
        &self,
        id: &QueueId,
        f: &mut dyn FnMut(&mut QuarantineEntry),
    ) -> Result<Option<QuarantineEntry>, StoreError>;

    fn quarantine_remove(&self, id: &QueueId) -> Result<(), StoreError>;

    /// Matching entries, newest first, with the total number that matched.
    fn quarantine_search(
        &self,
        q: &QuarantineQuery,
    ) -> Result<(Vec<QuarantineEntry>, usize), StoreError>;

    /// Ids whose hold has expired at `now`.
    fn quarantine_expired(&self, now: u64) -> Result<Vec<QueueId>, StoreError>;

    /// Number of held messages (a counter read).
    fn quarantine_len(&self) -> Result<usize, StoreError>;
}

/// Allow and block lists, durable on return (a person is waiting).
pub trait ListStore {
    /// Adds an entry and returns its id; an identical entry (same text) is not added
    /// twice, even by concurrent callers, and its id is returned instead.
    fn list_add(
        &self,
        entry: &ListEntry,
        note: &str,
        by: &str,
        now: u64,
    ) -> Result<u64, StoreError>;

    /// `false` when there was no such entry.
    fn list_remove(&self, id: u64) -> Result<bool, StoreError>;

    /// Every entry, by id.
    fn list_all(&self) -> Result<Vec<StoredListEntry>, StoreError>;

    /// Every entry that parses, for the filter.
    fn list_entries(&self) -> Result<Vec<ListEntry>, StoreError> {
        Ok(self.list_all()?.iter().filter_map(StoredListEntry::parsed).collect())
    }
}

/// Named binary values (the Bayes model, learned rule weights), durable on return.
pub trait BlobStore {
    fn blob_put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError>;

    fn blob_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// The console's records: users, sessions, login throttling, API tokens and report
/// schedules. Names are case-insensitive (stored lower-case). Changes a person makes are
/// durable on return; sessions pruning and throttle counts need not be.
pub trait AccountStore {
    fn user_get(&self, name: &str) -> Result<Option<User>, StoreError>;

    /// Creates or replaces a user.
    fn user_put(&self, u: &User) -> Result<(), StoreError>;

    /// Creates a user only if the name is free (atomically); `false` if it is taken.
    fn user_create(&self, u: &User) -> Result<bool, StoreError>;

    /// Changes a user with `f` atomically (the name stays); `None` if there is none, so
    /// a user removed meanwhile stays removed and a concurrent change (a password reset)
    /// is not overwritten with a stale copy. `f` may run more than once.
    fn user_update(
        &self,
        name: &str,
        f: &mut dyn FnMut(&mut User),
    ) -> Result<Option<User>, StoreError>;

    fn user_remove(&self, name: &str) -> Result<bool, StoreError>;

    fn users_all(&self) -> Result<Vec<User>, StoreError>;

    fn users_len(&self) -> usize;

    /// `digest`: of the session id; the id itself is never stored.
    fn session_get(&self, digest: &str) -> Result<Option<Session>, StoreError>;

    fn session_put(&self, digest: &str, s: &Session) -> Result<(), StoreError>;

    /// Changes a session with `f` atomically; `None` if there is none, so a session
    /// ended meanwhile (logout everywhere) is not brought back by a late touch. Not
    /// necessarily durable.
    fn session_update(
        &self,
        digest: &str,
        f: &mut dyn FnMut(&mut Session),
    ) -> Result<Option<Session>, StoreError>;

    fn session_remove(&self, digest: &str) -> Result<bool, StoreError>;

    /// Ends every session of `user`; returns how many.
    fn sessions_remove_user(&self, user: &str) -> Result<usize, StoreError>;

    /// Drops sessions that `expired` says are over, and unreadable ones; returns how many.
    fn sessions_prune(&self, expired: &dyn Fn(&Session) -> bool) -> Result<usize, StoreError>;

    /// The record under `key`, or a zero one.
    fn throttle_get(&self, key: &str) -> Result<Throttle, StoreError>;

    /// Replaces the record under `key` with `f` of it, atomically (concurrent attempts
    /// each count); `f` may run more than once. Returns the records before and after.
    fn throttle_update(
        &self,
        key: &str,
        f: &mut dyn FnMut(Throttle) -> Throttle,
    ) -> Result<(Throttle, Throttle), StoreError>;

    fn throttle_clear(&self, key: &str) -> Result<(), StoreError>;

    /// Stores a token under its digest and returns its new, unique id.
    fn token_add(&self, digest: &str, user: &str, label: &str, now: u64)
        -> Result<u64, StoreError>;

    fn token_get(&self, digest: &str) -> Result<Option<ApiToken>, StoreError>;

    fn tokens_all(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// Removes a token by id; only `user`'s own unless `user` is `None` (an admin).
    fn token_remove(&self, id: u64, user: Option<&str>) -> Result<bool, StoreError>;

    /// Removes every token of a user.
    fn tokens_remove_user(&self, user: &str) -> Result<(), StoreError>;

    /// Stores a schedule; an id of 0 gets a new non-zero id. Returns the id.
    fn schedule_put(&self, s: &ReportSchedule) -> Result<u64, StoreError>;

    /// Changes a schedule with `f` atomically (the id stays); `None` if there is none.
    fn schedule_update(
        &self,
        id: u64,
        f: &mut dyn FnMut(&mut ReportSchedule),
    ) -> Result<Option<ReportSchedule>, StoreError>;

    fn schedules_all(&self) -> Result<Vec<ReportSchedule>, StoreError>;

    fn schedule_remove(&self, id: u64) -> Result<bool, StoreError>;
}

/// Safe learning's state as JSON text: its types live in `levee-filter`, above the
/// store, so the store keeps bytes and [`crate::Store`] does the typing.
pub trait LearningStore {
    /// Not durable until the next [`Backend::flush`].
    fn learning_put_json(&self, key: &str, json: &[u8]) -> Result<(), StoreError>;

    fn learning_get_json(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every record whose key starts with `prefix`, as (rest of the key, JSON), by key.
    fn learning_scan_json(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// A whole store: every table, plus durability and the install secret.
pub trait Backend:
    QueueStore
    + MessageLog
    + Counters
    + QuarantineStore
    + ListStore
    + BlobStore
    + AccountStore
    + LearningStore
    + Send
    + Sync
{
    /// Makes every write so far durable (the spool's group commit calls it once for
    /// many messages before the relay sends 250).
    fn flush(&self) -> Result<(), StoreError>;

    /// 32 random bytes made when the store was created and stable afterwards (the
    /// X-Levee-Stamp key).
    fn install_secret(&self) -> Result<[u8; 32], StoreError>;
}
