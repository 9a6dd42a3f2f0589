//! A new box: no trained model, only the rules. SpamAssassin's stock rules (Debian's
//! `spamassassin` package, which the test run installs) must hold an obvious phish on their
//! own and leave a plain newsletter alone.

use std::path::{Path, PathBuf};

use levee_filter::{bayes::Model, content_findings, sa, score};
use levee_types::Action;

fn verdict(name: &str) -> levee_types::Verdict {
    let stock = PathBuf::from(sa::STOCK_DIR);
    assert!(stock.is_dir(), "{} is missing: install the spamassassin package", sa::STOCK_DIR);
    let loaded = sa::load(&[stock]).expect("the stock rules load");
    let policy = score::Policy { rule_scores: loaded.weights.clone(), ..Default::default() };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/day_one").join(name);
    let message = std::fs::read(&path).unwrap();
    let findings = content_findings(&Model::new(), Some(&loaded.set), &message);
    score::verdict(&policy, &findings, false)
}

#[test]
fn an_untrained_box_holds_a_phish_with_a_password_form_behind_a_numeric_link() {
    let v = verdict("paypal_ip_form.eml");
    assert!(v.action >= Action::Quarantine, "{:.1} {}", v.score, v.findings_summary());
    assert!(v.findings_summary().contains("SA_"), "{}", v.findings_summary());
}

#[test]
fn an_untrained_box_delivers_a_plain_newsletter_untagged() {
    let v = verdict("newsletter_ham.eml");
    assert_eq!(v.action, Action::Accept, "{:.1} {}", v.score, v.findings_summary());
}
