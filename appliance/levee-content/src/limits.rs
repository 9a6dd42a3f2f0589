//! Bounds on the shape of a message, checked before any parse.
//!
//! mail-parser 0.11 bounds only base64/QP-encoded `message/rfc822` nesting (3 levels); plain
//! multipart and `message/rfc822` nesting, part count and header count are unbounded, and
//! every check that walks `Message::parts` pays for each part. [`scan`] reads the raw bytes
//! once, line by line, and finds where a bound is first exceeded:
//!
//! | symbol | fires when |
//! |---|---|
//! | `MIME_NESTING_LIMIT` | multipart or `message/rfc822` nesting deeper than [`MAX_DEPTH`] |
//! | `MIME_PARTS_LIMIT` | more than [`MAX_PARTS`] MIME parts |
//! | `HEADER_COUNT_LIMIT` | a header section with more than [`MAX_HEADER_FIELDS`] fields |
//! | `LINE_LENGTH_LIMIT` | a line longer than [`MAX_LINE`] octets |
//!
//! The structural bounds also cut the message: the content checks read only the bytes before
//! the line where the first one bit ([`bounded`]), so work past a bound does not grow. A long
//! line is reported but not cut: every reader of a line is linear in its length already.

use levee_types::Finding;

/// Nesting levels below the top-level message (each multipart and each unencoded
/// `message/rfc822` adds one). Ordinary mail nests 2 to 4 deep; each message forwarded as an
/// attachment adds about 2.
pub const MAX_DEPTH: usize = 20;
/// MIME parts, the top-level message included.
pub const MAX_PARTS: usize = 1000;
/// Fields in any one header section (the message's or a part's).
pub const MAX_HEADER_FIELDS: usize = 1000;
/// Octets in one line, CRLF excluded. RFC 5322's 998 is broken by real mail (long HTML, unwrapped
/// base64), so the bound is set where only a generator or an attack reaches it.
pub const MAX_LINE: usize = 100_000;

/// The part of a Content-Type field kept for the scan; a longer one is truncated, so a hostile
/// field cannot make the scan store it whole.
const MAX_CONTENT_TYPE: usize = 4096;

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Bytes the content checks read: the whole message unless a structural bound bit.
    pub cut: usize,
    pub findings: Vec<Finding>,
}

/// The message up to the first structural bound it exceeds.
pub fn bounded(message: &[u8]) -> &[u8] {
    &message[..scan(message).cut]
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// In a header section; `start` is where it began (the cut if it nests too deep).
    Header { start: usize },
    /// In a body, preamble or epilogue.
    Body,
}

struct Frame {
    /// At most [`MAX_CONTENT_TYPE`] bytes; at most `MAX_DEPTH + 1` frames are held.
    boundary: Vec<u8>,
    /// The depth of this multipart's children.
    child_depth: usize,
}

