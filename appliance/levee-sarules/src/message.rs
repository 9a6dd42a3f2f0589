//! A message as the rule types read it, built once per message.

use std::borrow::Cow;

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders, PartType};

/// SpamAssassin splits body text into lines no longer than this (at a space if it can).
const MAX_LINE: usize = 2048;
/// Bounds on what one hostile message can make us hold.
const MAX_URIS: usize = 500;
const MAX_HEADERS: usize = 1000;
/// SpamAssassin's `body_part_scan_size` and `rawbody_part_scan_size` defaults: body rules
/// see at most this much of each part's rendered text, rawbody rules of its decoded text.
/// Rule cost grows with the text, so this also bounds the time one large message takes.
const BODY_PART_SCAN: usize = 50_000;
const RAWBODY_PART_SCAN: usize = 500_000;

/// One header field: its name, the raw value (folding kept) and the decoded one (unfolded,
/// RFC 2047 words decoded).
#[derive(Debug, Clone)]
pub struct HeaderField {
    pub name: String,
    pub raw: String,
    pub decoded: String,
    /// First address and display name, when the field holds addresses.
    pub addr: Option<String>,
    pub display: Option<String>,
}

/// Facts about one HTML part, for the HTML evals.
#[derive(Debug, Clone, Default)]
pub struct HtmlFacts {
    /// Every tag name seen (lower case), opening or closing.
    pub tags: Vec<String>,
    /// Length of the visible text.
    pub length: usize,
    pub images: usize,
    pub open_body: i64,
    pub open_head: i64,
}

/// One MIME part's header fields and what it is.
#[derive(Debug, Clone, Default)]
pub struct MimePart {
    pub headers: Vec<HeaderField>,
    pub content_type: String,
    pub transfer_encoding: String,
    /// Decoded text, for text parts.
    pub text: Option<String>,
    pub is_html: bool,
}

/// What the rules read of one message. See the crate doc for how each view is rendered.
#[derive(Debug, Clone, Default)]
pub struct SaMessage {
    pub headers: Vec<HeaderField>,
    /// `body`: subject line first, then the rendered text, one paragraph per line.
    pub body: Vec<String>,
    /// `rawbody`: decoded text parts, not rendered, in chunks.
    pub rawbody: Vec<String>,
    /// `full`: the raw message (lossy UTF-8, CRLF as LF).
    pub full: String,
    pub uris: Vec<String>,
    pub parts: Vec<MimePart>,
    pub html: Vec<HtmlFacts>,
    /// The header section was not followed by a blank line.
    pub missing_hb_separator: bool,
    /// The Date header, and the dates of the Received headers, as Unix times.
    pub date_time: Option<i64>,
    pub received_times: Vec<i64>,
}

impl SaMessage {
    /// Parses a raw message. Never fails: what cannot be parsed is simply absent.
    pub fn parse(raw: &[u8]) -> SaMessage {
        SaMessage::from_parsed(MessageParser::default().parse(raw).as_ref(), raw, "")
    }

    /// The rules' view of `raw`, already parsed as `msg` (Levee's content checks parse each
    /// message once), with `hop` on top: header fields, each ending in CRLF, that the gateway
    /// adds (its own `Received`), read as if they began `raw`. Only the hop is parsed here.
    pub fn from_parsed(msg: Option<&Message<'_>>, raw: &[u8], hop: &str) -> SaMessage {
        let hop_msg = if hop.is_empty() { None } else { MessageParser::default().parse(hop) };
        let (Some(msg), false) = (msg, !hop.is_empty() && hop_msg.is_none()) else {
            // Nothing to build on (no message, or a hop that is no header): read the bytes
            // as SpamAssassin would see them, joined, once.
            return SaMessage::from_joined(hop, raw);
        };
        // line ends as SpamAssassin sees mail from an MTA (LF), whatever SMTP delivered
        let mut full = hop.replace("\r\n", "\n");
        full.push_str(&String::from_utf8_lossy(raw).replace("\r\n", "\n"));
        let mut m = SaMessage { full, ..Default::default() };
        m.missing_hb_separator = !has_separator(hop.as_bytes(), raw);
        let raw_msg = msg.raw_message();
        // the root's fields, the hop's first, as one parse of the joined bytes would list them
        let all: Cow<'_, [mail_parser::Header<'_>]> = match &hop_msg {
            Some(h) => h.headers().iter().chain(msg.headers()).cloned().collect::<Vec<_>>().into(),
            None => msg.headers().into(),
        };
        let mut root_fields = match &hop_msg {
            Some(h) => fields(h.raw_message(), h.headers()),
            None => Vec::new(),
        };
        root_fields.extend(fields(raw_msg, msg.headers()));
        root_fields.truncate(MAX_HEADERS);
        m.headers = root_fields.clone();
        m.headers.retain(|h| !h.name.to_ascii_lowercase().starts_with("x-spam-relays-"));
        if let Some(v) = crate::relays::untrusted(&all) {
            for name in ["X-Spam-Relays-Untrusted", "X-Spam-Relays-External"] {
                m.headers.push(HeaderField {
                    name: name.into(),
                    raw: v.clone(),
                    decoded: v.clone(),
                    addr: None,
                    display: None,
                });
            }
        }
        m.date_time = msg.date().map(|d| d.to_timestamp());
        for h in all.iter() {
            if let HeaderValue::Received(r) = &h.value {
                if let Some(d) = r.date() {
                    m.received_times.push(d.to_timestamp());
                }
            }
        }
        let subject = m.get("Subject").map(|s| s.decoded.clone()).unwrap_or_default();

