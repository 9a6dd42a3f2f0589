//! Rule types, conditionals, errors and budget on hand-written fixtures; the stock
//! SpamAssassin set must load.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use levee_sarules::{load_dirs, load_dirs_with, Options, RuleSet, RulesError, SaMessage};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_fixture() -> (RuleSet, levee_sarules::LoadReport) {
    load_dirs(&[&fixtures().join("rules")]).unwrap_or_else(|e| panic!("{e}"))
}

fn hits(set: &RuleSet, file: &str) -> HashSet<String> {
    let raw = std::fs::read(fixtures().join(file)).expect("fixture");
    set.check(&SaMessage::parse(&raw)).into_iter().map(|h| h.name).collect()
}

#[test]
fn each_rule_type_hits_spam_and_misses_ham() {
    let (set, _) = load_fixture();
    let spam = hits(&set, "spam.eml");
    let ham = hits(&set, "ham.eml");
    let spam_only = [
        "T_SUBJ_FREE",
        "T_FROM_ADDR",
        "T_FROM_NAME",
        "T_NO_XMAILER",
        "T_UNSET",
        "T_RAW_SUBJ",
        "T_ALL_BULK",
        "T_TOCC_MISSING",
        "T_MSGID",
        "T_BODY_WIRE",
        "T_RAW_FONT",
        "T_URI_CLICK",
        "T_FULL_BULK",
        "T_MIME_EXE",
        "T_MANY_DOLLARS",
        "T_META_LOGIC",
        "T_ZERO_FEEDS",
        "T_REPLACE",
        "T_EVAL_NO_TO",
        "T_EVAL_CAPS",
        "T_EVAL_FREEMAIL",
        "T_EVAL_RCVD3",
        "T_EVAL_SHIFTED",
        "T_EVAL_IMGONLY",
        "T_EVAL_IFRAME",
        "T_EVAL_HTML",
        "T_EVAL_B64TEXT",
        "T_EVAL_SHORT",
        "T_IF_VERSION",
        "T_NESTED_ON",
        "T_DEEP_ON",
    ];
    for r in spam_only {
        assert!(spam.contains(r), "{r} should hit spam.eml; hits: {spam:?}");
        assert!(!ham.contains(r), "{r} should miss ham.eml; hits: {ham:?}");
    }
    for r in ["T_LIST_EXISTS", "T_NICE_DEFAULT"] {
        assert!(ham.contains(r) && !spam.contains(r), "{r}: ham {ham:?} spam {spam:?}");
    }
    // score 0 and sub-rules are never reported
    for r in ["T_ZERO", "__T_DOLLAR"] {
        assert!(!spam.contains(r) && !ham.contains(r), "{r}");
    }
}

#[test]
fn scores_defaults_and_descriptions() {
    let (set, _) = load_fixture();
    let sym: Vec<(String, f64, String)> =
        set.symbols().map(|(n, s, d)| (n.to_string(), s, d.to_string())).collect();
    let get = |n: &str| sym.iter().find(|s| s.0 == n).cloned().unwrap_or_else(|| panic!("{n}"));
    // score set 2 by default
    assert_eq!(get("T_SUBJ_FREE").1, 2.5);
    assert_eq!(get("T_SUBJ_FREE").2, "Subject offers free money");
    assert_eq!(get("T_LIST_EXISTS").1, -1.0);
    // T_ names default to 0.01, nice ones negative
    assert_eq!(get("T_BODY_WIRE").1, 0.01);
    assert_eq!(get("T_NICE_DEFAULT").1, -0.01);
    assert!(!sym.iter().any(|s| s.0 == "T_ZERO" || s.0 == "__T_DOLLAR"));

    let (set0, _) = load_dirs_with(
        &[&fixtures().join("rules")],
        Options { score_set: 0, ..Options::default() },
    )
    .expect("load");
    assert_eq!(set0.symbols().find(|s| s.0 == "T_SUBJ_FREE").map(|s| s.1), Some(1.0));
}

