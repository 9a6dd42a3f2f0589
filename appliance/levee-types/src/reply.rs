//! SMTP replies with enhanced status codes (RFC 3463), rendered for the wire.

use std::fmt;

/// `class.subject.detail`, e.g. 5.1.1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply: a code, an optional enhanced code and one or more text lines.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Self {
        Reply { code, enhanced, lines: vec![text.into()] }
    }

    /// A reply whose enhanced code is derived from `class.subject.detail` given as numbers.
    pub fn with(code: u16, subject: u16, detail: u16, text: impl Into<String>) -> Self {
        let class = (code / 100) as u8;
        Reply::new(code, Some(Enhanced(class, subject, detail)), text)
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as sent: `250-first` continuation lines, `250 last`, each with CRLF.
    /// Text is stripped of CR and LF so a reply can never inject a second reply.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            let text: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            let line = match self.enhanced {
                Some(e) => format!("{}{}{} {}", self.code, sep, e, text),
                None => format!("{}{}{}", self.code, sep, text),
            };
            // Trimmed before the CRLF: an empty text leaves no trailing space.
            out.extend_from_slice(line.trim_end_matches(' ').as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.lines.join(" / ")),
            None => write!(f, "{} {}", self.code, self.lines.join(" / ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_replies_use_dashes_then_space() {
        let r = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx.example.test".into(), "PIPELINING".into(), "SIZE 100".into()],
        };
        assert_eq!(r.to_wire(), b"250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n");
    }

    #[test]
    fn enhanced_codes_follow_the_code_and_text_cannot_inject_lines() {
        let r = Reply::with(550, 1, 1, "no such user\r\n250 ok");
        assert_eq!(r.to_wire(), b"550 5.1.1 no such user250 ok\r\n");
    }

    /// Found by `fuzz/smtp_client`: the trailing space was trimmed after the CRLF had been
    /// added, so never, and `550 5.7.1` read back rendered as `550 5.7.1 ` (not a fixed point).
    #[test]
    fn an_empty_text_leaves_no_trailing_space() {
        assert_eq!(Reply::with(550, 7, 1, "").to_wire(), b"550 5.7.1\r\n");
        assert_eq!(Reply::new(250, None, "").to_wire(), b"250\r\n");
        let r = Reply { code: 250, enhanced: None, lines: vec!["".into(), "x ".into()] };
        assert_eq!(r.to_wire(), b"250-\r\n250 x\r\n");
    }
}
