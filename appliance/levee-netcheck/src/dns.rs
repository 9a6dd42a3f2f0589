//! `Dns`: the one resolver handle every network check is given.
//!
//! A thin wrapper over hickory's caching resolver (answers are kept for their TTL) that
//! normalises names to FQDNs, bounds every query by a timeout, and folds hickory's error zoo
//! into three outcomes a check cares about: not found, timed out, failed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::NetCheckError;

/// Where queries go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The servers in /etc/resolv.conf.
    System,
    /// One recursive resolver (a local unbound, or a test server on a custom port).
    Server(SocketAddr),
}

/// A cloneable resolver handle (clones share one cache).
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Dns {
    /// A resolver for `upstream` whose every query gives up after `timeout`.
    pub fn new(upstream: Upstream, timeout: Duration) -> Result<Self, NetCheckError> {
        let (config, mut opts) = match upstream {
            Upstream::System => hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| NetCheckError::Resolver(e.to_string()))?,
            Upstream::Server(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                (ResolverConfig::from_name_servers(vec![server]), ResolverOpts::default())
            }
        };
        // One attempt per server inside our own deadline: a DNSBL that is slow is a
        // `_TIMEOUT` finding, not a reason to hold the SMTP session.
        opts.timeout = timeout;
        opts.attempts = 1;
        // Lists and auth records must come from DNS, never from /etc/hosts or search domains.
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| NetCheckError::Resolver(e.to_string()))?;
        Ok(Dns { resolver, timeout })
    }

    /// The per-query timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying hickory resolver, shared with mail-auth so both use one cache.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, NetCheckError> {
        let name = fqdn(name)?;
        // hickory has its own timeout per server; this one bounds the whole lookup
        // (several servers, TCP fallback) so the caller's promise holds.
        let fut = self.resolver.lookup(name, rtype);
        match tokio::time::timeout(self.timeout + Duration::from_millis(50), fut).await {
            Err(_) => Err(NetCheckError::Timeout),
            Ok(Err(e)) => Err(map_error(&e)),
            Ok(Ok(lookup)) => {
                let data: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.data.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if data.is_empty() {
                    Err(NetCheckError::NotFound)
                } else {
                    Ok(data)
                }
            }
        }
    }

    /// IPv4 addresses of `name`.
    pub async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, NetCheckError> {
        let data = self.lookup(name, RecordType::A).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// IPv6 addresses of `name`.
    pub async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, NetCheckError> {
        let data = self.lookup(name, RecordType::AAAA).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// Names the PTR records of `ip` point to, without the trailing dot.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, NetCheckError> {
        let data = self.lookup(&reverse_zone_name(ip), RecordType::PTR).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::PTR(p) => Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect())
    }

    /// TXT records of `name`, each one's strings concatenated (as SPF and DKIM read them).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, NetCheckError> {
        let data = self.lookup(name, RecordType::TXT).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::TXT(t) => {
                    let bytes: Vec<u8> =
                        t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                    Some(String::from_utf8_lossy(&bytes).into_owned())
                }
                _ => None,
            })
            .collect())
    }

    /// MX records of `name` as (preference, host), sorted by preference.
    pub async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, NetCheckError> {
        let data = self.lookup(name, RecordType::MX).await?;
        let mut mx: Vec<(u16, String)> = data
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(m) => {
                    Some((m.preference, m.exchange.to_ascii().trim_end_matches('.').to_string()))
                }
                _ => None,
            })
            .collect();
        mx.sort();
        Ok(mx)
    }
}

fn fqdn(name: &str) -> Result<Name, NetCheckError> {
    let mut name = name.trim().to_string();
    if !name.ends_with('.') {
        name.push('.');
    }
    Name::from_ascii(&name).map_err(|e| NetCheckError::Lookup(format!("bad name {name:?}: {e}")))
}

fn map_error(e: &NetError) -> NetCheckError {
    if e.is_no_records_found() {
        NetCheckError::NotFound
    } else if matches!(e, NetError::Timeout) {
        NetCheckError::Timeout
    } else {
        NetCheckError::Lookup(e.to_string())
    }
}

/// `ip` as DNS labels in reverse order, without a zone: reversed octets for IPv4
/// (`2.0.0.127`), reversed nibbles for IPv6 (RFC 5782 section 2.4), as DNSBLs and
/// `in-addr.arpa` / `ip6.arpa` want them.
pub fn reversed_labels(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    labels.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0').to_string());
                }
            }
            labels.join(".")
        }
    }
}

/// The PTR owner name of `ip`.
pub fn reverse_zone_name(ip: IpAddr) -> String {
    let zone = if ip.is_ipv4() { "in-addr.arpa" } else { "ip6.arpa" };
    format!("{}.{zone}", reversed_labels(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_reversed_octets() {
        let ip: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(reversed_labels(ip), "99.2.0.192");
        assert_eq!(reverse_zone_name(ip), "99.2.0.192.in-addr.arpa");
    }

    #[test]
    fn ipv6_reversed_nibbles() {
        // RFC 5782 section 2.4's example.
        let ip: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            reversed_labels(ip),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
        );
        let lo: IpAddr = "::1".parse().unwrap();
        let name = reverse_zone_name(lo);
        assert!(name.starts_with("1.0.0.0."), "{name}");
        assert!(name.ends_with(".0.ip6.arpa"), "{name}");
        assert_eq!(name.split('.').count(), 32 + 2);
    }

    #[test]
    fn names_become_fqdns() {
        assert_eq!(fqdn("example.com").unwrap().to_ascii(), "example.com.");
        assert_eq!(fqdn("example.com.").unwrap().to_ascii(), "example.com.");
    }
}
