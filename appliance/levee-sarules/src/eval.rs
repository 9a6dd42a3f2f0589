//! The `eval:` tests we implement, after SpamAssassin's plugins of the same names
//! (HeaderEval, HTMLEval, MIMEEval, BodyEval, FreeMail), rewritten from their documented
//! behaviour. Arguments are checked at load time, so a call here cannot be malformed.

use std::collections::HashSet;

use crate::message::SaMessage;
use crate::parse::EvalCall;

/// Evals that need the network or state Levee keeps elsewhere: the skip reason.
pub fn unavailable(func: &str) -> Option<&'static str> {
    const NET: &[&str] = &[
        "check_rbl",
        "check_uridnsbl",
        "check_dns",
        "check_razor",
        "check_pyzor",
        "check_dcc",
        "check_dkim",
        "check_spf",
        "check_dmarc",
        "check_asn",
        "check_hashbl",
        "askdns",
        "check_uri_host_listed",
        "check_from_in_auto",
        "check_senders_reputation",
        "check_arc",
        "check_for_def_spf",
        "check_for_def_dkim",
        "check_for_spf",
        "check_for_dkim",
        "short_url",
        "check_https",
    ];
    if func == "check_bayes" {
        return Some("bayes (Levee has its own)");
    }
    NET.iter().any(|p| func.starts_with(p)).then_some("network")
}

/// Whether `run` knows `func` and its arguments are usable.
pub fn supported(call: &EvalCall) -> bool {
    let n = |i: usize| call.args.get(i).is_some_and(|a| a == "undef" || a.parse::<f64>().is_ok());
    match call.func.as_str() {
        "check_for_missing_to_header"
        | "subject_is_all_caps"
        | "check_freemail_from"
        | "check_for_mime_html_only"
        | "check_for_mime_html"
        | "html_charset_faraway" => true,
        "check_freemail_header" | "check_freemail_replyto" => true,
        "html_tag_exists" | "html_test" => !call.args.is_empty(),
        "html_image_only" | "check_for_shifted_date" => n(0) && n(1),
        "html_range" => call.args.len() >= 2 && n(1),
        "check_header_count_range" | "check_illegal_chars" => call.args.len() == 3 && n(1) && n(2),
        "image_count" => call.args.len() >= 2 && n(1),
        "check_body_length" => n(0),
        "check_for_uppercase" => n(0) && n(1),
        "check_for_mime" => matches!(
            call.args.first().map(String::as_str),
            Some("mime_base64_encoded_text" | "mime_qp_long_line" | "mime_bad_iso_charset")
        ),
        "check_msg_parse_flags" => {
            matches!(call.args.first().map(String::as_str), Some("missing_head_body_separator"))
        }
        "check_mime_multipart_ratio" => n(0) && n(1),
        "check_ma_non_text" => true,
        _ => false,
    }
}

fn num(call: &EvalCall, i: usize) -> Option<f64> {
    call.args.get(i).and_then(|a| a.parse().ok())
}

fn is_freemail(addr: &str, domains: &HashSet<String>) -> bool {
    let Some((_, dom)) = addr.rsplit_once('@') else { return false };
    let dom = dom.trim_end_matches('>').to_ascii_lowercase();
    if domains.contains(&dom) {
        return true;
    }
    // `*.example` entries cover the subdomains
    let mut d = dom.as_str();
    while let Some((_, parent)) = d.split_once('.') {
        if domains.contains(&format!("*.{parent}")) {
            return true;
        }
        d = parent;
    }
    false
}

