//! `GateSpec`: what the gate admits, and the checks a spec must pass before it is rendered.

use std::net::IpAddr;
use std::time::Duration;

use crate::{GateError, IpNet};

/// The SSH port opened to the LAN when [`GateSpec::ssh`] is set.
pub const SSH_PORT: u16 = 22;

/// What the appliance's firewall admits. Everything else inbound is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSpec {
    /// The relay's public listen ports, usually `[25]`.
    pub smtp_ports: Vec<u16>,
    /// Empty: SMTP from anywhere. Otherwise only from these prefixes (e.g. the upstream firewall
    /// that port-forwards with source NAT). A family with no prefix here gets no SMTP at all.
    pub smtp_sources: Vec<IpNet>,
    /// The console's ports, e.g. `[443]`; reachable from [`lan`](Self::lan) only.
    pub console_ports: Vec<u16>,
    /// Prefixes allowed to reach the console (and SSH).
    pub lan: Vec<IpNet>,
    /// SSH (port 22) from the LAN only.
    pub ssh: bool,
    /// Per-source limit on new SMTP connections; the excess is dropped. Also the burst, so a
    /// sender may open this many at once and then this many a minute.
    pub smtp_rate_per_minute: u32,
    /// How long a ban lasts when the caller names no timeout.
    pub ban_timeout: Duration,
    /// Echo requests answered per second (per family); the rest are dropped.
    pub icmp_rate_per_second: u32,
}

impl Default for GateSpec {
    /// SMTP on 25 from anywhere, console on 443, no SSH. `lan` is empty and must be filled in:
    /// the default alone is refused by [`render`](crate::render).
    fn default() -> Self {
        GateSpec {
            smtp_ports: vec![25],
            smtp_sources: Vec::new(),
            console_ports: vec![443],
            lan: Vec::new(),
            ssh: false,
            smtp_rate_per_minute: 30,
            ban_timeout: Duration::from_secs(3600),
            icmp_rate_per_second: 10,
        }
    }
}

/// Refuses a spec whose rule set would cut the administrators off from the console: no console
/// port, no LAN prefix, SSH enabled with no LAN to allow it from, or (with `admin`, the address
/// the change comes from) a LAN that no longer contains the administrator making the change.
/// Also refuses a /0 LAN, which would put the console on the internet.
pub fn check_console_reachable(spec: &GateSpec, admin: Option<IpAddr>) -> Result<(), GateError> {
    let cut = |why: String| Err(GateError::ConsoleUnreachable(why));
    if spec.console_ports.is_empty() {
        return cut("no console port is open, so the appliance could not be managed".into());
    }
    if spec.lan.is_empty() {
        return cut(format!(
            "console ports {:?} are open to the LAN only, but no LAN prefix is configured",
            spec.console_ports
        ));
    }
    if let Some(everything) = spec.lan.iter().find(|n| n.is_everything()) {
        return Err(GateError::InvalidSpec(format!(
            "LAN prefix {everything} is the whole internet; the console must not be public"
        )));
    }
    if let Some(ip) = admin {
        if !spec.lan.iter().any(|n| n.contains(ip)) {
            return cut(format!("{ip} (the administrator making this change) is outside the LAN"));
        }
    }
    Ok(())
}

/// A spec checked and normalised for rendering: ports sorted and deduplicated.
#[derive(Debug)]
pub(crate) struct Checked<'a> {
    pub spec: &'a GateSpec,
    pub smtp_ports: Vec<u16>,
    pub console_ports: Vec<u16>,
}

pub(crate) fn validate(spec: &GateSpec) -> Result<Checked<'_>, GateError> {
    check_console_reachable(spec, None)?;
    let invalid = |why: String| Err(GateError::InvalidSpec(why));
    let smtp_ports = ports("smtp_ports", &spec.smtp_ports)?;
    let console_ports = ports("console_ports", &spec.console_ports)?;
    if let Some(p) = smtp_ports.iter().find(|p| console_ports.contains(p)) {
        return invalid(format!("port {p} is both an SMTP and a console port"));
    }
    if spec.ssh && (smtp_ports.contains(&SSH_PORT) || console_ports.contains(&SSH_PORT)) {
        return invalid(format!("port {SSH_PORT} is SSH, not SMTP or console"));
    }
    if spec.smtp_rate_per_minute == 0 {
        return invalid("smtp_rate_per_minute must be at least 1".into());
    }
    if spec.icmp_rate_per_second == 0 {
        return invalid("icmp_rate_per_second must be at least 1".into());
    }
    if spec.ban_timeout < Duration::from_secs(1) {
        return invalid("ban_timeout must be at least one second".into());
    }
    Ok(Checked { spec, smtp_ports, console_ports })
}

fn ports(name: &str, list: &[u16]) -> Result<Vec<u16>, GateError> {
    if list.contains(&0) {
        return Err(GateError::InvalidSpec(format!("{name} contains port 0")));
    }
    let mut v = list.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GateSpec {
        GateSpec { lan: vec!["192.168.1.0/24".parse().unwrap()], ..GateSpec::default() }
    }

    #[test]
    fn default_with_lan_is_valid() {
        validate(&spec()).unwrap();
    }

    #[test]
    fn console_without_lan_is_refused() {
        let s = GateSpec { lan: vec![], ..spec() };
        assert!(matches!(validate(&s), Err(GateError::ConsoleUnreachable(_))));
        let s = GateSpec { console_ports: vec![], ..spec() };
        assert!(matches!(validate(&s), Err(GateError::ConsoleUnreachable(_))));
    }

    #[test]
    fn public_lan_is_refused() {
        let s = GateSpec { lan: vec!["::/0".parse().unwrap()], ..spec() };
        assert!(matches!(validate(&s), Err(GateError::InvalidSpec(_))));
    }

    #[test]
    fn admin_outside_lan_is_refused() {
        let s = spec();
        check_console_reachable(&s, Some("192.168.1.9".parse().unwrap())).unwrap();
        check_console_reachable(&s, Some("::ffff:192.168.1.9".parse().unwrap())).unwrap();
        let e = check_console_reachable(&s, Some("10.0.0.9".parse().unwrap()));
        assert!(matches!(e, Err(GateError::ConsoleUnreachable(_))));
    }

    #[test]
    fn bad_ports_and_rates_are_refused() {
        let cases = [
            GateSpec { smtp_ports: vec![25, 0], ..spec() },
            GateSpec { console_ports: vec![443, 25], ..spec() },
            GateSpec { ssh: true, console_ports: vec![22], ..spec() },
            GateSpec { smtp_rate_per_minute: 0, ..spec() },
            GateSpec { icmp_rate_per_second: 0, ..spec() },
            GateSpec { ban_timeout: Duration::from_millis(500), ..spec() },
        ];
        for s in cases {
            assert!(matches!(validate(&s), Err(GateError::InvalidSpec(_))), "{s:?}");
        }
    }

    #[test]
    fn ports_are_sorted_and_deduplicated() {
        let s = GateSpec { smtp_ports: vec![587, 25, 587], ..spec() };
        assert_eq!(validate(&s).unwrap().smtp_ports, [25, 587]);
    }
}
