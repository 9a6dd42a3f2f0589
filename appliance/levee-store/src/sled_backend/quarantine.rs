//! Tree `quarantine`: one record per held message, keyed like the queue, for search and
//! expiry. Its count lives in the counters and changes in the same transaction.

use levee_types::QueueId;
use sled::Transactional;

use super::{counters, db_err, decode, encode, key, tx_err, SledBackend};
use crate::backend::QuarantineStore;
use crate::{QuarantineEntry, QuarantineQuery, StoreError};

impl QuarantineStore for SledBackend {
    fn quarantine_put(&self, e: &QuarantineEntry) -> Result<(), StoreError> {
        let (k, bytes) = (key(&e.id), encode(e, &e.id)?);
        (&self.quarantine, &self.counters)
            .transaction(|(q, ctr)| {
                let mut delta = counters::Delta::default();
                if q.insert(&k, bytes.as_slice())?.is_none() {
                    delta.quarantine(1);
                }
                delta.apply(ctr)
            })
            .map_err(tx_err("quarantine put"))
    }

    fn quarantine_get(&self, id: &QueueId) -> Result<Option<QuarantineEntry>, StoreError> {
        match self.quarantine.get(key(id)).map_err(db_err("quarantine get"))? {
            Some(v) => Ok(Some(decode(&v, &key(id))?)),
            None => Ok(None),
        }
    }

    /// A compare-and-swap, retried; the count does not change (the entry exists before
    /// and after), and sled orders single-key swaps with the put/remove transactions.
    fn quarantine_update(
        &self,
        id: &QueueId,
        f: &mut dyn FnMut(&mut QuarantineEntry),
    ) -> Result<Option<QuarantineEntry>, StoreError> {
        let k = key(id);
        loop {
            let Some(old) = self.quarantine.get(k).map_err(db_err("quarantine get"))? else {
                return Ok(None);
            };
            let mut e: QuarantineEntry = decode(&old, &k)?;
            f(&mut e);
            e.id = id.clone();
            let new = encode(&e, id)?;
            let swapped = self
                .quarantine
                .compare_and_swap(k, Some(old), Some(new))
                .map_err(db_err("quarantine update"))?;
            if swapped.is_ok() {
                return Ok(Some(e));
            }
        }
    }

    fn quarantine_remove(&self, id: &QueueId) -> Result<(), StoreError> {
        let k = key(id);
        (&self.quarantine, &self.counters)
            .transaction(|(q, ctr)| {
                let mut delta = counters::Delta::default();
                if q.remove(&k)?.is_some() {
                    delta.quarantine(-1);
                }
                delta.apply(ctr)
            })
            .map_err(tx_err("quarantine remove"))
    }

    fn quarantine_search(
        &self,
        q: &QuarantineQuery,
    ) -> Result<(Vec<QuarantineEntry>, usize), StoreError> {
        let mut out = Vec::new();
        let mut total = 0;
        for kv in self.quarantine.iter().rev() {
            let (k, v) = kv.map_err(db_err("quarantine scan"))?;
            let e: QuarantineEntry = decode(&v, &k)?;
            if !q.matches(&e) {
                continue;
            }
            total += 1;
            if total > q.offset && (q.limit == 0 || out.len() < q.limit) {
                out.push(e);
            }
        }
        Ok((out, total))
    }

    fn quarantine_expired(&self, now: u64) -> Result<Vec<QueueId>, StoreError> {
        let mut out = Vec::new();
        for kv in self.quarantine.iter() {
            let (k, v) = kv.map_err(db_err("quarantine scan"))?;
            let e: QuarantineEntry = decode(&v, &k)?;
            if e.expires_at <= now {
                out.push(e.id);
            }
        }
        Ok(out)
    }

    fn quarantine_len(&self) -> Result<usize, StoreError> {
        Ok(counters::read_quarantine(&self.counters)? as usize)
    }
}
