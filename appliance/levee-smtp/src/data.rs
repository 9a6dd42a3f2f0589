//! Message content receivers: DATA (dot-terminated, dot-stuffed) and BDAT (counted).
//!
//! Both scan with SIMD byte search (`memchr2` for CR/LF) and keep only a few bits of
//! state across input boundaries, so feeding one byte at a time or a megabyte at a time
//! gives the same result and no byte is looked at twice.
//!
//! Only `<CRLF>.<CRLF>` ends DATA. A CR not followed by LF, or an LF not preceded by CR,
//! is never a line end: it marks the message as non-canonical (refused at the end) and
//! the scanner goes on looking for the real terminator. That closes the SMTP smuggling
//! family (`\n.\n`, `\r.\r\n`, `\n.\r\n`, ...), where two servers disagree on where a
//! message ends.

use memchr::{memchr2, memchr2_iter};

/// Why a received message cannot be accepted; checked in this order at its end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ContentFault {
    /// A CR or LF that was not part of a CRLF pair.
    BareLineEnding,
    /// More octets than `max_message_size`.
    TooBig,
    /// A NUL octet: refused rather than stripped, so what is stored and judged is
    /// byte for byte what the client sent (RFC 5321 section 4.1.4 forbids NUL in text).
    Nul,
    /// A line longer than `max_data_line` (CRLF included).
    LineTooLong,
    /// No octets at all (`BDAT 0 LAST` as the only chunk, or DATA ended at once).
    Empty,
}

/// Limits and verdict shared by both receivers. Once a fault is found nothing more is
/// stored, so a refused message costs no memory.
#[derive(Debug)]
pub(crate) struct ContentLimits {
    max_line: usize,
    max_size: u64,
    /// Content octets so far (after unstuffing), stored or not.
    size: u64,
    bare: bool,
    too_big: bool,
    nul: bool,
    long_line: bool,
    /// Any octet of content arrived.
    any: bool,
}

impl ContentLimits {
    pub(crate) fn new(max_line: usize, max_size: u64) -> Self {
        ContentLimits {
            max_line,
            max_size,
            size: 0,
            bare: false,
            too_big: false,
            nul: false,
            long_line: false,
            any: false,
        }
    }

    pub(crate) fn fault(&self) -> Option<ContentFault> {
        if self.bare {
            Some(ContentFault::BareLineEnding)
        } else if self.too_big {
            Some(ContentFault::TooBig)
        } else if self.nul {
            Some(ContentFault::Nul)
        } else if self.long_line {
            Some(ContentFault::LineTooLong)
        } else {
            None
        }
    }

    /// The verdict once the content has ended: a fault, or no content at all.
    pub(crate) fn end_fault(&self) -> Option<ContentFault> {
        self.fault().or((!self.any).then_some(ContentFault::Empty))
    }

    fn check_line(&mut self, line_len: usize) {
        if line_len > self.max_line {
            self.long_line = true;
        }
    }

    /// Appends accepted content unless the message is already refused.
    ///
    /// Every fault is looked for in all the content, even once another one is known, so the
    /// verdict (and the reply) does not depend on how the input was split into reads: when
    /// the first fault stopped the others from being checked, a NUL read before a line grew
    /// too long was a NUL byte by byte but a long line in one read.
    fn store(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.any = true;
        self.size = self.size.saturating_add(bytes.len() as u64);
        self.too_big |= self.size > self.max_size;
        self.nul = self.nul || memchr::memchr(0, bytes).is_some();
        if self.fault().is_some() {
            // Free the partial message now: it will never be stored.
            *out = Vec::new();
            return;
        }
        out.extend_from_slice(bytes);
    }
}

/// Where the DATA scanner stands in the current line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DotState {
    /// Just after a CRLF (or the DATA command's CRLF): a `.` here is special.
    LineStart,
    /// Saw `.` at line start: either stuffing or the start of the terminator.
    Dot,
    /// Saw `.` CR at line start: LF completes the terminator.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line: LF completes the line, anything else is a bare CR.
    MidCr,
}

/// The DATA receiver: strips dot-stuffing, finds `<CRLF>.<CRLF>`, enforces limits.
#[derive(Debug)]
pub(crate) struct DotReader {
    state: DotState,
    line_len: usize,
    pub(crate) limits: ContentLimits,
}

impl DotReader {
    pub(crate) fn new(limits: ContentLimits) -> Self {
        DotReader { state: DotState::LineStart, line_len: 0, limits }
    }

