//! The records the store keeps, whatever the backend: queue state, the message log and
//! the words they use. Backends encode them as JSON (serde), so these types are the
//! on-disk format too: added fields need `#[serde(default)]`, renamed values a fallback.

use std::fmt;

use levee_types::{Action, QueueId};
use serde::{Deserialize, Serialize};

/// Serde for [`QueueId`] as its printed form (the type itself stays serde-free).
pub(crate) mod qid {
    use levee_types::QueueId;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &QueueId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<QueueId, D::Error> {
        let s = String::deserialize(d)?;
        QueueId::parse(&s).ok_or_else(|| D::Error::custom(format!("bad queue id {s:?}")))
    }
}

/// JSON has no NaN or infinity (serde_json writes `null`); read `null` back as NaN so a
/// scorer bug cannot make a log record unreadable.
mod lenient_f64 {
    use serde::{Deserialize, Deserializer};

    pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn findings<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, String, f64)>, D::Error> {
        let raw = Vec::<(String, String, Option<f64>)>::deserialize(d)?;
        Ok(raw.into_iter().map(|(s, t, w)| (s, t, w.unwrap_or(f64::NAN))).collect())
    }
}

/// Defines a word stored as its text: known values as variants, anything else kept
/// verbatim in `Other`. A record written by a newer version (or by hand) then still
/// decodes, and a read-modify-write (appending a delivery attempt) writes the unknown
/// word back unchanged instead of losing it, which `#[serde(other)]` would do; the
/// counters, keyed by the text, stay equal to a recount either way.
macro_rules! stored_word {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A value this version does not know, as it was stored.
            Other(String),
        }

        impl $name {
            /// The stored (and displayed) text.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(s) => s,
                }
            }

            /// Never fails: an unknown word becomes `Other`.
            pub fn parse(s: &str) -> $name {
                match s {
                    $($text => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                match $name::parse(&s) {
                    // Reuses the allocation for the unknown case.
                    $name::Other(_) => $name::Other(s),
                    known => known,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(w: $name) -> String {
                match w {
                    $name::Other(s) => s,
                    known => known.as_str().to_string(),
                }
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
    };
}

stored_word! {
    /// What was done with a received message: the verdict's action as the message log,
    /// the quarantine index and a release record keep it.
    LogAction {
        Accept = "accept",
        Tag = "tag",
        Quarantine = "quarantine",
        Reject = "reject",
        /// Also a message taken back after its 250 could not be made durable.
        Tempfail = "tempfail",
    }
}

stored_word! {
    /// The result of one delivery attempt to one recipient.
    DeliveryOutcome {
        Delivered = "delivered",
        /// A temporary failure: tried again later.
        Deferred = "deferred",
        /// A permanent failure: goes into the DSN.
        Failed = "failed",
    }
}

impl From<Action> for LogAction {
    fn from(a: Action) -> LogAction {
        match a {
            Action::Accept => LogAction::Accept,
            Action::Tag => LogAction::Tag,
            Action::Quarantine => LogAction::Quarantine,
            Action::Reject => LogAction::Reject,
            Action::Tempfail => LogAction::Tempfail,
        }
    }
}

impl LogAction {
    /// The verdict's action, or `None` for a word this version does not know.
    pub fn action(&self) -> Option<Action> {
        Action::parse(self.as_str())
    }
}

/// Where one recipient of a queued message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptStatus {
    /// Not tried yet.
    Pending,
    Delivered,
    /// Temporary failure: retried at `QueueEntry::next_attempt`.
    Deferred,
    /// Permanent failure (or expired): goes into the DSN.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptState {
    pub rcpt: String,
    pub status: RcptStatus,
    /// The last reply from the next hop for this recipient, for DSNs and the console.
    pub last_reply: Option<String>,
}

/// Delivery state of one queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    #[serde(with = "qid")]
    pub id: QueueId,
    pub received_at: u64,
    pub attempts: u32,
    /// Unix seconds.
    pub next_attempt: u64,
    pub recipients: Vec<RcptState>,
    /// Quarantined: not delivered until released.
    pub held: bool,
    /// Let go from quarantine: delivery says so instead of repeating the held verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Release>,
}

/// Who released a quarantined message, and the verdict it had been held with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub by: String,
    pub verdict: LogAction,
}

