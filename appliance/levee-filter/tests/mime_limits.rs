//! The hostile MIME shapes of issue 12 (finding 7): each gets its finding and a quarantine, the
//! content checks stop at the bound, and ordinary multipart mail gets no limit finding. Times
//! are printed (`--nocapture`), never asserted.

use std::time::Instant;

use levee_filter::bayes::Model;
use levee_filter::score::Policy;
use levee_filter::{classify, content_findings, limits};
use levee_types::Action;

const LIMIT_SYMBOLS: &[&str] =
    &["MIME_NESTING_LIMIT", "MIME_PARTS_LIMIT", "HEADER_COUNT_LIMIT", "LINE_LENGTH_LIMIT"];

const TOP: &str = "From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\
                   Date: Thu, 3 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\
                   MIME-Version: 1.0\r\n";

fn limit_symbols(message: &[u8], name: &str) -> Vec<String> {
    let started = Instant::now();
    let found = content_findings(&Model::new(), None, message);
    println!("{name}: {} bytes, content_findings in {:?}", message.len(), started.elapsed());
    found.into_iter().map(|f| f.symbol).filter(|s| LIMIT_SYMBOLS.contains(&s.as_str())).collect()
}

fn action(message: &[u8]) -> Action {
    classify(&Model::new(), None, &Policy::default(), message, false).action
}

fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut m = String::from(TOP);
    for i in 0..depth {
        m.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"));
    }
    m.push_str("Content-Type: text/plain\r\n\r\ndeep inside\r\n");
    for i in (0..depth).rev() {
        m.push_str(&format!("--b{i}--\r\n"));
    }
    m.into_bytes()
}

fn nested_rfc822(depth: usize) -> Vec<u8> {
    let mut m = String::from(TOP);
    for _ in 0..depth {
        m.push_str("Content-Type: message/rfc822\r\n\r\nFrom: x@example.org\r\n");
    }
    m.push_str("Content-Type: text/plain\r\n\r\ndeep inside\r\n");
    m.into_bytes()
}

/// `count` sibling text parts; `last` is appended as the final part's whole text (headers
/// included).
fn siblings(count: usize, last: &str) -> Vec<u8> {
    let mut m = format!("{TOP}Content-Type: multipart/mixed; boundary=\"s\"\r\n\r\n");
    for i in 0..count {
        m.push_str(&format!("--s\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"));
    }
    m.push_str(&format!("--s\r\n{last}\r\n--s--\r\n"));
    m.into_bytes()
}

const EXE: &str = "Content-Type: application/octet-stream; name=\"invoice.pdf.exe\"\r\n\
                   Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA";

#[test]
fn multipart_nested_ten_thousand_deep_is_cut_and_quarantined() {
    let m = nested_multipart(10_000);
    assert_eq!(limit_symbols(&m, "multipart x10000 deep"), ["MIME_NESTING_LIMIT"]);
    assert!(action(&m) >= Action::Quarantine);
    assert!(limits::bounded(&m).len() < m.len() / 100);
}

#[test]
fn rfc822_nested_ten_thousand_deep_is_cut_and_quarantined() {
    let m = nested_rfc822(10_000);
    assert_eq!(limit_symbols(&m, "message/rfc822 x10000 deep"), ["MIME_NESTING_LIMIT"]);
    assert!(action(&m) >= Action::Quarantine);
}

#[test]
fn a_boundary_repeating_its_parents_nests_until_the_bound() {
    // Every part is a multipart with the boundary of the part that holds it, so each
    // delimiter line opens one more level for a reader that believes the innermost.
    let mut m = String::from(TOP);
    for _ in 0..10_000 {
        m.push_str("Content-Type: multipart/mixed; boundary=\"loop\"\r\n\r\n--loop\r\n");
    }
    m.push_str("Content-Type: text/plain\r\n\r\nend\r\n--loop--\r\n");
    assert_eq!(limit_symbols(m.as_bytes(), "cyclic boundary x10000"), ["MIME_NESTING_LIMIT"]);
    assert!(action(m.as_bytes()) >= Action::Quarantine);
}

#[test]
fn a_hundred_thousand_siblings_are_cut_and_quarantined() {
    let m = siblings(100_000, "Content-Type: text/plain\r\n\r\nlast");
    assert_eq!(limit_symbols(&m, "100000 sibling parts"), ["MIME_PARTS_LIMIT"]);
    assert!(action(&m) >= Action::Quarantine);
}

#[test]
fn parts_past_the_bound_are_not_read() {
    // The same dangerous attachment is seen before the bound and not after it: no check
    // pays for (or is fooled by) what lies beyond.
    let found = |m: &[u8]| content_findings(&Model::new(), None, m);
    let before = found(&siblings(10, EXE));
    assert!(before.iter().any(|f| f.symbol == "DANGEROUS_ATTACHMENT"));
    let past = found(&siblings(limits::MAX_PARTS + 10, EXE));
    assert!(past.iter().any(|f| f.symbol == "MIME_PARTS_LIMIT"));
    assert!(!past.iter().any(|f| f.symbol == "DANGEROUS_ATTACHMENT"));
}

#[test]
fn many_header_fields_and_a_long_line_are_findings() {
    let mut m = String::from(TOP);
    for i in 0..2000 {
        m.push_str(&format!("X-Filler-{i}: v\r\n"));
    }
    m.push_str("\r\nbody\r\n");
    assert_eq!(limit_symbols(m.as_bytes(), "2000 header fields"), ["HEADER_COUNT_LIMIT"]);

    let long = format!("{TOP}\r\n{}\r\nend\r\n", "a".repeat(limits::MAX_LINE + 1));
    assert_eq!(limit_symbols(long.as_bytes(), "one long line"), ["LINE_LENGTH_LIMIT"]);
    // A long line is reported, not cut: the text after it is still read.
    assert_eq!(limits::bounded(long.as_bytes()).len(), long.len());
    let at_limit = format!("{TOP}\r\n{}\r\n", "a".repeat(limits::MAX_LINE));
    assert!(limit_symbols(at_limit.as_bytes(), "a line at the bound").is_empty());
}

#[test]
fn ordinary_multipart_mail_gets_no_limit_finding() {
    let forwarded = "From: c@example.com\r\nSubject: original\r\n\
                     Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n\
                     --inner\r\nContent-Type: text/plain\r\n\r\nforwarded text\r\n\
                     --inner\r\nContent-Type: text/html\r\n\r\n<p>forwarded</p>\r\n--inner--\r\n";
    let m = format!(
        "{TOP}Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n\
         --outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
         --alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, the report is attached.\r\n\
         --alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello, the report is attached.</p>\r\n\
         --alt--\r\n\
         --outer\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n\
         --outer\r\nContent-Type: message/rfc822\r\n\r\n{forwarded}\r\n\
         --outer--\r\nepilogue\r\n"
    );
    assert!(limit_symbols(m.as_bytes(), "ordinary multipart").is_empty());
    assert_eq!(limits::bounded(m.as_bytes()).len(), m.len());
    // Just under every bound is still ordinary.
    assert!(limit_symbols(&nested_multipart(limits::MAX_DEPTH), "depth 20").is_empty());
    assert_eq!(
        limit_symbols(&nested_multipart(limits::MAX_DEPTH + 1), "depth 21"),
        ["MIME_NESTING_LIMIT"]
    );
    assert!(limit_symbols(&siblings(limits::MAX_PARTS - 3, "last"), "998 parts").is_empty());
}
