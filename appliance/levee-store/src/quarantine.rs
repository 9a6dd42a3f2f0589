//! The quarantine index: one record per held message, for search and expiry. The
//! message itself stays in the spool (held in the queue) until it is released or
//! deleted.

use crate::{qid, LogAction};
use levee_types::QueueId;
use serde::{Deserialize, Serialize};

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
