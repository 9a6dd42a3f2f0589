//! Command-line parsing: verbs, paths and MAIL/RCPT parameters. Pure functions from a
//! line to a value or to the reply that refuses it.

use levee_types::{Address, Body, Reply};

/// One parsed command line (the line is UTF-8, CRLF stripped, trailing blanks trimmed).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    Helo {
        name: &'a str,
        extended: bool,
    },
    Mail(&'a str),
    Rcpt(&'a str),
    Data(&'a str),
    Bdat(&'a str),
    Rset(&'a str),
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls(&'a str),
    /// An HTTP request or proxy probe: not a mail client, hang up (postscreen style).
    Junk,
    Unknown,
}

/// Methods that mark a client as a web/proxy probe rather than a mail client.
const JUNK_VERBS: &[&str] = &["GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE"];

impl<'a> Command<'a> {
    pub(crate) fn parse(line: &'a str) -> Command<'a> {
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim_start_matches(' ')),
            None => (line, ""),
        };
        let is = |name: &str| verb.eq_ignore_ascii_case(name);
        if is("EHLO") || is("HELO") {
            let name = args.split(' ').next().unwrap_or("");
            Command::Helo { name, extended: is("EHLO") }
        } else if is("MAIL") {
            Command::Mail(args)
        } else if is("RCPT") {
            Command::Rcpt(args)
        } else if is("DATA") {
            Command::Data(args)
        } else if is("BDAT") {
            Command::Bdat(args)
        } else if is("RSET") {
            Command::Rset(args)
        } else if is("NOOP") {
            Command::Noop
        } else if is("QUIT") {
            Command::Quit
        } else if is("VRFY") {
            Command::Vrfy
        } else if is("EXPN") {
            Command::Expn
        } else if is("HELP") {
            Command::Help
        } else if is("STARTTLS") {
            Command::StartTls(args)
        } else if JUNK_VERBS.iter().any(|j| is(j)) || line.starts_with("Host:") {
            Command::Junk
        } else {
            Command::Unknown
        }
    }
}

/// A MAIL FROM command as parsed, before policy has seen it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct MailRequest {
    pub(crate) from: Option<Address>,
    pub(crate) size: Option<u64>,
    pub(crate) body: Body,
    pub(crate) smtputf8: bool,
}

/// Which command a path belongs to: they differ in enhanced codes and null paths.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PathKind {
    Sender,
    Recipient,
}

impl PathKind {
    /// RFC 3463: 5.1.7 bad sender mailbox syntax, 5.1.3 bad destination mailbox syntax.
    fn bad_address(self, why: &str) -> Reply {
        match self {
            PathKind::Sender => Reply::with(501, 1, 7, format!("bad sender address: {why}")),
            PathKind::Recipient => Reply::with(501, 1, 3, format!("bad recipient address: {why}")),
        }
    }
}

/// Splits `<path> params` into the inside of the brackets and the parameter text.
/// `args` is what follows `FROM:`/`TO:`; a space before `<` is tolerated.
fn split_path(args: &str, kind: PathKind) -> Result<(&str, &str), Reply> {
    let s = args.trim_start_matches(' ');
    let Some(rest) = s.strip_prefix('<') else {
        return Err(kind.bad_address("angle brackets required"));
    };
    let Some(end) = rest.find('>') else {
        return Err(kind.bad_address("missing '>'"));
    };
    let (inside, after) = (&rest[..end], &rest[end + 1..]);
    if inside.contains('<') {
        return Err(kind.bad_address("nested '<'"));
    }
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(kind.bad_address("text after '>'"));
    }
    if inside.starts_with('@') {
        return Err(kind.bad_address("source routes are not accepted"));
    }
    Ok((inside, after))
}

fn syntax(text: &str) -> Reply {
    Reply::with(501, 5, 4, text)
}

fn unknown_param(name: &str) -> Reply {
    Reply::with(555, 5, 4, format!("parameter {name} not supported"))
}

/// Parses the arguments of MAIL (`FROM:<addr> [SIZE=n] [BODY=..] [SMTPUTF8]`).
pub(crate) fn parse_mail(args: &str, max_size: u64) -> Result<MailRequest, Reply> {
    let Some(rest) = strip_prefix_ci(args, "FROM:") else {
        return Err(syntax("syntax: MAIL FROM:<address>"));
    };
    let (path, params) = split_path(rest, PathKind::Sender)?;
    let mut req = MailRequest { from: None, size: None, body: Body::SevenBit, smtputf8: false };
    let (mut seen_body, mut seen_utf8) = (false, false);
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case("SIZE") {
            let v = value.unwrap_or("");
            let ok = !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
            let n = ok.then(|| v.parse::<u64>().ok()).flatten();
            match (n, req.size) {
                (Some(n), None) => req.size = Some(n),
                _ => return Err(syntax("bad or repeated SIZE parameter")),
            }
        } else if key.eq_ignore_ascii_case("BODY") {
            if seen_body {
                return Err(syntax("repeated BODY parameter"));
            }
            seen_body = true;
            req.body = match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                Some(v) if v.eq_ignore_ascii_case("BINARYMIME") => {
                    return Err(unknown_param("BODY=BINARYMIME"))
                }
                _ => return Err(syntax("bad BODY parameter")),
            };
        } else if key.eq_ignore_ascii_case("SMTPUTF8") {
            if seen_utf8 || value.is_some() {
                return Err(syntax("bad or repeated SMTPUTF8 parameter"));
            }
            seen_utf8 = true;
            req.smtputf8 = true;
        } else {
            return Err(unknown_param(key));
        }
    }
    if !path.is_empty() {
        let addr = Address::parse(path, req.smtputf8)
            .map_err(|e| PathKind::Sender.bad_address(&e.to_string()))?;
        req.from = Some(addr);
    }
    if let Some(n) = req.size {
        if n > max_size {
            return Err(Reply::with(552, 3, 4, "message size exceeds fixed maximum message size"));
        }
    }
    Ok(req)
}