        let mut rendered = String::new();
        for (i, part) in msg.parts.iter().enumerate() {
            let mut p = MimePart {
                headers: if i == 0 { root_fields.clone() } else { fields(raw_msg, part.headers()) },
                content_type: part
                    .content_type()
                    .map(|c| {
                        format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
                    })
                    .unwrap_or_default(),
                transfer_encoding: part
                    .content_transfer_encoding()
                    .unwrap_or("")
                    .to_ascii_lowercase(),
                ..Default::default()
            };
            match &part.body {
                PartType::Text(t) => {
                    push_chunks(&mut m.rawbody, scan_cut(t, RAWBODY_PART_SCAN, &['\n', ' ']));
                    rendered.push_str(scan_cut(t, BODY_PART_SCAN, &['\n', ' ']));
                    rendered.push('\n');
                    find_text_uris(t, &mut m.uris);
                    p.text = Some(t.to_string());
                }
                PartType::Html(h) => {
                    push_chunks(&mut m.rawbody, scan_cut(h, RAWBODY_PART_SCAN, &['\n', '>', ' ']));
                    let out = levee_html::strip(h);
                    rendered.push_str(scan_cut(&out.text, BODY_PART_SCAN, &['\n', ' ']));
                    rendered.push('\n');
                    for u in &out.urls {
                        push_uri(&mut m.uris, u);
                    }
                    find_text_uris(&out.text, &mut m.uris);
                    m.html.push(html_facts(h, &out));
                    p.text = Some(h.to_string());
                    p.is_html = true;
                }
                _ => {}
            }
            // the root of a single-part message is its own only part; keep it once
            if i > 0 || msg.parts.len() == 1 {
                m.parts.push(p);
            }
        }
        m.body = render_body(&subject, &rendered);
        m.uris = canonicalize(std::mem::take(&mut m.uris));
        m
    }

    /// The old way, for what [`SaMessage::from_parsed`] cannot build on: `hop` and `raw`
    /// joined and parsed together.
    fn from_joined(hop: &str, raw: &[u8]) -> SaMessage {
        let joined = [hop.as_bytes(), raw].concat();
        if let Some(msg) = MessageParser::default().parse(&joined) {
            return SaMessage::from_parsed(Some(&msg), &joined, "");
        }
        SaMessage {
            full: String::from_utf8_lossy(&joined).replace("\r\n", "\n"),
            missing_hb_separator: !has_separator(&joined, b""),
            ..Default::default()
        }
    }

    /// The first header field of that name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&HeaderField> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// All header fields of that name.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HeaderField> + 'a {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name))
    }
}