#[test]
fn later_dirs_override() {
    let (set, _) =
        load_dirs(&[&fixtures().join("rules"), &fixtures().join("override")]).expect("load");
    let s = set.symbols().find(|s| s.0 == "T_SUBJ_FREE").map(|(_, s, d)| (s, d.to_string()));
    assert_eq!(s, Some((4.0, "Overridden description".to_string())));
    assert!(hits(&set, "spam.eml").contains("T_BODY_WIRE"));
}

#[test]
fn conditionals_and_skips_are_reported() {
    let (set, report) = load_fixture();
    let skipped = |reason: &str| report.skipped.get(reason).cloned().unwrap_or_default();
    assert!(skipped("network").contains(&"T_NET_RULE".to_string()), "{report}");
    assert!(skipped("network").contains(&"T_DNS_RULE".to_string()), "{report}");
    assert_eq!(skipped("eval check_something_unheard_of not implemented"), vec!["T_UNKNOWN_EVAL"]);
    assert_eq!(skipped("plugin NoSuchPlugin not available"), vec!["T_PLUGIN_OFF"]);
    let names: HashSet<&str> = set.symbols().map(|s| s.0).collect();
    for off in ["T_NESTED_OFF", "T_ELSE_OFF", "T_PLUGIN_OFF", "T_NET_RULE"] {
        assert!(!names.contains(off), "{off} should not be loaded");
    }
    for on in ["T_IF_VERSION", "T_NESTED_ON", "T_DEEP_ON"] {
        assert!(names.contains(on), "{on} should be loaded");
    }
    assert_eq!(report.files, 1);
    assert_eq!(report.ignored.get("required_score"), Some(&1));
    let shown = report.to_string();
    assert!(shown.contains("rules loaded"), "{shown}");
    assert!(shown.contains("network"), "{shown}");
}

