//! DNS block and allow lists (RFC 5782) for connecting IPs, and the answer interpretation
//! that URI lists share.
//!
//! A list answers `127.0.0.x` for a listing; what `x` means is the list's business, so
//! [`DnsList::codes`] maps return codes to symbol suffixes. `127.255.255.x` (Spamhaus) and
//! `127.0.0.1` (URIBL, and never a listing under RFC 5782) mean "your resolver is blocked or
//! over quota": that is a health problem of *ours*, so it becomes a zero-weight
//! `<SYMBOL>_BLOCKED` finding plus a [`HealthWarning`], never a listing.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::future::join_all;
use levee_types::Finding;

use crate::dns::reversed_labels;
use crate::{Dns, NetCheckError};

/// One DNS list: an IP blocklist (zen), an allowlist (DNSWL: give its symbols negative
/// weights), or a domain list (DBL, SURBL) used by the URI check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsList {
    /// The zone queried under, e.g. `zen.spamhaus.org`.
    pub zone: String,
    /// The symbol of a listing, e.g. `RBL_ZEN`; also the prefix of `_BLOCKED` / `_TIMEOUT` / `_FAILED`.
    pub symbol: String,
    /// Return code -> symbol suffix (`127.0.0.4` -> `XBL` gives `RBL_ZEN_XBL`; an empty
    /// suffix gives the bare symbol). Empty: any `127.0.0.0/8` code is a listing under
    /// the bare symbol. Codes not in a non-empty table are listed under the bare symbol too,
    /// with the code in the detail, so a new code is seen rather than dropped.
    pub codes: Vec<(Ipv4Addr, String)>,
}

/// Something an operator must fix (the check itself said nothing about the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthWarning {
    /// The symbol of the list or check concerned.
    pub source: String,
    pub message: String,
}

/// What one list said about one query.
#[derive(Debug)]
pub(crate) enum ListAnswer {
    NotListed,
    /// Symbols (already suffixed) with the code that produced each.
    Listed(Vec<(String, Ipv4Addr)>),
    /// The list refuses to answer us.
    Blocked(Ipv4Addr),
    /// Answers outside 127/8: a hijacking resolver or a dead zone with a wildcard.
    Unexpected(Vec<Ipv4Addr>),
    Error(NetCheckError),
}

fn is_blocked_code(code: Ipv4Addr) -> bool {
    let [a, b, c, d] = code.octets();
    (a, b, c) == (127, 255, 255) || (a, b, c, d) == (127, 0, 0, 1)
}

/// Interprets the A records one list returned. Pure, so the edge cases are unit tested.
pub(crate) fn interpret(
    list: &DnsList,
    answer: Result<Vec<Ipv4Addr>, NetCheckError>,
) -> ListAnswer {
    let codes = match answer {
        Err(NetCheckError::NotFound) => return ListAnswer::NotListed,
        Err(e) => return ListAnswer::Error(e),
        Ok(codes) => codes,
    };
    let explicit = |code: Ipv4Addr| list.codes.iter().find(|(c, _)| *c == code);
    if let Some(blocked) =
        codes.iter().copied().find(|c| is_blocked_code(*c) && explicit(*c).is_none())
    {
        return ListAnswer::Blocked(blocked);
    }
    let unexpected: Vec<Ipv4Addr> =
        codes.iter().copied().filter(|c| c.octets()[0] != 127).collect();
    if !unexpected.is_empty() {
        return ListAnswer::Unexpected(unexpected);
    }
    let mut listed: Vec<(String, Ipv4Addr)> = Vec::new();
    for code in codes {
        let symbol = match explicit(code) {
            Some((_, suffix)) if !suffix.is_empty() => format!("{}_{suffix}", list.symbol),
            _ => list.symbol.clone(),
        };
        if !listed.iter().any(|(s, _)| *s == symbol) {
            listed.push((symbol, code));
        }
    }
    if listed.is_empty() {
        ListAnswer::NotListed
    } else {
        ListAnswer::Listed(listed)
    }
}

/// Queries `<name>.<zone>` for one list.
pub(crate) async fn query(dns: &Dns, name: &str, list: &DnsList) -> ListAnswer {
    let fqdn = format!("{name}.{}", list.zone.trim_end_matches('.'));
    interpret(list, dns.a(&fqdn).await)
}

/// Turns one list's answer into findings and warnings. `what` names the queried item
/// (an IP, a domain) for people.
pub(crate) fn report(
    list: &DnsList,
    what: &str,
    answer: ListAnswer,
    findings: &mut Vec<Finding>,
    warnings: &mut Vec<HealthWarning>,
) {
    let symbol = &list.symbol;
    match answer {
        ListAnswer::NotListed => {}
        ListAnswer::Listed(hits) => {
            for (sym, code) in hits {
                findings
                    .push(Finding::new(sym, format!("{what} listed in {} ({code})", list.zone)));
            }
        }
        ListAnswer::Blocked(code) => {
            findings.push(Finding::new(
                format!("{symbol}_BLOCKED"),
                format!("{} refused our query ({code})", list.zone),
            ));
            warnings.push(HealthWarning {
                source: symbol.clone(),
                message: format!(
                    "{} answers {code}: queries from this resolver are blocked or over quota; \
                     use a local recursive resolver or a paid feed",
                    list.zone
                ),
            });
        }
        ListAnswer::Unexpected(addrs) => {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            findings.push(Finding::new(
                format!("{symbol}_FAILED"),
                format!("{} gave a non-list answer {}", list.zone, addrs.join(",")),
            ));
            warnings.push(HealthWarning {
                source: symbol.clone(),
                message: format!(
                    "{} answers outside 127.0.0.0/8 ({}): the resolver rewrites NXDOMAIN or the zone is dead",
                    list.zone,
                    addrs.join(",")
                ),
            });
        }
        ListAnswer::Error(e) => {
            findings.push(Finding::new(
                format!("{symbol}{}", e.suffix()),
                format!("{}: {e}", list.zone),
            ));
        }
    }
}

