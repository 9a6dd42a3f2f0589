//! Forward-confirmed reverse DNS (FCrDNS, RFC 8601 "iprev").

use std::net::IpAddr;

use futures_util::future::join_all;
use levee_types::Finding;

use crate::{Dns, NetCheckError};

/// RFC 8601 section 3: check at most this many PTR names, so a hostile reverse zone
/// cannot fan one connection out into hundreds of queries.
const MAX_PTR_NAMES: usize = 10;

/// `RDNS_NONE` when `ip` has no PTR, `RDNS_NOT_CONFIRMED` when no PTR name resolves back
/// to `ip`, nothing when one does; that name is returned for the Received header.
/// Lookup failures are `RDNS_TIMEOUT` / `RDNS_FAILED`, never "none".
pub async fn check(dns: &Dns, ip: IpAddr) -> (Vec<Finding>, Option<String>) {
    // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`: their PTR lives under
    // in-addr.arpa and their names have A records, not under ip6.arpa / AAAA.
    let ip = ip.to_canonical();
    let names = match dns.ptr(ip).await {
        Ok(names) if !names.is_empty() => names,
        Ok(_) | Err(NetCheckError::NotFound) => {
            return (vec![Finding::new("RDNS_NONE", format!("{ip} has no PTR record"))], None)
        }
        Err(e) => {
            return (
                vec![Finding::new(format!("RDNS{}", e.suffix()), format!("PTR {ip}: {e}"))],
                None,
            )
        }
    };
    let names: Vec<String> = names.into_iter().take(MAX_PTR_NAMES).collect();
    let forward = join_all(names.iter().map(|name| forward(dns, name, ip))).await;
    let mut errors = Vec::new();
    for (name, result) in names.iter().zip(forward) {
        match result {
            Ok(true) => return (Vec::new(), Some(name.clone())),
            Ok(false) | Err(NetCheckError::NotFound) => {}
            Err(e) => errors.push((name, e)),
        }
    }
    if let Some((name, e)) = errors.first() {
        // An unanswered forward lookup proves nothing either way.
        return (vec![Finding::new(format!("RDNS{}", e.suffix()), format!("{name}: {e}"))], None);
    }
    (
        vec![Finding::new(
            "RDNS_NOT_CONFIRMED",
            format!("{ip} -> {} does not resolve back to {ip}", names.join(",")),
        )],
        None,
    )
}

async fn forward(dns: &Dns, name: &str, ip: IpAddr) -> Result<bool, NetCheckError> {
    match ip {
        IpAddr::V4(v4) => Ok(dns.a(name).await?.contains(&v4)),
        IpAddr::V6(v6) => Ok(dns.aaaa(name).await?.contains(&v6)),
    }
}
