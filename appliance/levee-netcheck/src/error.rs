//! The crate's one error type.

use std::path::PathBuf;

/// Why a network check could not produce an answer. Checks turn these into visible
/// `_TIMEOUT` / `_FAILED` findings; callers see them only from constructors and raw lookups.
#[derive(Debug, thiserror::Error)]
pub enum NetCheckError {
    /// The name does not exist or has no record of the asked type (NXDOMAIN / NODATA).
    #[error("no such record")]
    NotFound,
    /// The upstream did not answer within the per-query timeout.
    #[error("DNS query timed out")]
    Timeout,
    /// SERVFAIL, REFUSED, a transport error or an unparsable name.
    #[error("DNS lookup failed: {0}")]
    Lookup(String),
    /// The resolver could not be set up (unreadable /etc/resolv.conf, ...).
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
    /// The GeoIP database could not be opened or is not a MaxMind DB.
    #[error("cannot open GeoIP database {path}: {reason}")]
    GeoIp { path: PathBuf, reason: String },
}

impl NetCheckError {
    /// The finding suffix a check appends to its symbol for this error.
    pub fn suffix(&self) -> &'static str {
        match self {
            NetCheckError::Timeout => "_TIMEOUT",
            _ => "_FAILED",
        }
    }
}