/// The name `ip` is looked up under in an IP list (before the zone). An IPv4 client of a
/// dual-stack (`[::]`) listener arrives as `::ffff:a.b.c.d`; lists index it as IPv4, so the
/// mapped form would never be found.
pub fn query_name(ip: IpAddr) -> String {
    reversed_labels(ip.to_canonical())
}

/// Looks `ip` up in every list at once.
pub async fn check_ip(
    dns: &Dns,
    ip: IpAddr,
    lists: &[DnsList],
) -> (Vec<Finding>, Vec<HealthWarning>) {
    let ip = ip.to_canonical();
    let name = query_name(ip);
    let answers = join_all(lists.iter().map(|list| query(dns, &name, list))).await;
    let mut findings = Vec::new();
    let mut warnings = Vec::new();
    let what = ip.to_string();
    for (list, answer) in lists.iter().zip(answers) {
        report(list, &what, answer, &mut findings, &mut warnings);
    }
    (findings, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zen() -> DnsList {
        DnsList {
            zone: "zen.example".into(),
            symbol: "RBL_ZEN".into(),
            codes: vec![
                ("127.0.0.2".parse().unwrap(), "SBL".into()),
                ("127.0.0.4".parse().unwrap(), "XBL".into()),
                ("127.0.0.10".parse().unwrap(), "".into()),
            ],
        }
    }

    fn ips(s: &[&str]) -> Result<Vec<Ipv4Addr>, NetCheckError> {
        Ok(s.iter().map(|a| a.parse().unwrap()).collect())
    }

    fn symbols(list: &DnsList, answer: ListAnswer) -> (Vec<String>, usize) {
        let (mut f, mut w) = (Vec::new(), Vec::new());
        report(list, "x", answer, &mut f, &mut w);
        (f.into_iter().map(|f| f.symbol).collect(), w.len())
    }

    #[test]
    fn codes_map_to_suffixes() {
        let list = zen();
        let got = symbols(&list, interpret(&list, ips(&["127.0.0.4", "127.0.0.2", "127.0.0.4"])));
        assert_eq!(got, (vec!["RBL_ZEN_XBL".to_string(), "RBL_ZEN_SBL".to_string()], 0));
        let got = symbols(&list, interpret(&list, ips(&["127.0.0.10"])));
        assert_eq!(got.0, vec!["RBL_ZEN"]);
        // A code the table does not know is still seen, under the bare symbol.
        let got = symbols(&list, interpret(&list, ips(&["127.0.0.9"])));
        assert_eq!(got.0, vec!["RBL_ZEN"]);
    }

    #[test]
    fn empty_code_table_lists_any_loopback_code() {
        let list = DnsList { codes: vec![], ..zen() };
        assert_eq!(symbols(&list, interpret(&list, ips(&["127.0.0.3"]))).0, vec!["RBL_ZEN"]);
    }

    #[test]
    fn blocked_answer_is_never_a_listing() {
        let list = zen();
        for code in ["127.255.255.254", "127.255.255.252", "127.0.0.1"] {
            // Even mixed with a listing code, a refusal poisons the whole answer.
            let got = symbols(&list, interpret(&list, ips(&[code, "127.0.0.2"])));
            assert_eq!(got, (vec!["RBL_ZEN_BLOCKED".to_string()], 1), "{code}");
        }
    }

    #[test]
    fn explicit_code_overrides_blocked_range() {
        let list = DnsList { codes: vec![("127.0.0.1".parse().unwrap(), "ONE".into())], ..zen() };
        assert_eq!(symbols(&list, interpret(&list, ips(&["127.0.0.1"]))).0, vec!["RBL_ZEN_ONE"]);
    }

    #[test]
    fn nxdomain_is_silent_errors_are_visible() {
        let list = zen();
        assert_eq!(symbols(&list, interpret(&list, Err(NetCheckError::NotFound))), (vec![], 0));
        assert_eq!(
            symbols(&list, interpret(&list, Err(NetCheckError::Timeout))).0,
            vec!["RBL_ZEN_TIMEOUT"]
        );
        assert_eq!(
            symbols(&list, interpret(&list, Err(NetCheckError::Lookup("SERVFAIL".into())))).0,
            vec!["RBL_ZEN_FAILED"]
        );
    }

    #[test]
    fn ipv4_mapped_clients_are_looked_up_as_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.66".parse().unwrap();
        assert_eq!(query_name(mapped), "66.2.0.192");
        assert_eq!(query_name("192.0.2.66".parse().unwrap()), "66.2.0.192");
        // A real IPv6 address keeps its nibbles.
        assert!(query_name("2001:db8::66".parse().unwrap()).ends_with(".8.b.d.0.1.0.0.2"));
    }

    #[test]
    fn answers_outside_loopback_are_failures_with_a_warning() {
        let list = zen();
        let got = symbols(&list, interpret(&list, ips(&["198.51.100.1"])));
        assert_eq!(got, (vec!["RBL_ZEN_FAILED".to_string()], 1));
    }
}
