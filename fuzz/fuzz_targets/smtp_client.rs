//! The outbound side of levee-smtp: the reply parser fed a hostile server's bytes, and
//! `dot_stuff` checked against the server's DATA receiver.
//!
//! Invariants:
//! - the reply parser gives the same replies (or the same error) however the bytes are split,
//!   and every reply it accepts, rendered with `to_wire`, parses back to one reply, whose
//!   rendering is a fixed point from then on;
//! - any message rendered by `dot_stuff` and sent as DATA to our own `Session` is stored as
//!   the same message with canonical line ends (a bare CR or LF becomes CRLF, a final CRLF
//!   is added): what the relay sends is what a receiver built like ours reads.

#![no_main]

use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use levee_smtp::{dot_stuff, Action, Decision, PeerInfo, ReplyParser, Session, SessionConfig};
use levee_types::Reply;
use libfuzzer_sys::fuzz_target;

/// Line limit of the parser under test.
const MAX_LINE: usize = 512;

fn replies(reads: &[&[u8]]) -> (Vec<Reply>, Option<String>) {
    replies_within(reads, MAX_LINE)
}

fn replies_within(reads: &[&[u8]], max_line: usize) -> (Vec<Reply>, Option<String>) {
    let mut p = ReplyParser::new(max_line, 16);
    let mut out = Vec::new();
    for r in reads {
        p.feed(r);
        loop {
            match p.next_reply() {
                Ok(Some(reply)) => out.push(reply),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    (out, None)
}

/// `r` rendered with `to_wire` and parsed again: one reply.
fn reread(r: &Reply) -> Reply {
    let wire = r.to_wire();
    // Text is decoded lossily: each invalid byte becomes U+FFFD, three bytes on the wire.
    let (again, err) = replies_within(&[&wire], 3 * MAX_LINE + 16);
    assert_eq!(err, None, "to_wire of {r:?} does not parse");
    assert_eq!(again.len(), 1, "to_wire of {r:?} is not one reply");
    again.into_iter().next().expect("one reply")
}

/// What a correct receiver stores for `data` sent through `dot_stuff`.
fn canonical(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 2);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends `data` as DATA to a fresh session; the stored message, if any.
fn send_as_data(data: &[u8]) -> Option<Vec<u8>> {
    let now = Instant::now();
    let peer = PeerInfo { ip: IpAddr::V6(Ipv6Addr::LOCALHOST), port: 25 };
    let mut s = Session::new(SessionConfig::default(), peer, now);
    let mut wire = b"EHLO client.example\r\nMAIL FROM:<a@example.test>\r\n\
RCPT TO:<b@example.test>\r\nDATA\r\n"
        .to_vec();
    wire.extend_from_slice(&dot_stuff(data));
    wire.extend_from_slice(b"QUIT\r\n");
    let mut stored = None;
    let mut pending: &[u8] = &wire;
    loop {
        while let Some(a) = s.poll_action() {
            match a {
                Action::Ask(_) => s.answer(Decision::Accept, now),
                Action::Store(m) => {
                    assert!(stored.is_none(), "one DATA stored twice");
                    stored = Some(m.data);
                    s.stored(Reply::with(250, 0, 0, "ok"), now);
                }
                Action::Close => return stored,
                Action::Send(_) | Action::StartTls | Action::Pause(_) => {}
            }
        }
        if pending.is_empty() {
            return stored;
        }
        s.handle_input(pending, now);
        pending = &[];
    }
}

fuzz_target!(|data: &[u8]| {
    let [split, rest @ ..] = data else { return };

    // Reply parser: whole, and in reads split at every `split`-th byte.
    let whole = replies(&[rest]);
    let step = usize::from(*split).max(1);
    let reads: Vec<&[u8]> = rest.chunks(step).collect();
    assert_eq!(whole, replies(&reads), "reply parsing depends on the split");
    for r in &whole.0 {
        // Rendering drops CR and LF from texts and writes enhanced codes without leading
        // zeros, so the first re-read may differ; from then on it is a fixed point.
        let r2 = reread(r);
        assert_eq!(reread(&r2).to_wire(), r2.to_wire(), "to_wire of {r:?} is not stable");
    }

    // dot_stuff against our own receiver. NUL and over-long lines are refused by design.
    let stored = send_as_data(rest);
    let expect = canonical(rest);
    let refusable = rest.contains(&0)
        || expect.is_empty()
        || expect
            .split(|&b| b == b'\n')
            .any(|l| l.len() + 1 > SessionConfig::default().max_data_line);
    match stored {
        Some(m) => assert_eq!(m, expect, "dot_stuff then DATA changed the message"),
        None => assert!(refusable, "a dot-stuffed message was refused"),
    }
});
