//! Durable message files and the retry schedule.
//!
//! The relay sends `250` after DATA only when a message is safe: [`Spool::write`] has
//! written and fsynced `tmp/ID` and linked it into `queue/ID`, and [`GroupCommit::commit`]
//! has fsynced `queue/` and flushed the index. Any error on that path means 451/452
//! ([`SpoolError::is_full`] tells which). At start [`Spool::open`] recovers every queued
//! message and moves files that fail their checks to `corrupt/`; a message is never
//! delivered half.
//!
//! All I/O is blocking std I/O: call it from `spawn_blocking` or a dedicated thread.
//!
//! The order on the receive path is: `new_id` -> `write` -> index record (store
//! `queue_put`) -> `GroupCommit::commit` -> 250. If `commit` fails the file may still be
//! in `queue/`; answering 451 then risks a duplicate after restart, never a loss.
//!
//! At start the spool file is the truth about what exists: a recovered message without
//! an index record gets a fresh one (all recipients pending); an index record whose file
//! is gone or corrupt is dropped (and, for corrupt files, reported).
//!
//! File format (see `format.rs`): typed, length-prefixed records — header (magic,
//! version), meta, body, end (CRC-32 of everything before it). A file without a valid end
//! record, or with anything after it, is never trusted.

mod commit;
mod format;
mod retry;
mod spool;

use std::path::PathBuf;

use levee_types::{Action, Envelope, Finding, QueueId};
use thiserror::Error;

pub use commit::GroupCommit;
pub use retry::{next_attempt, RetryPolicy};
pub use spool::{CorruptFile, Recovered, Spool};

/// Everything needed to deliver a message after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct SpoolMeta {
    pub id: QueueId,
    pub envelope: Envelope,
    /// Unix seconds.
    pub received_at: u64,
    /// The verdict's action at receipt (accept, tag or quarantine).
    pub action: Action,
    pub score: f64,
    pub findings: Vec<(Finding, f64)>,
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("queue file {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("no queued message {0}")]
    NotFound(QueueId),
    #[error("spool {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("spool commit failed: {0}")]
    Commit(String),
}

impl SpoolError {
    /// The spool's file system is full (or over quota): answer 452 rather than 451.
    pub fn is_full(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.raw_os_error() == Some(nix::libc::EDQUOT)
            }
            SpoolError::Commit(msg) => msg.contains("No space left") || msg.contains("quota"),
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed when dropped.
    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("levee-spool-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
