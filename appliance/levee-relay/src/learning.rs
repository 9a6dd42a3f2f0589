//! Safe learning in the engine (the rules are `levee_filter::votes`): votes from the console
//! and the report address, the per-recipient overlay and autolearn at judging, and validated
//! batches to the global model.
//!
//! One owner: [`Learning`] holds the `Learner` behind one std mutex, never held across an
//! await; every change is written to the store's `learning` tree under that lock. The global
//! model changes only in [`Engine::apply_learning`], one batch at a time (its async mutex),
//! which swaps `Engine::bayes` atomically and stores the model blob.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use levee_filter::votes::{
    self, AutoOutcome, HeldBack, Learner, Limits, MessageKey, UserVotes, VoteOutcome, Voter,
};
use levee_store::{Store, LEARN_GLOBAL, LEARN_HELDBACK};
use tracing::{debug, info, warn};

use crate::{manage::BAYES_BLOB, now_unix, Engine, RelayError};

/// The learning state of one engine.
#[derive(Debug)]
pub struct Learning {
    learner: Mutex<Learner>,
    heldback: RwLock<Option<Arc<HeldBack>>>,
    applying: tokio::sync::Mutex<()>,
}

impl Learning {
    /// Loads the state from the store; unreadable records start empty (and say so).
    pub fn load(store: &Store) -> Result<Learning, RelayError> {
        let mut learner = Learner::new(Limits::default());
        match store.learning_get(LEARN_GLOBAL) {
            Ok(Some(g)) => learner.global = g,
            Ok(None) => {}
            Err(e) => warn!(error = %e, "learning state unreadable; starting with an empty queue"),
        }
        let (users, bad) = store.learning_users::<UserVotes>()?;
        for user in bad {
            warn!(%user, "a user's votes are unreadable; they start again");
        }
        learner.users = users.into_iter().collect();
        let heldback = match store.learning_get::<HeldBack>(LEARN_HELDBACK) {
            Ok(h) => h.filter(HeldBack::usable),
            Err(e) => {
                warn!(error = %e, "held-back sample unreadable");
                None
            }
        };
        if heldback.is_none() {
            info!("no held-back sample (train from a corpus to make one): votes shape only their voters' verdicts until then");
        }
        Ok(Learning {
            learner: Mutex::new(learner),
            heldback: RwLock::new(heldback.map(Arc::new)),
            applying: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Learner> {
        self.learner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn heldback(&self) -> Option<Arc<HeldBack>> {
        self.heldback.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Builds and stores the held-back sample from corpus folders (as `levee train` reads them):
/// every `every`-th file, at most `max_each` per class. Returns (spam, ham) kept.
pub fn store_heldback_from_dirs(
    store: &Store,
    spam: &Path,
    ham: &Path,
) -> Result<(usize, usize), RelayError> {
    const EVERY: usize = 5;
    const MAX_EACH: usize = 300;
    let mut sample = HeldBack::default();
    for (dir, is_spam) in [(spam, true), (ham, false)] {
        let mut files = Vec::new();
        walk(dir, &mut files)?;
        let into = if is_spam { &mut sample.spam } else { &mut sample.ham };
        for f in files.iter().step_by(EVERY).take(MAX_EACH) {
            into.push(levee_filter::bayes::tokenize(&std::fs::read(f)?));
        }
    }
    store.learning_put(LEARN_HELDBACK, &sample)?;
    store.flush()?;
    Ok((sample.spam.len(), sample.ham.len()))
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

async fn message_key(message: Arc<Vec<u8>>) -> Result<MessageKey, RelayError> {
    tokio::task::spawn_blocking(move || MessageKey::of(&message))
        .await
        .map_err(|e| RelayError::Io(std::io::Error::other(e)))
}

impl Engine {
    /// One vote: `voter` is a recipient's address or `admin:<name>`. The voter's own verdicts
    /// follow at once (users); the global model follows only through validated batches.
    pub async fn learn_vote(
        &self,
        voter: &str,
        message: &[u8],
        spam: bool,
    ) -> Result<VoteOutcome, RelayError> {
        let voter = Voter::parse(voter)?;
        let key = message_key(Arc::new(message.to_vec())).await?;
        let outcome = {
            let mut l = self.learning.lock();
            let outcome = l.vote(&voter, &key, spam, now_unix());
            if let Voter::User(addr) = &voter {
                if let Some(u) = l.users.get(addr) {
                    self.store.learning_user_put(addr, u)?;
                }
            }
            self.store.learning_put(LEARN_GLOBAL, &l.global)?;
            outcome
        };
        self.store.flush()?;
        info!(voter = %voter.key(), spam, hash = %key.hash, global = ?outcome.global, "vote");
        if let Err(e) = self.apply_learning().await {
            warn!(error = %e, "cannot apply learning");
        }
        Ok(outcome)
    }

    /// The overlay findings and autolearn, at judging: `findings` are the message's findings
    /// weighed by the global policy. Returns the message key when a recipient has votes, for
    /// [`Engine::overlay`]. Never fails the message: learning is best effort.
    pub(crate) async fn learning_at_judge(
        &self,
        rcpts: &[levee_types::Address],
        data: &Arc<Vec<u8>>,
        verdict: &levee_types::Verdict,
        policy: &levee_filter::score::Policy,
    ) -> Option<MessageKey> {
        let config = self.config();
        let lists: Vec<String> = config
            .checks
            .dnsbl
            .iter()
            .chain(&config.checks.uribl)
            .map(|l| l.symbol.0.clone())
            .collect();
        let auto = votes::autolearn_class(&verdict.findings, verdict.score, policy, &lists);
        let rcpts: Vec<String> = rcpts.iter().map(|r| r.to_string().to_ascii_lowercase()).collect();
        let personal = self.learning.lock().has_overlay(rcpts.iter().map(String::as_str));
        if auto.is_none() && !personal {
            return None;
        }
        let key = message_key(data.clone()).await.ok()?;
        if let Some(spam) = auto {
            let mut l = self.learning.lock();
            let outcome = l.autolearn(&key, spam, now_unix());
            debug!(spam, ?outcome, "autolearn");
            if outcome == AutoOutcome::Queued {
                // Made durable by the message's group commit.
                if let Err(e) = self.store.learning_put(LEARN_GLOBAL, &l.global) {
                    warn!(error = %e, "cannot store the learning state");
                }
            }
        }
        personal.then_some(key)
    }

    /// The recipient's own vote finding for a message, if any.
    pub(crate) fn overlay(&self, rcpt: &str, key: &MessageKey) -> Option<levee_types::Finding> {
        self.learning.lock().overlay(&rcpt.to_ascii_lowercase(), key)
    }

    /// Applies the next batch of pending learning to the global model if it passes validation
    /// on the held-back sample; refuses it otherwise (logged with the figures). Returns the
    /// (spam, ham) applied.
    pub async fn apply_learning(&self) -> Result<(usize, usize), RelayError> {
        let _one = self.learning.applying.lock().await;
        let now = now_unix();
        let Some(sample) = self.learning.heldback() else {
            let pending = self.learning.lock().global.pending.len();
            if pending > 0 {
                warn!(pending, "no held-back sample: validation is not possible, so the global model is not changed; votes shape only their voters' verdicts");
            }
            return Ok((0, 0));
        };
        let (batch, limits) = {
            let mut l = self.learning.lock();
            (l.take_batch(now), l.limits.clone())
        };
        if batch.is_empty() {
            return Ok((0, 0));
        }
        let (spam, ham) = batch.counts();
        let current = self.bayes();
        let (batch, candidate, result) = tokio::task::spawn_blocking(move || {
            let candidate = batch.apply(&current);
            let result = votes::validate(&current, &candidate, &sample, &limits);
            (batch, candidate, result)
        })
        .await
        .map_err(|e| RelayError::Io(std::io::Error::other(e)))?;
        let applied = match result {
            Ok((before, after)) => {
                self.store.blob_put(BAYES_BLOB, &candidate.to_bytes())?;
                *self.bayes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(candidate);
                let mut l = self.learning.lock();
                l.commit(&batch, now);
                self.store.learning_put(LEARN_GLOBAL, &l.global)?;
                info!(spam, ham, %before, %after, "learned a validated batch");
                true
            }
            Err(refusal) => {
                let mut l = self.learning.lock();
                l.refuse(&batch);
                self.store.learning_put(LEARN_GLOBAL, &l.global)?;
                warn!(spam, ham, reason = %refusal, "learning batch refused; the model is unchanged");
                false
            }
        };
        self.store.flush()?;
        Ok(if applied { (spam, ham) } else { (0, 0) })
    }
}