    /// Consumes message bytes from `input`, appending the unstuffed content to `out`.
    /// Returns how many bytes were consumed and whether the terminator was reached; on
    /// `true` the bytes after the terminator belong to the next command.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let n = input.len();
        let mut i = 0;
        // Start of the pending run of bytes copied verbatim; only the stuffed dot and the
        // terminator are ever left out, so content is copied in large slices.
        let mut run = 0;
        loop {
            match self.state {
                DotState::LineStart => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'.' {
                        self.limits.store(out, &input[run..i]);
                        i += 1;
                        run = i;
                        self.line_len = 1;
                        self.state = DotState::Dot;
                    } else {
                        self.state = DotState::Mid;
                    }
                }
                DotState::Dot => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'\r' {
                        i += 1;
                        run = i;
                        self.line_len += 1;
                        self.state = DotState::DotCr;
                    } else {
                        // A stuffed dot: it was left out of the run; the rest is content.
                        self.state = DotState::Mid;
                    }
                }
                DotState::DotCr => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'\n' {
                        return (i + 1, true);
                    }
                    // ".\r" then something else: a bare CR. The message is refused, so
                    // the dropped CR does not matter.
                    self.limits.bare = true;
                    self.state = DotState::Mid;
                }
                DotState::Mid => match memchr2(b'\r', b'\n', &input[i..]) {
                    None => {
                        self.line_len += n - i;
                        self.limits.check_line(self.line_len);
                        i = n;
                        break;
                    }
                    Some(off) => {
                        let j = i + off;
                        self.line_len += off + 1;
                        self.limits.check_line(self.line_len);
                        i = j + 1;
                        if input[j] == b'\n' {
                            // Bare LF: not a line end, the line goes on.
                            self.limits.bare = true;
                        } else {
                            self.state = DotState::MidCr;
                        }
                    }
                },
                DotState::MidCr => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'\n' {
                        i += 1;
                        self.line_len += 1;
                        self.limits.check_line(self.line_len);
                        self.line_len = 0;
                        self.state = DotState::LineStart;
                    } else {
                        self.limits.bare = true;
                        self.state = DotState::Mid;
                    }
                }
            }
        }
        self.limits.store(out, &input[run..i]);
        (i, false)
    }
}

/// The BDAT content checker: BDAT has no dot processing, but since BINARYMIME is not
/// offered the content must still be canonical CRLF text within the line limit.
#[derive(Debug)]
pub(crate) struct ChunkChecker {
    prev_cr: bool,
    line_len: usize,
    pub(crate) limits: ContentLimits,
}

impl ChunkChecker {
    pub(crate) fn new(limits: ContentLimits) -> Self {
        ChunkChecker { prev_cr: false, line_len: 0, limits }
    }

