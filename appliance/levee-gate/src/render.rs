//! `render`: a `GateSpec` to the nftables rule set text. Pure; the output is deterministic so it
//! can be compared with golden files.

use std::fmt::Write;
use std::time::Duration;

use crate::spec::{validate, Checked, SSH_PORT};
use crate::{GateError, GateSpec, IpNet};

/// The one table Levee owns; nothing else in the system should use this name.
pub const TABLE: &str = "levee";

/// How long an idle per-source SMTP bucket is kept. Longer than the one-minute rate window, so a
/// sender cannot earn a fresh burst just by pausing; every new connection refreshes it.
const RATE_ENTRY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the per-source buckets per family: a flood of sources cannot grow kernel memory
/// without limit (when full, new sources are not tracked, so they are not limited either).
const RATE_SET_SIZE: u32 = 65536;

/// The full rule set for `nft -f`, or why the spec is refused (see [`check_console_reachable`]
/// and the field docs of [`GateSpec`]).
///
/// The text is one transaction: `add table` + `delete table` empty the slot whether or not the
/// table exists (`destroy table` needs nft 1.0.8, Debian 12 ships 1.0.6), then the table is
/// created whole. A failure anywhere leaves the previous rule set in force.
///
/// [`check_console_reachable`]: crate::check_console_reachable
pub fn render(spec: &GateSpec) -> Result<String, GateError> {
    let c = validate(spec)?;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_ruleset(&mut out, &c);
    Ok(out)
}

/// An nft time value: whole seconds where exact, else milliseconds; never zero, which nft
/// would read as "no timeout".
pub(crate) fn nft_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn write_ruleset(o: &mut String, c: &Checked<'_>) -> std::fmt::Result {
    let s = c.spec;
    let ban_timeout = nft_duration(s.ban_timeout);
    writeln!(o, "#!/usr/sbin/nft -f")?;
    writeln!(o, "# Levee appliance firewall, rendered by levee-gate from the configuration.")?;
    writeln!(o, "# One transaction: the table is emptied and rebuilt whole, or not at all.")?;
    writeln!(o, "add table inet {TABLE}")?;
    writeln!(o, "delete table inet {TABLE}")?;
    writeln!(o)?;
    writeln!(o, "table inet {TABLE} {{")?;
    writeln!(o, "\t# Peers banned by the relay; elements expire by themselves.")?;
    for (name, ty) in [("ban4", "ipv4_addr"), ("ban6", "ipv6_addr")] {
        writeln!(o, "\tset {name} {{")?;
        writeln!(o, "\t\ttype {ty}")?;
        writeln!(o, "\t\tflags timeout")?;
        writeln!(o, "\t\ttimeout {ban_timeout}")?;
        writeln!(o, "\t}}")?;
        writeln!(o)?;
    }
    if !c.smtp_ports.is_empty() {
        writeln!(
            o,
            "\t# Per-source token buckets for new SMTP connections, filled by the input chain."
        )?;
        for (name, ty) in [("smtp_rate4", "ipv4_addr"), ("smtp_rate6", "ipv6_addr")] {
            writeln!(o, "\tset {name} {{")?;
            writeln!(o, "\t\ttype {ty}")?;
            writeln!(o, "\t\tsize {RATE_SET_SIZE}")?;
            writeln!(o, "\t\tflags dynamic,timeout")?;
            writeln!(o, "\t\ttimeout {}", nft_duration(RATE_ENTRY_TIMEOUT))?;
            writeln!(o, "\t}}")?;
            writeln!(o)?;
        }
    }

    writeln!(o, "\tchain input {{")?;
    writeln!(o, "\t\ttype filter hook input priority filter; policy drop;")?;
    writeln!(o)?;
    writeln!(o, "\t\t# Traffic of connections already admitted, and replies to our own.")?;
    writeln!(o, "\t\tct state established,related accept")?;
    writeln!(o, "\t\tct state invalid drop")?;
    writeln!(o, "\t\tiif \"lo\" accept")?;
    writeln!(o)?;
    writeln!(o, "\t\t# Banned peers, before anything new is admitted.")?;
    writeln!(o, "\t\tip saddr @ban4 drop")?;
    writeln!(o, "\t\tip6 saddr @ban6 drop")?;
    writeln!(o)?;
    let icmp_rate = s.icmp_rate_per_second;
    writeln!(o, "\t\t# ICMP errors always (path MTU discovery needs them); pings rate-limited.")?;
    writeln!(
        o,
        "\t\ticmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept"
    )?;
    writeln!(o, "\t\ticmp type echo-request limit rate {icmp_rate}/second accept")?;
    writeln!(o, "\t\t# ICMPv6: without neighbour discovery and packet-too-big, IPv6 breaks.")?;
    writeln!(
        o,
        "\t\ticmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, \
         parameter-problem, nd-router-solicit, nd-router-advert, nd-neighbor-solicit, \
         nd-neighbor-advert, mld-listener-query }} accept"
    )?;
    writeln!(o, "\t\ticmpv6 type echo-request limit rate {icmp_rate}/second accept")?;
    writeln!(o)?;

    write_smtp(o, c)?;
    write_lan_only(o, "Console", &c.console_ports, &s.lan)?;
    if s.ssh {
        write_lan_only(o, "SSH", &[SSH_PORT], &s.lan)?;
    }
    // Each block ends in a blank line; the chain's last one should not.
    o.truncate(o.trim_end().len() + 1);
    writeln!(o, "\t}}")?;
    writeln!(o)?;
    writeln!(o, "\t# The appliance is not a router.")?;
    writeln!(o, "\tchain forward {{")?;
    writeln!(o, "\t\ttype filter hook forward priority filter; policy drop;")?;
    writeln!(o, "\t}}")?;
    writeln!(o)?;
    writeln!(o, "\t# Outbound is free: DNS, delivery downstream, DNSBL and update lookups.")?;
    writeln!(o, "\tchain output {{")?;
    writeln!(o, "\t\ttype filter hook output priority filter; policy accept;")?;
    writeln!(o, "\t}}")?;
    writeln!(o, "}}")?;
    Ok(())
}

