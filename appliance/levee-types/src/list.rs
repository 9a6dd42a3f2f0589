//! Allow and block list entries and how they match a message.
//!
//! An entry is written as text, e.g. `allow sender-domain example.com` or
//! `block ip 192.0.2.0/24 for rcpt:bob@example.test`, so the console, the API and
//! the store all share one form. A sender or sender-domain allow entry may end in
//! `unauthenticated` (see [`ListEntry::unauthenticated`]); stored entries without the word
//! load as before, requiring authentication.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ListKind {
    Allow,
    Block,
}

/// Whose list an entry is on.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum ListScope {
    Global,
    Domain(String),
    Recipient(String),
}

/// What an entry matches.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Matcher {
    /// The envelope sender or From address, case-insensitive.
    Sender(String),
    /// The sender's domain or any subdomain of it.
    SenderDomain(String),
    /// The client address within a prefix.
    Ip(IpAddr, u8),
    /// The client's country (ISO code), as the GeoIP check found it.
    Country(String),
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ListEntry {
    pub kind: ListKind,
    pub matcher: Matcher,
    pub scope: ListScope,
    /// A sender or sender-domain allow entry that applies even when the sender's domain
    /// did not authenticate the message. A risk: anyone can forge an envelope sender, so
    /// such an entry lets forged mail from that address past the filter. Without it, the
    /// entry applies only when [`ListSubject::sender_authenticated`] holds. Ignored for
    /// block entries and for IP and country matchers.
    pub unauthenticated: bool,
}

/// The facts about a message that lists look at.
#[derive(Clone, Copy, Debug)]
pub struct ListSubject<'a> {
    pub sender: Option<&'a str>,
    pub client_ip: IpAddr,
    pub country: Option<&'a str>,
    pub recipient: &'a str,
    /// Whether the sender's domain authenticated the message (SPF pass for it, or a DKIM
    /// signature aligned with it).
    pub sender_authenticated: bool,
}

impl ListEntry {
    /// Whether the entry applies to this recipient and matches the message.
    pub fn matches(&self, s: &ListSubject<'_>) -> bool {
        self.matches_unauthenticated(s) && (s.sender_authenticated || !self.needs_authentication())
    }

    /// Whether the entry vouches for a sender, so that a forged sender must not use it:
    /// sender and sender-domain allow entries not marked `unauthenticated`.
    pub fn needs_authentication(&self) -> bool {
        self.vouches_for_sender() && !self.unauthenticated
    }

    fn vouches_for_sender(&self) -> bool {
        self.kind == ListKind::Allow
            && matches!(self.matcher, Matcher::Sender(_) | Matcher::SenderDomain(_))
    }

    /// [`ListEntry::matches`] without the authentication requirement.
    fn matches_unauthenticated(&self, s: &ListSubject<'_>) -> bool {
        let rcpt = s.recipient.to_ascii_lowercase();
        let in_scope = match &self.scope {
            ListScope::Global => true,
            ListScope::Domain(d) => rcpt.rsplit_once('@').is_some_and(|(_, rd)| rd == d),
            ListScope::Recipient(r) => &rcpt == r,
        };
        in_scope
            && match &self.matcher {
                Matcher::Sender(a) => s.sender.is_some_and(|x| x.eq_ignore_ascii_case(a)),
                Matcher::SenderDomain(d) => s.sender.is_some_and(|x| {
                    let dom = x.rsplit_once('@').map(|(_, d)| d).unwrap_or("").to_ascii_lowercase();
                    dom == *d || dom.ends_with(&format!(".{d}"))
                }),
                Matcher::Ip(net, len) => prefix_contains(*net, *len, s.client_ip),
                Matcher::Country(c) => s.country.is_some_and(|x| x.eq_ignore_ascii_case(c)),
            }
    }
}

/// The verdict of a set of entries for one recipient: the most specific scope wins
/// (recipient over domain over global), and within a scope block wins over allow.
pub fn decide<'a>(entries: &'a [ListEntry], s: &ListSubject<'_>) -> Option<&'a ListEntry> {
    let rank = |e: &ListEntry| match e.scope {
        ListScope::Recipient(_) => 3,
        ListScope::Domain(_) => 2,
        ListScope::Global => 1,
    };
    entries.iter().filter(|e| e.matches(s)).max_by_key(|e| (rank(e), e.kind == ListKind::Block))
}

