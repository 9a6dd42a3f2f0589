//! K-fold cross-validation on one manifest, for tuning without looking at dev:
//! `cargo run --release -p levee-filter --example cv -- TRAIN.tsv [K] > oof.tsv`
//!
//! Prints one line per message with its out-of-fold opinions:
//! `fold  label  source  rules_score  bayes_p  linear_margin  combined_p  verdict_score  path`
//! (`rules_score` sums the default policy's weights of the rule findings; `verdict_score` is the
//! whole default policy score, rules plus the `BAYES_*` bucket of `combined_p`), and a summary
//! on stderr.

use std::path::Path;
use std::process::ExitCode;

use levee_filter::bayes::{self, Model};
use levee_filter::{eval, rules, score::Policy};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(manifest) = args.first() else {
        eprintln!("usage: cv TRAIN.tsv [K [SEED]]");
        return ExitCode::from(2);
    };
    let k: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    // A seed reshuffles the folds, so that a change can be judged over several splits.
    let seed: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0);
    let fold_of = |i: usize| -> usize {
        let mut h = (i as u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
        if seed == 0 {
            i % k
        } else {
            (h % k as u64) as usize
        }
    };
    let entries = match eval::read_manifest(Path::new(manifest)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let t = std::time::Instant::now();
    let corpus = match eval::tokenize_manifest(&entries) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let policy = Policy::default();
    let rule_scores: Vec<f64> = entries
        .iter()
        .map(|e| {
            let bytes = std::fs::read(&e.path).unwrap_or_default();
            rules::check(&bytes).iter().map(|f| policy.weight(&f.symbol)).sum()
        })
        .collect();
    eprintln!("tokenized {} messages in {:.1}s", corpus.len(), t.elapsed().as_secs_f64());
    let (mut caught, mut spam, mut fp, mut ham) = (0, 0, 0, 0);
    for fold in 0..k {
        let train: Vec<(Vec<String>, bool)> = corpus
            .iter()
            .enumerate()
            .filter(|(i, _)| fold_of(*i) != fold)
            .map(|(_, c)| c.clone())
            .collect();
        let mut model = Model::new();
        model.train_batch(&train);
        for (i, (tokens, is_spam)) in corpus.iter().enumerate().filter(|(i, _)| fold_of(*i) == fold)
        {
            let Some(parts) = model.score_parts(tokens) else { continue };
            let total = rule_scores[i] + policy.weight(bayes::bucket(parts.combined));
            let held = total >= policy.quarantine_at;
            if *is_spam {
                spam += 1;
                caught += usize::from(held);
            } else {
                ham += 1;
                fp += usize::from(held);
            }
            println!(
                "{fold}\t{}\t{}\t{}\t{:.6}\t{:.4}\t{:.6}\t{total}\t{}",
                if *is_spam { "spam" } else { "ham" },
                entries[i].source,
                rule_scores[i],
                parts.bayes,
                parts.margin.unwrap_or(0.0),
                parts.combined,
                entries[i].path.display()
            );
        }
        eprintln!("fold {fold} done at {:.1}s", t.elapsed().as_secs_f64());
    }
    eprintln!(
        "default policy: caught {:.2}% ({caught}/{spam}), fp {:.2}% ({fp}/{ham})",
        100.0 * caught as f64 / spam as f64,
        100.0 * fp as f64 / ham as f64
    );
    ExitCode::SUCCESS
}