fn write_cf(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("levee-sarules-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    std::fs::write(dir.join("50_bad.cf"), text).expect("write");
    dir
}

#[test]
fn bad_files_are_refused_with_file_and_line() {
    let cases = [
        ("regex", "body OK /fine/\n\nbody BAD /unterminated\n", 3, "unterminated"),
        ("op", "# c\nheader BAD Subject /x/\n", 2, "=~"),
        ("endif", "body A /a/\nendif\n", 2, "endif without if"),
        ("unclosed", "if (version >= 3.0)\nbody A /a/\n", 1, "without endif"),
        ("meta", "body A /a/\nmeta M (A && B\n", 2, "parentheses"),
        ("score", "body A /a/\nscore A lots\n", 2, "not a number"),
        ("cond", "if frobnicate(1)\nendif\n", 1, "if"),
    ];
    for (name, text, line, why) in cases {
        let dir = write_cf(name, text);
        let file = dir.join("50_bad.cf");
        match load_dirs(&[&dir]) {
            Err(RulesError::Parse { file: f, line: l, reason }) => {
                assert_eq!(f, file, "{name}");
                assert_eq!(l, line, "{name}: {reason}");
                assert!(reason.contains(why), "{name}: {reason}");
                let shown = RulesError::Parse { file: f, line: l, reason }.to_string();
                assert!(shown.starts_with(&format!("{}:{line}: ", file.display())), "{shown}");
            }
            other => panic!("{name}: expected a parse error, got {:?}", other.map(|r| r.1)),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(matches!(load_dirs(&[Path::new("/nonexistent/levee")]), Err(RulesError::Io { .. })));
}

#[test]
fn pathological_regex_stays_within_budget() {
    // back-reference: only the backtracking engine runs it, and on runs of `a` ending in
    // `!c` it backtracks exponentially
    let dir = write_cf("patho", "body T_PATHO /(a+)+\\1c/\nbody T_FINE /aaa/\n");
    let (set, report) = load_dirs(&[&dir]).expect("load");
    assert_eq!(report.backtracking, 1);
    let line = format!("{}!c", "a".repeat(40));
    let mut raw = String::from("Subject: hostile\r\n\r\n");
    for _ in 0..2000 {
        raw.push_str(&line);
        raw.push_str("\r\n\r\n");
    }
    let r = set.check_report(&SaMessage::parse(raw.as_bytes()));
    assert_eq!(r.out_of_budget, vec!["T_PATHO".to_string()]);
    assert!(r.hits.iter().any(|h| h.name == "T_FINE"));
    assert!(!r.hits.iter().any(|h| h.name == "T_PATHO"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stock_spamassassin_set_loads() {
    let dir = Path::new("/usr/share/spamassassin");
    assert!(
        dir.join("50_scores.cf").is_file(),
        "SpamAssassin's stock rules are missing: apt-get install spamassassin"
    );
    let (set, report) = load_dirs(&[dir]).unwrap_or_else(|e| panic!("stock set refused: {e}"));
    assert!(report.loaded > 2000, "{report}");
    assert!(report.skipped.contains_key("network"), "{report}");
    assert!(!report.skipped.contains_key("regex not supported by either engine"), "{report}");
    assert_eq!(set.len(), report.loaded);
    // the fixtures run without panics and the spam one scores
    let spam = hits(&set, "spam.eml");
    assert!(!spam.is_empty());
    let _ = hits(&set, "ham.eml");
    // hostile shapes must neither panic nor hang
    let mut nested = String::new();
    for i in 0..200 {
        nested.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    let long_line =
        format!("Subject: {}\r\n\r\n{}\r\n", "\u{1F600}".repeat(3000), "\u{30B4}".repeat(5000));
    for raw in [
        &b""[..],
        b"\xff\xfe\x00",
        b"Subject: =?x?q?\xff?=\r\n",
        nested.as_bytes(),
        long_line.as_bytes(),
    ] {
        let _ = set.check_report(&SaMessage::parse(raw));
    }
}

/// Gating is only an optimisation: with and without it, the stock set fires the same rules
/// on the fixtures and on messages built to hit and to nearly hit literal-bearing rules.
#[test]
fn literal_gates_change_no_result() {
    let dir = Path::new("/usr/share/spamassassin");
    let (gated, _) = load_dirs(&[dir]).unwrap_or_else(|e| panic!("stock set refused: {e}"));
    let opts = levee_sarules::Options { gates: false, ..Default::default() };
    let (plain, _) = levee_sarules::load_dirs_with(&[dir], opts).expect("stock set");
    let mut msgs: Vec<Vec<u8>> = ["spam.eml", "ham.eml"]
        .iter()
        .map(|f| std::fs::read(fixtures().join(f)).expect("fixture"))
        .collect();
    msgs.push(
        b"From: \"Pay Pal\" <service@paypa1.example>\r\nTo: you@example.com\r\nSubject: \
          URGENT: Verify your account now!!!\r\nContent-Type: text/html\r\n\r\n\
          <html><body><a href=\"http://192.0.2.1/login\">https://www.paypal.com/</a>\
          <p>Dear Customer, CLICK HERE to confirm your password. You have WON the lottery! \
          100% FREE viagra, cialis, cheap meds. Unsubscribe</p>\
          <font color=\"#ffffff\">hidden text</font></body></html>\r\n"
            .to_vec(),
    );
    let mut fired = 0;
    for raw in &msgs {
        let msg = SaMessage::parse(raw);
        let a: HashSet<String> = gated.check(&msg).into_iter().map(|h| h.name).collect();
        let b: HashSet<String> = plain.check(&msg).into_iter().map(|h| h.name).collect();
        assert_eq!(a, b, "gated and ungated rule hits differ");
        fired += a.len();
    }
    assert!(fired > 10, "the messages must fire rules for the comparison to mean anything");
}
