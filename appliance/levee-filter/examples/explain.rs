//! Prints the verdict and findings of messages as a new box (untrained model) with the default
//! rule folders judges them: `cargo run -p levee-filter --example explain -- FILE...`.

use levee_filter::{bayes::Model, content_findings, sa, score::Policy};

fn main() {
    let dirs = sa::default_dirs();
    let loaded = (!dirs.is_empty()).then(|| sa::load(&dirs).expect("rules load"));
    let mut policy = Policy::default();
    if let Some(l) = &loaded {
        policy.rule_scores = l.weights.clone();
    }
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).expect("readable file");
        let findings = content_findings(&Model::new(), loaded.as_ref().map(|l| &l.set), &bytes);
        let v = levee_filter::score::verdict(&policy, &findings, false);
        println!("{path}: {:?} {:.2} {}", v.action, v.score, v.findings_summary());
    }
}
