//! Rules for the organisation's own mail server: only the appliance may reach its SMTP port,
//! so spammers who ignore the MX record and connect to the server directly cannot bypass the
//! filter. One description, rendered for nftables or for iptables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The firewall the downstream mail server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// A file for `nft -f`, replacing only its own `inet levee_downstream` table.
    Nftables,
    /// A `sh` script of `iptables`/`ip6tables` commands, re-runnable: it refills its own chain.
    Iptables,
}

/// The guard, family by family: loopback and the appliance pass, everyone else is dropped.
#[derive(Debug)]
struct Guard {
    port: u16,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

impl Guard {
    fn new(appliance: &[IpAddr], port: u16) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for a in appliance {
            match a.to_canonical() {
                IpAddr::V4(a) => v4.push(a),
                IpAddr::V6(a) => v6.push(a),
            }
        }
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        Guard { port, v4, v6 }
    }
}

const NFT_TABLE: &str = "levee_downstream";
const IPT_CHAIN: &str = "LEVEE_DOWNSTREAM";

/// Rules for the downstream mail server so that only `appliance` may open connections to its
/// `port` (loopback stays allowed for the server's own use). A family with no appliance address
/// is closed entirely on that port. Other traffic, and the server's existing rules, are left
/// alone.
pub fn downstream_rules(appliance: &[IpAddr], port: u16, flavour: Flavour) -> String {
    let g = Guard::new(appliance, port);
    match flavour {
        Flavour::Nftables => nftables(&g),
        Flavour::Iptables => iptables(&g),
    }
}

fn header(out: &mut String, comment: &str, g: &Guard) {
    out.push_str(&format!(
        "{comment} Levee downstream guard: only the Levee appliance may reach this mail server's\n\
         {comment} TCP port {port}, so senders who ignore the MX cannot bypass the filter.\n",
        port = g.port
    ));
    if g.v4.is_empty() && g.v6.is_empty() {
        out.push_str(&format!(
            "{comment} WARNING: no appliance address was given, so every remote host is refused.\n"
        ));
    }
}

fn nftables(g: &Guard) -> String {
    let mut o = String::from("#!/usr/sbin/nft -f\n");
    header(&mut o, "#", g);
    o.push_str(&format!(
        "# Load with `nft -f`: one transaction that replaces only the table {NFT_TABLE}.\n\
         add table inet {NFT_TABLE}\n\
         delete table inet {NFT_TABLE}\n\n\
         table inet {NFT_TABLE} {{\n"
    ));
    for (name, ty, elems) in
        [("appliance4", "ipv4_addr", join(&g.v4)), ("appliance6", "ipv6_addr", join(&g.v6))]
    {
        o.push_str(&format!("\tset {name} {{\n\t\ttype {ty}\n"));
        if !elems.is_empty() {
            o.push_str(&format!("\t\telements = {{ {elems} }}\n"));
        }
        o.push_str("\t}\n\n");
    }
    let port = g.port;
    o.push_str(&format!(
        "\tchain input {{\n\
         \t\t# Policy accept: this table only takes away; a drop here is final whatever\n\
         \t\t# the host's other tables say, and it runs before them.\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\ttcp dport {port} iif \"lo\" accept\n\
         \t\ttcp dport {port} ip saddr @appliance4 accept\n\
         \t\ttcp dport {port} ip6 saddr @appliance6 accept\n\
         \t\ttcp dport {port} drop\n\
         \t}}\n\
         }}\n"
    ));
    o
}

fn iptables(g: &Guard) -> String {
    let mut o = String::from("#!/bin/sh\n");
    header(&mut o, "#", g);
    o.push_str(&format!(
        "# Run as root. Re-running refills the {IPT_CHAIN} chain and adds the jump only once.\n\
         set -e\n"
    ));
    let port = g.port;
    let v4: Vec<String> = g.v4.iter().map(|a| a.to_string()).collect();
    let v6: Vec<String> = g.v6.iter().map(|a| a.to_string()).collect();
    for (tool, addrs) in [("iptables", v4), ("ip6tables", v6)] {
        o.push('\n');
        o.push_str(&format!("{tool} -N {IPT_CHAIN} 2>/dev/null || {tool} -F {IPT_CHAIN}\n"));
        o.push_str(&format!("{tool} -A {IPT_CHAIN} -i lo -j RETURN\n"));
        for a in addrs {
            o.push_str(&format!("{tool} -A {IPT_CHAIN} -s {a} -j RETURN\n"));
        }
        o.push_str(&format!("{tool} -A {IPT_CHAIN} -j DROP\n"));
        o.push_str(&format!(
            "{tool} -C INPUT -p tcp --dport {port} -j {IPT_CHAIN} 2>/dev/null || \
             {tool} -I INPUT 1 -p tcp --dport {port} -j {IPT_CHAIN}\n"
        ));
    }
    o
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<IpAddr> {
        vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
            "::ffff:192.0.2.11".parse().unwrap(),
            "192.0.2.10".parse().unwrap(),
        ]
    }

    #[test]
    fn nftables_allows_only_the_appliance() {
        let r = downstream_rules(&addrs(), 25, Flavour::Nftables);
        assert!(r.contains("elements = { 192.0.2.10, 192.0.2.11 }"), "{r}");
        assert!(r.contains("elements = { 2001:db8::10 }"));
        let accept = r.find("ip saddr @appliance4 accept").unwrap();
        let drop = r.find("tcp dport 25 drop").unwrap();
        assert!(accept < drop);
        assert!(r.contains("delete table inet levee_downstream"));
    }

    #[test]
    fn iptables_allows_only_the_appliance() {
        let r = downstream_rules(&addrs(), 2525, Flavour::Iptables);
        assert!(r.contains("iptables -A LEVEE_DOWNSTREAM -s 192.0.2.10 -j RETURN"));
        assert!(r.contains("iptables -A LEVEE_DOWNSTREAM -s 192.0.2.11 -j RETURN"));
        assert!(r.contains("ip6tables -A LEVEE_DOWNSTREAM -s 2001:db8::10 -j RETURN"));
        assert!(!r.contains("iptables -A LEVEE_DOWNSTREAM -s 2001"));
        assert_eq!(r.matches("-j DROP").count(), 2);
        assert_eq!(r.matches("--dport 2525 -j LEVEE_DOWNSTREAM").count(), 4);
    }

    #[test]
    fn both_flavours_name_the_same_hosts() {
        let nft = downstream_rules(&addrs(), 25, Flavour::Nftables);
        let ipt = downstream_rules(&addrs(), 25, Flavour::Iptables);
        for a in ["192.0.2.10", "192.0.2.11", "2001:db8::10"] {
            assert!(nft.contains(a) && ipt.contains(&format!("-s {a} ")), "{a}");
        }
    }

    #[test]
    fn no_appliance_closes_the_port_and_says_so() {
        let r = downstream_rules(&[], 25, Flavour::Nftables);
        assert!(r.contains("WARNING"));
        assert!(!r.contains("elements"));
        assert!(r.contains("tcp dport 25 drop"));
    }
}
