//! Sans-IO SMTP for Levee: the server [`Session`] (command parser, DATA/BDAT receivers,
//! policy questions as actions) and, for outbound delivery, a [`ReplyParser`] and
//! [`dot_stuff`]. No sockets, no clock reads, no async: drivers live in `levee-relay`.

mod client;
mod command;
mod data;
mod session;

pub use client::{dot_stuff, dot_stuff_into, ReplyError, ReplyParser};
pub use session::{
    Action, Decision, Incoming, PeerInfo, Question, Session, SessionConfig, DATA_RATE_GRACE,
};

#[cfg(test)]
mod tests;
