//! The only user of sled: typed trees behind plain functions, so no sled type leaks out
//! and the storage engine can change without touching callers.
//!
//! Trees:
//! - `queue`: per-message delivery state ([`QueueEntry`]), key = queue id as u64 big-endian.
//! - `log`: one [`LogEntry`] per received message, same key. Queue ids put the receipt time
//!   in their high bits, so key order is age order and "newest first" is a reverse scan.
//! - `meta`: the schema version, the per-install secret and one-time upgrade marks.
//! - `lists`, `list_index`: allow/block entries by id, and entry text → id (see `lists.rs`).
//! - `counters`: counts of the log and the quarantine kept on write (see `counters.rs`).
//! - `learning`: safe learning's votes, queue, counters and validation sample (JSON).
//!
//! Values are JSON (serde_json): a person can read them with a sled dump, and added
//! fields with `#[serde(default)]` keep old records readable.
//!
//! Writes are not durable until [`Store::flush`]; the spool's group commit calls it once
//! for many messages before the relay sends 250.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use levee_types::QueueId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use thiserror::Error;

mod console;
mod counters;
mod learning;
mod lists;
mod private;
mod quarantine;
mod records;

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

const SCHEMA_VERSION: &[u8] = b"1";
const KEY_SCHEMA: &[u8] = b"schema";
const KEY_SECRET: &[u8] = b"install_secret";

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

fn db_err(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| StoreError::Db { op, message: e.to_string() }
}

/// Unwraps a transaction's result: our own error as it was, sled's with `op`.
fn tx_err(op: &'static str) -> impl FnOnce(TransactionError<StoreError>) -> StoreError {
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => db_err(op)(e),
    }
}

/// Aborts a transaction with a store error (a record that does not decode, say).
fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// 1 if a stored queue record is waiting for delivery (not held), else 0; an unreadable
/// record counts as not waiting, as `queue_all` would refuse it.
fn waits(v: Option<&[u8]>, k: &[u8]) -> i64 {
    v.and_then(|v| decode::<QueueEntry>(v, k).ok()).map_or(0, |e| i64::from(!e.held))
}

/// The store. Cheap to clone: every clone shares one database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    queue: sled::Tree,
    log: sled::Tree,
    quarantine: sled::Tree,
    lists: sled::Tree,
    list_index: sled::Tree,
    blobs: sled::Tree,
    console: console::ConsoleTrees,
    learning: sled::Tree,
    counters: sled::Tree,
    /// Queue entries waiting for delivery (not held): counted once at open, then kept on
    /// every queue write, so metrics and reports need no scan. Per process, like the lock.
    waiting: Arc<AtomicI64>,
    secret: [u8; 32],
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

/// Keys sort like ids: a queue id is 16 hex digits, i.e. a u64.
fn key(id: &QueueId) -> [u8; 8] {
    // QueueId::parse admits only 16 upper-case hex digits, so this cannot fail.
    u64::from_str_radix(id.as_str(), 16).unwrap_or(0).to_be_bytes()
}

fn encode<T: Serialize>(v: &T, what: &QueueId) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v)
        .map_err(|e| StoreError::Codec { what: what.to_string(), message: e.to_string() })
}

fn decode<T: DeserializeOwned>(bytes: &[u8], key: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Codec {
        what: match <[u8; 8]>::try_from(key) {
            Ok(k) => QueueId::from_u64(u64::from_be_bytes(k)).to_string(),
            Err(_) => format!("{key:?}"),
        },
        message: e.to_string(),
    })
}

