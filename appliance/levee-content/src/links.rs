//! The one link reader: URL hosts in a message's text and HTML, reduced to what URI
//! blocklists are keyed by (and what every other check that wants a message's links reads).
//!
//! Spammers hide links from filters more than from people, so the scanner reads text the
//! way a mail client or a reader would: MIME decoded (quoted-printable, base64, charsets, by
//! mail-parser), HTML entities decoded (`&#x68;ttp`), percent-encoding in hosts decoded,
//! and the usual defanging undone (`hxxp`, `evil[.]com`, `http:\\`). Hosts are reduced to
//! their registrable domain with the public suffix list; IP hosts are kept as IPs (the
//! URI check reverses them like a DNSBL query). Pure: no I/O.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mail_parser::{Message, PartType};

use crate::domain::listed_registrable_domain;

/// A host a link points to, as a URI list is queried for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UriHost {
    /// The registrable domain (`evil.co.uk` for `www.mail.evil.co.uk`), ASCII (punycode).
    Domain(String),
    Ip(IpAddr),
}

impl std::fmt::Display for UriHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UriHost::Domain(d) => f.write_str(d),
            UriHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Distinct link hosts of a parsed message (subject, text and HTML parts, attached messages
/// up to [`MAX_DEPTH`]), in order of first appearance, at most `max`; `raw` is read as text
/// when it did not parse as a message at all.
pub(crate) fn extract(message: Option<&Message<'_>>, raw: &[u8], max: usize) -> Vec<UriHost> {
    let mut hosts = Hosts::new(max);
    match message {
        Some(parsed) => scan_message(parsed, &mut hosts, 0),
        // Not MIME at all: still read it as text rather than see nothing.
        None => scan_text(&String::from_utf8_lossy(raw), &mut hosts),
    }
    hosts.list
}

/// Distinct link hosts in one piece of text or HTML (already MIME-decoded).
pub fn extract_from_text(text: &str, max: usize) -> Vec<UriHost> {
    let mut hosts = Hosts::new(max);
    scan_text(text, &mut hosts);
    hosts.list
}

/// Nested message/rfc822 parts deeper than this are not opened (zip-bomb style nesting).
const MAX_DEPTH: usize = 5;

fn scan_message(message: &Message<'_>, hosts: &mut Hosts, depth: usize) {
    if let Some(subject) = message.subject() {
        scan_text(subject, hosts);
    }
    for part in &message.parts {
        if hosts.full() {
            return;
        }
        match &part.body {
            PartType::Text(text) | PartType::Html(text) => scan_text(text, hosts),
            PartType::Message(inner) if depth < MAX_DEPTH => scan_message(inner, hosts, depth + 1),
            _ => {}
        }
    }
}

struct Hosts {
    list: Vec<UriHost>,
    seen: HashSet<UriHost>,
    max: usize,
}

impl Hosts {
    fn new(max: usize) -> Self {
        Hosts { list: Vec::new(), seen: HashSet::new(), max }
    }

    fn full(&self) -> bool {
        self.list.len() >= self.max
    }

    fn add(&mut self, raw: &str) {
        if self.full() {
            return;
        }
        if let Some(host) = classify(raw) {
            if self.seen.insert(host.clone()) {
                self.list.push(host);
            }
        }
    }
}

fn scan_text(text: &str, hosts: &mut Hosts) {
    let text = normalise(text);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() && !hosts.full() {
        let rest = &text[i..];
        if let Some(start) = after_scheme(rest) {
            let end = host_end(&rest[start..]);
            hosts.add(&rest[start..start + end]);
            i += start + end.max(1);
            continue;
        }
        if rest.starts_with("www.") && (i == 0 || !is_host_char(prev_char(&text, i))) {
            let end = host_end(rest);
            hosts.add(&rest[..end]);
            i += end.max(1);
            continue;
        }
        if let Some(start) = protocol_relative_attribute(rest) {
            let end = host_end(&rest[start..]);
            hosts.add(&rest[start..start + end]);
            i += start + end.max(1);
            continue;
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
}

fn prev_char(text: &str, i: usize) -> char {
    text[..i].chars().next_back().unwrap_or(' ')
}

/// `http://`, `https:/`, `http:\\` (browsers accept one to three slashes of either kind);
/// returns where the host starts.
fn after_scheme(s: &str) -> Option<usize> {
    let mut at = if s.starts_with("https:") {
        6
    } else if s.starts_with("http:") {
        5
    } else {
        return None;
    };
    let slashes = s[at..].bytes().take(3).take_while(|b| *b == b'/' || *b == b'\\').count();
    if slashes == 0 {
        return None;
    }
    at += slashes;
    Some(at)
}

/// `href="//host/..."` and friends: a protocol-relative link is absolute.
fn protocol_relative_attribute(s: &str) -> Option<usize> {
    for attr in ["href=", "src=", "action=", "background="] {
        if let Some(rest) = s.strip_prefix(attr) {
            let quote = rest.bytes().next().filter(|b| *b == b'"' || *b == b'\'').map_or(0, |_| 1);
            let value = &rest[quote..];
            let value = value.trim_start_matches(' ');
            if value.starts_with("//") {
                return Some(s.len() - value.len() + 2);
            }
            return None;
        }
    }
    None
}

fn is_host_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | '%' | '@' | ':' | '[' | ']' | '~')
}

/// Length of the authority part (userinfo@host:port) at the start of `s`.
fn host_end(s: &str) -> usize {
    s.char_indices().find(|(_, c)| !is_host_char(*c)).map_or(s.len(), |(i, _)| i)
}

/// Reduces an authority (`user@Host.Example.co.uk:8080`) to a list key.
fn classify(authority: &str) -> Option<UriHost> {
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = percent_decode(host);
    if let Some(v6) = host.strip_prefix('[') {
        let v6 = v6.split(']').next().unwrap_or("");
        return v6.parse::<Ipv6Addr>().ok().map(|ip| UriHost::Ip(IpAddr::V6(ip)));
    }
    let host = host.split(':').next().unwrap_or("");
    let host = host.trim_matches('.');
    if host.is_empty() || host.contains(['[', ']', '%', '@']) {
        return None;
    }
    if let Some(ip) = parse_ipv4(host) {
        return Some(UriHost::Ip(IpAddr::V4(ip)));
    }
    listed_registrable_domain(host).map(UriHost::Domain)
}

/// Dotted quads, and the bare decimal or hex forms browsers also accept (`http://3232235777/`).
fn parse_ipv4(host: &str) -> Option<Ipv4Addr> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(ip);
    }
    let n = if let Some(hex) = host.strip_prefix("0x") {
        u32::from_str_radix(hex, 16).ok()?
    } else if host.bytes().all(|b| b.is_ascii_digit()) {
        host.parse::<u32>().ok()?
    } else {
        return None;
    };
    Some(Ipv4Addr::from(n))
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_lowercase()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decodes HTML character references, lower-cases, and undoes common defanging, so the
/// scanner only has to know the plain forms.
fn normalise(text: &str) -> String {
    let decoded = levee_html::decode_entities(text).to_lowercase();
    let mut out = decoded;
    for (from, to) in [
        ("hxxps", "https"),
        ("hxxp", "http"),
        ("[.]", "."),
        ("(.)", "."),
        ("{.}", "."),
        ("[dot]", "."),
        ("(dot)", "."),
        ("[:]", ":"),
        ("[://]", "://"),
    ] {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(text: &str) -> Vec<String> {
        extract_from_text(text, 20).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn plain_and_bare_links() {
        assert_eq!(
            domains("see https://a.evil.com/x?y and www.other.net, or http://Third.org:8080/"),
            ["evil.com", "other.net", "third.org"]
        );
    }

    #[test]
    fn userinfo_is_not_the_host() {
        assert_eq!(domains("http://www.paypal.com@evil.com/login"), ["evil.com"]);
    }

    #[test]
    fn entities_and_percent_encoding() {
        assert_eq!(domains("&#x68;ttp&#58;//&#101;vil.com/"), ["evil.com"]);
        assert_eq!(domains("&#104&#116&#116&#112://evil.org"), ["evil.org"]);
        assert_eq!(domains("http://%65%76%69%6c.net/"), ["evil.net"]);
        // Non-ASCII right after `&` once split a character and panicked the scanner.
        assert_eq!(domains("Preise &é&日本 http://evil.io/"), ["evil.io"]);
    }

    #[test]
    fn defanged_forms() {
        assert_eq!(domains("hxxp://evil[.]com/x and hXXps://bad(.)net"), ["evil.com", "bad.net"]);
        assert_eq!(domains("http:\\\\evil.info\\x"), ["evil.info"]);
    }

    #[test]
    fn ip_hosts_and_protocol_relative() {
        assert_eq!(
            extract_from_text("http://192.0.2.5/ http://3221225990/ http://[2001:db8::1]:80/ <img src=\"//cdn.evil.biz/p.gif\">", 20),
            vec![
                UriHost::Ip("192.0.2.5".parse().unwrap()),
                UriHost::Ip("192.0.2.6".parse().unwrap()),
                UriHost::Ip("2001:db8::1".parse().unwrap()),
                UriHost::Domain("evil.biz".into()),
            ]
        );
    }

    #[test]
    fn dedupe_and_cap() {
        let text: String =
            (0..50).map(|i| format!("http://d{i}.com/ http://x.d{i}.com/ ")).collect();
        let got = extract_from_text(&text, 20);
        assert_eq!(got.len(), 20);
        assert_eq!(got[0], UriHost::Domain("d0.com".into()));
        assert_eq!(got[19], UriHost::Domain("d19.com".into()));
    }

    #[test]
    fn prose_is_not_a_link() {
        assert!(domains("the file readme.txt is in www. and http:// nothing").is_empty());
        assert!(domains("mywww.example.com is not a www link").is_empty());
    }
}
