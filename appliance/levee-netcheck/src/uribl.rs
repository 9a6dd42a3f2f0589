//! Link hosts in a message against URI blocklists (Spamhaus DBL, SURBL, URIBL style).

use std::collections::HashSet;

use futures_util::future::join_all;
use levee_types::Finding;

use crate::dns::reversed_labels;
use crate::dnsbl::{query, report, DnsList, HealthWarning};
use crate::urls::{extract, UriHost};
use crate::{merge_by_symbol, Dns};

/// Looks up at most `max_hosts` distinct link hosts of `message` in every list, all at
/// once. A listing is `<SYMBOL>` with the listed hosts in the detail; a refusal or timeout
/// is reported once per list, not once per link.
pub async fn check(
    dns: &Dns,
    message: &[u8],
    lists: &[DnsList],
    max_hosts: usize,
) -> (Vec<Finding>, Vec<HealthWarning>) {
    if lists.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let hosts = extract(message, max_hosts);
    check_hosts(dns, &hosts, lists).await
}

/// The lookup half of [`check`], for hosts already extracted.
pub async fn check_hosts(
    dns: &Dns,
    hosts: &[UriHost],
    lists: &[DnsList],
) -> (Vec<Finding>, Vec<HealthWarning>) {
    let queries = hosts.iter().flat_map(|host| {
        let name = match host {
            UriHost::Domain(d) => d.clone(),
            UriHost::Ip(ip) => reversed_labels(*ip),
        };
        lists.iter().map(move |list| {
            let name = name.clone();
            async move { (host, list, query(dns, &name, list).await) }
        })
    });
    let answers = join_all(queries).await;
    let mut findings: Vec<Finding> = Vec::new();
    let mut warnings: Vec<HealthWarning> = Vec::new();
    for (host, list, answer) in answers {
        report(list, &host.to_string(), answer, &mut findings, &mut warnings);
    }
    // The scorer adds every finding, so ten links to one listed domain, or ten timeouts of
    // one list, must weigh as one: one finding per symbol, the hosts in its detail.
    let findings = merge_by_symbol(findings);
    let mut seen = HashSet::new();
    warnings.retain(|w| seen.insert(w.source.clone()));
    (findings, warnings)
}