/// The allow entry that would have decided for this recipient had the sender's domain
/// authenticated the message, when it did not: the log says why the entry was skipped.
pub fn skipped_for_authentication<'a>(
    entries: &'a [ListEntry],
    s: &ListSubject<'_>,
) -> Option<&'a ListEntry> {
    if s.sender_authenticated {
        return None;
    }
    let vouched = ListSubject { sender_authenticated: true, ..*s };
    decide(entries, &vouched).filter(|e| e.needs_authentication())
}

fn prefix_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len.min(128)) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

impl fmt::Display for ListEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ListKind::Allow => "allow",
            ListKind::Block => "block",
        };
        match &self.matcher {
            Matcher::Sender(a) => write!(f, "{kind} sender {a}")?,
            Matcher::SenderDomain(d) => write!(f, "{kind} sender-domain {d}")?,
            Matcher::Ip(ip, len) => write!(f, "{kind} ip {ip}/{len}")?,
            Matcher::Country(c) => write!(f, "{kind} country {c}")?,
        }
        match &self.scope {
            ListScope::Global => {}
            ListScope::Domain(d) => write!(f, " for domain:{d}")?,
            ListScope::Recipient(r) => write!(f, " for rcpt:{r}")?,
        }
        // only where the parser takes it back, so the text form round-trips
        if self.unauthenticated && self.vouches_for_sender() {
            f.write_str(" unauthenticated")?;
        }
        Ok(())
    }
}