impl Store {
    /// Opens or creates the database at `path`. Creates the install secret on first open.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let perm_err = |op: &'static str| {
            move |e: std::io::Error| StoreError::Db { op, message: e.to_string() }
        };
        private::create_dir(path).map_err(perm_err("create directory"))?;
        let db = sled::Config::new().path(path).open().map_err(db_err("open"))?;
        let queue = db.open_tree("queue").map_err(db_err("open tree queue"))?;
        let mut waiting = 0i64;
        for kv in queue.iter() {
            let (k, v) = kv.map_err(db_err("queue scan"))?;
            waiting += waits(Some(&v), &k);
        }
        let log = db.open_tree("log").map_err(db_err("open tree log"))?;
        let meta = db.open_tree("meta").map_err(db_err("open tree meta"))?;
        let quarantine = db.open_tree("quarantine").map_err(db_err("open tree quarantine"))?;
        let lists = db.open_tree("lists").map_err(db_err("open tree lists"))?;
        let list_index = db.open_tree("list_index").map_err(db_err("open tree list_index"))?;
        let blobs = db.open_tree("blobs").map_err(db_err("open tree blobs"))?;
        let console = console::ConsoleTrees::open(&db)?;
        let learning = db.open_tree("learning").map_err(db_err("open tree learning"))?;
        let counters = db.open_tree("counters").map_err(db_err("open tree counters"))?;

        match meta.get(KEY_SCHEMA).map_err(db_err("read schema"))? {
            Some(v) if v.as_ref() == SCHEMA_VERSION => {}
            Some(v) => return Err(StoreError::Schema(String::from_utf8_lossy(&v).into_owned())),
            None => {
                meta.insert(KEY_SCHEMA, SCHEMA_VERSION).map_err(db_err("write schema"))?;
            }
        }
        let secret = Self::load_or_create_secret(&meta)?;
        if !counters.contains_key(counters::KEY_COMPLETE).map_err(db_err("read counters"))? {
            // A store from before the counters (or one whose first count was cut short).
            counters.clear().map_err(db_err("clear counters"))?;
            counters::rebuild(&counters, &log, &quarantine)?;
        }
        lists::index_once(&lists, &list_index, &meta)?;
        db.flush().map_err(db_err("flush"))?;
        private::tighten(path).map_err(perm_err("make files private"))?;
        Ok(Store {
            db,
            queue,
            log,
            quarantine,
            lists,
            list_index,
            blobs,
            console,
            learning,
            counters,
            waiting: Arc::new(AtomicI64::new(waiting)),
            secret,
        })
    }

    fn load_or_create_secret(meta: &sled::Tree) -> Result<[u8; 32], StoreError> {
        let stored = match meta.get(KEY_SECRET).map_err(db_err("read secret"))? {
            Some(v) => v,
            None => {
                let mut fresh = [0u8; 32];
                getrandom::getrandom(&mut fresh).map_err(|e| StoreError::Random(e.to_string()))?;
                // Only the first writer wins; everyone then uses what is stored.
                let _ = meta
                    .compare_and_swap(KEY_SECRET, None as Option<&[u8]>, Some(&fresh[..]))
                    .map_err(db_err("write secret"))?;
                meta.get(KEY_SECRET).map_err(db_err("read secret"))?.ok_or_else(|| {
                    StoreError::Db { op: "read secret", message: "vanished".into() }
                })?
            }
        };
        <[u8; 32]>::try_from(stored.as_ref()).map_err(|_| StoreError::Codec {
            what: "install secret".into(),
            message: format!("{} bytes, expected 32", stored.len()),
        })
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(db_err("flush"))
    }

    // ---- queue index -------------------------------------------------------------

    pub fn queue_put(&self, e: &QueueEntry) -> Result<(), StoreError> {
        let k = key(&e.id);
        let old = self.queue.insert(k, encode(e, &e.id)?).map_err(db_err("queue put"))?;
        self.count_waiting(i64::from(!e.held) - waits(old.as_deref(), &k));
        Ok(())
    }

    /// Queue entries waiting for delivery (not held), without a scan.
    pub fn queue_waiting(&self) -> u64 {
        u64::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(0)
    }

    fn count_waiting(&self, delta: i64) {
        if delta != 0 {
            self.waiting.fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn queue_get(&self, id: &QueueId) -> Result<Option<QueueEntry>, StoreError> {
        let k = key(id);
        match self.queue.get(k).map_err(db_err("queue get"))? {
            Some(v) => decode(&v, &k).map(Some),
            None => Ok(None),
        }
    }

    /// Changes a queue entry with `f` in one atomic step: a compare-and-swap, retried
    /// when another writer got in between, so `f` may run more than once (each time on
    /// the entry as now stored) and must do nothing but change its argument. Nothing
    /// happens when there is no entry, so a message deleted meanwhile stays deleted.
    /// Returns the entry as stored, or `None` if there was none.
    pub fn queue_update<F>(&self, id: &QueueId, mut f: F) -> Result<Option<QueueEntry>, StoreError>
    where
        F: FnMut(&mut QueueEntry),
    {
        let k = key(id);
        loop {
            let Some(old) = self.queue.get(k).map_err(db_err("queue get"))? else {
                return Ok(None);
            };
            let mut entry: QueueEntry = decode(&old, &k)?;
            let was = i64::from(!entry.held);
            f(&mut entry);
            let new = encode(&entry, id)?;
            let swapped = self
                .queue
                .compare_and_swap(k, Some(old), Some(new))
                .map_err(db_err("queue update"))?;
            if swapped.is_ok() {
                self.count_waiting(i64::from(!entry.held) - was);
                return Ok(Some(entry));
            }
        }
    }

    pub fn queue_remove(&self, id: &QueueId) -> Result<(), StoreError> {
        let k = key(id);
        let old = self.queue.remove(k).map_err(db_err("queue remove"))?;
        self.count_waiting(-waits(old.as_deref(), &k));
        Ok(())
    }

    /// Every queue entry, oldest first.
    pub fn queue_all(&self) -> Result<Vec<QueueEntry>, StoreError> {
        self.queue
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("queue scan"))?;
                decode(&v, &k)
            })
            .collect()
    }

    // ---- message log -------------------------------------------------------------

    /// Records a received message (replaces an earlier record of the same id), with its
    /// counters in the same transaction.
    pub fn log_put(&self, e: &LogEntry) -> Result<(), StoreError> {
        let k = key(&e.id);
        let bytes = encode(e, &e.id)?;
        (&self.log, &self.counters)
            .transaction(|(log, ctr)| {
                let mut delta = counters::Delta::default();
                let old = log.insert(&k, bytes.as_slice())?;
                let old_action = match old {
                    Some(old) => {
                        let old: LogEntry = decode(&old, &k).map_err(abort)?;
                        delta.log_record(&old, -1);
                        Some(old.action)
                    }
                    None => None,
                };
                if old_action.as_ref() != Some(&e.action) {
                    delta.log_written(&e.action);
                }
                delta.log_record(e, 1);
                delta.apply(ctr)
            })
            .map_err(tx_err("log put"))
    }

    pub fn log_get(&self, id: &QueueId) -> Result<Option<LogEntry>, StoreError> {
        let k = key(id);
        match self.log.get(k).map_err(db_err("log get"))? {
            Some(v) => decode(&v, &k).map(Some),
            None => Ok(None),
        }
    }

    /// The newest `limit` records, newest first.
    pub fn log_recent(&self, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.log_page(None, limit)
    }

    /// Up to `limit` records older than `before` (or the newest, with `None`), newest
    /// first: the console pages with the last id of the previous page.
    pub fn log_page(
        &self,
        before: Option<&QueueId>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let iter = match before {
            Some(id) => self.log.range(..key(id)),
            None => self.log.iter(),
        };
        iter.rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("log scan"))?;
                decode(&v, &k)
            })
            .collect()
    }

    /// Appends a delivery attempt to a message's log record. Safe against concurrent
    /// appends (compare-and-swap retry), so no attempt is lost.
    pub fn log_add_attempt(&self, id: &QueueId, a: DeliveryAttempt) -> Result<(), StoreError> {
        let k = key(id);
        loop {
            let old = self
                .log
                .get(k)
                .map_err(db_err("log get"))?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            let mut entry: LogEntry = decode(&old, &k)?;
            entry.deliveries.push(a.clone());
            let new = encode(&entry, id)?;
            let swapped =
                self.log.compare_and_swap(k, Some(old), Some(new)).map_err(db_err("log append"))?;
            if swapped.is_ok() {
                return Ok(());
            }
        }
    }

    /// Removes log records received before `cutoff` (unix seconds), oldest first, and
    /// returns how many went. Keys are time-ordered ids, so the scan stops at the first
    /// record that is new enough: a clock step back may leave a few old records for a
    /// later round, but never costs a scan of the whole log.
    pub fn log_prune(&self, cutoff: u64) -> Result<usize, StoreError> {
        // Small transactions: each holds sled's write lock, which intake waits for.
        const BATCH: usize = 512;
        let mut removed = 0;
        loop {
            let mut old = Vec::with_capacity(BATCH);
            for kv in self.log.iter() {
                let (k, v) = kv.map_err(db_err("log scan"))?;
                let e: LogEntry = decode(&v, &k)?;
                if e.received_at >= cutoff || old.len() == BATCH {
                    break;
                }
                old.push(k);
            }
            if old.is_empty() {
                return Ok(removed);
            }
            removed += (&self.log, &self.counters)
                .transaction(|(log, ctr)| {
                    let mut delta = counters::Delta::default();
                    let mut n = 0;
                    for k in &old {
                        // Read again inside the transaction: the record may have changed.
                        let Some(v) = log.get(k)? else { continue };
                        let e: LogEntry = decode(&v, k).map_err(abort)?;
                        if e.received_at < cutoff {
                            log.remove(k)?;
                            delta.log_record(&e, -1);
                            n += 1;
                        }
                    }
                    delta.apply(ctr)?;
                    Ok(n)
                })
                .map_err(tx_err("log prune"))?;
            if old.len() < BATCH {
                return Ok(removed);
            }
        }
    }

    /// Number of records in the message log (a counter read).
    pub fn log_len(&self) -> Result<usize, StoreError> {
        Ok(counters::read_log(&self.counters)? as usize)
    }

    /// The counters: record counts, log records by action, and log records by hour from
    /// hour `from_hour` (unix seconds / 3600) on. With `tops`, also the per-hour counts of
    /// reasons, senders and recipients, which are many more keys.
    pub fn counts(&self, from_hour: u64, tops: bool) -> Result<Counts, StoreError> {
        counters::read(&self.counters, from_hour, tops)
    }

    /// Log records ever written, by action; these never decrease (pruning and removal
    /// leave them), as Prometheus counters must not. A record rewritten with another
    /// action (a message taken back to a tempfail) counts under both.
    pub fn log_written(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        counters::written(&self.counters)
    }

    /// What [`Store::counts`]`(0, true)` should read, counted from scratch by scanning the
    /// log and the quarantine: for checks and tests, not for pages.
    pub fn recount(&self) -> Result<Counts, StoreError> {
        counters::recount(&self.log, &self.quarantine)
    }

    // ---- install secret ----------------------------------------------------------

    /// 32 random bytes made at the first open and stable afterwards (the X-Levee-Stamp
    /// key).
    pub fn install_secret(&self) -> Result<[u8; 32], StoreError> {
        Ok(self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("levee-store-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn id(n: u64) -> QueueId {
        QueueId::from_u64(n)
    }

    fn queue_entry(n: u64) -> QueueEntry {
        QueueEntry {
            id: id(n),
            received_at: 1_700_000_000 + n,
            attempts: 2,
            next_attempt: 1_700_000_600,
            recipients: vec![
                RcptState {
                    rcpt: "a@dest.test".into(),
                    status: RcptStatus::Pending,
                    last_reply: None,
                },
                RcptState {
                    rcpt: "b@dest.test".into(),
                    status: RcptStatus::Deferred,
                    last_reply: Some("451 4.3.0 try later".into()),
                },
            ],
            released: None,
            held: n.is_multiple_of(2),
        }
    }

    fn log_entry(n: u64) -> LogEntry {
        LogEntry {
            id: id(n),
            received_at: 1_700_000_000 + n,
            client_ip: "192.0.2.1".into(),
            helo: "mx.example.test".into(),
            mail_from: String::new(),
            rcpt_to: vec!["a@dest.test".into()],
            size: 1234,
            action: LogAction::Tag,
            score: 5.5,
            findings: vec![("DNSBL".into(), "listed \"x\"".into(), 3.0)],
            deliveries: vec![],
        }
    }

    fn attempt(rcpt: &str) -> DeliveryAttempt {
        DeliveryAttempt {
            at: 1_700_000_100,
            rcpt: rcpt.into(),
            host: "mail.dest.test:25".into(),
            reply: "250 2.0.0 ok".into(),
            outcome: DeliveryOutcome::Delivered,
        }
    }

    /// Opens a store another handle just closed: sled's flusher thread may hold the file lock
    /// for a moment after the drop (seen on a loaded machine), so retry briefly.
    pub(crate) fn reopen(dir: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn data_survives_close_and_reopen() {
        let d = TempDir::new("reopen");
        {
            let s = Store::open(&d.0).unwrap();
            s.queue_put(&queue_entry(1)).unwrap();
            s.queue_put(&queue_entry(2)).unwrap();
            s.log_put(&log_entry(1)).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(&d.0);
        assert_eq!(s.queue_get(&id(1)).unwrap(), Some(queue_entry(1)));
        assert_eq!(s.queue_all().unwrap(), [queue_entry(1), queue_entry(2)]);
        assert_eq!(s.log_get(&id(1)).unwrap(), Some(log_entry(1)));
        assert_eq!(s.log_get(&id(2)).unwrap(), None);
        s.queue_remove(&id(1)).unwrap();
        assert_eq!(s.queue_get(&id(1)).unwrap(), None);
        assert_eq!(s.queue_all().unwrap(), [queue_entry(2)]);
    }

    #[test]
    fn the_install_secret_is_stable_and_unique_per_install() {
        let (d1, d2) = (TempDir::new("secret1"), TempDir::new("secret2"));
        let first = Store::open(&d1.0).unwrap().install_secret().unwrap();
        let again = Store::open(&d1.0).unwrap().install_secret().unwrap();
        let other = Store::open(&d2.0).unwrap().install_secret().unwrap();
        assert_eq!(first, again);
        assert_ne!(first, other);
        assert_ne!(first, [0u8; 32]);
        let dbg = format!("{:?}", Store::open(&d2.0).unwrap());
        assert!(dbg.starts_with("Store") && !dbg.contains("secret"), "{dbg}");
    }

    #[test]
    fn log_recent_is_newest_first_and_pages() {
        let d = TempDir::new("recent");
        let s = Store::open(&d.0).unwrap();
        // Ids that differ in the high bits (time) and the low bits, inserted out of order.
        let ids = [5u64 << 40, 1, 3 << 40, (3 << 40) + 1, 0xFFFF_0000_0000_0000, 256];
        for n in ids {
            s.log_put(&log_entry(n)).unwrap();
        }
        let mut sorted = ids.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let got: Vec<QueueId> = s.log_recent(100).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(got, sorted.iter().map(|n| id(*n)).collect::<Vec<_>>());
        let top2: Vec<QueueId> = s.log_recent(2).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(top2, [id(sorted[0]), id(sorted[1])]);
        let next: Vec<QueueId> =
            s.log_page(Some(&top2[1]), 3).unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(next, [id(sorted[2]), id(sorted[3]), id(sorted[4])]);
        assert!(s.log_recent(0).unwrap().is_empty());
        assert_eq!(s.log_len().unwrap(), ids.len());
    }

    #[test]
    fn attempts_append_and_survive_reopen() {
        let d = TempDir::new("attempts");
        {
            let s = Store::open(&d.0).unwrap();
            s.log_put(&log_entry(9)).unwrap();
            s.log_add_attempt(&id(9), attempt("a@dest.test")).unwrap();
            s.log_add_attempt(&id(9), attempt("b@dest.test")).unwrap();
            assert!(matches!(
                s.log_add_attempt(&id(10), attempt("a@dest.test")),
                Err(StoreError::NotFound(_))
            ));
            s.flush().unwrap();
        }
        let s = reopen(&d.0);
        let e = s.log_get(&id(9)).unwrap().unwrap();
        let rcpts: Vec<&str> = e.deliveries.iter().map(|a| a.rcpt.as_str()).collect();
        assert_eq!(rcpts, ["a@dest.test", "b@dest.test"]);
        assert_eq!(e.findings, log_entry(9).findings);
    }

    #[test]
    fn concurrent_appends_are_all_kept() {
        let d = TempDir::new("concurrent");
        let s = Store::open(&d.0).unwrap();
        s.log_put(&log_entry(1)).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        s.log_add_attempt(&id(1), attempt(&format!("r{t}-{i}@dest.test"))).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.log_get(&id(1)).unwrap().unwrap().deliveries.len(), 100);
    }

    /// The waiting count follows puts, held/released updates and removals, and a reopened
    /// store counts the same as a full scan.
    #[test]
    fn the_waiting_count_is_kept_on_write_and_matches_a_scan() {
        let d = TempDir::new("waiting");
        let scan = |s: &Store| s.queue_all().unwrap().iter().filter(|e| !e.held).count() as u64;
        {
            let s = Store::open(&d.0).unwrap();
            for n in 1..=5 {
                let mut e = queue_entry(n);
                e.held = n % 2 == 0;
                s.queue_put(&e).unwrap();
            }
            assert_eq!((s.queue_waiting(), scan(&s)), (3, 3));
            s.queue_put(&queue_entry(1)).unwrap(); // replaced, still waiting
            s.queue_update(&id(2), |e| e.held = false).unwrap(); // released
            s.queue_update(&id(3), |e| e.held = true).unwrap(); // held
            s.queue_remove(&id(5)).unwrap();
            s.queue_remove(&id(5)).unwrap(); // already gone
            s.queue_remove(&id(4)).unwrap(); // a held one
            assert_eq!((s.queue_waiting(), scan(&s)), (2, 2));
            s.flush().unwrap();
        }
        let s = reopen(&d.0);
        assert_eq!((s.queue_waiting(), scan(&s)), (2, 2));
    }

    #[test]
    fn queue_update_changes_an_entry_and_never_brings_back_a_missing_one() {
        let d = TempDir::new("qupdate");
        let s = Store::open(&d.0).unwrap();
        assert_eq!(s.queue_update(&id(1), |e| e.attempts += 1).unwrap(), None);
        assert_eq!(s.queue_get(&id(1)).unwrap(), None, "an update must not create an entry");
        s.queue_put(&queue_entry(1)).unwrap();
        let got = s.queue_update(&id(1), |e| e.recipients[0].status = RcptStatus::Delivered);
        let got = got.unwrap().unwrap();
        assert_eq!(got.recipients[0].status, RcptStatus::Delivered);
        assert_eq!(s.queue_get(&id(1)).unwrap(), Some(got));
        s.queue_remove(&id(1)).unwrap();
        assert_eq!(s.queue_update(&id(1), |e| e.attempts += 1).unwrap(), None);
        assert_eq!(s.queue_get(&id(1)).unwrap(), None);
    }

    #[test]
    fn concurrent_queue_updates_lose_nothing_and_a_delete_wins() {
        let d = TempDir::new("qupdate-race");
        let s = Store::open(&d.0).unwrap();
        let mut e = queue_entry(1);
        e.attempts = 0;
        s.queue_put(&e).unwrap();
        let bump = |s: Store| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    s.queue_update(&id(1), |e| e.attempts += 1).unwrap();
                }
            })
        };
        let handles: Vec<_> = (0..4).map(|_| bump(s.clone())).collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.queue_get(&id(1)).unwrap().unwrap().attempts, 200);

        // Updates racing a delete: whichever comes after the delete finds nothing.
        let handles: Vec<_> = (0..4).map(|_| bump(s.clone())).collect();
        s.queue_remove(&id(1)).unwrap();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.queue_get(&id(1)).unwrap(), None);
    }

    #[test]
    fn non_finite_scores_stay_readable() {
        let d = TempDir::new("nan");
        let s = Store::open(&d.0).unwrap();
        let mut e = log_entry(3);
        e.score = f64::NAN;
        e.findings[0].2 = f64::INFINITY;
        s.log_put(&e).unwrap();
        let back = s.log_get(&id(3)).unwrap().unwrap();
        assert!(back.score.is_nan() && back.findings[0].2.is_nan());
        assert_eq!(back.findings[0].0, "DNSBL");
    }

    fn quarantined(n: u64) -> QuarantineEntry {
        QuarantineEntry {
            id: id(n),
            received_at: 1_700_000_000 + n,
            expires_at: 1_800_000_000,
            client_ip: "192.0.2.1".into(),
            mail_from: String::new(),
            rcpt_to: vec!["a@dest.test".into()],
            from_header: String::new(),
            subject: "s".into(),
            size: 1,
            score: 7.0,
            action: LogAction::Quarantine,
            findings: vec![],
        }
    }

    /// Log records with different actions, hours, senders, recipients and reasons.
    fn varied(n: u64) -> LogEntry {
        let actions = ["accept", "tag", "quarantine", "reject", "tempfail"];
        LogEntry {
            received_at: 1_700_000_000 + n * 1_000,
            action: actions[(n % 5) as usize].into(),
            mail_from: if n.is_multiple_of(3) {
                String::new()
            } else {
                format!("S{}@x.test", n % 4)
            },
            rcpt_to: vec![format!("r{}@dest.test", n % 2), "R0@dest.test".into()],
            findings: vec![
                (format!("SYM{}", n % 3), String::new(), 1.0),
                ("NEG".into(), String::new(), -1.0),
                (format!("SYM{}", n % 3), "again".into(), 2.0),
            ],
            ..log_entry(n)
        }
    }

    #[test]
    fn counters_follow_writes_replacements_and_removals() {
        let d = TempDir::new("counters");
        let s = Store::open(&d.0).unwrap();
        for n in 1..=20 {
            s.log_put(&varied(n)).unwrap();
        }
        // A message taken back: the same id again with another action.
        s.log_put(&LogEntry { action: "tempfail".into(), ..varied(1) }).unwrap();
        // The same record again changes nothing.
        s.log_put(&varied(2)).unwrap();
        for n in [1, 2, 3] {
            s.quarantine_put(&quarantined(n)).unwrap();
        }
        s.quarantine_put(&quarantined(2)).unwrap();
        s.quarantine_remove(&id(3)).unwrap();
        s.quarantine_remove(&id(3)).unwrap();

        let c = s.counts(0, true).unwrap();
        assert_eq!(c, s.recount().unwrap());
        assert_eq!((c.log, c.quarantine), (20, 2));
        assert_eq!((s.log_len().unwrap(), s.quarantine_len().unwrap()), (20, 2));
        assert_eq!(c.log_by_action["tempfail"], 5, "{c:?}");
        assert_eq!(c.log_by_action["tag"], 3);
        // Per record once: R0 is in every record, SYM twice in one record counts once.
        let top = |kind, name: &str| -> u64 {
            c.top_by_hour
                .iter()
                .filter(|((_, k, n), _)| *k == kind && n == name)
                .map(|(_, v)| v)
                .sum()
        };
        assert_eq!(top(TopKind::Recipient, "r0@dest.test"), 20);
        assert_eq!(top(TopKind::Reason, "SYM0"), 6);
        assert_eq!(top(TopKind::Reason, "NEG"), 0);
        assert_eq!(top(TopKind::Sender, "<>"), 6);
        assert_eq!(top(TopKind::Sender, "s1@x.test"), 4);
        let written = s.log_written().unwrap();
        assert_eq!(written["tag"], 4, "the first write of the taken-back message counts");
        assert_eq!(written["tempfail"], 5);
        // The hour window leaves older hours out.
        let from = varied(15).received_at / 3600;
        let late = s.counts(from, false).unwrap();
        assert!(late.top_by_hour.is_empty());
        let in_window = (1..=20).filter(|n| varied(*n).received_at / 3600 >= from).count();
        assert!(in_window < 20);
        assert_eq!(late.log_by_hour.values().sum::<u64>(), in_window as u64);
    }

    #[test]
    fn counters_survive_reopen_and_an_old_store_is_recounted_once() {
        let d = TempDir::new("recount");
        {
            let s = Store::open(&d.0).unwrap();
            for n in 1..=7 {
                s.log_put(&varied(n)).unwrap();
            }
            s.quarantine_put(&quarantined(1)).unwrap();
            s.flush().unwrap();
        }
        let expected = {
            let s = reopen(&d.0);
            let c = s.counts(0, true).unwrap();
            assert_eq!(c.log, 7);
            assert_eq!(c, s.recount().unwrap());
            // Make it look like a store from before the counters.
            s.counters.clear().unwrap();
            s.flush().unwrap();
            c
        };
        let s = reopen(&d.0);
        assert_eq!(s.counts(0, true).unwrap(), expected);
        assert_eq!(s.log_written().unwrap().values().sum::<u64>(), 7);
    }

    #[test]
    fn pruning_removes_only_old_records_and_keeps_the_counters_right() {
        let d = TempDir::new("prune");
        let s = Store::open(&d.0).unwrap();
        // 1,500 records one hour apart (more than one prune batch), in id order.
        let base = 1_700_000_000;
        for n in 0..1_500u64 {
            s.log_put(&LogEntry { received_at: base + n * 3600, ..varied(n + 1) }).unwrap();
        }
        s.quarantine_put(&quarantined(1)).unwrap();
        let written = s.log_written().unwrap();
        let cutoff = base + 1_200 * 3600;
        assert_eq!(s.log_prune(cutoff).unwrap(), 1_200);
        let left = s.log_page(None, 10_000).unwrap();
        assert_eq!(left.len(), 300);
        assert!(left.iter().all(|e| e.received_at >= cutoff));
        assert_eq!(left.last().unwrap().received_at, cutoff, "the first record kept");
        let c = s.counts(0, true).unwrap();
        assert_eq!(c, s.recount().unwrap());
        assert_eq!((c.log, c.quarantine), (300, 1));
        assert_eq!(c.log_by_hour.keys().next().unwrap().0, cutoff / 3600, "old hours are gone");
        assert_eq!(s.log_written().unwrap(), written, "totals never go down");
        assert_eq!(s.log_prune(cutoff).unwrap(), 0);
        assert_eq!(s.log_prune(u64::MAX).unwrap(), 300);
        assert_eq!(s.counts(0, true).unwrap(), s.recount().unwrap());
        assert_eq!(s.log_len().unwrap(), 0);
    }

    #[test]
    fn finished_means_no_recipient_left_to_try() {
        let mut e = queue_entry(1);
        assert!(!e.is_finished());
        e.recipients[0].status = RcptStatus::Delivered;
        e.recipients[1].status = RcptStatus::Failed;
        assert!(e.is_finished());
    }
}
