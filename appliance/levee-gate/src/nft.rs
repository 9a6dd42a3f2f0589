//! Running `nft`: the only I/O in this crate. The text it is fed is rendered elsewhere.

use std::ffi::OsString;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::render::{nft_duration, TABLE};
use crate::GateError;

/// The nft commands (for `nft -f -`) that ban `addr`, for `timeout` or the set's default.
///
/// Three commands in one transaction: `add` + `delete` clear any existing ban so that the final
/// `add` sets a fresh timeout (a plain `add` of a present element keeps the old one). IPv4-mapped
/// IPv6 addresses, as a dual-stack socket reports them, go to `ban4`.
pub fn ban_command(addr: IpAddr, timeout: Option<Duration>) -> String {
    let (set, addr) = ban_set(addr);
    let t = timeout.map(|t| format!(" timeout {}", nft_duration(t))).unwrap_or_default();
    format!(
        "add element inet {TABLE} {set} {{ {addr} }}\n\
         delete element inet {TABLE} {set} {{ {addr} }}\n\
         add element inet {TABLE} {set} {{ {addr}{t} }}\n"
    )
}

/// The nft commands that lift a ban on `addr`; harmless when there is none.
pub fn unban_command(addr: IpAddr) -> String {
    let (set, addr) = ban_set(addr);
    format!(
        "add element inet {TABLE} {set} {{ {addr} }}\n\
         delete element inet {TABLE} {set} {{ {addr} }}\n"
    )
}

fn ban_set(addr: IpAddr) -> (&'static str, IpAddr) {
    let addr = addr.to_canonical();
    (if addr.is_ipv4() { "ban4" } else { "ban6" }, addr)
}

/// How to start `nft`: plain, or behind a wrapper such as `ip netns exec NS` or `unshare -n`.
#[derive(Debug, Clone)]
pub struct Nft {
    argv: Vec<OsString>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::system()
    }
}

impl Nft {
    /// `nft` from `PATH`.
    pub fn system() -> Self {
        Nft { argv: vec!["nft".into()] }
    }

    /// A command line that ends in the nft program, e.g. `["ip", "netns", "exec", "ns1", "nft"]`.
    pub fn with_command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        if argv.is_empty() {
            return Nft::system();
        }
        Nft { argv }
    }

    /// Loads a rule set (`nft -f -`). The text is one transaction: all of it or none.
    pub fn apply(&self, ruleset: &str) -> Result<(), GateError> {
        self.run(&["-f", "-"], ruleset).map(drop)
    }

    /// Checks a rule set without loading it (`nft -c -f -`).
    pub fn check(&self, ruleset: &str) -> Result<(), GateError> {
        self.run(&["-c", "-f", "-"], ruleset).map(drop)
    }

    pub fn ban(&self, addr: IpAddr, timeout: Option<Duration>) -> Result<(), GateError> {
        self.apply(&ban_command(addr, timeout))
    }

    pub fn unban(&self, addr: IpAddr) -> Result<(), GateError> {
        self.apply(&unban_command(addr))
    }

    /// Runs nft with `args`, `input` on its stdin; returns its stdout.
    pub fn run(&self, args: &[&str], input: &str) -> Result<String, GateError> {
        let shown = self.describe(args);
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| GateError::Spawn {
            program: self.argv[0].to_string_lossy().into_owned(),
            source,
        })?;
        // Write from a second thread, so a child that talks before it has read everything
        // cannot deadlock us on a full pipe.
        let stdin = child.stdin.take();
        let output = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                if let Some(mut stdin) = stdin {
                    // A child that exits early closes the pipe; its status says why.
                    let _ = stdin.write_all(input.as_bytes());
                }
            });
            let out = child.wait_with_output();
            let _ = writer.join();
            out
        })
        .map_err(|source| GateError::Spawn { program: shown.clone(), source })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(GateError::Nft {
                command: shown,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim_end().to_owned(),
            })
        }
    }

    fn describe(&self, args: &[&str]) -> String {
        let mut parts: Vec<String> =
            self.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        parts.extend(args.iter().map(|a| a.to_string()));
        parts.join(" ")
    }
}

/// Loads a rule set with the system's `nft` (see [`Nft::apply`]).
pub fn apply(ruleset: &str) -> Result<(), GateError> {
    Nft::system().apply(ruleset)
}

/// Checks a rule set with the system's `nft` without loading it (see [`Nft::check`]).
pub fn check(ruleset: &str) -> Result<(), GateError> {
    Nft::system().check(ruleset)
}

/// Bans `addr` in the live `levee` table for `timeout`, or the set's default.
pub fn ban(addr: IpAddr, timeout: Option<Duration>) -> Result<(), GateError> {
    Nft::system().ban(addr, timeout)
}

/// Lifts a ban on `addr`; succeeds when there was none.
pub fn unban(addr: IpAddr) -> Result<(), GateError> {
    Nft::system().unban(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_commands() {
        let c = ban_command("192.0.2.7".parse().unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(
            c,
            "add element inet levee ban4 { 192.0.2.7 }\n\
             delete element inet levee ban4 { 192.0.2.7 }\n\
             add element inet levee ban4 { 192.0.2.7 timeout 3600s }\n"
        );
        let c = ban_command("2001:db8::7".parse().unwrap(), None);
        assert!(c.ends_with("add element inet levee ban6 { 2001:db8::7 }\n"), "{c}");
        let c = ban_command("::ffff:192.0.2.7".parse().unwrap(), None);
        assert!(c.contains("ban4 { 192.0.2.7 }"), "{c}");
        assert_eq!(
            unban_command("2001:db8::7".parse().unwrap()),
            "add element inet levee ban6 { 2001:db8::7 }\n\
             delete element inet levee ban6 { 2001:db8::7 }\n"
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let nft = Nft::with_command(["/nonexistent/levee-gate-test/nft"]);
        assert!(matches!(nft.check(""), Err(GateError::Spawn { .. })));
    }

    #[test]
    fn a_failing_program_reports_its_stderr() {
        // `sh -c` stands in for a refusing nft: this tests our plumbing, not nft.
        let nft = Nft::with_command(["sh", "-c", "cat >/dev/null; echo refused >&2; exit 3", "sh"]);
        match nft.apply("table inet levee {}") {
            Err(GateError::Nft { stderr, status, .. }) => {
                assert_eq!(stderr, "refused");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
        let echo = Nft::with_command(["sh", "-c", "cat", "sh"]);
        assert_eq!(echo.run(&[], "hello").unwrap(), "hello");
    }
}
