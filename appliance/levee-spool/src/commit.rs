//! Group commit: one directory fsync and one index flush make many messages durable.
//!
//! Each caller takes a ticket; the committer thread starts a round that covers every
//! ticket issued before the round began, so a caller's own link into `queue/` (done
//! before `commit`) is always inside the fsync it waits for. Callers that arrive while a
//! round runs share the next one, which is where the batching comes from: no timers.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::{Spool, SpoolError};

type FlushIndex = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Shares directory fsyncs and index flushes between concurrent writers.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("GroupCommit")
            .field("issued", &st.issued)
            .field("covered", &st.covered)
            .field("rounds", &st.rounds)
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a ticket is issued or on shutdown.
    work: Condvar,
    /// Signalled when a round finishes.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // State is a few counters updated atomically under the lock; a panic elsewhere
        // cannot leave it half-written, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct State {
    /// Tickets issued so far; the newest ticket's number.
    issued: u64,
    /// Every ticket up to this one has a finished round.
    covered: u64,
    /// Results of finished rounds that some caller has not read yet, oldest first.
    outcomes: VecDeque<Outcome>,
    rounds: u64,
    shutdown: bool,
}

struct Outcome {
    /// The round covered tickets up to and including this one.
    upto: u64,
    error: Option<String>,
    /// Callers of this round that have not read the result.
    unread: u64,
}

impl GroupCommit {
    /// Starts the committer thread. `flush_index` makes the index durable (the store's
    /// flush); it runs after the directory fsync in every round.
    pub fn new(spool: Arc<Spool>, flush_index: FlushIndex) -> GroupCommit {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer(&s, &spool, &*flush_index))
            .expect("spawning the spool commit thread");
        GroupCommit { shared, thread: Some(thread) }
    }

    /// Blocks until a directory fsync and index flush that began after this call have
    /// both succeeded. An `Err` means the message may not be durable: answer 451.
    pub fn commit(&self) -> Result<(), SpoolError> {
        let mut st = self.shared.lock();
        if st.shutdown {
            return Err(SpoolError::Commit("group commit is shut down".into()));
        }
        st.issued += 1;
        let ticket = st.issued;
        self.shared.work.notify_one();
        while st.covered < ticket {
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let i = st
            .outcomes
            .iter()
            .position(|o| o.upto >= ticket)
            .expect("a finished round keeps its outcome until every caller read it");
        let o = &mut st.outcomes[i];
        o.unread -= 1;
        let error = o.error.clone();
        if o.unread == 0 {
            st.outcomes.remove(i);
        }
        match error {
            None => Ok(()),
            Some(e) => Err(SpoolError::Commit(e)),
        }
    }

    /// Rounds completed so far (for metrics and tests).
    pub fn rounds(&self) -> u64 {
        self.shared.lock().rounds
    }
}

fn committer(shared: &Shared, spool: &Spool, flush_index: &dyn Fn() -> Result<(), String>) {
    loop {
        let mut st = shared.lock();
        while st.issued == st.covered && !st.shutdown {
            st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.issued == st.covered {
            return; // shut down with nobody waiting
        }
        let (from, upto) = (st.covered, st.issued);
        drop(st);

        let error = match spool.sync_queue_dir() {
            Err(e) => Some(e.to_string()),
            Ok(()) => match catch_unwind(AssertUnwindSafe(flush_index)) {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("index flush: {e}")),
                Err(_) => Some("index flush panicked".into()),
            },
        };
        if let Some(e) = &error {
            tracing::error!(error = %e, "spool group commit failed");
        }

        let mut st = shared.lock();
        st.outcomes.push_back(Outcome { upto, error, unread: upto - from });
        st.covered = upto;
        st.rounds += 1;
        shared.done.notify_all();
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