fn write_smtp(o: &mut String, c: &Checked<'_>) -> std::fmt::Result {
    let s = c.spec;
    if c.smtp_ports.is_empty() {
        writeln!(o, "\t\t# No SMTP ports configured.")?;
        writeln!(o)?;
        return Ok(());
    }
    let ports = set(&c.smtp_ports);
    let rate = s.smtp_rate_per_minute;
    let meter = |from: &str, proto: &str, name: &str| {
        format!(
            "\t\t{from}tcp dport {ports} ct state new \
             update @{name} {{ {proto} saddr limit rate over {rate}/minute burst {rate} packets }} drop"
        )
    };
    if s.smtp_sources.is_empty() {
        writeln!(o, "\t\t# SMTP from anywhere.")?;
        writeln!(
            o,
            "\t\t# A source opening more than {rate} new connections a minute is dropped."
        )?;
        writeln!(o, "{}", meter("", "ip", "smtp_rate4"))?;
        writeln!(o, "{}", meter("", "ip6", "smtp_rate6"))?;
        writeln!(o, "\t\ttcp dport {ports} accept")?;
    } else {
        writeln!(o, "\t\t# SMTP only from the configured sources.")?;
        writeln!(
            o,
            "\t\t# A source opening more than {rate} new connections a minute is dropped;"
        )?;
        writeln!(o, "\t\t# the source test comes first, so refused sources never take a bucket.")?;
        let (v4, v6) = split(&s.smtp_sources);
        for (family, proto, name, nets) in
            [("IPv4", "ip", "smtp_rate4", v4), ("IPv6", "ip6", "smtp_rate6", v6)]
        {
            if nets.is_empty() {
                writeln!(o, "\t\t# No {family} source configured: SMTP over {family} is refused.")?;
                continue;
            }
            let from = format!("{proto} saddr {} ", set(&nets));
            writeln!(o, "{}", meter(&from, proto, name))?;
            writeln!(o, "\t\t{from}tcp dport {ports} accept")?;
        }
    }
    writeln!(o)?;
    Ok(())
}