impl FromStr for ListEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut words: Vec<&str> = s.split_whitespace().collect();
        let unauthenticated = words.last() == Some(&"unauthenticated");
        if unauthenticated {
            words.pop();
        }
        let (entry, scope) = match words.as_slice() {
            [k, m, v] => ((k, m, v), None),
            [k, m, v, "for", sc] => ((k, m, v), Some(*sc)),
            _ => {
                return Err(format!(
                    "expected 'allow|block KIND VALUE [for SCOPE] [unauthenticated]', got {s:?}"
                ))
            }
        };
        let kind = match *entry.0 {
            "allow" => ListKind::Allow,
            "block" => ListKind::Block,
            other => return Err(format!("unknown list {other:?}: allow or block")),
        };
        let v = entry.2.to_ascii_lowercase();
        let matcher = match *entry.1 {
            "sender" => {
                crate::Address::parse(&v, true).map_err(|e| format!("sender {v:?}: {e}"))?;
                Matcher::Sender(v)
            }
            "sender-domain" => {
                crate::Domain::parse(&v).map_err(|e| format!("domain {v:?}: {e}"))?;
                Matcher::SenderDomain(v)
            }
            "ip" => {
                let (a, l) = v.split_once('/').unwrap_or((&v, ""));
                let ip: IpAddr = a.parse().map_err(|_| format!("bad address {a:?}"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len = if l.is_empty() {
                    max
                } else {
                    l.parse().map_err(|_| format!("bad prefix {l:?}"))?
                };
                if len > max {
                    return Err(format!("prefix /{len} is too long"));
                }
                Matcher::Ip(ip, len)
            }
            "country" => {
                if v.len() != 2 || !v.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(format!("country {v:?}: expected a two-letter ISO code"));
                }
                Matcher::Country(v.to_ascii_uppercase())
            }
            other => {
                return Err(format!(
                    "unknown match {other:?}: sender, sender-domain, ip or country"
                ))
            }
        };
        let scope = match scope {
            None | Some("global") => ListScope::Global,
            Some(sc) => match sc.split_once(':') {
                Some(("domain", d)) => {
                    let d = d.to_ascii_lowercase();
                    crate::Domain::parse(&d).map_err(|e| format!("scope domain {d:?}: {e}"))?;
                    ListScope::Domain(d)
                }
                Some(("rcpt", r)) => {
                    let r = r.to_ascii_lowercase();
                    crate::Address::parse(&r, true)
                        .map_err(|e| format!("scope rcpt {r:?}: {e}"))?;
                    ListScope::Recipient(r)
                }
                _ => return Err(format!("scope {sc:?}: global, domain:NAME or rcpt:ADDRESS")),
            },
        };
        let entry = ListEntry { kind, matcher, scope, unauthenticated };
        if unauthenticated && !entry.vouches_for_sender() {
            return Err(
                "'unauthenticated' applies to sender and sender-domain allow entries".into()
            );
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(sender: &'a str, ip: &str, rcpt: &'a str) -> ListSubject<'a> {
        ListSubject {
            sender: Some(sender),
            client_ip: ip.parse().unwrap(),
            country: Some("DE"),
            recipient: rcpt,
            sender_authenticated: true,
        }
    }

    #[test]
    fn entries_round_trip_through_text() {
        for s in [
            "allow sender alice@example.com",
            "block sender-domain spam.test for domain:example.test",
            "block ip 192.0.2.0/24 for rcpt:bob@example.test",
            "allow ip 2001:db8::/32",
            "block country CN",
            "allow sender-domain partner.test for domain:example.test unauthenticated",
            "allow sender bob@partner.test unauthenticated",
        ] {
            let e: ListEntry = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        for bad in [
            "allow",
            "maybe sender a@b.test",
            "allow ip 1.2.3.4/40",
            "block country CHN",
            "allow sender x for moon:1",
            "block sender a@b.test unauthenticated",
            "allow ip 192.0.2.1 unauthenticated",
            "allow sender a@b.test unauthenticated for domain:example.test",
        ] {
            assert!(bad.parse::<ListEntry>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_most_specific_scope_wins_and_block_beats_allow_within_it() {
        let entries: Vec<ListEntry> = [
            "block sender-domain example.com",
            "allow sender alice@example.com for rcpt:bob@example.test",
            "allow ip 192.0.2.0/24 for domain:example.test",
            "block ip 192.0.2.7 for domain:example.test",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let hit =
            decide(&entries, &subject("alice@example.com", "198.51.100.1", "bob@example.test"));
        assert_eq!(hit.unwrap().kind, ListKind::Allow);
        let hit = decide(
            &entries,
            &subject("carol@mail.example.com", "198.51.100.1", "dave@example.test"),
        );
        assert_eq!(hit.unwrap().kind, ListKind::Block);
        let hit = decide(&entries, &subject("x@other.test", "192.0.2.7", "dave@example.test"));
        assert_eq!(hit.unwrap().kind, ListKind::Block);
        let hit = decide(&entries, &subject("x@other.test", "192.0.2.8", "dave@example.test"));
        assert_eq!(hit.unwrap().kind, ListKind::Allow);
        assert!(decide(&entries, &subject("x@other.test", "192.0.2.8", "dave@else.test")).is_none());
    }

    #[test]
    fn stored_text_without_the_flag_requires_authentication() {
        let e: ListEntry = "allow sender alice@auth.test".parse().unwrap();
        assert!(!e.unauthenticated && e.needs_authentication());
        let e: ListEntry = "allow sender alice@auth.test unauthenticated".parse().unwrap();
        assert!(e.unauthenticated && !e.needs_authentication());
        let e: ListEntry = "allow ip 192.0.2.0/24".parse().unwrap();
        assert!(!e.needs_authentication(), "IP entries are unchanged");
    }

    #[test]
    fn a_sender_allow_entry_needs_the_sender_authenticated() {
        let entries: Vec<ListEntry> = [
            "block sender-domain auth.test",
            "allow sender alice@auth.test for domain:example.test",
            "allow sender-domain partner.test for domain:example.test unauthenticated",
            "allow ip 192.0.2.0/24 for rcpt:ip@example.test",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let forged = |sender, ip, rcpt| ListSubject {
            sender_authenticated: false,
            ..subject(sender, ip, rcpt)
        };
        let s = subject("alice@auth.test", "198.51.100.1", "bob@example.test");
        assert_eq!(decide(&entries, &s).unwrap().kind, ListKind::Allow);
        assert!(skipped_for_authentication(&entries, &s).is_none());
        // Forged: the allow entry is skipped, and the wider block entry decides.
        let s = forged("alice@auth.test", "198.51.100.1", "bob@example.test");
        assert_eq!(decide(&entries, &s).unwrap().kind, ListKind::Block);
        assert_eq!(skipped_for_authentication(&entries, &s), Some(&entries[1]));
        // Marked unauthenticated: applies as before.
        let s = forged("carol@partner.test", "198.51.100.1", "bob@example.test");
        assert_eq!(decide(&entries, &s), Some(&entries[2]));
        assert!(skipped_for_authentication(&entries, &s).is_none());
        // IP entries never ask.
        let s = forged("x@other.test", "192.0.2.9", "ip@example.test");
        assert_eq!(decide(&entries, &s), Some(&entries[3]));
    }
}
