//! Structural content rules. Each rule names what it saw; the weights live in
//! [`crate::score::Policy`].
//!
//! | symbol | fires when |
//! |---|---|
//! | `GTUBE` | the GTUBE test string is in the message |
//! | `MISSING_DATE` / `MISSING_MESSAGE_ID` / `MISSING_FROM` | the header is absent |
//! | `HTML_LINK_TEXT_MISMATCH` | a link's visible text is a web address in another domain than its target |
//! | `URL_NUMERIC_IP` | an HTML link points at a bare IPv4 address |
//! | `FREEMAIL_REPLYTO` | replies go to a freemail mailbox while From is elsewhere |
//! | `HTML_ONLY_LITTLE_TEXT` | HTML without a text alternative and under 80 visible characters |
//! | `FROM_DISPLAY_ADDR_MISMATCH` | the From display name holds an address in another domain |
//! | `REPLYTO_DIFFERENT_DOMAIN` | Reply-To's domain differs from From's (list rewrites excepted) |
//! | `DANGEROUS_ATTACHMENT` | an executable, script, disk image or macro document is attached |
//! | `SUBJECT_ALL_CAPS` | the subject has 10+ letters, all capitals |
//! | `UNPARSABLE_MESSAGE` | the message has no header section at all |

use levee_content::Content;
use mail_parser::{Message, MimeHeaders, PartType};

use crate::{bayes::registrable, html, Finding};

/// The Generic Test for Unsolicited Bulk Email, the industry's agreed test string.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// Extensions that run code when opened (or mount something that does).
const DANGEROUS_EXT: &[&str] = &[
    "exe", "scr", "js", "jse", "vbs", "vbe", "bat", "cmd", "com", "pif", "jar", "iso", "img",
    "lnk", "hta", "msi", "ps1", "wsf", "cpl", "reg", "docm", "xlsm", "pptm", "dotm", "xlam", "vhd",
    "vhdx",
];
/// Extensions a user trusts; `invoice.pdf.exe` hides a dangerous one behind them.
const DECOY_EXT: &[&str] =
    &["pdf", "doc", "docx", "xls", "xlsx", "jpg", "jpeg", "png", "txt", "zip"];

const LITTLE_TEXT_CHARS: usize = 80;

/// Runs every rule on a raw message, read up to its first bound ([`crate::limits`]).
pub fn check(message: &[u8]) -> Vec<Finding> {
    check_content(&Content::parse(message))
}

/// [`check`] on a message already parsed (and bounded).
pub(crate) fn check_content(content: &Content<'_>) -> Vec<Finding> {
    check_parsed(content.raw(), content.message())
}

