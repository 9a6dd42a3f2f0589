//! Counters kept on write: every change to the message log or the quarantine index
//! adjusts them in the same sled transaction, so statistics and metrics read a few
//! keys instead of decoding the log (and instead of sled's O(n) `len`).
//!
//! What one log record adds is defined once, by [`log_keys`]; a write adds those keys,
//! a removal subtracts them and a replacement does both, so the counters equal a full
//! recount ([`Counters::recount`](crate::backend::Counters::recount)) at every commit. Keys of the `counters` tree:
//! - `v`: present once the counters are complete (a store from before them is
//!   recounted once at open),
//! - `log`, `quarantine`: record counts,
//! - `a` + action: log records by action,
//! - `t` + action: log records ever written by action (never decreases: Prometheus
//!   counters),
//! - `h` + hour (u64 big-endian) + action: log records by receipt hour,
//! - `d` + hour + kind byte + name: per-hour top-list counts: `r` reason (a finding
//!   with positive weight), `s` sender (lower-case, `<>` for none), `t` recipient.
//!
//! Keys that fall to zero are removed, so pruning the log also shrinks this tree.

use std::collections::{BTreeMap, HashMap};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{db_err, decode};
use crate::{Counts, LogAction, LogEntry, QuarantineEntry, StoreError, TopKind};

pub(crate) const KEY_COMPLETE: &[u8] = b"v";
const KEY_LOG: &[u8] = b"log";
const KEY_QUARANTINE: &[u8] = b"quarantine";
const HOUR: u64 = 3600;

/// The byte of a top-list kind under the `d` prefix.
fn kind_byte(k: TopKind) -> u8 {
    match k {
        TopKind::Reason => b'r',
        TopKind::Sender => b's',
        TopKind::Recipient => b't',
    }
}

fn kind_from_byte(b: u8) -> Option<TopKind> {
    match b {
        b'r' => Some(TopKind::Reason),
        b's' => Some(TopKind::Sender),
        b't' => Some(TopKind::Recipient),
        _ => None,
    }
}

fn with(prefix: &[u8], hour: Option<u64>, tail: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    if let Some(h) = hour {
        k.extend_from_slice(&h.to_be_bytes());
    }
    for t in tail {
        k.extend_from_slice(t);
    }
    k
}

/// The counter keys one log record adds one to. Reasons, senders and recipients are
/// de-duplicated within a record, as the scan the dashboard used to do counted them.
fn log_keys(e: &LogEntry) -> Vec<Vec<u8>> {
    let hour = e.received_at / HOUR;
    let action = e.action.as_str().as_bytes();
    let mut keys =
        vec![KEY_LOG.to_vec(), with(b"a", None, &[action]), with(b"h", Some(hour), &[action])];
    let sender = if e.mail_from.is_empty() { "<>".to_string() } else { e.mail_from.to_lowercase() };
    let mut tops: Vec<(TopKind, String)> = vec![(TopKind::Sender, sender)];
    tops.extend(e.findings.iter().filter(|f| f.2 > 0.0).map(|f| (TopKind::Reason, f.0.clone())));
    tops.extend(e.rcpt_to.iter().map(|r| (TopKind::Recipient, r.to_lowercase())));
    tops.sort();
    tops.dedup();
    keys.extend(
        tops.iter()
            .map(|(kind, name)| with(b"d", Some(hour), &[&[kind_byte(*kind)], name.as_bytes()])),
    );
    keys
}

/// Net changes to counter keys, applied at the end of one transaction.
#[derive(Debug, Default)]
pub(crate) struct Delta(HashMap<Vec<u8>, i64>);

impl Delta {
    fn add(&mut self, key: Vec<u8>, n: i64) {
        *self.0.entry(key).or_insert(0) += n;
    }

    pub(crate) fn log_record(&mut self, e: &LogEntry, sign: i64) {
        for k in log_keys(e) {
            self.add(k, sign);
        }
    }

    /// A record written under `action` for the first time (new, or replaced with
    /// another action): counted in the never-decreasing `t` counters.
    pub(crate) fn log_written(&mut self, action: &LogAction) {
        self.add(with(b"t", None, &[action.as_str().as_bytes()]), 1);
    }

    pub(crate) fn quarantine(&mut self, sign: i64) {
        self.add(KEY_QUARANTINE.to_vec(), sign);
    }

    pub(crate) fn apply(
        self,
        t: &TransactionalTree,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        for (k, d) in self.0 {
            if d == 0 {
                continue;
            }
            let old = t.get(&k)?.map_or(0, |v| read_u64(&v));
            // Saturating: a counter that would go negative was already wrong, and
            // wrapping would turn it into nonsense on every page.
            let new = if d < 0 { old.saturating_sub(d.unsigned_abs()) } else { old + d as u64 };
            // A zero is stored as no key, so the tree holds only what is counted now and
            // a recount (which cannot see zeros) compares equal.
            if new == 0 {
                t.remove(k)?;
            } else {
                t.insert(k, &new.to_be_bytes())?;
            }
        }
        Ok(())
    }
}

fn read_u64(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0)
}

fn get(tree: &sled::Tree, k: &[u8]) -> Result<u64, StoreError> {
    Ok(tree.get(k).map_err(db_err("counter read"))?.map_or(0, |v| read_u64(&v)))
}

