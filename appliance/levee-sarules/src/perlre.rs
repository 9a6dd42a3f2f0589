//! Perl regular expressions as SpamAssassin writes them, read and translated.
//!
//! SpamAssassin matches bytes (it never `use utf8`s the rules), so patterns are translated
//! for `regex::bytes` with Unicode off: `\w`, `\b`, `\d`, `\s` and `/i` are ASCII, `.` is any
//! byte, and a non-ASCII byte in the pattern (`é` written as UTF-8, or `\xe9`) matches that
//! byte. The message text we match is UTF-8, so a rule written for UTF-8 sequences
//! (`\xc3\xa9`) matches as in SpamAssassin with `normalize_charset`.
//!
//! What `regex` cannot express (look-around, back-references, atomic groups, possessive
//! quantifiers) is flagged so the caller compiles it with PCRE2 instead.

/// A pattern as read from a rule line: the source between the delimiters and the flags.
#[derive(Debug, Clone, PartialEq)]
pub struct PerlRe {
    pub source: String,
    pub flags: String,
}

/// Reads `/re/flags`, `m{re}flags`, `m!re!flags`... at the start of `s` (after blanks).
/// Returns the pattern and the rest of the line after the flags.
pub fn read_delimited(s: &str) -> Result<(PerlRe, &str), String> {
    let s = s.trim_start();
    let (open, body) = if let Some(rest) = s.strip_prefix('/') {
        ('/', rest)
    } else if let Some(rest) = s.strip_prefix('m') {
        let mut it = rest.chars();
        match it.next() {
            Some(c) if !c.is_alphanumeric() && !c.is_whitespace() && c != '\\' => {
                (c, &rest[c.len_utf8()..])
            }
            _ => return Err("expected a regular expression".into()),
        }
    } else {
        return Err("expected a regular expression".into());
    };
    let close = match open {
        '{' => '}',
        '(' => ')',
        '[' => ']',
        '<' => '>',
        c => c,
    };
    let mut depth = 0usize;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
        } else if c == close && depth == 0 {
            let source = body[..i].to_string();
            let after = &body[i + c.len_utf8()..];
            let flags_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
            let flags = after[..flags_len].to_string();
            return Ok((PerlRe { source, flags }, &after[flags_len..]));
        } else if open != close {
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
            }
        }
    }
    Err("unterminated regular expression".into())
}

/// A translated pattern and whether only a backtracking engine can run it.
#[derive(Debug)]
pub struct Translated {
    pub pattern: String,
    pub needs_fancy: bool,
}

/// Translates a Perl pattern (with its flags) to `regex` syntax.
pub fn translate(re: &PerlRe) -> Translated {
    let mut t = Translator {
        src: re.source.as_bytes(),
        pos: 0,
        out: String::with_capacity(re.source.len() + 16),
        fancy: false,
        extended: re.flags.contains('x'),
        multiline: re.flags.contains('m'),
    };
    // flags first: everything after `-` is switched off
    let mut prefix = String::from("(?");
    for f in ['i', 's', 'm'] {
        if re.flags.contains(f) {
            prefix.push(f);
        }
    }
    prefix.push_str("-u)");
    t.run();
    Translated { pattern: format!("{prefix}{}", t.out), needs_fancy: t.fancy }
}

struct Translator<'a> {
    src: &'a [u8],
    pos: usize,
    out: String,
    fancy: bool,
    extended: bool,
    multiline: bool,
}

fn push_byte(out: &mut String, b: u8) {
    if b.is_ascii_alphanumeric() || b == b'_' {
        out.push(b as char);
    } else {
        out.push_str(&format!("\\x{b:02X}"));
    }
}