    /// Checks and stores one piece of chunk content (pieces may split anywhere).
    pub(crate) fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        if piece.is_empty() {
            return;
        }
        if self.prev_cr && piece[0] != b'\n' {
            self.limits.bare = true;
        }
        let mut line_start = 0;
        for j in memchr2_iter(b'\r', b'\n', piece) {
            if piece[j] == b'\r' {
                if j + 1 < piece.len() && piece[j + 1] != b'\n' {
                    self.limits.bare = true;
                }
            } else {
                let after_cr = if j == 0 { self.prev_cr } else { piece[j - 1] == b'\r' };
                if after_cr {
                    self.line_len += j + 1 - line_start;
                    self.limits.check_line(self.line_len);
                    self.line_len = 0;
                    line_start = j + 1;
                } else {
                    self.limits.bare = true;
                }
            }
        }
        self.line_len += piece.len() - line_start;
        self.limits.check_line(self.line_len);
        self.prev_cr = piece[piece.len() - 1] == b'\r';
        self.limits.store(out, piece);
    }

    /// The verdict once the LAST chunk is in: a trailing CR is bare too.
    pub(crate) fn finish(&mut self) -> Option<ContentFault> {
        if self.prev_cr {
            self.limits.bare = true;
        }
        self.limits.end_fault()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(input: &[u8]) -> (Vec<u8>, Option<usize>, Option<ContentFault>) {
        let mut r = DotReader::new(ContentLimits::new(1000, 1 << 20));
        let mut out = Vec::new();
        let (used, done) = r.feed(input, &mut out);
        (out, done.then_some(used), r.limits.fault())
    }

    /// Feeds byte by byte; must agree with one-shot feeding.
    fn dot_bytewise(input: &[u8]) -> (Vec<u8>, Option<usize>, Option<ContentFault>) {
        let mut r = DotReader::new(ContentLimits::new(1000, 1 << 20));
        let mut out = Vec::new();
        for (k, b) in input.iter().enumerate() {
            let (used, done) = r.feed(std::slice::from_ref(b), &mut out);
            assert_eq!(used, 1);
            if done {
                return (out, Some(k + 1), r.limits.fault());
            }
        }
        (out, None, r.limits.fault())
    }

    #[test]
    fn unstuffs_and_ends_at_crlf_dot_crlf() {
        let input = b"a\r\n..b\r\n.c\r\n.\r\nNEXT";
        let expect = (b"a\r\n.b\r\nc\r\n".to_vec(), Some(input.len() - 4), None);
        assert_eq!(dot(input), expect);
        assert_eq!(dot_bytewise(input), expect);
    }

    #[test]
    fn empty_message_ends_immediately() {
        assert_eq!(dot(b".\r\n"), (vec![], Some(3), None));
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        for bad in [
            &b"x\n.\n"[..],
            b"x\n.\r\n",
            b"x\r.\r\n",
            b"x\r\n.\n",
            b"x\r\n.\r",
            b"x\r\n.\rX\r\n",
            b"x\r\n\x00.\r\n",
        ] {
            let (_, end, _) = dot(bad);
            assert_eq!(end, None, "{bad:?} ended DATA");
            let mut all = bad.to_vec();
            all.extend_from_slice(b"\r\n.\r\n");
            let (_, end, fault) = dot(&all);
            assert_eq!(end, Some(all.len()), "{bad:?}");
            if !bad.contains(&0) {
                assert_eq!(fault, Some(ContentFault::BareLineEnding), "{bad:?}");
            }
            assert_eq!(dot_bytewise(&all).1, Some(all.len()));
        }
    }

    #[test]
    fn long_lines_and_size_are_enforced_while_streaming() {
        let mut r = DotReader::new(ContentLimits::new(10, 1 << 20));
        let mut out = Vec::new();
        assert!(!r.feed(b"12345678\r\n", &mut out).1);
        assert_eq!(r.limits.fault(), None);
        assert!(r.feed(b"123456789\r\n.\r\n", &mut out).1);
        assert_eq!(r.limits.fault(), Some(ContentFault::LineTooLong));

        let mut r = DotReader::new(ContentLimits::new(1000, 8));
        let mut out = Vec::new();
        assert!(r.feed(b"1234\r\n5678\r\n.\r\n", &mut out).1);
        assert_eq!(r.limits.fault(), Some(ContentFault::TooBig));
        assert!(out.is_empty());
    }

    /// Found by `fuzz/smtp_session`: with two faults in one message, the one reported (and
    /// so the reply) depended on the split of the input.
    #[test]
    fn the_fault_does_not_depend_on_the_split() {
        for (max_line, max_size, input, fault) in [
            (16, 1 << 20, &b"\x00aaaaaaaaaaaaaaaaaaaa\r\n.\r\n"[..], ContentFault::Nul),
            (16, 8, b"0123456789abcdefghij\r\n.\r\n", ContentFault::TooBig),
            (1000, 4, b"abcdef\r\n\x00\r\n.\r\n", ContentFault::TooBig),
        ] {
            let mut whole = DotReader::new(ContentLimits::new(max_line, max_size));
            let mut out = Vec::new();
            assert_eq!(whole.feed(input, &mut out), (input.len(), true));
            let mut bytewise = DotReader::new(ContentLimits::new(max_line, max_size));
            let mut out = Vec::new();
            for b in input {
                bytewise.feed(std::slice::from_ref(b), &mut out);
            }
            assert_eq!(whole.limits.end_fault(), Some(fault), "{input:?}");
            assert_eq!(bytewise.limits.end_fault(), Some(fault), "{input:?}");
            assert!(out.is_empty());

            let mut c = ChunkChecker::new(ContentLimits::new(max_line, max_size));
            let mut out = Vec::new();
            for b in input {
                c.feed(std::slice::from_ref(b), &mut out);
            }
            let mut one = ChunkChecker::new(ContentLimits::new(max_line, max_size));
            one.feed(input, &mut Vec::new());
            assert_eq!(c.finish(), one.finish(), "{input:?}");
        }
    }

    #[test]
    fn chunks_must_be_canonical_across_boundaries() {
        let check = |pieces: &[&[u8]]| {
            let mut c = ChunkChecker::new(ContentLimits::new(1000, 1 << 20));
            let mut out = Vec::new();
            for p in pieces {
                c.feed(p, &mut out);
            }
            (c.finish(), out)
        };
        assert_eq!(check(&[b"a\r", b"\nb\r\n"]), (None, b"a\r\nb\r\n".to_vec()));
        assert_eq!(check(&[b"a\r", b"b"]).0, Some(ContentFault::BareLineEnding));
        assert_eq!(check(&[b"a\n"]).0, Some(ContentFault::BareLineEnding));
        assert_eq!(check(&[b"a\r\n", b"\n"]).0, Some(ContentFault::BareLineEnding));
        assert_eq!(check(&[b"a\r"]).0, Some(ContentFault::BareLineEnding));
        assert_eq!(check(&[b"no final newline"]).0, None);
    }
}
