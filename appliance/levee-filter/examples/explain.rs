//! Prints the verdict and findings of messages as a new box (untrained model) with the default
//! rule folders judges them: `cargo run -p levee-filter --example explain -- FILE...`. Local
//! rules are read from `$LEVEE_DATA_DIR/rules` (default data directory `/data/levee`).

use levee_filter::{bayes::Model, content_findings, sa, score::Policy};

fn main() {
    let data = std::env::var_os("LEVEE_DATA_DIR").unwrap_or_else(|| "/data/levee".into());
    let dirs = sa::default_dirs(std::path::Path::new(&data));
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