/// The rules on `raw` parsed as `parsed`, however it was bounded.
fn check_parsed(raw: &[u8], parsed: Option<&Message<'_>>) -> Vec<Finding> {
    let mut out = Vec::new();
    let gtube_raw = find(raw, GTUBE.as_bytes());
    let Some(msg) = parsed.filter(|m| !m.headers().is_empty()) else {
        if gtube_raw {
            out.push(Finding::new("GTUBE", "GTUBE test string in the raw message"));
        }
        out.push(Finding::new("UNPARSABLE_MESSAGE", "no header section could be parsed"));
        return out;
    };
    if gtube_raw || decoded_texts(msg).any(|t| t.contains(GTUBE)) {
        out.push(Finding::new("GTUBE", "GTUBE test string in the body"));
    }
    if msg.header_raw("Date").is_none() {
        out.push(Finding::new("MISSING_DATE", "no Date header"));
    }
    if msg.header_raw("Message-ID").is_none() {
        out.push(Finding::new("MISSING_MESSAGE_ID", "no Message-ID header"));
    }
    if msg.header_raw("From").is_none() {
        out.push(Finding::new("MISSING_FROM", "no From header"));
    }
    html_only(msg, &mut out);
    link_mismatch(msg, &mut out);
    numeric_links(msg, &mut out);
    from_checks(msg, &mut out);
    attachments(msg, &mut out);
    subject_caps(msg, &mut out);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn decoded_texts<'a>(msg: &'a Message<'a>) -> impl Iterator<Item = &'a str> {
    msg.parts.iter().filter_map(|p| match &p.body {
        PartType::Text(t) | PartType::Html(t) => Some(t.as_ref()),
        _ => None,
    })
}

fn html_only(msg: &Message<'_>, out: &mut Vec<Finding>) {
    let has_text = msg
        .parts
        .iter()
        .any(|p| matches!(p.body, PartType::Text(_)) && p.attachment_name().is_none());
    if has_text {
        return;
    }
    let Some(markup) = msg.parts.iter().find_map(|p| match &p.body {
        PartType::Html(h) => Some(h),
        _ => None,
    }) else {
        return;
    };
    let stripped = html::strip(markup);
    let visible = stripped.text.chars().filter(|c| !c.is_whitespace()).count();
    if visible < LITTLE_TEXT_CHARS {
        out.push(Finding::new(
            "HTML_ONLY_LITTLE_TEXT",
            format!("HTML only, {visible} visible characters, {} images", stripped.images),
        ));
    }
}

/// Freemail providers: a reply path there from a sender elsewhere is the 419/phishing pattern.
const FREEMAIL: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "aol.com",
    "mail.ru",
    "yandex.ru",
    "yandex.com",
    "gmx.com",
    "gmx.net",
    "gmx.de",
    "protonmail.com",
    "proton.me",
    "icloud.com",
    "msn.com",
    "zoho.com",
    "qq.com",
    "163.com",
    "126.com",
    "rediffmail.com",
];

fn numeric_links(msg: &Message<'_>, out: &mut Vec<Finding>) {
    let mut numeric = None;
    for part in &msg.parts {
        let PartType::Html(markup) = &part.body else { continue };
        let h = html::strip(markup);
        if numeric.is_none() {
            numeric = h
                .urls
                .iter()
                .filter_map(|u| html::url_host(u))
                .find(|host| host.parse::<std::net::Ipv4Addr>().is_ok());
        }
    }
    if let Some(host) = numeric {
        out.push(Finding::new("URL_NUMERIC_IP", format!("link to {host}")));
    }
}

fn link_mismatch(msg: &Message<'_>, out: &mut Vec<Finding>) {
    for part in &msg.parts {
        let PartType::Html(markup) = &part.body else { continue };
        for (href, text) in html::strip(markup).anchors {
            if let Some((shown, target)) = html::link_text_mismatch(&href, &text) {
                out.push(Finding::new(
                    "HTML_LINK_TEXT_MISMATCH",
                    format!("link text shows {shown}, target is {target}"),
                ));
                return;
            }
        }
    }
}

fn domain_of(addr: &str) -> Option<String> {
    let (_, d) = addr.rsplit_once('@')?;
    let d = d.trim().trim_end_matches('>').trim_end_matches('.').to_ascii_lowercase();
    (!d.is_empty()).then_some(d)
}

fn from_checks(msg: &Message<'_>, out: &mut Vec<Finding>) {
    let Some(from) = msg.from().and_then(|a| a.first()) else { return };
    let from_domain = from.address().and_then(domain_of);
    let name = from.name().unwrap_or("");
    // Lists that rewrite From for DMARC ("Alice via List") set Reply-To to the author on purpose.
    let list_rewrite = name.contains(" via ");
    if let Some(fd) = &from_domain {
        let in_name = name
            .split(|c: char| {
                c.is_whitespace() || matches!(c, '<' | '>' | '(' | ')' | '"' | '\'' | ',')
            })
            .filter(|w| w.contains('@'))
            .find_map(domain_of);
        if let Some(nd) = in_name {
            if registrable(&nd) != registrable(fd) {
                out.push(Finding::new(
                    "FROM_DISPLAY_ADDR_MISMATCH",
                    format!("display name shows {nd}, address is in {fd}"),
                ));
            }
        }
        let reply =
            msg.reply_to().and_then(|a| a.first()).and_then(|a| a.address()).and_then(domain_of);
        if let Some(rd) = &reply {
            if FREEMAIL.contains(&rd.as_str()) && !FREEMAIL.contains(&fd.as_str()) && !list_rewrite
            {
                out.push(Finding::new(
                    "FREEMAIL_REPLYTO",
                    format!("Reply-To at {rd}, From at {fd}"),
                ));
            }
        }
        if !list_rewrite {
            let reply = msg
                .reply_to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .and_then(domain_of);
            if let Some(rd) = reply {
                if registrable(&rd) != registrable(fd) {
                    out.push(Finding::new(
                        "REPLYTO_DIFFERENT_DOMAIN",
                        format!("Reply-To domain {rd}, From domain {fd}"),
                    ));
                }
            }
        }
    }
}

