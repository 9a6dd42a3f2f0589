//! Trace headers Levee prepends when it relays a message, and RFC 5322 dates.

use levee_spool::SpoolMeta;
use levee_store::Release;

/// `Sun, 22 Nov 2026 23:02:46 +0000` for a unix time (UTC).
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = levee_types::civil::civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Strips characters that could end a header line or smuggle a new one.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// `(rdns [ip])` of the client, and the protocol it used.
fn client_and_protocol(env: &levee_types::Envelope) -> (String, &'static str) {
    let client = match &env.client_name {
        Some(name) => format!("{} [{}]", clean(name), env.client_ip),
        None => format!("[{}]", env.client_ip),
    };
    (client, if env.tls { "ESMTPS" } else { "ESMTP" })
}

/// The `Received` line of the live connection, as the rules read it before the message is
/// stored (trace headers are added at delivery): so SpamAssassin's relay rules judge the
/// client this gateway talked to, not a hop the message claims.
pub fn live_hop(env: &levee_types::Envelope, hostname: &str) -> String {
    let (client, with) = client_and_protocol(env);
    format!(
        "Received: from {} ({client})\r\n\tby {hostname} (Levee) with {with};\r\n",
        clean(&env.helo)
    )
}

/// The block of headers prepended to a relayed message, CRLF-terminated. A message let go
/// from quarantine says `released`, never its held verdict (a downstream rule that files
/// by verdict would hold it again), and `X-Levee-Released` keeps what it was and who let it go.
pub fn trace_headers(
    meta: &SpoolMeta,
    released: Option<&Release>,
    hostname: &str,
    stamp: &str,
    rcpt: Option<&str>,
) -> String {
    let env = &meta.envelope;
    let (client, with) = client_and_protocol(env);
    let for_part = rcpt.map(|r| format!("\r\n\tfor <{}>", clean(r))).unwrap_or_default();
    let mut h = format!(
        "Received: from {} ({})\r\n\tby {} (Levee) with {} id {}{};\r\n\t{}\r\n",
        clean(&env.helo),
        client,
        hostname,
        with,
        meta.id,
        for_part,
        rfc5322_date(meta.received_at)
    );
    match released {
        Some(r) => {
            h.push_str("X-Levee-Verdict: released\r\n");
            h.push_str(&format!(
                "X-Levee-Released: verdict={}; by={}\r\n",
                clean(r.verdict.as_str()),
                clean(&r.by)
            ));
        }
        None => h.push_str(&format!("X-Levee-Verdict: {}\r\n", meta.action)),
    }
    h.push_str(&format!("X-Levee-Score: {:.2}\r\n", meta.score));
    if !meta.findings.is_empty() {
        let list: Vec<String> =
            meta.findings.iter().map(|(f, w)| format!("{}({:.2})", clean(&f.symbol), w)).collect();
        h.push_str(&format!("X-Levee-Findings: {}\r\n", fold(&list.join(" "))));
    }
    h.push_str(&format!("X-Levee-Stamp: {stamp}\r\n"));
    h
}

/// Where the header block ends: just past the CRLF of its last field. A message that
/// starts with a blank line has no header; one without a blank line is all header.
fn header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    message.windows(4).position(|w| w == b"\r\n\r\n").map_or(message.len(), |i| i + 2)
}

/// The header fields of a message, each with its continuation lines (those starting
/// with space or tab), in order. One pass over the header block.
fn fields(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = header_end(message);
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= end {
            return None;
        }
        let mut j = i;
        loop {
            j = message[j..end].windows(2).position(|w| w == b"\r\n").map_or(end, |p| j + p + 2);
            if j >= end || !matches!(message[j], b' ' | b'\t') {
                break;
            }
        }
        let field = &message[i..j];
        i = j;
        Some(field)
    })
}

/// A field's name, without the whitespace obsolete syntax allows before the colon.
fn field_name(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&b| b == b':')?;
    Some(field[..colon].trim_ascii())
}

/// How many header fields are called `name` (any case).
pub fn count_fields(message: &[u8], name: &str) -> usize {
    fields(message)
        .filter(|f| field_name(f).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes())))
        .count()
}

/// The message without the header fields `drop` picks, and how many went; `None` when
/// none did. Everything else is kept byte-exact.
fn remove_fields(message: &[u8], drop: impl Fn(&[u8]) -> bool) -> Option<(Vec<u8>, usize)> {
    let end = header_end(message);
    let mut out = Vec::with_capacity(message.len());
    let mut removed = 0;
    for field in fields(message) {
        if drop(field) {
            removed += 1;
        } else {
            out.extend_from_slice(field);
        }
    }
    if removed == 0 {
        return None;
    }
    out.extend_from_slice(&message[end..]);
    Some((out, removed))
}

