//! The embedded backend, and the only user of sled: trees, keys and encodings stay in
//! this module, so no sled type reaches the rest of the engine.
//!
//! Trees:
//! - `queue`: per-message delivery state ([`QueueEntry`]), key = queue id as u64 big-endian.
//! - `log`: one [`LogEntry`] per received message, same key. Queue ids put the receipt time
//!   in their high bits, so key order is age order and "newest first" is a reverse scan.
//! - `quarantine`: one [`crate::QuarantineEntry`] per held message, same key.
//! - `meta`: the schema version, the per-install secret and one-time upgrade marks.
//! - `lists`, `list_index`: allow/block entries by id, and entry text → id (see `lists.rs`).
//! - `blobs`: named binary values.
//! - `counters`: counts of the log and the quarantine kept on write (see `counters.rs`).
//! - `users`, `sessions`, `throttle`, `tokens`, `schedules`: the console's (`console.rs`).
//! - `learning`: safe learning's votes, queue, counters and validation sample (JSON).
//!
//! Values are JSON (serde_json): a person can read them with a sled dump, and added
//! fields with `#[serde(default)]` keep old records readable.
//!
//! Writes are not durable until [`Backend::flush`]; the spool's group commit calls it
//! once for many messages before the relay sends 250.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use levee_types::QueueId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::backend::{Backend, Counters, MessageLog, QueueStore};
use crate::{Counts, DeliveryAttempt, LogEntry, QueueEntry, StoreError};

mod console;
mod counters;
mod learning;
mod lists;
mod private;
mod quarantine;

const SCHEMA_VERSION: &[u8] = b"1";
const KEY_SCHEMA: &[u8] = b"schema";
const KEY_SECRET: &[u8] = b"install_secret";

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

/// A sled database in one directory. One process at a time (sled locks the files).
pub struct SledBackend {
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
    waiting: AtomicI64,
    secret: [u8; 32],
}

impl fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

