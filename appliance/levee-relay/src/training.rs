//! Training the running engine's model from an admin's corpus (the console's upload): the
//! admin's labels are trusted, so this is training, not a vote.

use crate::{Engine, RelayError, BAYES_BLOB};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tracing::info;

/// Messages learned per swap of the model: the model is cloned, trained and swapped per
/// chunk, so the filter keeps reading a whole model meanwhile and a vote learned between
/// chunks is kept.
const CHUNK: usize = 500;

/// How far a training run is, for whoever shows it (the console polls it).
#[derive(Debug, Default)]
pub struct TrainProgress {
    total: AtomicUsize,
    done: AtomicUsize,
    finished: AtomicBool,
    error: Mutex<Option<String>>,
}

impl TrainProgress {
    pub fn new(total: usize) -> Arc<TrainProgress> {
        let p = TrainProgress::default();
        p.total.store(total, Ordering::Relaxed);
        Arc::new(p)
    }

    /// (done, total).
    pub fn counts(&self) -> (usize, usize) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn finish(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
        self.finished.store(true, Ordering::Release);
    }
}

impl Engine {
    /// The (spam, ham) message counts of the model in use.
    pub fn model_counts(&self) -> (u64, u64) {
        self.bayes().counts()
    }

    /// Learns every message as spam (or ham), updating `progress` as it goes, and stores
    /// the model. Runs on a blocking thread; returns the model's (spam, ham) counts after.
    ///
    /// One `Model::train` per message rather than `train_batch`: an upload holds one label
    /// only, and a batch fit on one class would switch the linear part of the model on
    /// (it joins once fitted) with weights that call everything that class. `levee train`
    /// with spam and ham together is what fits it.
    pub async fn train_corpus(
        self: &Arc<Self>,
        messages: Vec<Vec<u8>>,
        spam: bool,
        progress: Arc<TrainProgress>,
    ) -> Result<(u64, u64), RelayError> {
        let engine = self.clone();
        let task_progress = progress.clone();
        let result = tokio::task::spawn_blocking(move || {
            let progress = task_progress;
            progress.total.store(messages.len(), Ordering::Relaxed);
            // held to the end: a validated batch (or another upload) waits, rather than
            // swapping in a model built from one this run is about to replace
            let _writer = engine.learning.model_writer.blocking_lock();
            for chunk in messages.chunks(CHUNK) {
                // Tokenizing is the slow part; it happens before the model is locked.
                let tokens: Vec<Vec<String>> =
                    chunk.iter().map(|m| levee_filter::bayes::tokenize(m)).collect();
                // the model writer lock makes this clone-train-swap safe from lost updates
                let mut model = (*engine.bayes()).clone();
                for t in &tokens {
                    model.train(t, spam);
                }
                engine.set_bayes(model);
                progress.done.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            let model = engine.bayes();
            engine.store.blob_put(BAYES_BLOB, &model.to_bytes())?;
            engine.store.flush()?;
            Ok::<_, RelayError>(model.counts())
        })
        .await
        .map_err(|e| RelayError::Io(std::io::Error::other(e)));
        let result = result.and_then(|r| r);
        match &result {
            Ok((nspam, nham)) => {
                let (done, _) = progress.counts();
                info!(learned = done, spam, nspam, nham, "corpus trained");
                progress.finish(None);
            }
            Err(e) => progress.finish(Some(e.to_string())),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{config, scratch};

    /// `n` distinct spam-like messages.
    fn offers(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("Subject: offer {i}\r\n\r\ncheap pills {i}\r\n").into_bytes())
            .collect()
    }

    #[test]
    fn weights_fitted_by_levee_train_replace_stock_scores_until_the_config_names_one() {
        let dir = std::env::temp_dir().join(format!("levee-relay-fitted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = |extra: &str| {
            let text = format!(
                "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\ntls = false\n{extra}",
                dir.display()
            );
            levee_config::Config::parse(&text, "t").unwrap()
        };
        let engine = Engine::open(config("")).unwrap();
        let rules = engine.sa_rules().expect("the stock rules (spamassassin package) load");
        let stock = rules.weights["SA_DRUGS_ERECTILE"];
        assert_eq!(engine.policy().weight("SA_DRUGS_ERECTILE"), stock);
        let fitted = [("SA_DRUGS_ERECTILE".to_owned(), stock + 1.5), ("SA_GONE".to_owned(), 9.0)];
        let blob = levee_filter::fit::weights_to_bytes(&fitted.into_iter().collect());
        engine.store().blob_put(crate::RULE_WEIGHTS_BLOB, &blob).unwrap();
        engine.reload(config(""));
        assert_eq!(engine.policy().weight("SA_DRUGS_ERECTILE"), stock + 1.5);
        assert_eq!(engine.policy().weight("SA_GONE"), 0.0, "a rule the set lacks gets nothing");
        engine.reload(config("[policy.weights]\nSA_DRUGS_ERECTILE = 0.25\n"));
        assert_eq!(engine.policy().weight("SA_DRUGS_ERECTILE"), 0.25);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn corpus_training_counts_and_stores() {
        let dir = scratch("train");
        let engine = Engine::open(config(&dir, "")).unwrap();
        let messages = offers(1200);
        let progress = TrainProgress::new(messages.len());
        let counts = engine.train_corpus(messages, true, progress.clone()).await.unwrap();
        let stored = engine.store().blob_get(BAYES_BLOB).unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(counts, (1200, 0));
        assert_eq!(progress.counts(), (1200, 1200));
        assert!(progress.finished() && progress.error().is_none());
        assert_eq!(levee_filter::bayes::Model::from_bytes(&stored).unwrap().counts(), (1200, 0));
    }

    /// Learn against learn: while another writer holds the model (a vote batch being
    /// validated), an upload waits instead of training a model that batch will replace; then
    /// it lands, and the store ends on the model in use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn training_waits_for_the_model_writer_and_stores_the_model_in_use() {
        let dir = scratch("train-writer");
        let engine = Engine::open(config(&dir, "")).unwrap();
        let spam = offers(300);
        let held = engine.learning.model_writer.lock().await;
        let e = engine.clone();
        let task =
            tokio::spawn(async move { e.train_corpus(spam, true, TrainProgress::new(0)).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(engine.model_counts(), (0, 0), "trained while another writer held the model");
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(60), task)
            .await
            .expect("training finishes once the writer is free")
            .unwrap()
            .unwrap();
        let stored = engine.store().blob_get(BAYES_BLOB).unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(engine.model_counts(), (300, 0));
        assert_eq!(levee_filter::bayes::Model::from_bytes(&stored).unwrap().counts(), (300, 0));
    }
}
