//! Golden files: each spec below is rendered and compared with `tests/golden/<name>.nft`.
//! On a mismatch the output is written beside it as `<name>.nft.actual` and the test fails.
//! `LEVEE_BLESS=1` rewrites the goldens instead (review the diff before committing).

use std::path::{Path, PathBuf};
use std::time::Duration;

use levee_gate::{downstream_rules, render, Flavour, GateError, GateSpec, IpNet};

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))).collect()
}

fn cases() -> Vec<(&'static str, String)> {
    let minimal = GateSpec { lan: nets(&["192.168.1.0/24"]), ..GateSpec::default() };
    let ipv6_lan = GateSpec { lan: nets(&["2001:db8:100::/56"]), ..GateSpec::default() };
    let smtp_sources = GateSpec {
        smtp_ports: vec![2525, 25],
        smtp_sources: nets(&["198.51.100.0/28", "2001:db8:ffff::1", "203.0.113.9"]),
        lan: nets(&["10.20.0.0/16"]),
        ..GateSpec::default()
    };
    let smtp_sources_v4_only = GateSpec {
        smtp_sources: nets(&["198.51.100.7"]),
        lan: nets(&["10.20.0.0/16"]),
        ..GateSpec::default()
    };
    let ssh = GateSpec {
        console_ports: vec![8443, 443],
        lan: nets(&["192.168.10.0/24", "172.16.0.0/12", "fd00:10::/64"]),
        ssh: true,
        smtp_rate_per_minute: 10,
        ban_timeout: Duration::from_secs(600),
        icmp_rate_per_second: 5,
        ..GateSpec::default()
    };
    let r = |s: &GateSpec| render(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    let appliance = ["192.0.2.25".parse().unwrap(), "2001:db8::25".parse().unwrap()];
    vec![
        ("minimal.nft", r(&minimal)),
        ("ipv6-lan.nft", r(&ipv6_lan)),
        ("smtp-sources.nft", r(&smtp_sources)),
        ("smtp-sources-v4-only.nft", r(&smtp_sources_v4_only)),
        ("ssh.nft", r(&ssh)),
        ("downstream.nft", downstream_rules(&appliance, 25, Flavour::Nftables)),
        ("downstream-iptables.sh", downstream_rules(&appliance, 25, Flavour::Iptables)),
    ]
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn renders_match_goldens() {
    let bless = std::env::var_os("LEVEE_BLESS").is_some_and(|v| v == "1");
    let mut ran = 0;
    let mut failed = Vec::new();
    for (name, actual) in cases() {
        ran += 1;
        let path = golden_dir().join(name);
        let actual_path = golden_dir().join(format!("{name}.actual"));
        if bless {
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected == actual {
            let _ = std::fs::remove_file(&actual_path);
        } else {
            std::fs::write(&actual_path, &actual).unwrap();
            failed.push(format!("{} (see {})", path.display(), actual_path.display()));
        }
    }
    assert!(ran >= 5, "only {ran} golden cases ran");
    assert!(failed.is_empty(), "output differs from the golden files:\n{}", failed.join("\n"));
}

#[test]
fn every_golden_file_has_a_case() {
    let names: Vec<&str> = cases().iter().map(|(n, _)| *n).collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".actual") {
            continue;
        }
        seen += 1;
        assert!(names.contains(&name.as_str()), "stale golden file {name}");
    }
    assert!(seen >= 5, "only {seen} golden files");
}

#[test]
fn console_without_lan_is_refused() {
    let spec = GateSpec { lan: vec![], ..GateSpec::default() };
    match render(&spec) {
        Err(GateError::ConsoleUnreachable(why)) => assert!(why.contains("LAN"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
