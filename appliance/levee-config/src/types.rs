//! Value types that validate themselves while being deserialised.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

fn from_str_de<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_str_de(d)
            }
        }
    };
}

/// The appliance's own host name (banner, Received, EHLO when delivering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName(pub String);

impl FromStr for HostName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        levee_types::Domain::parse(s)
            .map(|d| HostName(d.to_string()))
            .map_err(|e| format!("bad host name {s:?}: {e}"))
    }
}
deserialize_from_str!(HostName);

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A socket address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<SocketAddr>()
            .map(Listen)
            .map_err(|_| format!("bad listen address {s:?}: expected IP:PORT like \"0.0.0.0:25\""))
    }
}
deserialize_from_str!(Listen);

/// Where a domain's mail goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownstreamHost {
    Ip(IpAddr),
    Name(String),
    /// `mx:NAME`: the lowest-preference reachable MX host of NAME (an internal mail
    /// domain, never the filtered domain itself, whose MX is this gateway).
    Mx(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downstream {
    pub host: DownstreamHost,
    pub port: u16,
}

impl fmt::Display for Downstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            DownstreamHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            DownstreamHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            DownstreamHost::Name(n) => write!(f, "{n}:{}", self.port),
            DownstreamHost::Mx(n) => write!(f, "mx:{n}"),
        }
    }
}

impl FromStr for Downstream {
    type Err = String;
    /// `host`, `host:port`, `1.2.3.4:port`, `[v6]:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("bad downstream {s:?}: {why}");
        if let Some(name) = s.strip_prefix("mx:") {
            let d = levee_types::Domain::parse(name).map_err(|e| bad(&e.to_string()))?;
            return Ok(Downstream { host: DownstreamHost::Mx(d.to_string()), port: 25 });
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(bad("port 0"));
            }
            return Ok(Downstream { host: DownstreamHost::Ip(sa.ip()), port: sa.port() });
        }
        if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(Downstream { host: DownstreamHost::Ip(ip), port: 25 });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| bad("port must be 1-65535"))?;
                if port == 0 {
                    return Err(bad("port 0"));
                }
                (h, port)
            }
            None => (s, 25),
        };
        // A single-label `localhost` is fine for a next hop; anything else must be a real name.
        let name = match host {
            "localhost" => host.to_string(),
            _ => levee_types::Domain::parse(host).map_err(|e| bad(&e.to_string()))?.to_string(),
        };
        Ok(Downstream { host: DownstreamHost::Name(name), port })
    }
}
deserialize_from_str!(Downstream);

/// TLS when delivering to the downstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never STARTTLS (a downstream on the same trusted segment).
    None,
    /// STARTTLS when offered, certificate not verified; plaintext if not offered.
    #[default]
    Opportunistic,
    /// STARTTLS must succeed or the delivery is deferred; never falls back to plaintext.
    Required,
    /// As `Required`, and the certificate must verify: against the domain's `tls_pin`
    /// when set, else against `tls_ca` (or the system's CA bundle) for the host's name.
    Verify,
}

/// A pinned downstream certificate: the SHA-256 of its DER encoding, as `sha256:HEX`
/// (what `openssl x509 -noout -fingerprint -sha256` prints, colons allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertPin(pub [u8; 32]);

impl FromStr for CertPin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad tls_pin {s:?}: expected sha256:<64 hex digits>");
        let hex: String =
            s.strip_prefix("sha256:").ok_or_else(bad)?.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(hex).map_err(|_| bad())?;
        Ok(CertPin(bytes.try_into().map_err(|_| bad())?))
    }
}
deserialize_from_str!(CertPin);

/// An IP prefix such as `192.168.1.0/24`; a bare address is a host prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad prefix {s:?}: expected ADDRESS/LENGTH like \"192.168.1.0/24\"");
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() { max } else { l.parse::<u8>().map_err(|_| bad())? };
        if len > max {
            return Err(bad());
        }
        Ok(Prefix { addr, len })
    }
}
deserialize_from_str!(Prefix);

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A timeout in whole seconds, from 1 to [`Seconds::MAX`]. Zero would cut every
/// connection at once, and a huge value overflows the clock arithmetic of a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(u64);