/// Adds one counter key and value to `c`, when it is of a kind `c` collects.
fn take(c: &mut Counts, k: &[u8], n: u64, from_hour: u64, tops: bool) {
    let name = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match k.first() {
        _ if k == KEY_LOG => c.log = n,
        _ if k == KEY_QUARANTINE => c.quarantine = n,
        Some(b'a') => {
            c.log_by_action.insert(name(&k[1..]), n);
        }
        Some(b'h') => {
            if let Some((hour, action)) = split_hour(k).filter(|(h, _)| *h >= from_hour) {
                c.log_by_hour.insert((hour, name(action)), n);
            }
        }
        Some(b'd') if tops => {
            let Some((hour, rest)) = split_hour(k).filter(|(h, _)| *h >= from_hour) else {
                return;
            };
            if let Some((kind, rest)) = rest.split_first() {
                if let Some(kind) = kind_from_byte(*kind) {
                    c.top_by_hour.insert((hour, kind, name(rest)), n);
                }
            }
        }
        _ => {}
    }
}

pub(crate) fn read_quarantine(tree: &sled::Tree) -> Result<u64, StoreError> {
    get(tree, KEY_QUARANTINE)
}

pub(crate) fn read_log(tree: &sled::Tree) -> Result<u64, StoreError> {
    get(tree, KEY_LOG)
}

/// Reads the counters; `from_hour` limits the per-hour maps to hours at or after it, and
/// the top lists (many keys) are read only when `tops` is set.
pub(crate) fn read(tree: &sled::Tree, from_hour: u64, tops: bool) -> Result<Counts, StoreError> {
    let mut c = Counts::default();
    let mut ranges = vec![
        (KEY_LOG.to_vec(), with(KEY_LOG, None, &[b"\0"])),
        (KEY_QUARANTINE.to_vec(), with(KEY_QUARANTINE, None, &[b"\0"])),
        (b"a".to_vec(), b"b".to_vec()),
        (with(b"h", Some(from_hour), &[]), b"i".to_vec()),
    ];
    if tops {
        ranges.push((with(b"d", Some(from_hour), &[]), b"e".to_vec()));
    }
    for (lo, hi) in ranges {
        for kv in tree.range(lo..hi) {
            let (k, v) = kv.map_err(db_err("counter scan"))?;
            take(&mut c, &k, read_u64(&v), from_hour, tops);
        }
    }
    Ok(c)
}

fn split_hour(k: &[u8]) -> Option<(u64, &[u8])> {
    let hour = <[u8; 8]>::try_from(k.get(1..9)?).ok()?;
    Some((u64::from_be_bytes(hour), &k[9..]))
}

/// Sums [`log_keys`] over the whole log, plus the `t` counters when `written` is set.
fn log_sums(log: &sled::Tree, written: bool) -> Result<HashMap<Vec<u8>, u64>, StoreError> {
    let mut sums: HashMap<Vec<u8>, u64> = HashMap::new();
    for kv in log.iter() {
        let (k, v) = kv.map_err(db_err("log scan"))?;
        let e: LogEntry = decode(&v, &k)?;
        for key in log_keys(&e) {
            *sums.entry(key).or_insert(0) += 1;
        }
        if written {
            *sums.entry(with(b"t", None, &[e.action.as_str().as_bytes()])).or_insert(0) += 1;
        }
    }
    Ok(sums)
}

fn quarantine_count(quarantine: &sled::Tree) -> Result<u64, StoreError> {
    let mut n = 0;
    for kv in quarantine.iter() {
        let (k, v) = kv.map_err(db_err("quarantine scan"))?;
        // Decoded so that an unreadable record is reported, not silently counted.
        let _: QuarantineEntry = decode(&v, &k)?;
        n += 1;
    }
    Ok(n)
}

/// The `t` counters: log records ever written, by action.
pub(crate) fn written(tree: &sled::Tree) -> Result<BTreeMap<String, u64>, StoreError> {
    tree.scan_prefix(b"t")
        .map(|kv| {
            let (k, v) = kv.map_err(db_err("counter scan"))?;
            Ok((String::from_utf8_lossy(&k[1..]).into_owned(), read_u64(&v)))
        })
        .collect()
}

/// Counts the log and the quarantine from scratch, as the counters should read.
pub(crate) fn recount(log: &sled::Tree, quarantine: &sled::Tree) -> Result<Counts, StoreError> {
    let mut c = Counts::default();
    for (k, n) in log_sums(log, false)? {
        take(&mut c, &k, n, 0, true);
    }
    c.quarantine = quarantine_count(quarantine)?;
    Ok(c)
}

/// Fills an empty `counters` tree from a recount, in one batch with the completion mark,
/// so a crash during it leaves the counters missing (and recounted again), never half.
/// An old store has no history of removed records, so the `t` counters start from what
/// it still holds.
pub(crate) fn rebuild(
    counters: &sled::Tree,
    log: &sled::Tree,
    quarantine: &sled::Tree,
) -> Result<(), StoreError> {
    let mut sums = log_sums(log, true)?;
    sums.insert(KEY_QUARANTINE.to_vec(), quarantine_count(quarantine)?);
    let mut batch = sled::Batch::default();
    for (k, n) in &sums {
        batch.insert(k.as_slice(), &n.to_be_bytes());
    }
    batch.insert(KEY_COMPLETE, b"1");
    counters.apply_batch(batch).map_err(db_err("counter rebuild"))
}
