//! Each `fixtures/rules/NAME.eml` is a raw message; `NAME.expected` lists the findings the rules
//! must produce, one per line: `SYMBOL` or `SYMBOL | text the detail must contain`. An empty
//! file means "no findings". On a mismatch the actual findings are written to `NAME.actual`.

use std::path::Path;

use levee_filter::rules;

#[test]
fn rule_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/rules exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    let (mut ran, mut failures) = (0, Vec::new());
    let mut fired = std::collections::BTreeSet::new();
    for eml in &names {
        let expected_path = eml.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let message = std::fs::read(eml).expect("read fixture");
        let findings = rules::check(&message);
        ran += 1;
        let mut want: Vec<(&str, Option<&str>)> = expected
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| match l.split_once(" | ") {
                Some((s, d)) => (s.trim(), Some(d.trim())),
                None => (l.trim(), None),
            })
            .collect();
        want.sort();
        let mut got: Vec<&str> = findings.iter().map(|f| f.symbol.as_str()).collect();
        got.sort();
        let symbols_match = got == want.iter().map(|w| w.0).collect::<Vec<_>>();
        let details_match = want.iter().all(|(s, d)| {
            d.is_none_or(|d| findings.iter().any(|f| f.symbol == *s && f.detail.contains(d)))
        });
        let actual: String =
            findings.iter().map(|f| format!("{} | {}\n", f.symbol, f.detail)).collect();
        let actual_path = eml.with_extension("actual");
        if symbols_match && details_match {
            let _ = std::fs::remove_file(&actual_path);
        } else {
            std::fs::write(&actual_path, &actual).expect("write .actual");
            failures.push(format!("{}:\n  want {want:?}\n  got  {actual}", eml.display()));
        }
        fired.extend(findings.into_iter().map(|f| f.symbol));
    }
    assert!(ran >= 1, "no fixture ran in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {ran} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every rule has at least one fixture that makes it fire.
    for symbol in [
        "GTUBE",
        "MISSING_DATE",
        "MISSING_MESSAGE_ID",
        "MISSING_FROM",
        "HTML_ONLY_LITTLE_TEXT",
        "HTML_LINK_TEXT_MISMATCH",
        "URL_NUMERIC_IP",
        "FREEMAIL_REPLYTO",
        "FROM_DISPLAY_ADDR_MISMATCH",
        "REPLYTO_DIFFERENT_DOMAIN",
        "DANGEROUS_ATTACHMENT",
        "SUBJECT_ALL_CAPS",
        "UNPARSABLE_MESSAGE",
    ] {
        assert!(fired.contains(symbol), "no fixture exercises {symbol}");
    }
}
