//! The queue manager: the one writer of queue and quarantine records, and the keeper of
//! which next hops are dead.
//!
//! Intake admits copies through it, delivery attempts report their results to it, and the
//! console's release, delete and expiry go through it. Nothing else in the relay writes a
//! queue or quarantine record. Each change that spans both tables (a release, dropping
//! some recipients of a held message) runs under one lock, so two of them on the same
//! message cannot interleave; the store's own compare-and-swap keeps each record whole.

use crate::RelayError;
use levee_spool::{Spool, SpoolMeta};
use levee_store::{QuarantineEntry, QueueEntry, RcptState, RcptStatus, Release, Store, StoreError};
use levee_types::{QueueId, Reply};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// What one delivery attempt found, as the attempt hands it to the manager.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttemptReport {
    /// Recipients whose state the attempt settled or deferred: address, status, reply.
    pub changed: Vec<(String, RcptStatus, Option<String>)>,
    /// When to try the rest again; `None` when nothing is left to retry.
    pub next: Option<u64>,
}

/// Where a message stands once an attempt's report is applied.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Deleted while the attempt ran: it stays deleted.
    Gone,
    /// Every recipient is delivered or failed; record and spool file are removed.
    Finished,
    /// Put back in quarantine meanwhile (not scheduled).
    Held,
    /// Due again at this time.
    Retry(u64),
}

/// A next hop none of whose hosts could be reached, and the reply that said so.
#[derive(Debug, Clone)]
struct Dead {
    since: Instant,
    reply: Reply,
}

#[derive(Debug)]
pub(crate) struct QueueManager {
    store: Store,
    spool: Arc<Spool>,
    /// Held for each change that spans the queue and the quarantine table.
    writes: Mutex<()>,
    dead: Mutex<HashMap<String, Dead>>,
}