/// Parses the arguments of RCPT (`TO:<addr>`, no parameters accepted).
pub(crate) fn parse_rcpt(args: &str, smtputf8: bool) -> Result<Address, Reply> {
    let Some(rest) = strip_prefix_ci(args, "TO:") else {
        return Err(syntax("syntax: RCPT TO:<address>"));
    };
    let (path, params) = split_path(rest, PathKind::Recipient)?;
    if let Some(p) = params.split(' ').find(|p| !p.is_empty()) {
        let key = p.split_once('=').map_or(p, |(k, _)| k);
        return Err(unknown_param(key));
    }
    if path.eq_ignore_ascii_case("postmaster") {
        // RFC 5321 requires accepting bare <postmaster>, but it names no domain and the
        // relay must never accept a recipient policy did not approve.
        return Err(Reply::with(550, 1, 1, "postmaster without a domain is not served here"));
    }
    if path.is_empty() {
        return Err(PathKind::Recipient.bad_address("empty path"));
    }
    Address::parse(path, smtputf8).map_err(|e| PathKind::Recipient.bad_address(&e.to_string()))
}

/// Parses `BDAT n [LAST]`; `None` means the chunk size is unknown, so the stream cannot be
/// resynchronised.
pub(crate) fn parse_bdat(args: &str) -> Option<(u64, bool)> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(Command::parse("ehlo x.test"), Command::Helo { name: "x.test", extended: true });
        assert_eq!(
            Command::parse("HeLo x.test"),
            Command::Helo { name: "x.test", extended: false }
        );
        assert_eq!(Command::parse("mail FROM:<>"), Command::Mail("FROM:<>"));
        assert_eq!(Command::parse("GET / HTTP/1.1"), Command::Junk);
        assert_eq!(Command::parse("XYZZY"), Command::Unknown);
    }

    #[test]
    fn mail_parameters() {
        let r = parse_mail("FROM:<a@b.test> SIZE=100 BODY=8bitmime SMTPUTF8", 1000).unwrap();
        assert_eq!(r.from.unwrap().to_string(), "a@b.test");
        assert_eq!((r.size, r.body, r.smtputf8), (Some(100), Body::EightBitMime, true));
        assert_eq!(parse_mail("from: <>", 10).unwrap().from, None);
        assert_eq!(parse_mail("FROM:<a@b.test> SIZE=11", 10).unwrap_err().code, 552);
        assert_eq!(parse_mail("FROM:<a@b.test> BODY=BINARYMIME", 10).unwrap_err().code, 555);
        assert_eq!(parse_mail("FROM:<a@b.test> RET=FULL", 10).unwrap_err().code, 555);
        assert_eq!(parse_mail("FROM:<a@b.test> SIZE=x", 10).unwrap_err().code, 501);
        assert_eq!(parse_mail("FROM:<jü@b.test>", 10).unwrap_err().code, 501);
        assert!(parse_mail("FROM:<jü@b.test> SMTPUTF8", 10).is_ok());
    }

    #[test]
    fn address_tricks_are_refused() {
        for bad in [
            "FROM:a@b.test",
            "FROM:<@r.test:a@b.test>",
            "FROM:<@r.test,@s.test:a@b.test>",
            "FROM:<a%c.test@b.test>",
            "FROM:<c.test!a@b.test>",
            "FROM:<\"a@c\"@b.test>",
            "FROM:<a@[127.0.0.1]>",
            "FROM:<a@b.test>x",
            "FROM:<<a@b.test>>",
            "FROM:<a@b.test",
        ] {
            let e = parse_mail(bad, 10).unwrap_err();
            assert_eq!((e.code, e.enhanced.unwrap().2), (501, 7), "{bad}");
        }
        let e = parse_rcpt("TO:<@r.test:a@b.test>", false).unwrap_err();
        assert_eq!((e.code, e.enhanced.unwrap().2), (501, 3));
        assert_eq!(parse_rcpt("TO:<Postmaster>", false).unwrap_err().code, 550);
        assert_eq!(parse_rcpt("TO:<a@b.test> NOTIFY=NEVER", false).unwrap_err().code, 555);
        assert!(parse_rcpt("to: <a@b.test>", false).is_ok());
    }

    #[test]
    fn bdat_arguments() {
        assert_eq!(parse_bdat("10"), Some((10, false)));
        assert_eq!(parse_bdat("0 last"), Some((0, true)));
        assert_eq!(parse_bdat(""), None);
        assert_eq!(parse_bdat("-1"), None);
        assert_eq!(parse_bdat("1 LAST x"), None);
        assert_eq!(parse_bdat("99999999999999999999"), None);
    }
}
