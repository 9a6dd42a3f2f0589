//! SpamAssassin's relay pseudo-headers (`X-Spam-Relays-Untrusted`, `-External`), from the
//! `Received` chain, so the rules on the connecting relay (no or dynamic reverse DNS, a HELO
//! that is no domain...) can fire.
//!
//! Trust, as SpamAssassin infers it with no `trusted_networks`: hops received from private or
//! loopback addresses are this site's own and trusted; the first hop from a public address is
//! the handover into the site, and it and every hop below it are untrusted (and external).
//! The gateway passes its own live connection as the top `Received` (see `levee-relay`), so
//! on the appliance the first untrusted relay is the client it talked to, never a claim made
//! further down the chain.

use std::net::IpAddr;

use mail_parser::{HeaderValue, Host, Protocol};

/// At most this many relays are rendered (a hostile message may carry hundreds of `Received`).
const MAX_RELAYS: usize = 20;

/// The rendered value of `X-Spam-Relays-Untrusted` (= `-External` here), or `None` when no
/// hop came from a public address.
pub fn untrusted(headers: &[mail_parser::Header<'_>]) -> Option<String> {
    let mut out = Vec::new();
    let mut untrusted = false;
    for h in headers {
        let HeaderValue::Received(r) = &h.value else { continue };
        let Some(ip) = r.from_ip else { continue };
        untrusted = untrusted || !is_internal(ip);
        if !untrusted {
            continue;
        }
        let host = |h: &Option<Host<'_>>| match h {
            Some(Host::Name(n)) => n.to_string(),
            Some(Host::IpAddr(a)) => format!("[{a}]"),
            None => String::new(),
        };
        let helo = if r.helo.is_some() { host(&r.helo) } else { host(&r.from) };
        let rdns = r
            .from_iprev
            .as_deref()
            .filter(|n| !n.eq_ignore_ascii_case("unknown") && n.contains('.'))
            .unwrap_or("");
        let auth = match r.with {
            Some(Protocol::ESMTPA | Protocol::ESMTPSA | Protocol::LMTPA | Protocol::LMTPSA) => {
                "auth"
            }
            _ => "",
        };
        out.push(format!(
            "[ ip={ip} rdns={} helo={} by={} ident={} envfrom= intl=0 id={} auth={auth} msa=0 ]",
            clean(rdns),
            clean(&helo),
            clean(&host(&r.by)),
            clean(r.ident.as_deref().unwrap_or("")),
            clean(r.id.as_deref().unwrap_or("")),
        ));
        if out.len() == MAX_RELAYS {
            break;
        }
    }
    (!out.is_empty()).then(|| out.join(" "))
}

/// A value cannot end the entry or introduce another key.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace() && *c != ']' && *c != '[' && *c != '=').collect()
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified()
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relays(raw: &str) -> Option<String> {
        let raw = raw.replace('\n', "\r\n");
        let msg = mail_parser::MessageParser::default().parse(raw.as_bytes()).unwrap();
        untrusted(msg.headers())
    }

    #[test]
    fn the_first_public_hop_and_below_are_untrusted() {
        let r = relays(
            "Received: from inside.example (inside.example [10.0.0.5]) by mx2.example with ESMTP id B1\n\
             Received: from mailer (unknown [203.0.113.9]) by mx.example with ESMTP id A1\n\
             Received: from laptop (dsl-1-2-3-4.dyn.example.net [198.51.100.4]) by mailer with ESMTPSA\n\
             Subject: x\n\nbody\n",
        )
        .unwrap();
        assert!(r.starts_with("[ ip=203.0.113.9 rdns= helo=mailer by=mx.example "), "{r}");
        assert!(r.contains("id=A1 auth= msa=0 ]"), "{r}");
        assert!(
            r.contains("[ ip=198.51.100.4 rdns=dsl-1-2-3-4.dyn.example.net helo=laptop by=mailer"),
            "{r}"
        );
        assert!(r.contains("auth=auth"), "{r}");
        assert!(!r.contains("10.0.0.5"), "{r}");
    }

    #[test]
    fn internal_only_or_no_received_gives_nothing() {
        assert_eq!(relays("Received: from a (a [192.168.1.2]) by b\nSubject: x\n\nb\n"), None);
        assert_eq!(relays("Subject: x\n\nb\n"), None);
    }
}
