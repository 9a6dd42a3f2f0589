//! Safe learning in the engine (the rules are `levee_filter::votes`): votes from the console
//! and the report address, the per-recipient overlay and autolearn at judging, and validated
//! batches to the global model.
//!
//! One owner: [`Learning`] holds the `Learner` behind one std mutex, never held across an
//! await; every change is written to the store's `learning` tree under that lock. The global
//! model has two writers, [`Engine::apply_learning`] (validated vote batches) and
//! `Engine::train_corpus` (an admin's upload); both hold `Learning::model_writer` from
//! reading the current model until the new one is stored and swapped in, so neither loses
//! the other's work and the stored blob is always the model in use.

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
    /// One writer of the global model at a time (see the module doc).
    pub(crate) model_writer: tokio::sync::Mutex<()>,
}

impl Learning {
    /// Loads the state from the store; unreadable records start empty (and say so).
    pub fn load(store: &Store, config: &levee_config::Learning) -> Result<Learning, RelayError> {
        let mut learner = Learner::new(limits(config));
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
            model_writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Follows a config reload.
    pub fn reconfigure(&self, config: &levee_config::Learning) {
        self.lock().limits = limits(config);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Learner> {
        self.learner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn heldback(&self) -> Option<Arc<HeldBack>> {
        self.heldback.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The limits of a `[learning]` section: the built-in defaults where it says nothing.
fn limits(c: &levee_config::Learning) -> Limits {
    let d = Limits::default();
    Limits {
        user_global_per_day: c.user_global_per_day.unwrap_or(d.user_global_per_day),
        admin_global_per_day: c.admin_global_per_day.unwrap_or(d.admin_global_per_day),
        apply_per_hour: c.apply_per_hour.unwrap_or(d.apply_per_hour),
        apply_per_day: c.apply_per_day.unwrap_or(d.apply_per_day),
        max_lead: c.max_lead.unwrap_or(d.max_lead),
        auto_max_lead: c.auto_max_lead.unwrap_or(d.auto_max_lead),
        // Autolearn off is a cap of zero.
        auto_per_hour: if c.autolearn == Some(false) {
            0
        } else {
            c.auto_per_hour.unwrap_or(d.auto_per_hour)
        },
        auto_per_day: c.auto_per_day.unwrap_or(d.auto_per_day),
        max_fp_rise: c.max_fp_rise.unwrap_or(d.max_fp_rise),
        max_catch_drop: c.max_catch_drop.unwrap_or(d.max_catch_drop),
        user_step: c.user_step.unwrap_or(d.user_step),
        admin_step: c.admin_step.unwrap_or(d.admin_step),
        ..d
    }
}

/// Builds and stores the held-back sample from a tokenized training corpus (as `levee train`
/// reads it): up to 300 messages per class, evenly spread. They are training messages too, so
/// the sample measures change, not generalisation. Returns (spam, ham).
pub fn store_heldback(
    store: &Store,
    corpus: &[(Vec<String>, bool)],
) -> Result<(usize, usize), RelayError> {
    const MAX_EACH: usize = 300;
    let mut sample = HeldBack { made_at: now_unix(), ..HeldBack::default() };
    for is_spam in [true, false] {
        let class: Vec<&Vec<String>> =
            corpus.iter().filter(|(_, s)| *s == is_spam).map(|(t, _)| t).collect();
        let into = if is_spam { &mut sample.spam } else { &mut sample.ham };
        // Evenly spread over the input (sources are often sorted together).
        let step = class.len().div_ceil(MAX_EACH).max(1);
        into.extend(class.iter().step_by(step).take(MAX_EACH).map(|t| (*t).clone()));
    }
    store.learning_put(LEARN_HELDBACK, &sample)?;
    store.flush()?;
    Ok((sample.spam.len(), sample.ham.len()))
}

/// The message's key, from `tokens` when the content filter made them (one parse), else
/// tokenising the message here.
async fn message_key(
    message: Arc<Vec<u8>>,
    tokens: Option<Vec<String>>,
) -> Result<MessageKey, RelayError> {
    tokio::task::spawn_blocking(move || match tokens {
        Some(tokens) => MessageKey::with_tokens(&message, tokens),
        None => MessageKey::of(&message),
    })
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
        let key = message_key(Arc::new(message.to_vec()), None).await?;
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

    /// The overlay findings and autolearn, at judging: `verdict` is the message's verdict by
    /// the global `policy`, without allow lists or overlays. Returns the message key when a recipient has votes, for
    /// [`Engine::overlay`]. Never fails the message: learning is best effort.
    pub(crate) async fn learning_at_judge(
        &self,
        rcpts: &[levee_types::Address],
        data: &Arc<Vec<u8>>,
        tokens: Option<Vec<String>>,
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
        let key = message_key(data.clone(), tokens).await.ok()?;
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
        let _one = self.learning.model_writer.lock().await;
        let now = now_unix();
        let Some(sample) = self.learning.heldback() else {
            let pending = self.learning.lock().global.pending.len();
            if pending > 0 {
                warn!(pending, "no held-back sample: validation is not possible, so the global model is not changed; votes shape only their voters' verdicts");
            }
            return Ok((0, 0));
        };
        let (batch, limits, baseline) = {
            let mut l = self.learning.lock();
            (l.take_batch(now), l.limits.clone(), l.baseline(&sample))
        };
        if batch.is_empty() {
            return Ok((0, 0));
        }
        let (spam, ham) = batch.counts();
        let current = self.bayes();
        let (batch, candidate, result, sample) = tokio::task::spawn_blocking(move || {
            let candidate = batch.apply(&current);
            let result = votes::validate(&current, &candidate, &sample, baseline, &limits);
            (batch, candidate, result, sample)
        })
        .await
        .map_err(|e| RelayError::Io(std::io::Error::other(e)))?;
        let applied = match result {
            Ok(v) => {
                self.store.blob_put(BAYES_BLOB, &candidate.to_bytes())?;
                self.set_bayes(candidate);
                let mut l = self.learning.lock();
                l.commit(&batch, now);
                l.note_baseline(&sample, &v);
                self.store.learning_put(LEARN_GLOBAL, &l.global)?;
                info!(spam, ham, before = %v.before, after = %v.after, baseline = %v.baseline, "learned a validated batch");
                true
            }
            Err(votes::Refusal::Untrained) => {
                // Not the batch's fault: it waits until the model is trained.
                info!(spam, ham, "learning waits: the model is not trained enough to validate");
                false
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{addr, incoming_from, signed_conn as conn};
    use crate::StoreOutcome;
    use levee_smtp::Incoming;
    use levee_types::Action;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("levee-learning-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// `TEST_SIGN` weighs 7: past quarantine_at (6), short of reject_at (15).
    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\ntls = false\n\
             [[domain]]\nname = \"example.test\"\ndownstream = \"127.0.0.1:9\"\n\
             [policy.weights]\nTEST_SIGN = 7.0\n",
            dir.display()
        );
        Engine::open(levee_config::Config::parse(&text, "test").unwrap()).unwrap()
    }

    fn incoming(rcpts: &[&str]) -> Incoming {
        let data = b"From: Deals <deals@sender.example>\r\nTo: you@example.test\r\n\
            Subject: this week's offer\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
            Message-ID: <m1@sender.example>\r\n\r\nOur weekly offer: garden chairs and tables at half price.\r\n"
            .to_vec();
        incoming_from("deals@sender.example", data, rcpts)
    }

    #[tokio::test]
    async fn a_release_by_one_user_changes_only_that_users_verdict() {
        let dir = scratch("overlay");
        let engine = engine(&dir);
        let msg = incoming(&["a@example.test", "b@example.test"]);
        let StoreOutcome::Queued(id, _) = engine.accept_message(msg, &conn()).await else {
            panic!("refused");
        };
        assert!(engine.store().quarantine_get(&id).unwrap().is_some(), "held for both");
        // A releases their copy: a vote for ham by a@example.test.
        engine.quarantine_release_for(&id, &["A@example.test".into()], "a").await.unwrap();
        let left = engine.store().quarantine_get(&id).unwrap().unwrap();
        assert_eq!(left.rcpt_to, ["b@example.test"]);

        // The same message again, to both: A gets it, B's copy is still held.
        let again = incoming(&["a@example.test", "b@example.test"]);
        let groups =
            engine.judge(&again.envelope, Arc::new(again.data), conn().findings, None).await;
        let action = |who: &str| {
            let (_, v) = groups.iter().find(|(r, _)| r.contains(&addr(who))).unwrap();
            v.clone()
        };
        let a = action("a@example.test");
        assert_eq!(a.action, Action::Accept, "{}", a.findings_summary());
        assert!(a.findings.iter().any(|(f, _)| f.symbol == votes::USER_HAM_VOTE));
        let b = action("b@example.test");
        assert_eq!(b.action, Action::Quarantine, "{}", b.findings_summary());
        assert!(!b.findings.iter().any(|(f, _)| f.symbol.starts_with("USER_")));

        // Votes survive a restart; without a held-back sample the global model is unchanged.
        assert_eq!(engine.bayes().counts(), (0, 0));
        drop(groups);
        drop(engine);
        let engine = self::engine(&dir);
        let again = incoming(&["a@example.test"]);
        let groups =
            engine.judge(&again.envelope, Arc::new(again.data), conn().findings, None).await;
        assert_eq!(groups[0].1.action, Action::Accept);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_staff_report_is_an_admin_vote_and_bad_voters_are_refused() {
        let dir = scratch("admin");
        let engine = engine(&dir);
        let msg = incoming(&["a@example.test"]);
        let out = engine.learn_vote("admin:root", &msg.data, true).await.unwrap();
        assert!(!out.personal);
        assert_eq!(out.global, votes::GlobalOutcome::Queued);
        assert!(matches!(
            engine.learn_vote("not a voter", &msg.data, true).await,
            Err(RelayError::Vote(_))
        ));
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn listed_spam_is_autolearned_once_and_not_into_any_overlay() {
        let dir = scratch("autolearn");
        let engine = engine(&dir);
        let extra = "[[checks.dnsbl]]\nzone = \"bl.example.net\"\nsymbol = \"BL\"\n";
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\ntls = false\n\
             [[domain]]\nname = \"example.test\"\ndownstream = \"127.0.0.1:9\"\n\
             [policy.weights]\nTEST_SIGN = 7.0\n{extra}",
            dir.display()
        );
        engine.reload(levee_config::Config::parse(&text, "test").unwrap());
        let mut listed = conn();
        listed.findings.push(levee_types::Finding::new("BL", "192.0.2.7 listed in bl.example.net"));
        for _ in 0..2 {
            let msg = incoming(&["a@example.test"]);
            engine.judge(&msg.envelope, Arc::new(msg.data), listed.findings.clone(), None).await;
        }
        {
            let l = engine.learning.lock();
            assert_eq!(l.global.pending.len(), 1, "the same message is learned once");
            assert_eq!(l.global.auto_spam.len(), 1);
            assert!(l.users.is_empty());
        }
        // Without the list hit the same score is no evidence.
        let msg = incoming(&["b@example.test"]);
        let other = msg.data.iter().map(|b| if *b == b'G' { b'g' } else { *b }).collect();
        engine.judge(&msg.envelope, Arc::new(other), conn().findings, None).await;
        assert_eq!(engine.learning.lock().global.pending.len(), 1);
        // Turned off by config: a cap of zero.
        engine.reload(
            levee_config::Config::parse(&format!("{text}[learning]\nautolearn = false\n"), "test")
                .unwrap(),
        );
        let msg = incoming(&["a@example.test"]);
        let third = [msg.data.clone(), b"P.S. more chairs\r\n".to_vec()].concat();
        engine.judge(&msg.envelope, Arc::new(third), listed.findings.clone(), None).await;
        assert_eq!(engine.learning.lock().global.pending.len(), 1);
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
