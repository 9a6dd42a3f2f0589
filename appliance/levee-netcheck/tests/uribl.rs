//! URL extraction fixtures, and URI blocklist lookups against a real unbound.

mod common;

use std::path::Path;

use common::{BlackHole, Unbound};
use levee_netcheck::{uribl, urls, DnsList, Finding};

/// Every `fixtures/urls/*.eml` must yield exactly the hosts in its `.expected` (one per
/// line, in order of appearance). A mismatch writes `.actual` beside it for review.
#[test]
fn url_extraction_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/urls");
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for eml in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "eml")) {
        let raw = std::fs::read(eml).unwrap();
        let expected = std::fs::read_to_string(eml.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected", eml.display()));
        let actual: String = urls::extract(&raw, 20).iter().map(|h| format!("{h}\n")).collect();
        cases += 1;
        let actual_path = eml.with_extension("actual");
        if actual == expected {
            let _ = std::fs::remove_file(&actual_path);
        } else {
            std::fs::write(&actual_path, &actual).unwrap();
            failures.push(format!("{}:\n expected:\n{expected} actual:\n{actual}", eml.display()));
        }
    }
    assert!(cases >= 1, "no fixtures ran from {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn dbl() -> DnsList {
    DnsList {
        zone: "dbl.test".into(),
        symbol: "DBL_TEST".into(),
        codes: vec![
            ("127.0.1.2".parse().unwrap(), "SPAM".into()),
            ("127.0.1.4".parse().unwrap(), "PHISH".into()),
        ],
    }
}

fn blocked() -> DnsList {
    DnsList { zone: "dbl-blocked.test".into(), symbol: "URIBL_BLOCKY".into(), codes: vec![] }
}

const MESSAGE: &str = "From: a@example.org\r\nTo: b@example.net\r\nSubject: deals\r\n\
    Content-Type: text/html\r\n\r\n\
    <a href=\"https://www.evil-shop.com/a\">1</a> <a href=\"http://evil-shop.com/b\">2</a>\r\n\
    <a href=\"hxxps://login.phish[.]co.uk/\">3</a> <img src=\"http://192.0.2.5/t.gif\">\r\n\
    <a href=\"https://clean-site.com/\">4</a> <a href=\"https://also-clean.net/\">5</a>\r\n";

fn sorted(findings: &[Finding]) -> Vec<&str> {
    let mut s: Vec<&str> = findings.iter().map(|f| f.symbol.as_str()).collect();
    s.sort();
    s
}

#[tokio::test]
async fn uri_lists_listings_and_refusals() {
    let server = Unbound::start("").await;
    let dns = server.dns();
    let (f, w) = uribl::check(&dns, MESSAGE.as_bytes(), &[dbl(), blocked()], 20).await;
    assert_eq!(sorted(&f), ["DBL_TEST_PHISH", "DBL_TEST_SPAM", "URIBL_BLOCKY_BLOCKED"], "{f:?}");
    let spam = f.iter().find(|f| f.symbol == "DBL_TEST_SPAM").unwrap();
    // Two links to evil-shop.com and one to the listed IP weigh as one finding naming both.
    assert!(spam.detail.contains("evil-shop.com") && spam.detail.contains("192.0.2.5"), "{spam:?}");
    assert_eq!(spam.detail.matches("evil-shop.com").count(), 1, "{spam:?}");
    let phish = f.iter().find(|f| f.symbol == "DBL_TEST_PHISH").unwrap();
    assert!(phish.detail.contains("phish.co.uk"), "{phish:?}");
    // One refusal warning per list, however many links.
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].source, "URIBL_BLOCKY");

    // The cap bounds lookups: with 1 host only the first link is looked up.
    let (f, _) = uribl::check(&dns, MESSAGE.as_bytes(), &[dbl()], 1).await;
    assert_eq!(sorted(&f), ["DBL_TEST_SPAM"]);
    assert!(!f[0].detail.contains("192.0.2.5"));
}

#[tokio::test]
async fn uri_list_timeout_is_one_finding_per_list() {
    let hole = BlackHole::new();
    let dns = hole.dns(std::time::Duration::from_millis(300));
    let (f, w) = uribl::check(&dns, MESSAGE.as_bytes(), &[dbl()], 20).await;
    assert_eq!(sorted(&f), ["DBL_TEST_TIMEOUT"], "{f:?}");
    assert!(w.is_empty());
}