impl SledBackend {
    /// Opens or creates the database at `path`. Creates the install secret on first open.
    pub fn open(path: &Path) -> Result<SledBackend, StoreError> {
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
        Ok(SledBackend {
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
            waiting: AtomicI64::new(waiting),
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

    fn count_waiting(&self, delta: i64) {
        if delta != 0 {
            self.waiting.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

impl Backend for SledBackend {
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(db_err("flush"))
    }

    fn install_secret(&self) -> Result<[u8; 32], StoreError> {
        Ok(self.secret)
    }
}

impl QueueStore for SledBackend {
    fn queue_put(&self, e: &QueueEntry) -> Result<(), StoreError> {
        let k = key(&e.id);
        let old = self.queue.insert(k, encode(e, &e.id)?).map_err(db_err("queue put"))?;
        self.count_waiting(i64::from(!e.held) - waits(old.as_deref(), &k));
        Ok(())
    }

    fn queue_waiting(&self) -> u64 {
        u64::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(0)
    }

    fn queue_get(&self, id: &QueueId) -> Result<Option<QueueEntry>, StoreError> {
        let k = key(id);
        match self.queue.get(k).map_err(db_err("queue get"))? {
            Some(v) => decode(&v, &k).map(Some),
            None => Ok(None),
        }
    }

    /// A compare-and-swap, retried when another writer got in between.
    fn queue_update(
        &self,
        id: &QueueId,
        f: &mut dyn FnMut(&mut QueueEntry),
    ) -> Result<Option<QueueEntry>, StoreError> {
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

    fn queue_remove(&self, id: &QueueId) -> Result<(), StoreError> {
        let k = key(id);
        let old = self.queue.remove(k).map_err(db_err("queue remove"))?;
        self.count_waiting(-waits(old.as_deref(), &k));
        Ok(())
    }

    fn queue_all(&self) -> Result<Vec<QueueEntry>, StoreError> {
        self.queue
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("queue scan"))?;
                decode(&v, &k)
            })
            .collect()
    }
}

impl MessageLog for SledBackend {
    /// The record and its counters change in one transaction.
    fn log_put(&self, e: &LogEntry) -> Result<(), StoreError> {
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

    fn log_get(&self, id: &QueueId) -> Result<Option<LogEntry>, StoreError> {
        let k = key(id);
        match self.log.get(k).map_err(db_err("log get"))? {
            Some(v) => decode(&v, &k).map(Some),
            None => Ok(None),
        }
    }

    fn log_page(
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

    /// A compare-and-swap, retried, so no attempt is lost.
    fn log_add_attempt(&self, id: &QueueId, a: DeliveryAttempt) -> Result<(), StoreError> {
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

    /// Oldest first. Keys are time-ordered ids, so the scan stops at the first record
    /// that is new enough: a clock step back may leave a few old records for a later
    /// round, but never costs a scan of the whole log.
    fn log_prune(&self, cutoff: u64) -> Result<usize, StoreError> {
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

    fn log_len(&self) -> Result<usize, StoreError> {
        Ok(counters::read_log(&self.counters)? as usize)
    }
}

impl Counters for SledBackend {
    fn counts(&self, from_hour: u64, tops: bool) -> Result<Counts, StoreError> {
        counters::read(&self.counters, from_hour, tops)
    }

    fn log_written(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        counters::written(&self.counters)
    }

    fn recount(&self) -> Result<Counts, StoreError> {
        counters::recount(&self.log, &self.quarantine)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{LogAction, QuarantineEntry, Store};
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
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

    /// Opens a store another handle just closed: sled's flusher thread may hold the file lock
    /// for a moment after the drop (seen on a loaded machine), so retry briefly.
    pub(crate) fn reopen(dir: &Path) -> SledBackend {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledBackend::open(dir) {
                Ok(s) => return s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn sled_passes_the_conformance_checks() {
        let base = TempDir::new("conformance");
        let mut n = 0;
        crate::conformance::run(&mut || {
            n += 1;
            Store::open(&base.0.join(n.to_string())).unwrap()
        });
    }

    fn log_entry(n: u64) -> LogEntry {
        LogEntry {
            id: QueueId::from_u64(n),
            received_at: 1_700_000_000 + n * 1_000,
            client_ip: "192.0.2.1".into(),
            helo: "mx.example.test".into(),
            mail_from: format!("s{}@x.test", n % 3),
            rcpt_to: vec!["a@dest.test".into()],
            size: 1234,
            action: ["accept", "tag", "quarantine"][(n % 3) as usize].into(),
            score: 5.5,
            findings: vec![("DNSBL".into(), "listed".into(), 3.0)],
            deliveries: vec![],
        }
    }

    fn queue_entry(n: u64) -> QueueEntry {
        QueueEntry {
            id: QueueId::from_u64(n),
            received_at: 1_700_000_000 + n,
            attempts: 0,
            next_attempt: 1_700_000_600,
            recipients: vec![],
            released: None,
            held: n.is_multiple_of(2),
        }
    }

    #[test]
    fn data_and_the_waiting_count_survive_close_and_reopen() {
        let d = TempDir::new("reopen");
        {
            let s = SledBackend::open(&d.0).unwrap();
            for n in 1..=3 {
                s.queue_put(&queue_entry(n)).unwrap();
            }
            s.log_put(&log_entry(1)).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(&d.0);
        assert_eq!(s.queue_all().unwrap(), [queue_entry(1), queue_entry(2), queue_entry(3)]);
        assert_eq!(s.queue_waiting(), 2, "counted again at open");
        assert_eq!(s.log_get(&QueueId::from_u64(1)).unwrap(), Some(log_entry(1)));
    }

    #[test]
    fn the_install_secret_is_stable_and_unique_per_install() {
        let (d1, d2) = (TempDir::new("secret1"), TempDir::new("secret2"));
        let first = SledBackend::open(&d1.0).unwrap().install_secret().unwrap();
        let again = reopen(&d1.0).install_secret().unwrap();
        let other = SledBackend::open(&d2.0).unwrap().install_secret().unwrap();
        assert_eq!(first, again);
        assert_ne!(first, other);
        let dbg = format!("{:?}", reopen(&d2.0));
        assert!(dbg.starts_with("SledBackend") && !dbg.contains("secret"), "{dbg}");
    }

    #[test]
    fn counters_survive_reopen_and_an_old_store_is_recounted_once() {
        let d = TempDir::new("recount");
        {
            let s = SledBackend::open(&d.0).unwrap();
            for n in 1..=7 {
                s.log_put(&log_entry(n)).unwrap();
            }
            let q = QuarantineEntry {
                id: QueueId::from_u64(1),
                received_at: 1,
                expires_at: 2,
                client_ip: String::new(),
                mail_from: String::new(),
                rcpt_to: vec![],
                from_header: String::new(),
                subject: String::new(),
                size: 1,
                score: 7.0,
                action: LogAction::Quarantine,
                findings: vec![],
            };
            crate::backend::QuarantineStore::quarantine_put(&s, &q).unwrap();
            s.flush().unwrap();
        }
        let expected = {
            let s = reopen(&d.0);
            let c = s.counts(0, true).unwrap();
            assert_eq!((c.log, c.quarantine), (7, 1));
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

    /// The interface is usable as a trait object from any thread.
    #[test]
    fn the_backend_is_shared_as_a_trait_object() {
        let d = TempDir::new("dyn");
        let b: Arc<dyn Backend> = Arc::new(SledBackend::open(&d.0).unwrap());
        let s = Store::new(b.clone());
        s.queue_put(&queue_entry(1)).unwrap();
        let t = std::thread::spawn(move || b.queue_get(&QueueId::from_u64(1)).unwrap());
        assert_eq!(t.join().unwrap(), Some(queue_entry(1)));
    }
}
