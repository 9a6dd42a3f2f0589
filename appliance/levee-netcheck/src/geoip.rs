//! Country of an IP from a MaxMind-format database (GeoLite2-Country, DB-IP lite, ...).

use std::net::IpAddr;
use std::path::Path;

use levee_types::Finding;
use maxminddb::{PathElement, Reader};

use crate::NetCheckError;

/// An opened database, read into memory once (a country database is a few MB).
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database_type", &self.reader.metadata().database_type)
            .finish_non_exhaustive()
    }
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<Self, NetCheckError> {
        let reader = Reader::open_readfile(path).map_err(|e| NetCheckError::GeoIp {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(GeoIp { reader })
    }

    /// The ISO 3166-1 alpha-2 code (upper case) of the country `ip` is in, falling back to
    /// the registered country (anycast and mobile ranges often have only that).
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        self.lookup(ip).ok().flatten()
    }

    fn lookup(&self, ip: IpAddr) -> Result<Option<String>, maxminddb::MaxMindDbError> {
        // `::ffff:a.b.c.d` (an IPv4 client of a dual-stack listener) is looked up as IPv4:
        // only some databases alias the mapped range to the IPv4 tree.
        let result = self.reader.lookup(ip.to_canonical())?;
        for key in ["country", "registered_country"] {
            let path = [PathElement::Key(key), PathElement::Key("iso_code")];
            if let Some(code) = result.decode_path::<String>(&path)? {
                let code = code.trim().to_ascii_uppercase();
                if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Ok(Some(code));
                }
            }
        }
        Ok(None)
    }

    /// `COUNTRY_XX` for a located IP (so config can weight or block countries), nothing for
    /// an address the database does not cover (private ranges), `GEOIP_FAILED` for a
    /// database that cannot be read at that address.
    pub fn check(&self, ip: IpAddr) -> Vec<Finding> {
        let ip = ip.to_canonical();
        match self.lookup(ip) {
            Ok(Some(code)) => {
                vec![Finding::new(format!("COUNTRY_{code}"), format!("{ip} is in {code}"))]
            }
            Ok(None) => Vec::new(),
            // An IPv6 address in an IPv4-only database is a coverage gap, not a fault.
            Err(maxminddb::MaxMindDbError::InvalidInput { .. }) if ip.is_ipv6() => Vec::new(),
            Err(e) => vec![Finding::new("GEOIP_FAILED", format!("{ip}: {e}"))],
        }
    }
}