impl Translator<'_> {
    fn peek(&self, off: usize) -> Option<u8> {
        self.src.get(self.pos + off).copied()
    }

    fn run(&mut self) {
        while let Some(b) = self.peek(0) {
            match b {
                b'\\' => {
                    self.pos += 1;
                    self.escape(false);
                }
                b'[' => self.class(),
                b'{' => self.brace(),
                b'}' => {
                    self.out.push_str("\\}");
                    self.pos += 1;
                }
                b'(' => self.group(),
                b'$' => {
                    self.pos += 1;
                    // Perl's `$` also matches before a final newline, and body lines end in one.
                    if self.multiline {
                        self.out.push('$');
                    } else {
                        self.out.push_str("(?:\\n?\\z)");
                    }
                }
                b'*' | b'+' | b'?' => {
                    self.out.push(b as char);
                    self.pos += 1;
                    self.after_quantifier();
                }
                b'#' if self.extended => {
                    while let Some(c) = self.peek(0) {
                        self.pos += 1;
                        if c == b'\n' {
                            break;
                        }
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' if self.extended => self.pos += 1,
                b'.' | b'^' | b'|' | b')' => {
                    self.out.push(b as char);
                    self.pos += 1;
                }
                _ => {
                    if b >= 0x80 {
                        push_byte(&mut self.out, b);
                    } else if b.is_ascii_alphanumeric() || b == b'_' {
                        self.out.push(b as char);
                    } else {
                        push_byte(&mut self.out, b);
                    }
                    self.pos += 1;
                }
            }
        }
    }

    /// `+` after a quantifier is possessive, `?` lazy (fine for `regex`).
    fn after_quantifier(&mut self) {
        match self.peek(0) {
            Some(b'+') => {
                self.fancy = true;
                self.out.push('+');
                self.pos += 1;
            }
            Some(b'?') => {
                self.out.push('?');
                self.pos += 1;
            }
            _ => {}
        }
    }

    fn brace(&mut self) {
        let rest = &self.src[self.pos + 1..];
        let end = rest.iter().position(|&c| c == b'}');
        if let Some(end) = end {
            let inner = &rest[..end];
            let valid = !inner.is_empty()
                && inner.iter().all(|c| c.is_ascii_digit() || *c == b',')
                && inner.iter().filter(|&&c| c == b',').count() <= 1;
            if valid {
                let inner = std::str::from_utf8(inner).unwrap_or("0");
                if inner.starts_with(',') {
                    // `{,n}` is `{0,n}` in modern Perl
                    self.out.push_str(&format!("{{0{inner}}}"));
                } else {
                    self.out.push('{');
                    self.out.push_str(inner);
                    self.out.push('}');
                }
                self.pos += end + 2;
                self.after_quantifier();
                return;
            }
        }
        self.out.push_str("\\{");
        self.pos += 1;
    }

    fn group(&mut self) {
        self.pos += 1;
        if self.peek(0) != Some(b'?') {
            self.out.push('(');
            return;
        }
        let rest = &self.src[self.pos..];
        if rest.starts_with(b"?#") {
            // comment group
            while let Some(c) = self.peek(0) {
                self.pos += 1;
                if c == b')' {
                    break;
                }
            }
            return;
        }
        for fancy_prefix in [&b"?="[..], b"?!", b"?<=", b"?<!", b"?>"] {
            if rest.starts_with(fancy_prefix) {
                self.fancy = true;
                self.out.push('(');
                self.out.push_str(std::str::from_utf8(fancy_prefix).unwrap_or("?"));
                self.pos += fancy_prefix.len();
                return;
            }
        }
        if rest.starts_with(b"?'") {
            // (?'name'...) -> (?<name>...)
            if let Some(end) = rest[2..].iter().position(|&c| c == b'\'') {
                let name = String::from_utf8_lossy(&rest[2..2 + end]).into_owned();
                self.out.push_str(&format!("(?<{name}>"));
                self.pos += end + 3;
                return;
            }
        }
        // flags and non-capturing groups: (?i) (?i-s:...) (?:...) (?<name>...) (?P<name>...)
        self.out.push_str("(?");
        self.pos += 1;
        if self.peek(0) == Some(b'^') {
            self.pos += 1;
        }
        if matches!(self.peek(0), Some(b'<') | Some(b'P')) {
            if self.peek(0) == Some(b'P') {
                self.pos += 1;
            }
            while let Some(c) = self.peek(0) {
                self.out.push(c as char);
                self.pos += 1;
                if c == b'>' {
                    break;
                }
            }
            return;
        }
        while let Some(c) = self.peek(0) {
            if c.is_ascii_alphabetic() || c == b'-' {
                // only flags `regex` knows; Perl's others (a, l, u, n, p) do not matter here
                if matches!(c, b'i' | b'm' | b's' | b'x' | b'U' | b'-') {
                    self.out.push(c as char);
                }
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.out.ends_with("(?") && self.peek(0) == Some(b')') {
            // `(?)` or only unknown flags: nothing left to say
            self.out.truncate(self.out.len() - 2);
            self.pos += 1;
            return;
        }
        if let Some(c @ (b':' | b')')) = self.peek(0) {
            self.out.push(c as char);
            self.pos += 1;
        }
    }

    /// A character class, copied with Perl's literal `[`, `&&`, `~~`, `--` escaped.
    fn class(&mut self) {
        self.out.push('[');
        self.pos += 1;
        if self.peek(0) == Some(b'^') {
            self.out.push('^');
            self.pos += 1;
        }
        if self.peek(0) == Some(b']') {
            self.out.push_str("\\]");
            self.pos += 1;
        }
        while let Some(b) = self.peek(0) {
            match b {
                b']' => {
                    self.out.push(']');
                    self.pos += 1;
                    return;
                }
                b'\\' => {
                    self.pos += 1;
                    self.escape(true);
                }
                b'[' => {
                    let rest = &self.src[self.pos..];
                    if rest.starts_with(b"[:") {
                        if let Some(end) = rest.windows(2).position(|w| w == b":]") {
                            self.out.push_str(&String::from_utf8_lossy(&rest[..end + 2]));
                            self.pos += end + 2;
                            continue;
                        }
                    }
                    self.out.push_str("\\[");
                    self.pos += 1;
                }
                b'-' => {
                    let first = self.out.ends_with('[') || self.out.ends_with("[^");
                    let last = self.peek(1) == Some(b']');
                    if first || last || self.peek(1) == Some(b'-') || self.out.ends_with("\\x2D") {
                        self.out.push_str("\\x2D");
                    } else {
                        self.out.push('-');
                    }
                    self.pos += 1;
                }
                _ => {
                    if b.is_ascii_alphanumeric() || b == b'_' {
                        self.out.push(b as char);
                    } else {
                        push_byte(&mut self.out, b);
                    }
                    self.pos += 1;
                }
            }
        }
        // unterminated class: let the compiler refuse it
    }

    /// The character after a backslash (already consumed).
    fn escape(&mut self, in_class: bool) {
        let Some(c) = self.peek(0) else {
            self.out.push_str("\\\\");
            return;
        };
        self.pos += 1;
        match c {
            b'1'..=b'9' if !in_class => {
                self.fancy = true;
                self.out.push('\\');
                self.out.push(c as char);
            }
            b'0'..=b'7' => {
                // octal: \0, \012, \101 (in a class \1 is octal too)
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match self.peek(0) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                self.out.push_str(&format!("\\x{:02X}", v & 0xff));
            }
            b'x' => {
                if self.peek(0) == Some(b'{') {
                    let rest = &self.src[self.pos + 1..];
                    if let Some(end) = rest.iter().position(|&c| c == b'}') {
                        let hex = String::from_utf8_lossy(&rest[..end]).trim().to_string();
                        let v = u32::from_str_radix(&hex, 16).unwrap_or(0);
                        self.pos += end + 2;
                        if v < 0x100 {
                            self.out.push_str(&format!("\\x{v:02X}"));
                        } else {
                            // a code point: its UTF-8 bytes
                            let ch = char::from_u32(v).unwrap_or('\u{fffd}');
                            let mut buf = [0u8; 4];
                            let enc = ch.encode_utf8(&mut buf);
                            if in_class {
                                self.out.push_str(&format!("\\x{v:X}"));
                                self.fancy = true;
                            } else {
                                self.out.push_str("(?:");
                                for b in enc.bytes() {
                                    self.out.push_str(&format!("\\x{b:02X}"));
                                }
                                self.out.push(')');
                            }
                        }
                        return;
                    }
                }
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match self.peek(0).and_then(|d| (d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            self.pos += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                self.out.push_str(&format!("\\x{v:02X}"));
            }
            b'Z' => self.out.push_str(if in_class { "Z" } else { "(?:\\n?\\z)" }),
            b'b' if in_class => self.out.push_str("\\x08"),
            b'e' => self.out.push_str("\\x1B"),
            b'a' => self.out.push_str("\\x07"),
            b'h' => self.out.push_str(if in_class { " \\t" } else { "[ \\t]" }),
            b'H' => self.out.push_str(if in_class {
                "\\x00-\\x08\\x0A-\\x1F!-\\xFF"
            } else {
                "[^ \\t]"
            }),
            b'v' => {
                self.out.push_str(if in_class { "\\n\\x0B\\x0C\\r" } else { "[\\n\\x0B\\x0C\\r]" })
            }
            b'V' => self.out.push_str(if in_class {
                "\\x00-\\x09\\x0E-\\xFF"
            } else {
                "[^\\n\\x0B\\x0C\\r]"
            }),
            b'R' if !in_class => self.out.push_str("(?:\\r\\n|[\\n\\x0B\\x0C\\r])"),
            b'K' | b'G' | b'k' | b'g' => {
                self.fancy = true;
                self.out.push('\\');
                self.out.push(c as char);
            }
            b'Q' => {
                while self.pos < self.src.len() {
                    if self.src[self.pos..].starts_with(b"\\E") {
                        self.pos += 2;
                        break;
                    }
                    push_byte(&mut self.out, self.src[self.pos]);
                    self.pos += 1;
                }
            }
            b'E' | b'l' | b'u' | b'L' | b'U' => {}
            b'c' => {
                if let Some(x) = self.peek(0) {
                    self.pos += 1;
                    self.out.push_str(&format!("\\x{:02X}", x.to_ascii_uppercase() ^ 0x40));
                }
            }
            b'A' | b'z' | b'B' | b'b' | b'd' | b'D' | b'w' | b'W' | b's' | b'S' | b'n' | b'r'
            | b't' | b'f' | b'p' | b'P' => {
                self.out.push('\\');
                self.out.push(c as char);
            }
            _ if c.is_ascii_alphanumeric() => {
                // unknown letter escape: Perl takes the letter
                self.out.push(c as char);
            }
            _ => push_byte(&mut self.out, c),
        }
    }
}

/// A linear-time superset of a backtracking-only pattern, to run first: look-around and
/// `\K` removed, back-references widened to any text, atomic groups and possessive
/// quantifiers made ordinary. Where it does not match, the real pattern cannot either.
pub fn relax(pattern: &str) -> String {
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    let mut in_class = false;
    let mut last_quant = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() {
            let n = b[i + 1];
            if !in_class && (n.is_ascii_digit() && n != b'0') {
                out.push_str("(?s:.*?)");
                i += 2;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else if !in_class && n == b'k' {
                out.push_str("(?s:.*?)");
                i += 2;
                if let Some(end) = b[i..].iter().position(|&c| c == b'>' || c == b'}' || c == b'\'')
                {
                    i += end + 1;
                }
            } else if !in_class && matches!(n, b'K' | b'G') {
                i += 2;
            } else {
                out.push('\\');
                out.push(n as char);
                i += 2;
            }
            last_quant = false;
            continue;
        }
        if in_class {
            if c == b']' {
                in_class = false;
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        match c {
            b'[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if b.get(i) == Some(&b'^') {
                    out.push('^');
                    i += 1;
                }
                if b.get(i) == Some(&b']') {
                    out.push(']');
                    i += 1;
                }
                last_quant = false;
            }
            b'(' if b[i..].starts_with(b"(?=")
                || b[i..].starts_with(b"(?!")
                || b[i..].starts_with(b"(?<=")
                || b[i..].starts_with(b"(?<!") =>
            {
                i = skip_group(b, i);
                last_quant = false;
            }
            b'(' if b[i..].starts_with(b"(?>") => {
                out.push_str("(?:");
                i += 3;
                last_quant = false;
            }
            b'+' if last_quant => {
                i += 1;
                last_quant = false;
            }
            b'*' | b'+' | b'?' | b'}' => {
                out.push(c as char);
                i += 1;
                last_quant = c != b'?' || !out[..out.len() - 1].ends_with(['*', '+', '?', '}']);
            }
            _ => {
                out.push(c as char);
                i += 1;
                last_quant = false;
            }
        }
    }
    out
}

/// Splits `(?flags)(?!X)REST` into the flags, X and REST, for patterns whose only
/// backtracking need is a leading negative look-ahead (the ReplaceTags `FUZZY_*` rules).
pub fn leading_negative_lookahead(pattern: &str) -> Option<(&str, &str, &str)> {
    let flags_end = if pattern.starts_with("(?") && !pattern.starts_with("(?!") {
        pattern.find(')')? + 1
    } else {
        0
    };
    let (flags, rest) = pattern.split_at(flags_end);
    if !rest.starts_with("(?!") {
        return None;
    }
    let end = skip_group(rest.as_bytes(), 0);
    if end < 4 || end > rest.len() {
        return None;
    }
    Some((flags, &rest[3..end - 1], &rest[end..]))
}

/// The index after the group opening at `start`.
pub fn skip_group(b: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    let mut in_class = false;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'(' if !in_class => depth += 1,
            b')' if !in_class => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(s: &str) -> String {
        let (re, rest) = read_delimited(s).expect("delimited");
        assert!(rest.trim().is_empty(), "{rest}");
        translate(&re).pattern
    }

    #[test]
    fn delimiters() {
        let (re, rest) = read_delimited("m{a/b}i [if-unset: x]").expect("ok");
        assert_eq!(re.source, "a/b");
        assert_eq!(re.flags, "i");
        assert_eq!(rest, " [if-unset: x]");
        let (re, _) = read_delimited(r"/a\/b/").expect("ok");
        assert_eq!(re.source, r"a\/b");
        assert!(read_delimited("/abc").is_err());
        assert!(read_delimited("abc").is_err());
    }

    #[test]
    fn translations_compile() {
        for p in [
            r"/\bfoo\b$/",
            r"/[[:alpha:]]+[^\]a-]/i",
            r"/a{,3}b{2}c{/",
            r"/\<b\>/",
            r"/\012\x4\x{263a}/",
            r"/ a b # comment
               c/x",
            r"/[a&&b~~c--d]/",
            r"/é[éè]/",
        ] {
            let t = tr(p);
            regex::bytes::Regex::new(&t).unwrap_or_else(|e| panic!("{p} -> {t}: {e}"));
        }
        assert!(translate(&read_delimited(r"/(?!x)y/").expect("ok").0).needs_fancy);
        assert!(translate(&read_delimited(r"/(a)\1/").expect("ok").0).needs_fancy);
        for (p, want) in [
            (r"(?!x)y", "y"),
            (r"(a)\1b", "(a)(?s:.*?)b"),
            (r"a++(?>b)c*+d+?", "a+(?:b)c*d+?"),
            (r"[(?=]x(?<!\))", "[(?=]x"),
        ] {
            assert_eq!(relax(p), want, "{p}");
        }
    }
}