impl Seconds {
    /// One week: longer than any SMTP step may reasonably take.
    pub const MAX: u64 = 7 * 24 * 3600;

    /// `n` seconds; panics outside 1..=MAX (for defaults, which are constants).
    pub const fn new(n: u64) -> Seconds {
        assert!(n >= 1 && n <= Self::MAX, "timeout out of range");
        Seconds(n)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if (1..=Self::MAX).contains(&n) {
            Ok(Seconds(n))
        } else {
            Err(serde::de::Error::custom(format!(
                "timeout {n} out of range: give whole seconds from 1 to {}",
                Self::MAX
            )))
        }
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", self.0)
    }
}

/// How many `Received:` headers a message may carry before it is refused as a mail loop,
/// from 1 to [`HopLimit::MAX`]. Zero would refuse all relayed mail, and a huge limit
/// would never stop a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HopLimit(usize);

impl HopLimit {
    /// Far beyond any real path (Postfix refuses past 50), low enough to end a loop.
    pub const MAX: usize = 1000;

    /// `n` hops; panics outside 1..=MAX (for defaults, which are constants).
    pub const fn new(n: usize) -> HopLimit {
        assert!(n >= 1 && n <= Self::MAX, "hop limit out of range");
        HopLimit(n)
    }

    pub fn get(self) -> usize {
        self.0
    }
}

impl<'de> Deserialize<'de> for HopLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        match usize::try_from(n) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(HopLimit(n)),
            _ => Err(serde::de::Error::custom(format!(
                "hop limit {n} out of range: give a count from 1 to {}",
                Self::MAX
            ))),
        }
    }
}

impl fmt::Display for HopLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A share in whole percent, from 1 to 100. Zero would put every connection under a
/// threshold that is always passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(u8);

impl Percent {
    /// `n` percent; panics outside 1..=100 (for defaults, which are constants).
    pub const fn new(n: u8) -> Percent {
        assert!(n >= 1 && n <= 100, "percent out of range");
        Percent(n)
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// Whether `count` is more than this share of `total`.
    pub fn exceeded(self, count: usize, total: usize) -> bool {
        count.saturating_mul(100) > total.saturating_mul(self.0 as usize)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        match u8::try_from(n) {
            Ok(n) if (1..=100).contains(&n) => Ok(Percent(n)),
            _ => Err(serde::de::Error::custom(format!(
                "{n} out of range: give a percentage from 1 to 100"
            ))),
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Days the message log keeps a record: 1 to 3650 (ten years), default 30. Zero is
/// refused rather than read as "keep nothing", which would empty the log every hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionDays(u16);

impl RetentionDays {
    pub const MIN: u16 = 1;
    pub const MAX: u16 = 3650;

    pub fn new(days: u64) -> Result<RetentionDays, String> {
        u16::try_from(days)
            .ok()
            .filter(|d| (Self::MIN..=Self::MAX).contains(d))
            .map(RetentionDays)
            .ok_or_else(|| {
                format!(
                    "retention_days must be between {} and {} (here {days})",
                    Self::MIN,
                    Self::MAX
                )
            })
    }

    pub fn days(self) -> u16 {
        self.0
    }

    pub fn as_secs(self) -> u64 {
        u64::from(self.0) * 86_400
    }
}

impl Default for RetentionDays {
    fn default() -> Self {
        RetentionDays(30)
    }
}

impl<'de> Deserialize<'de> for RetentionDays {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // i64 so that a negative number gets our message, not serde's.
        let n = i64::deserialize(d)?;
        RetentionDays::new(u64::try_from(n).unwrap_or(0)).map_err(serde::de::Error::custom)
    }
}