impl QueueManager {
    pub fn new(store: Store, spool: Arc<Spool>) -> QueueManager {
        QueueManager { store, spool, writes: Mutex::new(()), dead: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Startup: spool files are the truth. A file whose record was lost gets a fresh one;
    /// a record whose file is gone is dropped. Returns (recreated, dropped).
    pub fn reconcile(
        &self,
        spooled: &[SpoolMeta],
    ) -> Result<(Vec<QueueId>, Vec<QueueId>), StoreError> {
        let _w = self.lock();
        let mut known = std::collections::HashSet::new();
        let mut recreated = Vec::new();
        for meta in spooled {
            known.insert(meta.id.clone());
            if self.store.queue_get(&meta.id)?.is_none() {
                let held = meta.action == levee_types::Action::Quarantine;
                self.store.queue_put(&entry_for(meta, held, None))?;
                recreated.push(meta.id.clone());
            }
        }
        let mut dropped = Vec::new();
        for entry in self.store.queue_all()? {
            if !known.contains(&entry.id) {
                self.store.queue_remove(&entry.id)?;
                dropped.push(entry.id);
            }
        }
        self.store.flush()?;
        Ok((recreated, dropped))
    }

    /// Blocking: the records of one newly spooled copy (durable with the group commit
    /// that follows).
    pub fn admit(
        &self,
        meta: &SpoolMeta,
        quarantine: Option<&QuarantineEntry>,
        released: Option<&Release>,
    ) -> Result<(), StoreError> {
        let _w = self.lock();
        self.store.queue_put(&entry_for(meta, quarantine.is_some(), released.cloned()))?;
        if let Some(q) = quarantine {
            self.store.quarantine_put(q)?;
        }
        Ok(())
    }

    /// Blocking: takes back a copy that will not get its 250 (spool file and records).
    pub fn unadmit(&self, id: &QueueId) {
        let _w = self.lock();
        let _ = self.spool.remove(id);
        let _ = self.store.queue_remove(id);
        let _ = self.store.quarantine_remove(id);
        let _ = self.store.flush();
    }

    /// Applies an attempt's report to the record as it is stored now: the recipients the
    /// attempt changed, if they are still waiting (one removed or settled meanwhile is
    /// left alone), one more attempt, and the next due time. A finished message leaves
    /// the queue and the spool.
    pub async fn settle(
        &self,
        id: &QueueId,
        report: &AttemptReport,
    ) -> Result<Settled, RelayError> {
        let stored = {
            let _w = self.lock();
            self.store.queue_update(id, |current| write_back(current, report))?
        };
        if matches!(&stored, Some(e) if !e.is_finished()) {
            // Settled recipients must not be tried again after a crash.
            self.store.flush()?;
        }
        match stored {
            None => Ok(Settled::Gone),
            Some(current) if current.is_finished() => {
                self.remove(id).await?;
                Ok(Settled::Finished)
            }
            Some(current) if current.held => Ok(Settled::Held),
            Some(current) => Ok(Settled::Retry(current.next_attempt)),
        }
    }

    /// Lets a held message go: it is due now, says who released it from which verdict,
    /// and leaves the quarantine. `false` when it is no longer queued.
    pub fn release(&self, id: &QueueId, release: Release, now: u64) -> Result<bool, StoreError> {
        let _w = self.lock();
        let released = self.store.queue_update(id, |e| {
            e.held = false;
            e.next_attempt = now;
            e.released = Some(release.clone());
        })?;
        if released.is_none() {
            return Ok(false);
        }
        self.store.quarantine_remove(id)?;
        self.store.flush()?;
        Ok(true)
    }

    /// Removes some recipients of a held message from its queue and quarantine records.
    /// `false` when the message is gone.
    pub fn drop_recipients(&self, id: &QueueId, gone: &[String]) -> Result<bool, StoreError> {
        let is_gone = |r: &str| gone.iter().any(|g| g.eq_ignore_ascii_case(r));
        let _w = self.lock();
        let dropped =
            self.store.queue_update(id, |e| e.recipients.retain(|r| !is_gone(&r.rcpt)))?;
        if dropped.is_none() {
            return Ok(false);
        }
        // On the record as stored: a change made meanwhile (by another node's console,
        // which this lock does not cover) is not undone.
        self.store.quarantine_update(id, |q| q.rcpt_to.retain(|r| !is_gone(r)))?;
        self.store.flush()?;
        Ok(true)
    }

    /// Deletes a message for good: its spool file, then both records. In that order, a
    /// crash between the two leaves a record without a file, which the next start drops;
    /// the other order would leave a file without a record, which the next start
    /// re-queues, and a delivered message would go out twice.
    pub async fn remove(&self, id: &QueueId) -> Result<(), RelayError> {
        let spool = self.spool.clone();
        let rid = id.clone();
        match tokio::task::spawn_blocking(move || spool.remove(&rid)).await {
            Ok(Ok(())) | Ok(Err(levee_spool::SpoolError::NotFound(_))) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(RelayError::Io(std::io::Error::other(e))),
        }
        let _w = self.lock();
        self.store.quarantine_remove(id)?;
        self.store.queue_remove(id)?;
        self.store.flush()?;
        Ok(())
    }

    /// Records at once, durably, the recipients a downstream has just taken, before the
    /// attempt does anything else, so a crash after the downstream's 250 resends as rarely
    /// as it can. When no recipient is left waiting, removing the spool file is that record
    /// (one unlink: a record without its file is dropped at the next start); otherwise the
    /// store is flushed. `false` when the message is gone.
    pub fn delivered(&self, id: &QueueId, rcpts: &[(String, String)]) -> Result<bool, RelayError> {
        let stored = {
            let _w = self.lock();
            self.store.queue_update(id, |e| {
                for (rcpt, reply) in rcpts {
                    settle_waiting(e, rcpt, RcptStatus::Delivered, Some(reply.clone()));
                }
            })?
        };
        match stored {
            None => Ok(false),
            Some(e) if e.is_finished() => match self.spool.remove(id) {
                Ok(()) | Err(levee_spool::SpoolError::NotFound(_)) => Ok(true),
                Err(e) => Err(e.into()),
            },
            Some(_) => {
                self.store.flush()?;
                Ok(true)
            }
        }
    }

    /// The reply to defer with when `dest` was found dead less than `window` ago; a
    /// destination whose window has passed is forgotten, so the next attempt tries it.
    pub fn dead_reply(&self, dest: &str, window: Duration) -> Option<Reply> {
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        let d = dead.get(dest)?;
        let ago = d.since.elapsed();
        if ago >= window {
            dead.remove(dest);
            return None;
        }
        Some(Reply::with(
            451,
            4,
            4,
            format!(
                "{dest} not reachable (tried {} s ago): {}",
                ago.as_secs(),
                d.reply.lines.join(" ")
            ),
        ))
    }

    /// Records whether `dest` could be reached: `Some(reply)` when none of its hosts
    /// answered, `None` when one did (which revives it).
    pub fn mark(&self, dest: &str, unreachable: Option<Reply>) {
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        match unreachable {
            Some(reply) => {
                dead.insert(dest.to_string(), Dead { since: Instant::now(), reply });
            }
            None => {
                dead.remove(dest);
            }
        }
    }
}

/// Sets a recipient's state if it is still waiting; one removed or settled meanwhile (by a
/// delete, a release, an earlier report) is left as it is.
fn settle_waiting(e: &mut QueueEntry, rcpt: &str, status: RcptStatus, reply: Option<String>) {
    let waiting = e
        .recipients
        .iter_mut()
        .find(|r| r.rcpt == rcpt && matches!(r.status, RcptStatus::Pending | RcptStatus::Deferred));
    if let Some(r) = waiting {
        r.status = status;
        r.last_reply = reply;
    }
}

fn write_back(current: &mut QueueEntry, report: &AttemptReport) {
    for (rcpt, status, reply) in &report.changed {
        settle_waiting(current, rcpt, *status, reply.clone());
    }
    current.attempts += 1;
    if let Some(at) = report.next {
        current.next_attempt = at;
    }
}

/// A fresh queue record for a spooled copy: every recipient pending.
pub(crate) fn entry_for(meta: &SpoolMeta, held: bool, released: Option<Release>) -> QueueEntry {
    QueueEntry {
        id: meta.id.clone(),
        received_at: meta.received_at,
        attempts: 0,
        next_attempt: meta.received_at,
        recipients: meta
            .envelope
            .rcpt_to
            .iter()
            .map(|r| RcptState {
                rcpt: r.to_string(),
                status: RcptStatus::Pending,
                last_reply: None,
            })
            .collect(),
        held,
        released,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sink::Scratch;

    fn manager(dir: &std::path::Path) -> QueueManager {
        let (spool, _) = Spool::open(&dir.join("spool")).unwrap();
        QueueManager::new(Store::open(&dir.join("db")).unwrap(), Arc::new(spool))
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_destination_is_remembered_for_its_window_then_forgotten() {
        let dir = Scratch::new("qmgr-dead");
        let q = manager(&dir.0);
        let window = Duration::from_secs(60);
        assert_eq!(q.dead_reply("mx.test:25", window), None);
        q.mark("mx.test:25", Some(Reply::with(451, 4, 4, "connection refused")));
        tokio::time::advance(Duration::from_secs(59)).await;
        let reply = q.dead_reply("mx.test:25", window).expect("still dead");
        assert_eq!(reply.code, 451);
        assert!(reply.lines[0].contains("(tried 59 s ago): connection refused"), "{reply:?}");
        assert_eq!(q.dead_reply("other.test:25", window), None, "per destination");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(q.dead_reply("mx.test:25", window), None, "window passed");
        q.mark("mx.test:25", Some(Reply::with(451, 4, 4, "refused")));
        q.mark("mx.test:25", None);
        assert_eq!(q.dead_reply("mx.test:25", window), None, "an answer revives it");
    }
}