/// Removes `Authentication-Results` fields that claim this gateway's authserv-id:
/// they came from outside and are forgeries (RFC 8601 section 5), and a downstream
/// that trusts our results must never see them. Everything else is kept byte-exact.
pub fn strip_forged_results(message: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    remove_fields(message, |f| claims(f, authserv_id)).map(|(m, _)| m)
}

/// Removes every `X-Levee-*` field (any case) a message arrives with, and says how many:
/// only this gateway writes them, at delivery, and a downstream that trusts our verdict or
/// stamp must never see a sender's copy. Everything else is kept byte-exact.
pub fn strip_our_headers(message: &[u8]) -> Option<(Vec<u8>, usize)> {
    const OURS: &[u8] = b"x-levee-";
    remove_fields(message, |f| {
        field_name(f)
            .is_some_and(|n| n.len() >= OURS.len() && n[..OURS.len()].eq_ignore_ascii_case(OURS))
    })
}

/// Whether a header field is `Authentication-Results: <authserv_id>; ...`.
fn claims(field: &[u8], authserv_id: &str) -> bool {
    let text = String::from_utf8_lossy(field);
    let Some((name, value)) = text.split_once(':') else { return false };
    if !name.trim().eq_ignore_ascii_case("authentication-results") {
        return false;
    }
    let id = value.split(';').next().unwrap_or("");
    // Drop comments and an optional version: "mx.example.test (x) 1".
    let id = id.split('(').next().unwrap_or("").split_whitespace().next().unwrap_or("");
    id.trim_end_matches('.').eq_ignore_ascii_case(authserv_id)
}

/// Folds a long header value at spaces so no line exceeds ~78 characters.
fn fold(value: &str) -> String {
    let mut out = String::new();
    let mut len = 20;
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            if len + word.len() + 1 > 76 {
                out.push_str("\r\n\t");
                len = 8;
            } else {
                out.push(' ');
                len += 1;
            }
        }
        out.push_str(word);
        len += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_388_566), "Sun, 22 Nov 2026 23:02:46 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn forged_results_for_our_name_are_removed_and_others_kept() {
        let m = b"Received: x\r\nAuthentication-Results: MX.example.test;\r\n\tdkim=pass\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; in the body\r\n";
        let out = strip_forged_results(m, "mx.example.test").unwrap();
        assert_eq!(
            out,
            b"Received: x\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; in the body\r\n"
        );
        assert!(strip_forged_results(b"Subject: hi\r\n\r\nbody\r\n", "mx.example.test").is_none());
        let with_comment = b"Authentication-Results: mx.example.test (forged) 1; dkim=pass\r\n\r\n";
        assert_eq!(strip_forged_results(with_comment, "mx.example.test").unwrap(), b"\r\n");
    }

    #[test]
    fn fields_are_counted_by_name_with_continuations_and_only_in_the_header() {
        let m = b"Received: a\r\n\tReceived: folded, not a field\r\nreceived : b\r\nX-Received: c\r\n\r\nReceived: body\r\n";
        assert_eq!(count_fields(m, "received"), 2);
        // No blank line: all header. A blank first line: no header at all.
        assert_eq!(count_fields(b"Received: a\r\nReceived: b", "Received"), 2);
        assert_eq!(count_fields(b"\r\nReceived: a\r\n", "received"), 0);
    }

    #[test]
    fn inbound_levee_headers_of_any_case_are_removed_and_counted() {
        let m = b"X-Levee-Stamp: forged\r\nReceived: x\r\nx-levee-verdict: accept\r\n\tfolded\r\nX-LEVEE-Score : -9\r\nX-Leveed: kept\r\nSubject: hi\r\n\r\nX-Levee-Stamp: in the body\r\n";
        let (out, n) = strip_our_headers(m).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            out,
            b"Received: x\r\nX-Leveed: kept\r\nSubject: hi\r\n\r\nX-Levee-Stamp: in the body\r\n"
        );
        assert!(strip_our_headers(b"Subject: hi\r\n\r\nX-Levee-Verdict: accept\r\n").is_none());
        // A message without a blank line is all header: its stamp goes too.
        assert_eq!(
            strip_our_headers(b"Subject: hi\r\nX-Levee-Stamp: x\r\n").unwrap().0,
            b"Subject: hi\r\n"
        );
    }

    #[test]
    fn folding_keeps_lines_short() {
        let long = vec!["SYMBOL_NAME(1.00)"; 20].join(" ");
        for line in fold(&long).split("\r\n") {
            assert!(line.len() <= 78, "{line}");
        }
    }
}
