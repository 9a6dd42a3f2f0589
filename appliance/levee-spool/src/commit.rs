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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample_meta;
    use crate::testutil::TempDir;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Barrier;
    use std::time::{Duration, SystemTime};

    fn spool(d: &TempDir) -> Arc<Spool> {
        Arc::new(Spool::open(d.path()).unwrap().0)
    }

    /// Many writers, a slow flush: every caller gets Ok, rounds are shared, and each
    /// caller's work was registered before the flush that released it began.
    #[test]
    fn concurrent_callers_share_rounds_that_cover_them() {
        let d = TempDir::new("gc");
        let spool = spool(&d);
        // `pending` models index records written by callers; a flush makes durable
        // exactly what was pending when it started.
        let pending = Arc::new(Mutex::new(Vec::<u64>::new()));
        let flushed = Arc::new(Mutex::new(HashSet::<u64>::new()));
        let (p, f) = (pending.clone(), flushed.clone());
        let gc = Arc::new(GroupCommit::new(
            spool.clone(),
            Box::new(move || {
                let batch: Vec<u64> = std::mem::take(&mut *p.lock().unwrap());
                std::thread::sleep(Duration::from_millis(20));
                f.lock().unwrap().extend(batch);
                Ok(())
            }),
        ));
        const THREADS: u64 = 32;
        let barrier = Arc::new(Barrier::new(THREADS as usize));
        let handles: Vec<_> = (0..THREADS)
            .map(|n| {
                let (spool, gc, barrier) = (spool.clone(), gc.clone(), barrier.clone());
                let (pending, flushed) = (pending.clone(), flushed.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for round in 0..3 {
                        let meta = sample_meta(spool.new_id(SystemTime::now()));
                        spool.write(&meta, b"body").unwrap();
                        let key = n * 100 + round;
                        pending.lock().unwrap().push(key);
                        gc.commit().unwrap();
                        assert!(flushed.lock().unwrap().contains(&key), "released before covered");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let rounds = gc.rounds();
        assert!((1..THREADS * 3).contains(&rounds), "{rounds} rounds for {} commits", THREADS * 3);
        assert_eq!(flushed.lock().unwrap().len(), (THREADS * 3) as usize);
        assert_eq!(spool.list().unwrap().len(), (THREADS * 3) as usize);
    }

    #[test]
    fn a_failing_index_flush_fails_commit_until_it_recovers() {
        let d = TempDir::new("gcfail");
        let failing = Arc::new(AtomicBool::new(true));
        let f = failing.clone();
        let gc =
            GroupCommit::new(
                spool(&d),
                Box::new(move || {
                    if f.load(Ordering::SeqCst) {
                        Err("disk on fire".into())
                    } else {
                        Ok(())
                    }
                }),
            );
        let err = gc.commit().unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        failing.store(false, Ordering::SeqCst);
        gc.commit().unwrap();
    }

    #[test]
    fn a_panicking_index_flush_is_an_error_not_a_hang() {
        let d = TempDir::new("gcpanic");
        let once = Arc::new(AtomicBool::new(true));
        let o = once.clone();
        let gc = GroupCommit::new(
            spool(&d),
            Box::new(move || {
                if o.swap(false, Ordering::SeqCst) {
                    panic!("flush bug");
                }
                Ok(())
            }),
        );
        assert!(gc.commit().is_err());
        gc.commit().unwrap();
    }

    #[test]
    fn a_failing_directory_fsync_fails_commit() {
        let d = TempDir::new("gcdir");
        let spool = spool(&d);
        let gc = GroupCommit::new(spool.clone(), Box::new(|| Ok(())));
        gc.commit().unwrap();
        // Without its queue directory the fsync cannot happen.
        std::fs::rename(d.path().join("queue"), d.path().join("queue.gone")).unwrap();
        assert!(matches!(gc.commit(), Err(SpoolError::Commit(_))));
        std::fs::rename(d.path().join("queue.gone"), d.path().join("queue")).unwrap();
        gc.commit().unwrap();
        assert_eq!(gc.rounds(), 3);
    }
}
