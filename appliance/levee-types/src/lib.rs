//! Levee's domain types. No I/O, no clock, no randomness: every other crate
//! speaks in these.

mod address;
pub mod civil;
pub mod list;
mod reply;
mod verdict;

pub use address::{Address, AddressError, Domain};
pub use reply::{Enhanced, Reply};
pub use verdict::{Action, Finding, Verdict};

use std::fmt;
use std::net::IpAddr;

/// A queue id: 16 upper-case hex digits. The spool makes them (time-ordered);
/// everything else only parses and prints them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct QueueId(String);

impl QueueId {
    /// Builds an id from a number; the spool uses time in the high bits so ids sort by age.
    pub fn from_u64(n: u64) -> Self {
        QueueId(format!("{n:016X}"))
    }

    /// Parses an id as printed; anything else (path separators, dots) is refused, so an
    /// id can always be used as a file name.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
            .then(|| QueueId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the client asked to send with, from MAIL FROM's parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// The envelope of one message as received.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    /// `None` is the null reverse path `<>` (bounces): never sent a DSN.
    pub mail_from: Option<Address>,
    pub rcpt_to: Vec<Address>,
    pub helo: String,
    pub client_ip: IpAddr,
    /// Reverse DNS name of the client if it was looked up and confirmed.
    pub client_name: Option<String>,
    pub tls: bool,
    pub body: Body,
    pub smtputf8: bool,
    /// SIZE= as declared at MAIL FROM, if any.
    pub declared_size: Option<u64>,
}

impl Envelope {
    /// The reverse path as written in SMTP, `<>` for the null sender.
    pub fn mail_from_path(&self) -> String {
        match &self.mail_from {
            Some(a) => format!("<{a}>"),
            None => "<>".to_string(),
        }
    }
}
