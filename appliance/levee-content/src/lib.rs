//! A message as Levee's content checks read it: parsed once, bounded, with its links.
//!
//! [`Content::parse`] cuts the message at the first structural bound it exceeds
//! ([`limits`]), parses what is left once with mail-parser, and hands the result to every
//! reader: the Bayes tokeniser, the structural rules and SpamAssassin's rules in
//! `levee-filter`/`levee-sarules`, and the URI blocklist lookups in `levee-netcheck`
//! ([`Content::links`]). One link reader ([`links`]) and one registrable-domain function
//! ([`registrable_domain`], the public suffix list) serve all of them, so two checks never
//! disagree about which site a link or an address belongs to. Pure: no I/O, no clock.

mod domain;
pub mod limits;
pub mod links;

pub use domain::registrable_domain;
pub use links::{extract_from_text, UriHost};
pub use mail_parser::{self, Message};

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// One parse of one message, read up to its first bound.
#[derive(Debug)]
pub struct Content<'a> {
    /// The bytes every check reads: the message up to [`limits::Scan::cut`].
    raw: &'a [u8],
    bounds: limits::Scan,
    /// `None` when mail-parser finds no message at all (empty input).
    message: Option<mail_parser::Message<'a>>,
}

/// An attached file as the message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name the message gives (`filename` or `name`), if any.
    pub name: Option<String>,
    /// `type/subtype`, lower case; empty when the part has no Content-Type.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

impl<'a> Content<'a> {
    /// Scans `raw` for its bounds and parses the bounded part once. Never fails: what cannot
    /// be parsed is absent ([`Content::message`] is `None`, readers fall back to the bytes).
    pub fn parse(raw: &'a [u8]) -> Content<'a> {
        let bounds = limits::scan(raw);
        let raw = &raw[..bounds.cut];
        let message = MessageParser::default().parse(raw);
        Content { raw, bounds, message }
    }

    /// The bytes the checks read (the message up to its first bound).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Where the message was cut, and the bound findings.
    pub fn bounds(&self) -> &limits::Scan {
        &self.bounds
    }

    /// The parsed message, if mail-parser found one.
    pub fn message(&self) -> Option<&mail_parser::Message<'a>> {
        self.message.as_ref()
    }

    /// The top-level header fields (none when the message did not parse).
    pub fn headers(&self) -> &[mail_parser::Header<'a>] {
        self.message.as_ref().map_or(&[], |m| m.headers())
    }

    /// The decoded Subject.
    pub fn subject(&self) -> Option<&str> {
        self.message.as_ref()?.subject()
    }

    /// Every decoded text/plain part of the message itself (attached messages not opened).
    pub fn text_parts(&self) -> impl Iterator<Item = &str> {
        self.bodies().filter_map(|b| match b {
            PartType::Text(t) => Some(t.as_ref()),
            _ => None,
        })
    }

    /// Every decoded text/html part of the message itself, markup kept.
    pub fn html_parts(&self) -> impl Iterator<Item = &str> {
        self.bodies().filter_map(|b| match b {
            PartType::Html(h) => Some(h.as_ref()),
            _ => None,
        })
    }

    fn bodies(&self) -> impl Iterator<Item = &PartType<'a>> {
        self.message.iter().flat_map(|m| m.parts.iter().map(|p| &p.body))
    }

    /// The message's attachments, in order.
    pub fn attachments(&self) -> Vec<Attachment> {
        let Some(m) = &self.message else { return Vec::new() };
        m.attachments()
            .map(|p| Attachment {
                name: p.attachment_name().map(str::to_string),
                content_type: p
                    .content_type()
                    .map(|c| {
                        format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
                    })
                    .unwrap_or_default(),
                size: p.len(),
            })
            .collect()
    }

    /// Distinct link hosts (subject, text and HTML parts, attached messages), in order of
    /// first appearance, at most `max`: what URI blocklists are asked about.
    pub fn links(&self, max: usize) -> Vec<UriHost> {
        links::extract(self.message.as_ref(), self.raw, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_attachments_and_links_from_one_parse() {
        let raw = b"From: a@example.com\r\nSubject: see www.subject.example.org\r\n\
            Content-Type: multipart/mixed; boundary=b\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nplain http://a.foo.github.io/x\r\n\
            --b\r\nContent-Type: text/html\r\n\r\n<a href=\"https://www.evil.co.uk/\">x</a>\r\n\
            --b\r\nContent-Type: application/pdf; name=\"bill.pdf\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--b--\r\n";
        let c = Content::parse(raw);
        assert_eq!(c.subject(), Some("see www.subject.example.org"));
        assert!(c.text_parts().any(|t| t.contains("plain http")));
        assert!(c.html_parts().any(|h| h.contains("href")));
        assert_eq!(
            c.attachments(),
            vec![Attachment {
                name: Some("bill.pdf".into()),
                content_type: "application/pdf".into(),
                size: 4
            }]
        );
        let links: Vec<String> = c.links(10).iter().map(ToString::to_string).collect();
        assert_eq!(links, ["example.org", "foo.github.io", "evil.co.uk"]);
        assert_eq!(c.links(2).len(), 2);
    }

    #[test]
    fn checks_read_only_up_to_the_first_bound() {
        let mut m = String::from("Subject: deep\r\n");
        for i in 0..=limits::MAX_DEPTH {
            m.push_str(&format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"));
        }
        m.push_str("Content-Type: text/plain\r\n\r\nhttp://past-the-bound.example.com/\r\n");
        let c = Content::parse(m.as_bytes());
        assert!(c.raw().len() < m.len());
        assert_eq!(c.bounds().findings[0].symbol, "MIME_NESTING_LIMIT");
        assert!(c.links(10).is_empty(), "a link past the cut is not read");
    }

    #[test]
    fn nothing_to_parse_is_no_message() {
        let c = Content::parse(b"");
        assert!(c.message().is_none() && c.headers().is_empty());
        assert!(c.attachments().is_empty());
    }
}
