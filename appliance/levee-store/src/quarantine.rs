//! The quarantine index: one record per held message, for search and expiry. The
//! message itself stays in the spool (held in the queue) until it is released or
//! deleted.

use crate::{counters, db_err, decode, encode, key, qid, tx_err, LogAction, Store, StoreError};
use levee_types::QueueId;
use serde::{Deserialize, Serialize};
use sled::Transactional;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    #[serde(with = "qid")]
    pub id: QueueId,
    pub received_at: u64,
    pub expires_at: u64,
    pub client_ip: String,
    /// Envelope sender, "" for `<>`.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The From header as written (for display only).
    pub from_header: String,
    pub subject: String,
    pub size: u64,
    pub score: f64,
    pub action: LogAction,
    pub findings: Vec<(String, String, f64)>,
}

/// A search: every given field must match; text matches are case-insensitive
/// substrings.
#[derive(Clone, Debug, Default)]
pub struct QuarantineQuery {
    /// Only messages with one of these recipients (an end user's own addresses).
    pub recipients: Option<Vec<String>>,
    pub recipient: Option<String>,
    pub sender: Option<String>,
    pub subject: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub min_score: Option<f64>,
    pub max_score: Option<f64>,
    pub offset: usize,
    /// 0 means no limit.
    pub limit: usize,
}

fn contains(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

impl QuarantineQuery {
    pub fn matches(&self, e: &QuarantineEntry) -> bool {
        let own = self.recipients.as_ref().is_none_or(|mine| {
            e.rcpt_to.iter().any(|r| mine.iter().any(|m| m.eq_ignore_ascii_case(r)))
        });
        own && self.recipient.as_ref().is_none_or(|r| e.rcpt_to.iter().any(|x| contains(x, r)))
            && self
                .sender
                .as_ref()
                .is_none_or(|s| contains(&e.mail_from, s) || contains(&e.from_header, s))
            && self.subject.as_ref().is_none_or(|s| contains(&e.subject, s))
            && self.since.is_none_or(|t| e.received_at >= t)
            && self.until.is_none_or(|t| e.received_at <= t)
            && self.min_score.is_none_or(|m| e.score >= m)
            && self.max_score.is_none_or(|m| e.score <= m)
    }
}

impl Store {
    /// Adds or replaces an entry; the quarantine counter changes in the same transaction.
    pub fn quarantine_put(&self, e: &QuarantineEntry) -> Result<(), StoreError> {
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

    pub fn quarantine_get(&self, id: &QueueId) -> Result<Option<QuarantineEntry>, StoreError> {
        match self.quarantine.get(key(id)).map_err(db_err("quarantine get"))? {
            Some(v) => Ok(Some(decode(&v, &key(id))?)),
            None => Ok(None),
        }
    }

    pub fn quarantine_remove(&self, id: &QueueId) -> Result<(), StoreError> {
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

    /// Matching entries, newest first, with the total number that matched.
    pub fn quarantine_search(
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

    /// Ids whose hold has expired at `now`.
    pub fn quarantine_expired(&self, now: u64) -> Result<Vec<QueueId>, StoreError> {
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

    /// Number of held messages (a counter read).
    pub fn quarantine_len(&self) -> Result<usize, StoreError> {
        Ok(counters::read_quarantine(&self.counters)? as usize)
    }
}
