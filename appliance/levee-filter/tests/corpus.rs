//! Trains on a slice of the real labelled corpus and checks the filter on a slice of dev.
//! The corpus lives beside the repository: `../shared/corpus` from the repo root.

use std::path::{Path, PathBuf};

use levee_filter::bayes::{self, Model};
use levee_filter::eval::{self, ManifestEntry};
use levee_filter::score::Policy;

fn corpus() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(
        dir.join("train.tsv").is_file() && dir.join("dev.tsv").is_file(),
        "labelled corpus not found at {} (expected shared/corpus beside the repository, with \
         train.tsv and dev.tsv): this test needs it",
        dir.display()
    );
    dir
}

fn slice(entries: Vec<ManifestEntry>, per_label: usize) -> Vec<ManifestEntry> {
    let spam = entries.iter().filter(|e| e.spam).take(per_label).cloned();
    let ham = entries.iter().filter(|e| !e.spam).take(per_label).cloned();
    spam.chain(ham).collect()
}

fn trained_on_slice(dir: &Path) -> Model {
    let train = eval::read_manifest(&dir.join("train.tsv")).expect("train.tsv");
    let corpus = eval::tokenize_manifest(&slice(train, 300)).expect("read train messages");
    let mut model = Model::new();
    model.train_batch(&corpus);
    assert_eq!(model.counts(), (300, 300));
    model
}

#[test]
fn bayes_trained_on_a_slice_beats_chance_on_dev() {
    let dir = corpus();
    let model = trained_on_slice(&dir);
    // Every third dev message: all sources, both labels.
    let dev: Vec<_> = eval::read_manifest(&dir.join("dev.tsv"))
        .expect("dev.tsv")
        .into_iter()
        .step_by(3)
        .collect();
    let (mut right, mut total) = (0, 0);
    let (mut spam_right, mut spam_total) = (0, 0);
    for e in &dev {
        let bytes = std::fs::read(&e.path).expect("read dev message");
        let p = model.score(&bayes::tokenize(&bytes)).expect("trained model has an opinion");
        total += 1;
        right += usize::from((p > 0.5) == e.spam);
        if e.spam {
            spam_total += 1;
            spam_right += usize::from(p > 0.5);
        }
    }
    let accuracy = right as f64 / total as f64;
    let spam_recall = spam_right as f64 / spam_total as f64;
    assert!(total > 500, "only {total} dev messages");
    assert!(accuracy > 0.85, "accuracy {accuracy:.3} on {total} dev messages");
    assert!(spam_recall > 0.6, "spam recall {spam_recall:.3}");
}

#[test]
fn evaluate_reports_per_source_and_machine_line() {
    let dir = corpus();
    let model = trained_on_slice(&dir);
    // A small manifest of dev messages in a temp folder, reaching the corpus through a symlink.
    let tmp = std::env::temp_dir().join(format!("levee-filter-eval-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let link = tmp.join("corpus");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&dir, &link).expect("symlink");
    let dev = std::fs::read_to_string(dir.join("dev.tsv")).expect("dev.tsv");
    let mut manifest = String::from("path\tlabel\tsource\tsha256\n");
    for line in dev.lines().skip(1).step_by(10) {
        manifest.push_str(&format!("corpus/{line}\n"));
    }
    std::fs::write(tmp.join("m.tsv"), &manifest).expect("write manifest");
    let report =
        eval::evaluate(&model, None, &Policy::default(), &tmp.join("m.tsv")).expect("evaluate");
    let _ = std::fs::remove_dir_all(&tmp);

    let n = manifest.lines().count() - 1;
    assert_eq!(report.pooled.spam + report.pooled.ham, n);
    assert!(report.by_source.len() >= 3, "sources: {:?}", report.by_source.keys());
    assert!(report.pooled.caught_pct() > 30.0, "caught {:.2}", report.pooled.caught_pct());
    assert!(report.pooled.fp_pct() < 5.0, "fp {:.2}", report.pooled.fp_pct());
    let text = report.to_string();
    let last = text.lines().last().expect("report text");
    let expected = format!(
        "caught={:.2} fp={:.2} spam={} ham={}",
        report.pooled.caught_pct(),
        report.pooled.fp_pct(),
        report.pooled.spam,
        report.pooled.ham
    );
    assert_eq!(last, expected);
    assert!(report.p50_micros <= report.p99_micros);
}

#[test]
fn both_models_learn_from_reports_and_releases_of_real_mail() {
    let dir = corpus();
    let mut model = trained_on_slice(&dir);
    let dev = eval::read_manifest(&dir.join("dev.tsv")).expect("dev.tsv");
    // The spam this model likes least and the ham it likes least, among the first 200 of each.
    let scored = |model: &Model, spam: bool| -> Vec<(f64, Vec<String>)> {
        dev.iter()
            .filter(|e| e.spam == spam)
            .take(200)
            .map(|e| {
                let tokens = bayes::tokenize(&std::fs::read(&e.path).expect("read dev message"));
                (model.score(&tokens).expect("trained"), tokens)
            })
            .collect()
    };
    let lowest_spam =
        scored(&model, true).into_iter().min_by(|a, b| a.0.total_cmp(&b.0)).expect("dev spam");
    let highest_ham =
        scored(&model, false).into_iter().max_by(|a, b| a.0.total_cmp(&b.0)).expect("dev ham");
    let parts = model.score_parts(&lowest_spam.1).expect("trained");
    assert!(parts.margin.is_some(), "a batch-trained model uses its linear part");

    // "Report as spam" and "release" as the console does them: one message, one train() call.
    model.train(&lowest_spam.1, true);
    let spam_after = model.score_parts(&lowest_spam.1).expect("trained");
    assert!(spam_after.combined > lowest_spam.0, "{} -> {spam_after:?}", lowest_spam.0);
    assert!(spam_after.margin > parts.margin, "the linear model learned too");
    model.train(&highest_ham.1, false);
    let ham_after = model.score_parts(&highest_ham.1).expect("trained");
    assert!(ham_after.combined < highest_ham.0, "{} -> {ham_after:?}", highest_ham.0);

    // The learned model survives a round trip through its stored form.
    let restored = Model::from_bytes(&model.to_bytes()).expect("roundtrip");
    assert_eq!(restored.score(&lowest_spam.1), model.score(&lowest_spam.1));
}
