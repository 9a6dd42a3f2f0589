//! The whole content filter on one raw message, as the relay runs it on everything it accepts:
//! an empty model and no SpamAssassin rules (those have their own targets), then the verdict.
//!
//! Invariants: no panic; the structural bounds cut at a line start, and the cut message is
//! within every bound (bounding twice cuts nothing more).

#![no_main]

use levee_filter::{bayes, limits, score};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    let model = bayes::Model::new();
    let findings = levee_filter::content_findings(&model, None, message);
    for f in &findings {
        assert!(!f.symbol.is_empty(), "a finding without a symbol");
    }
    let _ = score::verdict(&score::Policy::default(), &findings, false);
    let _ = levee_filter::content_findings_received(
        &model,
        None,
        "Received: from fuzz (fuzz [192.0.2.1])\r\n\tby levee; Thu, 1 Jan 2026 00:00:00 +0000\r\n",
        message,
    );

    let scan = limits::scan(message);
    assert!(scan.cut <= message.len());
    assert!(
        scan.cut == 0 || scan.cut == message.len() || message[scan.cut - 1] == b'\n',
        "cut inside a line at {}",
        scan.cut
    );
    let bounded = &message[..scan.cut];
    assert_eq!(limits::scan(bounded).cut, bounded.len(), "a bounded message is cut again");
});