/// Runs an eval test; `false` for anything it cannot decide.
pub fn run(call: &EvalCall, msg: &SaMessage, freemail: &HashSet<String>) -> bool {
    let a0 = call.args.first().map(String::as_str).unwrap_or("");
    match call.func.as_str() {
        "check_for_missing_to_header" => {
            msg.get("To").is_none() && msg.get("Apparently-To").is_none()
        }
        "subject_is_all_caps" => {
            let Some(s) = msg.get("Subject") else { return false };
            if s.raw.to_ascii_lowercase().contains("=?") && {
                let r = s.raw.to_ascii_lowercase();
                ["=?iso-2022-jp", "=?gb2312", "=?big5", "=?euc", "=?ks_c", "=?shift_jis", "=?koi8"]
                    .iter()
                    .any(|c| r.contains(c))
            } {
                return false;
            }
            let mut t = s.decoded.trim();
            loop {
                let lower = t.to_ascii_lowercase();
                let pre =
                    ["re:", "fwd:", "fw:", "aw:", "antwort:", "wg:", "sv:", "vb:", "vs:", "vl:"]
                        .iter()
                        .find(|p| lower.starts_with(*p));
                match pre {
                    Some(p) => t = t[p.len()..].trim_start(),
                    None => break,
                }
            }
            if !t.contains(char::is_whitespace) || t.len() < 10 {
                return false;
            }
            let letters: Vec<char> = t.chars().filter(char::is_ascii_alphabetic).collect();
            !letters.is_empty() && letters.iter().all(char::is_ascii_uppercase)
        }
        "check_freemail_from" => msg
            .get("From")
            .and_then(|f| f.addr.as_deref())
            .is_some_and(|a| is_freemail(a, freemail)),
        "check_freemail_header" => {
            let addr = match a0 {
                "EnvelopeFrom" => msg
                    .get("Return-Path")
                    .map(|h| h.decoded.trim_matches(['<', '>', ' ']).to_string()),
                h => msg.get(h).map(|f| f.addr.clone().unwrap_or_else(|| f.decoded.clone())),
            };
            let Some(addr) = addr else { return false };
            if !is_freemail(&addr, freemail) {
                return false;
            }
            match call.args.get(1) {
                Some(re) => fancy_regex::Regex::new(re)
                    .ok()
                    .is_some_and(|r| r.is_match(&addr).unwrap_or(false)),
                None => true,
            }
        }
        "check_freemail_replyto" => {
            // Reply-To is freemail and differs from a From that is also checked
            let from = msg
                .get("From")
                .and_then(|f| f.addr.clone())
                .unwrap_or_default()
                .to_ascii_lowercase();
            let reply = msg
                .get("Reply-To")
                .and_then(|f| f.addr.clone())
                .unwrap_or_default()
                .to_ascii_lowercase();
            !reply.is_empty() && reply != from && is_freemail(&reply, freemail)
        }
        "check_for_mime_html_only" => {
            !msg.html.is_empty()
                && msg.parts.iter().all(|p| !p.content_type.starts_with("text/") || p.is_html)
        }
        "check_for_mime_html" => !msg.html.is_empty(),
        "html_charset_faraway" => false,
        "html_tag_exists" => msg.html.iter().any(|h| h.tags.iter().any(|t| t == a0)),
        "html_test" => match a0 {
            "html" => !msg.html.is_empty(),
            "embeds" => {
                msg.html.iter().any(|h| h.tags.iter().any(|t| t == "embed" || t == "object"))
            }
            _ => false,
        },
        "html_image_only" => {
            let (min, max) = (num(call, 0).unwrap_or(0.0), num(call, 1).unwrap_or(0.0));
            msg.html.iter().any(|h| {
                let l = h.length as f64;
                h.images > 0 && l > min && l <= max
            })
        }
        "html_range" => {
            if a0 != "length" {
                return false;
            }
            let min = num(call, 1).unwrap_or(0.0);
            let max = num(call, 2).unwrap_or(f64::INFINITY);
            msg.html.iter().any(|h| {
                let l = h.length as f64;
                l > min && l <= max
            })
        }
        "check_for_shifted_date" => {
            let (Some(date), false) = (msg.date_time, msg.received_times.is_empty()) else {
                return false;
            };
            let mut diffs: Vec<i64> = msg.received_times.iter().map(|r| date - r).collect();
            if diffs.len() > 1 && diffs.last() == Some(&0) {
                diffs.pop();
            }
            let diff = diffs.iter().copied().min_by_key(|d| d.abs()).unwrap_or(0) as f64;
            let lo = num(call, 0).is_none_or(|m| diff >= 3600.0 * m);
            let hi = num(call, 1).is_none_or(|m| diff < 3600.0 * m);
            lo && hi
        }
        "check_header_count_range" => {
            let n = msg.get_all(a0).count() as f64;
            n >= num(call, 1).unwrap_or(0.0) && n <= num(call, 2).unwrap_or(0.0)
        }
        "check_illegal_chars" => {
            let s: String = if a0 == "ALL" {
                msg.headers
                    .iter()
                    .filter(|h| !matches!(h.name.to_ascii_lowercase().as_str(), "subject" | "from"))
                    .map(|h| format!("{}: {}\n", h.name, h.raw))
                    .collect()
            } else {
                msg.get_all(a0).map(|h| h.raw.clone()).collect::<Vec<_>>().join("\n")
            };
            if s.trim().is_empty() {
                return false;
            }
            // text that is valid UTF-8 without controls is legal (our text is always UTF-8
            // after decoding, so only raw bytes that were not count)
            let bad = s
                .bytes()
                .filter(|&b| matches!(b, 0..=8 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f))
                .count()
                + s.matches('\u{fffd}').count();
            let ratio = bad as f64 / s.len() as f64;
            ratio >= num(call, 1).unwrap_or(1.0) && bad as f64 >= num(call, 2).unwrap_or(1.0)
        }
        "image_count" => {
            let n = msg
                .parts
                .iter()
                .filter(|p| {
                    p.content_type.starts_with("image/")
                        && (a0 == "all"
                            || p.content_type.contains(a0)
                            || (a0 == "jpeg" && p.content_type.contains("jpg")))
                })
                .count() as f64;
            n >= num(call, 1).unwrap_or(0.0) && num(call, 2).is_none_or(|m| n <= m)
        }
        "check_body_length" => {
            let len: usize = msg.body.iter().skip(1).map(String::len).sum();
            (len as f64) <= num(call, 0).unwrap_or(0.0)
        }
        "check_for_uppercase" => {
            // share of capitals among the letters of the body (subject excluded), bodies
            // of 200+ letters only
            let text: String = msg.body.iter().skip(1).cloned().collect();
            let letters = text.chars().filter(char::is_ascii_alphabetic).count();
            if letters < 200 {
                return false;
            }
            let upper = text.chars().filter(char::is_ascii_uppercase).count();
            let pct = 100.0 * upper as f64 / letters as f64;
            pct > num(call, 0).unwrap_or(100.0) && pct <= num(call, 1).unwrap_or(100.0)
        }
        "check_for_mime" => match a0 {
            "mime_base64_encoded_text" => msg
                .parts
                .iter()
                .any(|p| p.content_type.starts_with("text/") && p.transfer_encoding == "base64"),
            "mime_qp_long_line" => {
                msg.parts.iter().any(|p| p.transfer_encoding == "quoted-printable")
                    && msg.full.lines().any(|l| l.len() > 77 && !l.contains(':'))
            }
            "mime_bad_iso_charset" => msg.parts.iter().any(|p| {
                p.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("Content-Type")
                        && h.raw.to_ascii_lowercase().contains("charset=\"iso-")
                        && !h.raw.to_ascii_lowercase().contains("charset=\"iso-8859-")
                        && !h.raw.to_ascii_lowercase().contains("charset=\"iso-2022-")
                })
            }),
            _ => false,
        },
        "check_msg_parse_flags" => a0 == "missing_head_body_separator" && msg.missing_hb_separator,
        "check_mime_multipart_ratio" => {
            // text length of the HTML part against the text/plain alternative, in percent
            let plain: usize = msg
                .parts
                .iter()
                .filter(|p| p.content_type == "text/plain")
                .filter_map(|p| p.text.as_ref())
                .map(String::len)
                .sum();
            let html: usize = msg.html.iter().map(|h| h.length).sum();
            if plain == 0 || html == 0 {
                return false;
            }
            let ratio = plain as f64 / html as f64;
            ratio >= num(call, 0).unwrap_or(0.0) && ratio < num(call, 1).unwrap_or(0.0)
        }
        "check_ma_non_text" => {
            msg.get("Content-Type")
                .is_some_and(|c| c.decoded.to_ascii_lowercase().contains("multipart/alternative"))
                && msg.parts.iter().any(|p| {
                    !p.content_type.starts_with("text/")
                        && !p.content_type.starts_with("multipart/")
                })
        }
        _ => false,
    }
}