impl QueueEntry {
    /// True when no recipient is left to try.
    pub fn is_finished(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| matches!(r.status, RcptStatus::Delivered | RcptStatus::Failed))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub at: u64,
    pub rcpt: String,
    pub host: String,
    pub reply: String,
    pub outcome: DeliveryOutcome,
}

/// One record per received message, for the console's message log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(with = "qid")]
    pub id: QueueId,
    pub received_at: u64,
    pub client_ip: String,
    pub helo: String,
    /// The reverse path as text; empty for `<>`.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub size: u64,
    pub action: LogAction,
    #[serde(deserialize_with = "lenient_f64::one")]
    pub score: f64,
    /// (symbol, detail, weight)
    #[serde(deserialize_with = "lenient_f64::findings")]
    pub findings: Vec<(String, String, f64)>,
    #[serde(default)]
    pub deliveries: Vec<DeliveryAttempt>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log record as the string-typed version wrote it, byte for byte.
    const OLD_LOG: &str = r#"{"id":"0000000000000009","received_at":1700000009,"client_ip":"192.0.2.1","helo":"mx.example.test","mail_from":"","rcpt_to":["a@dest.test"],"size":1234,"action":"quarantine","score":7.5,"findings":[["DNSBL","listed",3.0]],"deliveries":[{"at":1700000100,"rcpt":"a@dest.test","host":"mail.dest.test:25","reply":"250 2.0.0 ok","outcome":"delivered"},{"at":1700000200,"rcpt":"b@dest.test","host":"mail.dest.test:25","reply":"451 later","outcome":"deferred"}]}"#;

    #[test]
    fn an_old_string_record_decodes_and_encodes_the_same() {
        let e: LogEntry = serde_json::from_str(OLD_LOG).unwrap();
        assert_eq!(e.action, LogAction::Quarantine);
        assert_eq!(e.deliveries[0].outcome, DeliveryOutcome::Delivered);
        assert_eq!(e.deliveries[1].outcome, DeliveryOutcome::Deferred);
        assert_eq!(serde_json::to_string(&e).unwrap(), OLD_LOG);
    }

    #[test]
    fn unknown_words_survive_a_round_trip() {
        let json = OLD_LOG.replace(r#""quarantine""#, r#""sandboxed""#).replace("deferred", "x");
        let e: LogEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(e.action, LogAction::Other("sandboxed".into()));
        assert_eq!(e.deliveries[1].outcome.as_str(), "x");
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
    }

    #[test]
    fn words_render_as_they_are_stored() {
        for a in [Action::Accept, Action::Tag, Action::Quarantine, Action::Reject, Action::Tempfail]
        {
            let w = LogAction::from(a);
            assert_eq!((w.to_string(), w.action()), (a.to_string(), Some(a)));
            assert_eq!(LogAction::parse(a.as_str()), w);
            assert_eq!(serde_json::to_string(&w).unwrap(), format!("\"{a}\""));
        }
        for o in ["delivered", "deferred", "failed"] {
            assert_eq!(DeliveryOutcome::parse(o).to_string(), o);
            assert!(!matches!(DeliveryOutcome::parse(o), DeliveryOutcome::Other(_)));
        }
        assert_eq!(LogAction::from("new".to_string()), "new");
    }

    #[test]
    fn an_old_release_record_decodes() {
        let r: Release = serde_json::from_str(r#"{"by":"admin:root","verdict":"reject"}"#).unwrap();
        assert_eq!(r.verdict, LogAction::Reject);
    }
}