/// Attachment names listed in a `DANGEROUS_ATTACHMENT` detail; the rest are counted.
const MAX_LISTED_ATTACHMENTS: usize = 10;

fn attachments(msg: &Message<'_>, out: &mut Vec<Finding>) {
    // A set, not a list scan: a message can carry 100,000 parts.
    let mut seen = std::collections::HashSet::new();
    let mut listed = Vec::new();
    for part in &msg.parts {
        let Some(name) = part.attachment_name() else { continue };
        let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let mut exts = lower.rsplit('.');
        let last = exts.next().unwrap_or("");
        let (name_has_dot, prev) = (lower.contains('.'), exts.next());
        if !name_has_dot || !DANGEROUS_EXT.contains(&last) {
            continue;
        }
        let detail = match prev.filter(|p| DECOY_EXT.contains(p)) {
            Some(decoy) => format!("{name} (.{last} disguised as .{decoy})"),
            None => format!("{name} (.{last})"),
        };
        if seen.insert(detail.clone()) && listed.len() < MAX_LISTED_ATTACHMENTS {
            listed.push(detail);
        }
    }
    if !listed.is_empty() {
        let mut detail = listed.join(", ");
        if seen.len() > listed.len() {
            detail.push_str(&format!(" and {} more", seen.len() - listed.len()));
        }
        out.push(Finding::new("DANGEROUS_ATTACHMENT", detail));
    }
}

fn subject_caps(msg: &Message<'_>, out: &mut Vec<Finding>) {
    let Some(subject) = msg.subject() else { return };
    let letters: Vec<char> = subject.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() >= 10 && letters.iter().all(|c| c.is_uppercase()) {
        out.push(Finding::new(
            "SUBJECT_ALL_CAPS",
            format!("subject: {}", subject.chars().take(60).collect::<String>()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: 100,000 sibling parts passed without a word, and their names were
    /// de-duplicated by scanning a list (quadratic in the parts). Duplicates count once
    /// and the detail names the first few.
    #[test]
    fn many_dangerous_attachments_are_counted_once_and_named_up_to_a_cap() {
        let mut m = String::from(
            "From: a@sender.example\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
        );
        for i in (0..5000).chain(0..100) {
            m.push_str(&format!(
                "--b\r\nContent-Type: application/octet-stream\r\n\
                 Content-Disposition: attachment; filename=\"f{i}.exe\"\r\n\r\nx\r\n"
            ));
        }
        m.push_str("--b--\r\n");
        // The rule itself, past the part bound `check` applies (`crate::limits`): it must stay
        // linear whatever its input.
        let parsed = mail_parser::MessageParser::default().parse(m.as_bytes());
        let found = check_parsed(m.as_bytes(), parsed.as_ref());
        let f = found.iter().find(|f| f.symbol == "DANGEROUS_ATTACHMENT").expect("fired");
        assert!(f.detail.starts_with("f0.exe (.exe), f1.exe (.exe), "), "{}", f.detail);
        assert!(f.detail.ends_with("f9.exe (.exe) and 4990 more"), "{}", f.detail);
    }
}
