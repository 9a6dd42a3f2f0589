//! The `[gate]` config section to a [`GateSpec`], the `levee gate` subcommands, and the rule
//! for which addresses the engine may ban.

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use levee_config::{Config, Prefix};
use levee_gate::{downstream_rules, render, Flavour, GateSpec, IpNet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum GateCommand {
    /// Print the nftables rule set the config produces (what `supervise` applies).
    Print {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print firewall rules for the downstream mail server: only the appliance may reach its
    /// SMTP port, so senders who ignore the MX cannot bypass the filter.
    Downstream {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = FlavourArg::Nftables)]
        flavour: FlavourArg,
        /// An address the appliance connects from (repeatable). The domains'
        /// `source_address` values are added to these.
        #[arg(long)]
        appliance: Vec<IpAddr>,
        /// The downstream server's SMTP port; defaults to the port the domains deliver to.
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FlavourArg {
    Nftables,
    Iptables,
}

pub fn run(cmd: GateCommand) -> Result<()> {
    match cmd {
        GateCommand::Print { config } => {
            let config = Config::load(&config)?;
            if !config.gate.enabled {
                eprintln!("note: gate.enabled is false, so `levee supervise` does not apply this");
            }
            print!("{}", render(&spec(&config.gate)?)?);
            Ok(())
        }
        GateCommand::Downstream { config, flavour, appliance, port } => {
            let config = Config::load(&config)?;
            let flavour = match flavour {
                FlavourArg::Nftables => Flavour::Nftables,
                FlavourArg::Iptables => Flavour::Iptables,
            };
            print!("{}", downstream(&config, flavour, &appliance, port)?);
            Ok(())
        }
    }
}

/// The gate settings as the gate crate wants them. Prefixes with host bits set are refused
/// here (the config crate accepts them): in a firewall a typo must not widen a rule.
pub fn spec(gate: &levee_config::Gate) -> Result<GateSpec> {
    let nets = |key: &str, list: &[Prefix]| -> Result<Vec<IpNet>> {
        list.iter()
            .map(|p| IpNet::new(p.addr, p.len).with_context(|| format!("gate.{key}")))
            .collect()
    };
    Ok(GateSpec {
        smtp_ports: gate.smtp_ports.clone(),
        smtp_sources: nets("smtp_sources", &gate.smtp_sources)?,
        console_ports: gate.console_ports.clone(),
        lan: nets("lan", &gate.lan)?,
        ssh: gate.ssh,
        smtp_rate_per_minute: gate.smtp_rate_per_minute,
        ban_timeout: Duration::from_secs(gate.ban_timeout_secs),
        icmp_rate_per_second: gate.icmp_rate_per_second,
    })
}

/// The rule set followed by the bans still running, so that re-applying it (one transaction)
/// does not lift them: replacing the table replaces its ban sets too.
pub fn ruleset_keeping_bans(
    spec: &GateSpec,
    bans: impl IntoIterator<Item = (IpAddr, Duration)>,
) -> Result<String> {
    let mut text = render(spec)?;
    for (ip, left) in bans {
        text.push_str(&levee_gate::ban_command(ip, Some(left)));
    }
    Ok(text)
}

/// Rules for the downstream server. The appliance addresses are `extra` plus every domain's
/// `source_address`; with none the rules would shut everyone out, so that is an error here.
pub fn downstream(
    config: &Config,
    flavour: Flavour,
    extra: &[IpAddr],
    port: Option<u16>,
) -> Result<String> {
    let mut appliance: Vec<IpAddr> = extra.to_vec();
    appliance.extend(config.domains.iter().filter_map(|d| d.source_address));
    if appliance.is_empty() {
        bail!("name the address the appliance delivers from: --appliance IP (repeatable)");
    }
    let port = match port {
        Some(p) => p,
        None => {
            let mut ports: Vec<u16> = config
                .domains
                .iter()
                .filter_map(|d| d.downstream.as_ref())
                .map(|d| d.port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            match ports[..] {
                [p] => p,
                [] => 25,
                _ => {
                    bail!("the domains deliver to several ports {ports:?}; choose one with --port")
                }
            }
        }
    };
    Ok(downstream_rules(&appliance, port, flavour))
}

/// Whether the engine may have `ip` banned. Never loopback, unspecified, multicast or
/// link-local addresses, the LAN (the administrators), or `smtp_sources` — behind a
/// port-forwarding firewall every client has that address, so banning it would stop all mail.
pub fn check_ban_target(ip: IpAddr, gate: &levee_config::Gate) -> Result<(), String> {
    let ip = ip.to_canonical();
    let special = match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local()
        }
        IpAddr::V6(a) => {
            a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local()
        }
    };
    if special {
        return Err(format!("{ip} is not a banable address"));
    }
    let within = |list: &[Prefix]| list.iter().any(|p| prefix_contains(p, ip));
    if within(&gate.lan) {
        return Err(format!("{ip} is in the LAN"));
    }
    if within(&gate.smtp_sources) {
        return Err(format!("{ip} is an SMTP source (the upstream firewall)"));
    }
    Ok(())
}

fn prefix_contains(p: &Prefix, ip: IpAddr) -> bool {
    let bits = |a: IpAddr| -> (u128, u32) {
        match a.to_canonical() {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    let ((net, width), (addr, width2)) = (bits(p.addr), bits(ip));
    if width != width2 {
        return false;
    }
    let len = u32::from(p.len).min(width);
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (net >> shift) == (addr >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"hostname = "mx.example.test"
data_dir = "/var/lib/levee"
[smtp]
listen = ["127.0.0.1:2525"]
[[domain]]
name = "example.test"
downstream = "192.0.2.20:2626"
source_address = "192.0.2.10"
[gate]
enabled = true
lan = ["192.168.1.0/24", "fd00:1::/64"]
smtp_sources = ["198.51.100.1"]
ban_timeout_secs = 600
"#;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    #[test]
    fn spec_carries_every_setting() {
        let s = spec(&config(BASE).gate).unwrap();
        assert_eq!(s.lan.len(), 2);
        assert_eq!(s.smtp_sources, vec!["198.51.100.1/32".parse().unwrap()]);
        assert_eq!(s.ban_timeout, Duration::from_secs(600));
        let text = render(&s).unwrap();
        assert!(text.contains("192.168.1.0/24"), "{text}");
        assert!(text.contains("timeout 600s"), "{text}");
    }

    #[test]
    fn host_bits_in_a_prefix_are_refused() {
        let c = config(&BASE.replace("192.168.1.0/24", "192.168.1.7/24"));
        let e = format!("{:#}", spec(&c.gate).unwrap_err());
        assert!(e.contains("gate.lan") && e.contains("host bits"), "{e}");
    }

    #[test]
    fn bans_follow_the_rule_set() {
        let s = spec(&config(BASE).gate).unwrap();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let text = ruleset_keeping_bans(&s, [(ip, Duration::from_secs(42))]).unwrap();
        let table = text.find("table inet levee {").unwrap();
        let ban = text.find("add element inet levee ban4 { 203.0.113.9 timeout 42s }").unwrap();
        assert!(table < ban);
    }

    #[test]
    fn downstream_uses_source_addresses_and_the_domain_port() {
        let c = config(BASE);
        let r = downstream(&c, Flavour::Nftables, &["192.0.2.11".parse().unwrap()], None).unwrap();
        assert!(r.contains("192.0.2.10, 192.0.2.11"), "{r}");
        assert!(r.contains("tcp dport 2626 drop"), "{r}");
        let r = downstream(&c, Flavour::Iptables, &[], Some(25)).unwrap();
        assert!(r.contains("-s 192.0.2.10 -j RETURN") && r.contains("--dport 25 "), "{r}");
        let c = config(&BASE.replace("source_address = \"192.0.2.10\"\n", ""));
        assert!(downstream(&c, Flavour::Nftables, &[], None).is_err());
    }

    #[test]
    fn ban_targets_exclude_our_own_and_special_addresses() {
        let g = config(BASE).gate;
        for ok in ["203.0.113.9", "2001:db8::9", "::ffff:203.0.113.9", "192.168.2.1"] {
            check_ban_target(ok.parse().unwrap(), &g).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
            "fe80::1",
            "192.168.1.50",
            "::ffff:192.168.1.50",
            "fd00:1::5",
            "198.51.100.1",
        ] {
            assert!(check_ban_target(bad.parse().unwrap(), &g).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_matching() {
        let p: Prefix = "10.0.0.0/8".parse().unwrap();
        assert!(prefix_contains(&p, "10.255.0.1".parse().unwrap()));
        assert!(!prefix_contains(&p, "11.0.0.1".parse().unwrap()));
        assert!(!prefix_contains(&p, "::a00:1".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(prefix_contains(&all, "1.2.3.4".parse().unwrap()));
        let v6: Prefix = "2001:db8::/32".parse().unwrap();
        assert!(prefix_contains(&v6, "2001:db8:ffff::1".parse().unwrap()));
        assert!(!prefix_contains(&v6, "2001:db9::1".parse().unwrap()));
    }
}
