//! The outbound side: parsing server replies and rendering a stored message for DATA.

use levee_types::{Enhanced, Reply};
use memchr::{memchr, memchr2};
use thiserror::Error;

/// Why a server's reply could not be parsed. Any of these ends the delivery attempt.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum ReplyError {
    #[error("reply line longer than {0} octets")]
    LineTooLong(usize),
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
    #[error("malformed reply line: {0:?}")]
    Syntax(String),
    #[error("reply code changed within a multi-line reply: {first} then {then}")]
    CodeMismatch { first: u16, then: u16 },
}

/// Incremental parser for (multi-line) SMTP replies, with enhanced status codes.
///
/// `feed` what was read, then call `next_reply` until it returns `Ok(None)`. Lines end
/// at LF (a preceding CR is dropped): being lenient here cannot smuggle anything, since
/// replies carry no message content.
#[derive(Debug)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    max_line: usize,
    max_lines: usize,
    /// Lines of the reply being assembled (code, enhanced code of the first line, texts).
    partial: Option<(u16, Option<Enhanced>, Vec<String>)>,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser::new(2048, 128)
    }
}

impl ReplyParser {
    /// A parser refusing lines over `max_line` octets (CRLF included) and replies of more
    /// than `max_lines` lines.
    pub fn new(max_line: usize, max_lines: usize) -> Self {
        ReplyParser { buf: Vec::new(), pos: 0, max_line, max_lines, partial: None }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 4096 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, `Ok(None)` if more input is needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(lf) = memchr(b'\n', rest) else {
                if rest.len() >= self.max_line {
                    return Err(ReplyError::LineTooLong(self.max_line));
                }
                return Ok(None);
            };
            if lf + 1 > self.max_line {
                return Err(ReplyError::LineTooLong(self.max_line));
            }
            let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
            let (code, more, enhanced, text) = parse_line(line)?;
            self.pos += lf + 1;
            let (first, first_enhanced, lines) =
                self.partial.get_or_insert_with(|| (code, enhanced, Vec::new()));
            if *first != code {
                return Err(ReplyError::CodeMismatch { first: *first, then: code });
            }
            let first_enhanced = *first_enhanced;
            lines.push(text);
            if lines.len() > self.max_lines {
                return Err(ReplyError::TooManyLines(self.max_lines));
            }
            if !more {
                let (code, _, lines) = self.partial.take().unwrap_or_default();
                return Ok(Some(Reply { code, enhanced: first_enhanced, lines }));
            }
        }
    }
}

/// Splits `250-2.1.0 text` into code, continuation flag, enhanced code and text.
fn parse_line(line: &[u8]) -> Result<(u16, bool, Option<Enhanced>, String), ReplyError> {
    let bad = || ReplyError::Syntax(String::from_utf8_lossy(line).into_owned());
    if line.len() < 3
        || !line[..3].iter().all(u8::is_ascii_digit)
        || !(b'2'..=b'5').contains(&line[0])
    {
        return Err(bad());
    }
    let code =
        (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    let (more, text) = match line.get(3) {
        None => (false, &b""[..]),
        Some(b' ') => (false, &line[4..]),
        Some(b'-') => (true, &line[4..]),
        Some(_) => return Err(bad()),
    };
    let text = String::from_utf8_lossy(text);
    let (enhanced, text) = match split_enhanced(&text, line[0] - b'0') {
        Some((e, rest)) => (Some(e), rest.to_string()),
        None => (None, text.into_owned()),
    };
    Ok((code, more, enhanced, text))
}

/// `class.subject.detail` at the start of the text, its class matching the reply code.
fn split_enhanced(text: &str, class: u8) -> Option<(Enhanced, &str)> {
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = word.split('.');
    let mut num = |max_len: usize| {
        parts
            .next()
            .filter(|p| {
                !p.is_empty() && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|p| p.parse::<u16>().ok())
    };
    let (c, s, d) = (num(1)?, num(3)?, num(3)?);
    if parts.next().is_some() || c != class as u16 {
        return None;
    }
    Some((Enhanced(class, s, d), rest))
}

/// Renders a stored message for DATA: canonical CRLF line ends (a bare CR or LF becomes
/// CRLF), leading dots doubled, a final CRLF if missing, then `.` CRLF.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 8);
    dot_stuff_into(data, &mut out);
    out
}

/// [`dot_stuff`] appending to an existing buffer.
pub fn dot_stuff_into(data: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'.' {
            out.push(b'.');
        }
        match memchr2(b'\r', b'\n', &data[i..]) {
            None => {
                out.extend_from_slice(&data[i..]);
                out.extend_from_slice(b"\r\n");
                break;
            }
            Some(off) => {
                let j = i + off;
                out.extend_from_slice(&data[i..j]);
                out.extend_from_slice(b"\r\n");
                i = if data[j] == b'\r' && data.get(j + 1) == Some(&b'\n') { j + 2 } else { j + 1 };
            }
        }
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::default();
        p.feed(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn parses_multiline_with_enhanced_codes_at_any_split() {
        let wire = b"220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n550 5.1.1 no such user\r\n";
        let expect = vec![
            Reply::new(220, None, "mx.test ESMTP"),
            Reply {
                code: 250,
                enhanced: None,
                lines: vec!["mx.test".into(), "PIPELINING".into(), "SIZE 10".into()],
            },
            Reply::with(550, 1, 1, "no such user"),
        ];
        assert_eq!(all(wire).unwrap(), expect);
        for split in 0..wire.len() {
            let mut p = ReplyParser::default();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                p.feed(part);
                while let Some(r) = p.next_reply().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, expect, "split at {split}");
        }
    }

    #[test]
    fn enhanced_code_must_match_class_and_round_trips() {
        let r = all(b"250 5.1.1 odd\r\n").unwrap();
        assert_eq!(r[0].enhanced, None);
        assert_eq!(r[0].lines, vec!["5.1.1 odd"]);
        let orig = Reply::with(451, 3, 0, "try later");
        assert_eq!(all(&orig.to_wire()).unwrap(), vec![orig]);
        assert_eq!(all(b"250\r\n").unwrap()[0].lines, vec![""]);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(matches!(all(b"25\r\n"), Err(ReplyError::Syntax(_))));
        assert!(matches!(all(b"250x\r\n"), Err(ReplyError::Syntax(_))));
        assert!(matches!(all(b"650 no\r\n"), Err(ReplyError::Syntax(_))));
        assert!(matches!(all(b"250-a\r\n251 b\r\n"), Err(ReplyError::CodeMismatch { .. })));
        let mut p = ReplyParser::new(16, 2);
        p.feed(&[b'2'; 40]);
        assert_eq!(p.next_reply(), Err(ReplyError::LineTooLong(16)));
        let mut p = ReplyParser::new(16, 2);
        p.feed(b"250-a\r\n250-b\r\n250 c\r\n");
        assert_eq!(p.next_reply(), Err(ReplyError::TooManyLines(2)));
    }

    #[test]
    fn dot_stuffing_renders_canonical_data() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b".a\r\nb\r\n..\r\n"), b"..a\r\nb\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\nb\rc"), b"a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r\n.\r\n"), b"x\r\n..\r\n.\r\n");
    }
}