fn write_lan_only(o: &mut String, what: &str, ports: &[u16], lan: &[IpNet]) -> std::fmt::Result {
    writeln!(o, "\t\t# {what} from the LAN only.")?;
    let (v4, v6) = split(lan);
    for (proto, nets) in [("ip", v4), ("ip6", v6)] {
        if !nets.is_empty() {
            writeln!(o, "\t\t{proto} saddr {} tcp dport {} accept", set(&nets), set(ports))?;
        }
    }
    writeln!(o)?;
    Ok(())
}

fn split(nets: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let mut v: Vec<IpNet> = nets.to_vec();
    v.sort();
    v.dedup();
    v.into_iter().partition(|n| n.is_ipv4())
}

fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GateSpec {
        GateSpec { lan: vec!["192.168.1.0/24".parse().unwrap()], ..GateSpec::default() }
    }

    #[test]
    fn durations() {
        assert_eq!(nft_duration(Duration::from_secs(3600)), "3600s");
        assert_eq!(nft_duration(Duration::from_millis(2500)), "2500ms");
        assert_eq!(nft_duration(Duration::ZERO), "1ms");
    }

    #[test]
    fn replaces_the_table_in_one_file() {
        let r = render(&spec()).unwrap();
        let add = r.find("add table inet levee\n").unwrap();
        let del = r.find("delete table inet levee\n").unwrap();
        let def = r.find("table inet levee {").unwrap();
        assert!(add < del && del < def);
    }

    #[test]
    fn bans_come_before_every_accept_of_new_traffic() {
        let r = render(&GateSpec { ssh: true, ..spec() }).unwrap();
        let input = &r[r.find("chain input").unwrap()..r.find("chain forward").unwrap()];
        let mut banned = false;
        let mut accepts_after = 0;
        for line in input.lines().map(str::trim) {
            banned |= line.starts_with("ip saddr @ban4 drop");
            if line.ends_with("accept") {
                if banned {
                    accepts_after += 1;
                } else {
                    let old = ["ct state established,related accept", "iif \"lo\" accept"];
                    assert!(old.contains(&line), "{line:?} before the ban");
                }
            }
        }
        assert!(banned && accepts_after >= 5, "{input}");
    }

    #[test]
    fn smtp_sources_restrict_both_the_meter_and_the_accept() {
        let s = GateSpec { smtp_sources: vec!["198.51.100.7".parse().unwrap()], ..spec() };
        let r = render(&s).unwrap();
        assert!(r.contains("ip saddr { 198.51.100.7/32 } tcp dport { 25 } accept"));
        assert!(!r.contains("\t\ttcp dport { 25 } accept"));
        assert!(!r.contains("ip6 saddr limit"), "no IPv6 source, so no IPv6 SMTP at all");
        assert!(r.contains("SMTP over IPv6 is refused"));
    }

    #[test]
    fn render_is_deterministic_and_normalised() {
        let a = GateSpec {
            smtp_ports: vec![587, 25],
            lan: vec!["fd00::/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ..spec()
        };
        let b = GateSpec {
            smtp_ports: vec![25, 587, 25],
            lan: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..spec()
        };
        assert_eq!(render(&a).unwrap(), render(&b).unwrap());
    }

    #[test]
    fn rates_and_timeouts_appear() {
        let s = GateSpec {
            smtp_rate_per_minute: 7,
            icmp_rate_per_second: 3,
            ban_timeout: Duration::from_secs(90),
            ..spec()
        };
        let r = render(&s).unwrap();
        assert!(r.contains("limit rate over 7/minute burst 7 packets"));
        assert!(r.contains("echo-request limit rate 3/second accept"));
        assert_eq!(r.matches("timeout 90s").count(), 2);
    }
}