/// One pass over the message, linear in its length: each line is compared with at most
/// `MAX_DEPTH + 1` boundaries, each comparison bounded by the line's length.
pub fn scan(message: &[u8]) -> Scan {
    let mut findings = Vec::new();
    let mut cut = None;
    let mut long_line = None;

    let mut state = State::Header { start: 0 };
    let mut depth = 0usize;
    let mut parts = 1usize;
    let mut fields = 0usize;
    let mut stack: Vec<Frame> = Vec::new();
    // The current part's Content-Type and Content-Transfer-Encoding, as raw bytes; a field
    // continues while lines start with white space.
    let mut content_type: Vec<u8> = Vec::new();
    let mut encoded = false;
    let mut in_content_type = false;

    let mut pos = 0;
    while pos < message.len() {
        let end =
            message[pos..].iter().position(|&b| b == b'\n').map_or(message.len(), |i| pos + i);
        let line = message[pos..end].strip_suffix(b"\r").unwrap_or(&message[pos..end]);
        let start = pos;
        pos = end + 1;

        if line.len() > MAX_LINE && long_line.is_none() {
            long_line = Some((line.len(), start));
        }
        if cut.is_some() {
            // Structure is no longer followed; only long lines are still looked for.
            continue;
        }

        if let Some(b) = line.strip_prefix(b"--").filter(|_| !stack.is_empty()) {
            if let Some(i) = stack.iter().rposition(|f| b.starts_with(&f.boundary)) {
                let closing = b[stack[i].boundary.len()..].starts_with(b"--");
                depth = stack[i].child_depth;
                stack.truncate(i + 1);
                if closing {
                    stack.pop();
                    state = State::Body;
                } else {
                    parts += 1;
                    if parts > MAX_PARTS {
                        findings.push(Finding::new(
                            "MIME_PARTS_LIMIT",
                            format!("more than {MAX_PARTS} MIME parts; read up to byte {start}"),
                        ));
                        cut = Some(start);
                        continue;
                    }
                    state = State::Header { start: pos };
                    (fields, encoded, in_content_type) = (0, false, false);
                    content_type.clear();
                }
                continue;
            }
        }

        let State::Header { start: header_start } = state else { continue };
        if line.is_empty() {
            // End of a header section: what the part is decides what follows.
            let ct = String::from_utf8_lossy(&content_type).to_ascii_lowercase();
            let mime = ct.split(';').next().unwrap_or("").trim();
            let nests = if mime.starts_with("multipart/") {
                boundary(&content_type).map(Some)
            } else if matches!(mime, "message/rfc822" | "message/global") && !encoded {
                Some(None)
            } else {
                None
            };
            state = State::Body;
            let Some(multipart) = nests else { continue };
            if depth + 1 > MAX_DEPTH {
                findings.push(Finding::new(
                    "MIME_NESTING_LIMIT",
                    format!("MIME nesting deeper than {MAX_DEPTH}; read up to byte {header_start}"),
                ));
                cut = Some(header_start);
                continue;
            }
            match multipart {
                Some(boundary) => stack.push(Frame { boundary, child_depth: depth + 1 }),
                None => {
                    depth += 1;
                    parts += 1;
                    state = State::Header { start: pos };
                    (fields, encoded, in_content_type) = (0, false, false);
                    content_type.clear();
                }
            }
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if in_content_type && content_type.len() < MAX_CONTENT_TYPE {
                content_type.extend_from_slice(&line[..line.len().min(MAX_CONTENT_TYPE)]);
            }
            continue;
        }
        fields += 1;
        if fields > MAX_HEADER_FIELDS {
            findings.push(Finding::new(
                "HEADER_COUNT_LIMIT",
                format!("more than {MAX_HEADER_FIELDS} header fields; read up to byte {start}"),
            ));
            cut = Some(start);
            continue;
        }
        in_content_type = false;
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        let value = &line[colon + 1..];
        if name.eq_ignore_ascii_case(b"content-type") {
            in_content_type = true;
            content_type.clear();
            content_type.extend_from_slice(&value[..value.len().min(MAX_CONTENT_TYPE)]);
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            let v = value.trim_ascii();
            encoded =
                v.eq_ignore_ascii_case(b"base64") || v.eq_ignore_ascii_case(b"quoted-printable");
        }
    }

    if let Some((len, at)) = long_line {
        findings.push(Finding::new(
            "LINE_LENGTH_LIMIT",
            format!("a line of {len} octets at byte {at}, over {MAX_LINE}"),
        ));
    }
    Scan { cut: cut.unwrap_or(message.len()), findings }
}

/// The `boundary` parameter of a Content-Type value, unquoted; `None` when absent or empty
/// (mail-parser then reads the part as text, and so does the scan).
fn boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    content_type.split(|&b| b == b';').skip(1).find_map(|param| {
        let (name, value) = param.split_at(param.iter().position(|&b| b == b'=')?);
        if !name.trim_ascii().eq_ignore_ascii_case(b"boundary") {
            return None;
        }
        let value = value[1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .map_or(value, |v| v.split(|&b| b == b'"').next().unwrap_or(v));
        (!value.is_empty()).then(|| value.to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_is_read_quoted_or_bare_in_any_case() {
        assert_eq!(boundary(b" multipart/mixed; BOUNDARY=\"a b\"; x=1"), Some(b"a b".to_vec()));
        assert_eq!(boundary(b"multipart/mixed;charset=x; boundary=abc"), Some(b"abc".to_vec()));
        assert_eq!(boundary(b"multipart/mixed; boundary="), None);
        assert_eq!(boundary(b"multipart/mixed; name=\"boundary=x\""), None);
    }

    #[test]
    fn a_closed_inner_multipart_returns_to_its_parent() {
        // After the inner multipart closes, the outer delimiter starts a sibling at depth 1,
        // not a deeper part: a long run of such siblings never reaches the nesting bound.
        let mut m = String::from("Content-Type: multipart/mixed; boundary=o\r\n\r\n");
        for _ in 0..(MAX_DEPTH * 2) {
            m.push_str("--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n");
            m.push_str("--i\r\nContent-Type: text/plain\r\n\r\nx\r\n--i--\r\n");
        }
        m.push_str("--o--\r\n");
        let s = scan(m.as_bytes());
        assert!(s.findings.is_empty(), "{:?}", s.findings);
        assert_eq!(s.cut, m.len());
    }
}
