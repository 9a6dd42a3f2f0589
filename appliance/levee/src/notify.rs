//! The systemd notification protocol (`sd_notify`), written by hand: one datagram of
//! `KEY=VALUE` lines to the unix socket named in `$NOTIFY_SOCKET`. No libsystemd, so the
//! static binary stays static; outside systemd every call is a no-op.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `None` when not run by systemd.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<OsString>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`. The variable stays set: the supervisor removes it from the
    /// engine's environment itself, so that only one process speaks for the service.
    pub fn from_env() -> Self {
        Notifier { target: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) }
    }

    /// A notifier for an explicit socket path (`@name` for the abstract namespace).
    #[cfg(test)]
    pub fn to(path: impl Into<OsString>) -> Self {
        Notifier { target: Some(path.into()) }
    }

    /// Sends one notification; `Ok` without a socket.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        let addr = socket_addr(target)?;
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    }

    /// `send`, logging a failure instead of returning it: a lost notification must never
    /// stop the mail.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!(error = %e, state, "sd_notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }

    /// For `Type=notify-reload`: the reload starts now (systemd wants the monotonic clock).
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, if it is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    // WATCHDOG_PID names the process systemd expects the pings from; absent means us.
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

fn socket_addr(target: &OsString) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)
    } else {
        SocketAddr::from_pathname(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("levee-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::to(path.as_os_str());
        assert!(n.target.is_some());
        n.ready("serving");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving");
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        n.reloading();
        let r = recv(&sock);
        assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
        assert!(r.rsplit('=').next().unwrap().parse::<u64>().unwrap() > 0, "{r}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("levee-notify-test-{}", std::process::id());
        let sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::to(format!("@{name}")).stopping();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::default();
        assert!(n.target.is_none());
        n.send("READY=1").unwrap();
    }

    #[test]
    fn a_missing_socket_is_an_error_for_send() {
        let n = Notifier::to("/nonexistent/levee/notify.sock");
        assert!(n.send("READY=1").is_err());
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_us() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }
}
