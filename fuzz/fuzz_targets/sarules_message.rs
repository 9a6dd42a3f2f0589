//! The stock SpamAssassin rules (Debian's `spamassassin` package, as the appliance ships them)
//! run on one hostile message: MIME and header parsing, HTML facts, URI extraction, every
//! regex and the PCRE2 match limits, evals and metas.
//!
//! The rule set is loaded once per process from `LEVEE_FUZZ_RULES`, else the newest
//! `sa-update` set or `/usr/share/spamassassin`; with none installed, a small built-in set.
//!
//! Invariant: no panic, no hang (the per-input timeout), no more hits than rules.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use levee_sarules::{RuleSet, SaMessage};
use libfuzzer_sys::fuzz_target;

/// Used when no stock rules are installed: one rule of each kind.
const FALLBACK: &str = r#"
header   SUBJ_FREE   Subject =~ /\bfree\b/i
header   FROM_EXISTS exists:From
body     BODY_CLICK  /click (?:here|now)/i
rawbody  RAW_HREF    /<a\s+href=/i
uri      URI_IP      m{^https?://\d+\.\d+\.\d+\.\d+}
full     FULL_DUP    /^(Subject:.*)\n(?:.*\n)*\1$/m
body     BODY_LOOK   /money(?!\s+back)/
meta     FREE_CLICK  SUBJ_FREE && BODY_CLICK
describe FREE_CLICK  free and click
score    FREE_CLICK  2.5
"#;

fn rules_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LEVEE_FUZZ_RULES") {
        return PathBuf::from(d);
    }
    // The relay's own choice of directories (sa-update's newest set, else the stock one),
    // with a data directory that has no local rules.
    if let Some(d) = levee_filter::sa::default_dirs(Path::new("/nonexistent")).into_iter().next() {
        return d;
    }
    let d = std::env::temp_dir().join(format!("levee-fuzz-sa-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    std::fs::write(d.join("fallback.cf"), FALLBACK).expect("write fallback rules");
    d
}

fn rules() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = rules_dir();
        let (set, report) = levee_sarules::load_dirs(&[dir.as_path()]).expect("rules load");
        eprintln!("sarules_message: {} rules from {}", report.loaded, dir.display());
        set
    })
}

// Loading thousands of rules takes seconds: done before the first input, outside its timeout.
fuzz_target!(init: { rules(); }, |message: &[u8]| {
    let set = rules();
    let hits = set.check(&SaMessage::parse(message));
    assert!(hits.len() <= set.len(), "more hits than rules");
});
