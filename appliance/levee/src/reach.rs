//! How a command reaches the data: through the running engine's control socket, or, with
//! the engine stopped, by opening the store itself. sled admits one process, so these are
//! the only two ways; anything else gets one sentence saying what to do.

use anyhow::{bail, Context, Result};
use levee_relay::control::{self, Client, Reply, Request};
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

/// How long a command waits for one reply; a training batch is the slowest.
const REPLY_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub enum Reach {
    Engine(Engine),
    Store(levee_store::Store),
}

/// The running engine, behind its control socket.
#[derive(Debug)]
pub struct Engine(Client);

impl Engine {
    /// One request; the engine's own refusals and a dropped connection become errors.
    pub fn call(&mut self, request: &Request) -> Result<Reply> {
        Ok(self.0.call(request)?)
    }
}

/// A reply that does not answer the request: an engine of another version.
pub fn unexpected(reply: Reply) -> anyhow::Error {
    anyhow::anyhow!("the engine answered with something else ({reply:?}); is it another version?")
}

pub fn reach(data: &Path) -> Result<Reach> {
    let socket = control::socket_path(data);
    match Client::connect(&socket, REPLY_WAIT) {
        Ok(client) => return Ok(Reach::Engine(Engine(client))),
        // No socket, or one left by an engine that is gone: try the store.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {}
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "the engine is running, but you may not use its control socket {}: run this as \
             the engine's user or as root",
            socket.display()
        ),
        Err(e) => bail!(
            "the engine's control socket {} does not answer ({e}); check that the engine \
             runs (systemctl status levee) and try again",
            socket.display()
        ),
    }
    open_store(data).map(Reach::Store)
}

/// Opens the store under `data` for a command that cannot go through the engine.
pub fn open_store(data: &Path) -> Result<levee_store::Store> {
    match levee_store::Store::open(&data.join("db")) {
        Ok(s) => Ok(s),
        Err(e) if is_lock_error(&e.to_string()) => bail!(
            "{} is in use by another process and no engine answers on {}: wait for the other \
             levee command to finish, or, if the engine is starting, try again in a moment",
            data.display(),
            control::socket_path(data).display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening the store in {}", data.display())),
    }
}

fn is_lock_error(message: &str) -> bool {
    ["WouldBlock", "Resource temporarily unavailable", "os error 11", "could not acquire lock"]
        .iter()
        .any(|m| message.contains(m))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_errors_are_recognised() {
        assert!(super::is_lock_error(
            "store open: IO error: Resource temporarily unavailable (os error 11)"
        ));
        assert!(!super::is_lock_error("store open: permission denied"));
    }
}