fn fields(raw: &[u8], headers: &[mail_parser::Header<'_>]) -> Vec<HeaderField> {
    headers
        .iter()
        .take(MAX_HEADERS)
        .map(|h| {
            let start = (h.offset_start as usize).min(raw.len());
            let end = (h.offset_end as usize).clamp(start, raw.len());
            let raw_v = String::from_utf8_lossy(&raw[start..end]).into_owned();
            let unfolded = unfold(&raw_v);
            let (addr, display) = match &h.value {
                HeaderValue::Address(a) => match a.first() {
                    Some(f) => {
                        (f.address().map(str::to_string), Some(f.name().unwrap_or("").to_string()))
                    }
                    None => (None, None),
                },
                _ => (None, None),
            };
            // only re-render what carried encoded words: mail-parser's structured rendering
            // loses detail (angle brackets, comments) that rules look at
            let decoded = if unfolded.contains("=?") {
                match &h.value {
                    HeaderValue::Text(t) => t.to_string(),
                    HeaderValue::TextList(l) => l.join(", "),
                    HeaderValue::Address(a) => a
                        .iter()
                        .map(|x| match (x.name(), x.address()) {
                            (Some(n), Some(ad)) => format!("{n} <{ad}>"),
                            (Some(n), None) => n.to_string(),
                            (None, Some(ad)) => ad.to_string(),
                            (None, None) => String::new(),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => unfolded,
                }
            } else {
                unfolded
            };
            HeaderField { name: h.name.as_str().to_string(), raw: raw_v, decoded, addr, display }
        })
        .collect()
}

/// Whether `a` followed by `b` holds a blank line (`\n\n` or `\r\n\r\n`), the seam included.
fn has_separator(a: &[u8], b: &[u8]) -> bool {
    let blank =
        |x: &[u8]| x.windows(2).any(|w| w == b"\n\n") || x.windows(4).any(|w| w == b"\r\n\r\n");
    let seam = [&a[a.len().saturating_sub(3)..], &b[..b.len().min(3)]].concat();
    blank(a) || blank(b) || blank(&seam)
}

fn unfold(v: &str) -> String {
    let mut s = v.replace("\r\n", "\n");
    s = s.replace('\n', "");
    s.trim().to_string()
}

fn push_chunks(out: &mut Vec<String>, text: &str) {
    let mut rest = text;
    while rest.len() > MAX_LINE * 2 {
        let window = floor_char(rest, MAX_LINE * 2);
        let mut cut = rest[..window].rfind('\n').map(|i| i + 1).unwrap_or(0);
        if cut < MAX_LINE {
            cut = window;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
}

/// `text` cut to about `max` bytes as SpamAssassin cuts a part: just after the first of
/// `ends` (tried in order) within 1 KiB past `max`, else at `max`.
fn scan_cut<'a>(text: &'a str, max: usize, ends: &[char]) -> &'a str {
    if text.len() <= max {
        return text;
    }
    let at = floor_char(text, max);
    let window = &text[at..floor_char(text, (at + 1024).min(text.len()))];
    for e in ends {
        if let Some(i) = window.find(*e) {
            return &text[..at + i + e.len_utf8()];
        }
    }
    &text[..at]
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i.max(1).min(s.len())
}

/// SA's rendering: blank-line-separated paragraphs, every whitespace run one space, the
/// subject as the first line, long lines split.
fn render_body(subject: &str, text: &str) -> Vec<String> {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut blank_run = false;
    for line in text.split('\n') {
        if line.trim().is_empty() {
            blank_run = true;
            continue;
        }
        if blank_run && !cur.is_empty() {
            paragraphs.push(std::mem::take(&mut cur));
        }
        blank_run = false;
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(line);
    }
    if !cur.is_empty() {
        paragraphs.push(cur);
    }
    let mut out = vec![format!("{subject}\n")];
    let n = paragraphs.len();
    for (i, p) in paragraphs.into_iter().enumerate() {
        let mut line: String = p.split_whitespace().collect::<Vec<_>>().join(" ");
        if i + 1 < n {
            line.push('\n');
        }
        let mut rest = line.as_str();
        while rest.len() > MAX_LINE {
            let cut = match rest[..floor_char(rest, MAX_LINE)].rfind(' ') {
                Some(i) if i > 0 => i + 1,
                _ => floor_char(rest, MAX_LINE),
            };
            out.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        out.push(rest.to_string());
    }
    out
}

fn html_facts(html: &str, out: &levee_html::HtmlText) -> HtmlFacts {
    let mut f = HtmlFacts {
        length: out.text.chars().filter(|c| !c.is_whitespace()).count(),
        images: out.images,
        ..Default::default()
    };
    let b = html.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'<') {
        i += off + 1;
        let closing = b.get(i) == Some(&b'/');
        let start = if closing { i + 1 } else { i };
        let end = b[start..]
            .iter()
            .position(|c| !c.is_ascii_alphanumeric())
            .map_or(b.len(), |e| start + e);
        if end > start && b[start].is_ascii_alphabetic() {
            let name = String::from_utf8_lossy(&b[start..end]).to_ascii_lowercase();
            let delta = if closing { -1 } else { 1 };
            match name.as_str() {
                "body" => f.open_body += delta,
                "head" => f.open_head += delta,
                _ => {}
            }
            if f.tags.len() < 256 && !f.tags.contains(&name) {
                f.tags.push(name);
            }
        }
    }
    f
}

fn push_uri(uris: &mut Vec<String>, u: &str) {
    if uris.len() < MAX_URIS {
        uris.push(u.trim().to_string());
    }
}

/// Web and mail addresses written in plain text.
fn find_text_uris(text: &str, uris: &mut Vec<String>) {
    for word in text.split(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == '"') {
        if uris.len() >= MAX_URIS {
            return;
        }
        let w = word
            .trim_matches(|c: char| matches!(c, '(' | ')' | ',' | '.' | ';' | '\'' | '[' | ']'));
        let lower = w.to_ascii_lowercase();
        if let Some(i) =
            ["http://", "https://", "ftp://"].iter().filter_map(|p| lower.find(p)).min()
        {
            push_uri(uris, &w[i..]);
        } else if lower.starts_with("www.") && w.len() > 4 {
            push_uri(uris, &format!("http://{w}"));
        } else if lower.starts_with("mailto:") {
            push_uri(uris, w);
        } else if let Some(at) = w.find('@') {
            let dom = &w[at + 1..];
            if at > 0 && dom.contains('.') && !dom.contains('@') {
                push_uri(uris, &format!("mailto:{w}"));
            }
        }
    }
}

/// SA's canonical forms: schemeless hosts get `http://`, percent-escapes are decoded into
/// an extra variant, duplicates go.
fn canonicalize(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    let add = |s: String, out: &mut Vec<String>| {
        if !s.is_empty() && !out.contains(&s) && out.len() < MAX_URIS * 2 {
            out.push(s);
        }
    };
    for u in list {
        let u: String = u.chars().filter(|c| !c.is_whitespace()).collect();
        let lower = u.to_ascii_lowercase();
        let u = if lower.starts_with("www.") {
            format!("http://{u}")
        } else if lower.starts_with("ftp.") {
            format!("ftp://{u}")
        } else {
            u
        };
        if u.contains('%') {
            add(percent_decode(&u), &mut out);
        }
        add(u, &mut out);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_sa() {
        let m = SaMessage::parse(
            b"Subject: Hello =?utf-8?q?W=C3=B6rld?=\r\nFrom: \"Bob\" <bob@example.com>\r\n\r\nline one\r\nline   two\r\n\r\n\r\npara two www.example.com/x\r\n",
        );
        assert_eq!(m.body[0], "Hello W\u{f6}rld\n");
        assert_eq!(m.body[1], "line one line two\n");
        assert_eq!(m.body[2], "para two www.example.com/x");
        assert_eq!(m.get("from").and_then(|f| f.addr.clone()).as_deref(), Some("bob@example.com"));
        assert!(m.uris.iter().any(|u| u == "http://www.example.com/x"));
        assert_eq!(percent_decode("a%41%4"), "aA%4");
    }

    #[test]
    fn large_parts_are_cut_like_spamassassin() {
        let text = format!(
            "{}\nrest of a long line {}",
            "a".repeat(BODY_PART_SCAN - 3),
            "b".repeat(90_000)
        );
        let cut = scan_cut(&text, BODY_PART_SCAN, &['\n', ' ']);
        assert!(cut.ends_with("\nrest "), "cut just after the first break past the limit");
        let solid = "é".repeat(40_000);
        let cut = scan_cut(&solid, BODY_PART_SCAN, &['\n', ' ']);
        assert!(cut.len() <= BODY_PART_SCAN && cut.len() > BODY_PART_SCAN - 4);
        let raw = format!(
            "Subject: big\r\nContent-Type: text/plain\r\n\r\n{}\r\nviagra\r\n",
            "word ".repeat(30_000)
        );
        let m = SaMessage::parse(raw.as_bytes());
        let body: usize = m.body.iter().map(String::len).sum();
        assert!(body < BODY_PART_SCAN + 2_000, "body text {body}");
        assert!(!m.body.concat().contains("viagra"), "text past the scan size is not seen");
        assert!(m.rawbody.concat().contains("viagra"), "rawbody keeps up to its own limit");
    }

    #[test]
    fn a_hop_on_top_reads_as_one_parse_of_the_joined_bytes() {
        let hop = "Received: from mx.example (mx.example [203.0.113.9])\r\n\tby gw.test with ESMTP; Thu, 3 Dec 2026 10:00:00 +0000\r\n";
        let cases: [&[u8]; 4] = [
            b"Received: from a (a [10.0.0.1]) by b; Thu, 3 Dec 2026 09:00:00 +0000\r\nSubject: hi\r\n\r\nbody www.example.com\r\n",
            b"Subject: single\r\nContent-Type: text/html\r\n\r\n<a href=http://x.example.org/>x</a>\r\n",
            b"Subject: no separator",
            b"",
        ];
        for raw in cases {
            let joined = [hop.as_bytes(), raw].concat();
            let parsed = MessageParser::default().parse(raw);
            let once = SaMessage::from_parsed(parsed.as_ref(), raw, hop);
            let twice = SaMessage::parse(&joined);
            assert_eq!(
                format!("{once:?}"),
                format!("{twice:?}"),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for raw in [&b""[..], b"\xff\xfe", b"Subject: x", b"a\r\n\r\n%%%<<<>>>=?=?"] {
            let _ = SaMessage::parse(raw);
        }
    }
}
