//! `IpNet`: an address prefix as written in config ("192.168.1.0/24", "2001:db8::/32").

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::GateError;

/// An IPv4 or IPv6 prefix whose host bits are zero.
///
/// Parsing is strict: "192.168.1.10/24" is refused rather than silently widened or narrowed,
/// because in a firewall rule a typo should be an error, not a different network. A bare
/// address is a host prefix (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// A prefix from its parts; refuses a prefix length beyond the family's width or set host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, GateError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(GateError::InvalidNet {
                input: format!("{addr}/{prefix}"),
                reason: format!("prefix length above {max}"),
            });
        }
        let net = IpNet { addr, prefix };
        let network = net.network();
        if network != addr {
            return Err(GateError::InvalidNet {
                input: format!("{addr}/{prefix}"),
                reason: format!("host bits set; the network is {network}/{prefix}"),
            });
        }
        Ok(net)
    }

    /// A single host (/32 or /128). IPv4-mapped IPv6 addresses become IPv4.
    pub fn host(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        IpNet { addr, prefix: max_prefix(addr) }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True for /0: a "LAN" of everything is the internet.
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        mask(ip, self.prefix) == self.addr
    }

    fn network(&self) -> IpAddr {
        mask(self.addr, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl FromStr for IpNet {
    type Err = GateError;

    fn from_str(s: &str) -> Result<Self, GateError> {
        let bad =
            |reason: &str| GateError::InvalidNet { input: s.to_owned(), reason: reason.into() };
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        match p {
            None => Ok(IpNet { addr, prefix: max_prefix(addr) }),
            // Digits only: u8's parser would accept "+24".
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                let prefix = p.parse::<u8>().map_err(|_| bad("prefix length out of range"))?;
                IpNet::new(addr, prefix)
            }
            Some(_) => Err(bad("prefix length is not a number")),
        }
    }
}

impl fmt::Display for IpNet {
    /// Always with the prefix length, which nft accepts for hosts too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<&str> for IpNet {
    type Error = GateError;
    fn try_from(s: &str) -> Result<Self, GateError> {
        s.parse()
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_displays() {
        assert_eq!(net("192.168.1.0/24").to_string(), "192.168.1.0/24");
        assert_eq!(net("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("::/0").to_string(), "::/0");
        assert_eq!(net("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(net("2001:db8::7").to_string(), "2001:db8::7/128");
        assert_eq!(net("10.1.2.3/32").prefix(), 32);
    }

    #[test]
    fn refuses_host_bits_and_junk() {
        for bad in [
            "192.168.1.10/24",
            "2001:db8::1/32",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0.0/0008",
            "10.0.0/8",
            "",
            "/8",
            "example.org/24",
            " 10.0.0.0/8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?} accepted");
        }
        let e = "192.168.1.10/24".parse::<IpNet>().unwrap_err().to_string();
        assert!(e.contains("192.168.1.0/24"), "{e}");
    }

    #[test]
    fn contains() {
        let n = net("192.168.1.0/24");
        assert!(n.contains("192.168.1.200".parse().unwrap()));
        assert!(n.contains("::ffff:192.168.1.200".parse().unwrap()));
        assert!(!n.contains("192.168.2.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        assert!(net("::/0").contains("2001:db8::1".parse().unwrap()));
        assert!(!net("::/0").contains("10.0.0.1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("10.0.0.1".parse().unwrap()));
        assert!(net("fd00::/8").contains("fdff::1".parse().unwrap()));
        assert!(!net("fd00::/8").contains("fe80::1".parse().unwrap()));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn deserialises_from_config_strings() {
        #[derive(serde::Deserialize)]
        struct C {
            lan: Vec<IpNet>,
        }
        let c: C = toml::from_str(r#"lan = ["10.0.0.0/8", "fd00::1"]"#).unwrap();
        assert_eq!(c.lan, [net("10.0.0.0/8"), net("fd00::1/128")]);
        let e = toml::from_str::<C>(r#"lan = ["10.0.0.1/8"]"#).err().unwrap().to_string();
        assert!(e.contains("host bits"), "{e}");
    }

    #[test]
    fn host_canonicalises_mapped() {
        let h = IpNet::host("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(h.to_string(), "192.0.2.7/32");
    }
}
