//! Mailbox addresses and domain names, parsed strictly.
//!
//! The relay decides who it accepts mail for from these types alone, so the parser
//! refuses every form that could name a second destination: source routes, the `%`
//! hack, bang paths, quoted local parts, IP literals and anything that is not a plain
//! LDH host name.

use std::fmt;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address has no @domain")]
    NoDomain,
    #[error("address is too long")]
    TooLong,
    #[error("local part is not allowed: {0}")]
    LocalPart(&'static str),
    #[error("domain is not allowed: {0}")]
    Domain(&'static str),
}

/// A host name: lower-case LDH labels (A-labels for IDN), at least two labels, no
/// trailing dot, no IP literal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Domain(String);

impl Domain {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Domain("empty"));
        }
        if s.starts_with('[') {
            return Err(AddressError::Domain("address literals are not accepted"));
        }
        if s.len() > 253 {
            return Err(AddressError::Domain("longer than 253 characters"));
        }
        let lower = s.to_ascii_lowercase();
        let labels: Vec<&str> = lower.split('.').collect();
        if labels.len() < 2 {
            return Err(AddressError::Domain("needs at least two labels"));
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return Err(AddressError::Domain("empty or over-long label"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(AddressError::Domain("characters other than letters, digits and '-'"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(AddressError::Domain("label starts or ends with '-'"));
            }
        }
        if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
            return Err(AddressError::Domain("numeric top-level label (an IP address?)"));
        }
        Ok(Domain(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `local@domain` with a dot-atom local part (case kept) and a [`Domain`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Address {
    local: String,
    domain: Domain,
}

/// Characters RFC 5321 allows in an atom, less the routing characters `%` and `!`
/// that old relays interpret as "forward to another host".
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"#$&'*+-/=?^_`{|}~".contains(&b)
}

impl Address {
    /// Parses `local@domain` (no angle brackets). With `utf8`, non-ASCII local parts are
    /// allowed (SMTPUTF8); domains must still be A-labels.
    pub fn parse(s: &str, utf8: bool) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.len() > 254 {
            return Err(AddressError::TooLong);
        }
        if s.starts_with('@') {
            return Err(AddressError::LocalPart("source routes are not accepted"));
        }
        if s.starts_with('"') {
            return Err(AddressError::LocalPart("quoted local parts are not accepted"));
        }
        let at = s.rfind('@').ok_or(AddressError::NoDomain)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || local.len() > 64 {
            return Err(AddressError::LocalPart("empty or longer than 64 octets"));
        }
        if local.contains('@') {
            return Err(AddressError::LocalPart("contains '@'"));
        }
        if local.contains('%') {
            return Err(AddressError::LocalPart("contains '%' (percent-hack routing)"));
        }
        if local.contains('!') {
            return Err(AddressError::LocalPart("contains '!' (bang-path routing)"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(AddressError::LocalPart("misplaced '.'"));
        }
        let ok = local.bytes().all(|b| is_atext(b) || b == b'.' || (utf8 && b >= 0x80));
        if !ok {
            return Err(AddressError::LocalPart("characters outside dot-atom"));
        }
        Ok(Address { local: local.to_string(), domain: Domain::parse(domain)? })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_parse_and_domains_lowercase() {
        let a = Address::parse("John.Doe+tag@Example.TEST", false).unwrap();
        assert_eq!(a.local(), "John.Doe+tag");
        assert_eq!(a.domain().as_str(), "example.test");
        assert_eq!(a.to_string(), "John.Doe+tag@example.test");
    }

    #[test]
    fn routing_tricks_are_refused() {
        for bad in [
            "user%other.test@example.test",
            "other.test!user@example.test",
            "@relay.test:user@example.test",
            "\"user@other.test\"@example.test",
            "user@other.test@example.test",
            "user@[127.0.0.1]",
            "user@127.0.0.1",
            "user@example.test.",
            "user@localhost",
            "user@exa_mple.test",
            "user@-example.test",
            ".user@example.test",
            "us..er@example.test",
            "user",
            "",
            "user@",
            "user@ex ample.test",
        ] {
            assert!(Address::parse(bad, false).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn utf8_local_parts_need_smtputf8() {
        assert!(Address::parse("jürgen@example.test", false).is_err());
        assert!(Address::parse("jürgen@example.test", true).is_ok());
        assert!(Address::parse("user@exämple.test", true).is_err());
    }

    #[test]
    fn idn_a_labels_are_domains() {
        assert!(Domain::parse("xn--exmple-cua.test").is_ok());
    }
}
