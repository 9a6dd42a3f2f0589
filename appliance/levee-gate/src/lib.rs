//! The appliance's own nftables firewall, rendered purely from config, and the rules that fence
//! the organisation's mail server so that only the appliance can reach it.
//!
//! Two halves:
//! - pure: [`render`] turns a [`GateSpec`] into the full text for `nft -f` (one `inet levee`
//!   table, replaced whole in one transaction); [`ban_command`], [`unban_command`] and
//!   [`downstream_rules`] render text too. None of them read the clock or touch the system.
//! - I/O: [`apply`], [`check`], [`ban`] and [`unban`] pipe such text into `nft` ([`Nft`] lets the
//!   caller choose how `nft` is started, e.g. inside a network namespace).
//!
//! Re-applying the rule set replaces the ban sets too, so a caller that keeps bans across a
//! rule change appends their [`ban_command`]s to the rule set text: one transaction, no gap.

mod downstream;
mod net;
mod nft;
mod render;
mod spec;

pub use downstream::{downstream_rules, Flavour};
pub use net::IpNet;
pub use nft::{apply, ban, ban_command, check, unban, unban_command, Nft};
pub use render::{render, TABLE};
pub use spec::{check_console_reachable, GateSpec, SSH_PORT};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A prefix in the config that does not parse or has host bits set.
    #[error("invalid prefix {input:?}: {reason}")]
    InvalidNet { input: String, reason: String },
    /// Settings that cannot make a sound rule set (port 0, overlapping ports, zero rates).
    #[error("invalid gate settings: {0}")]
    InvalidSpec(String),
    /// The rule set would lock the administrators out of the console.
    #[error("refusing a gate that cuts off the console: {0}")]
    ConsoleUnreachable(String),
    /// `nft` could not be started at all.
    #[error("could not run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// `nft` ran and refused the input.
    #[error("{command} failed ({status}): {stderr}")]
    Nft { command: String, status: String, stderr: String },
}
