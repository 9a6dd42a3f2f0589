//! DNSBL/DNSWL, FCrDNS and the connect stage against a real unbound on loopback.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{BlackHole, Unbound};
use levee_netcheck::{
    dnsbl, rdns, Dns, DnsList, GeoIp, NetCheckError, NetChecks, NetConfig, Upstream,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn bl() -> DnsList {
    DnsList {
        zone: "bl.test".into(),
        symbol: "RBL_TEST".into(),
        codes: vec![
            ("127.0.0.2".parse().unwrap(), "SBL".into()),
            ("127.0.0.4".parse().unwrap(), "XBL".into()),
        ],
    }
}

fn blocked() -> DnsList {
    DnsList { zone: "blocked.test".into(), symbol: "RBL_BLOCKY".into(), codes: vec![] }
}

fn wl() -> DnsList {
    DnsList { zone: "wl.test".into(), symbol: "RWL_TEST".into(), codes: vec![] }
}

fn symbols(findings: &[levee_netcheck::Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.symbol.as_str()).collect()
}

#[tokio::test]
async fn dnsbl_listings_codes_blocked_and_allowlists() {
    let server = Unbound::start("").await;
    let dns = server.dns();
    let lists = [bl(), blocked(), wl()];

    // RFC 5782 test entry: listed with code 127.0.0.2; the blocked list refuses; not allow-listed.
    let (f, w) = dnsbl::check_ip(&dns, ip("127.0.0.2"), &lists).await;
    assert_eq!(symbols(&f), ["RBL_TEST_SBL", "RBL_BLOCKY_BLOCKED"], "{f:?}");
    assert!(f[0].detail.contains("127.0.0.2") && f[0].detail.contains("bl.test"), "{f:?}");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].source, "RBL_BLOCKY");
    assert!(w[0].message.contains("127.255.255.254"), "{w:?}");

    // Two codes at once.
    let (f, _) = dnsbl::check_ip(&dns, ip("192.0.2.66"), &[bl()]).await;
    let mut got = symbols(&f);
    got.sort();
    assert_eq!(got, ["RBL_TEST_SBL", "RBL_TEST_XBL"]);

    // IPv6, nibble-reversed.
    let (f, _) = dnsbl::check_ip(&dns, ip("2001:db8::66"), &[bl()]).await;
    assert_eq!(symbols(&f), ["RBL_TEST_SBL"]);

    // NXDOMAIN: nothing at all.
    let (f, w) = dnsbl::check_ip(&dns, ip("192.0.2.1"), &[bl(), wl()]).await;
    assert!(f.is_empty() && w.is_empty(), "{f:?} {w:?}");

    // Allowlist hit (config gives RWL_TEST a negative weight).
    let (f, _) = dnsbl::check_ip(&dns, ip("192.0.2.10"), &[wl()]).await;
    assert_eq!(symbols(&f), ["RWL_TEST"]);

    // An answer outside 127/8 is a failure, not a listing.
    let (f, w) = dnsbl::check_ip(&dns, ip("192.0.2.77"), &[bl()]).await;
    assert_eq!(symbols(&f), ["RBL_TEST_FAILED"]);
    assert_eq!(w.len(), 1);
}

#[tokio::test]
async fn fcrdns_confirmed_unconfirmed_and_missing() {
    let server = Unbound::start("").await;
    let dns = server.dns();

    let (f, name) = rdns::check(&dns, ip("192.0.2.10")).await;
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(name.as_deref(), Some("mail.good.test"));

    let (f, name) = rdns::check(&dns, ip("2001:db8::10")).await;
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(name.as_deref(), Some("mail6.good.test"));

    let (f, name) = rdns::check(&dns, ip("192.0.2.11")).await;
    assert_eq!(symbols(&f), ["RDNS_NOT_CONFIRMED"]);
    assert!(f[0].detail.contains("liar.good.test"), "{f:?}");
    assert_eq!(name, None);

    let (f, name) = rdns::check(&dns, ip("192.0.2.12")).await;
    assert_eq!(symbols(&f), ["RDNS_NONE"]);
    assert_eq!(name, None);
}

#[tokio::test]
async fn unanswered_queries_are_timeout_findings() {
    let hole = BlackHole::new();
    let dns = hole.dns(Duration::from_millis(300));
    let started = Instant::now();
    let (f, w) = dnsbl::check_ip(&dns, ip("127.0.0.2"), &[bl(), wl()]).await;
    assert_eq!(symbols(&f), ["RBL_TEST_TIMEOUT", "RWL_TEST_TIMEOUT"], "{f:?}");
    assert!(w.is_empty());
    let (f, name) = rdns::check(&dns, ip("192.0.2.10")).await;
    assert_eq!(symbols(&f), ["RDNS_TIMEOUT"]);
    assert_eq!(name, None);
    // Lists are queried in parallel: two lists and a PTR cost about two timeouts, not three.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connect_stage_combines_checks_with_country() {
    let server = Unbound::start("").await;
    let dir = common::ScratchDir::new("connect");
    let db = dir.0.join("country.mmdb");
    std::fs::write(&db, common::mmdb::country_db(&[("127.0.0.0/8", "ZZ"), ("192.0.2.0/24", "NL")]))
        .unwrap();
    let geoip = GeoIp::open(&db).unwrap();
    let checks = NetChecks::new(
        server.dns(),
        NetConfig { dnsbl: vec![bl(), wl()], ..NetConfig::default() },
        Some(geoip),
    );

    let report = checks.connect_stage(ip("192.0.2.10")).await;
    assert_eq!(symbols(&report.findings), ["RWL_TEST", "COUNTRY_NL"], "{report:?}");
    assert_eq!(report.confirmed_name.as_deref(), Some("mail.good.test"));
    assert!(report.warnings.is_empty());

    // unbound's built-in 127.in-addr.arpa zone names every 127/8 address "localhost", whose
    // A record is 127.0.0.1: a PTR that does not confirm.
    let report = checks.connect_stage(ip("127.0.0.2")).await;
    assert_eq!(
        symbols(&report.findings),
        ["RBL_TEST_SBL", "RDNS_NOT_CONFIRMED", "COUNTRY_ZZ"],
        "{report:?}"
    );
}

#[tokio::test]
async fn connect_stage_deadline_names_every_unfinished_check() {
    let hole = BlackHole::new();
    // Per-query timeout far beyond the stage deadline: the stage deadline must cut in.
    let checks = NetChecks::new(
        hole.dns(Duration::from_secs(30)),
        NetConfig {
            dnsbl: vec![bl(), wl()],
            connect_timeout: Duration::from_millis(300),
            ..NetConfig::default()
        },
        None,
    );
    let started = Instant::now();
    let report = checks.connect_stage(ip("192.0.2.10")).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(symbols(&report.findings), ["RBL_TEST_TIMEOUT", "RWL_TEST_TIMEOUT", "RDNS_TIMEOUT"]);
    assert_eq!(report.confirmed_name, None);
}

#[tokio::test]
async fn dns_record_types_and_negative_answers() {
    let server = Unbound::start("").await;
    let dns = server.dns();
    assert_eq!(
        dns.a("mail.good.test").await.unwrap(),
        ["192.0.2.10".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        dns.aaaa("mail6.good.test").await.unwrap(),
        ["2001:db8::10".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    assert_eq!(dns.ptr(ip("192.0.2.10")).await.unwrap(), ["mail.good.test"]);
    assert_eq!(dns.txt("auth.test").await.unwrap(), ["v=spf1 ip4:192.0.2.10 -all"]);
    assert_eq!(dns.mx("bare.test.").await.unwrap(), [(10, "mail.good.test".to_string())]);
    // NXDOMAIN and NODATA alike are "not found".
    assert!(matches!(dns.a("nothing.good.test").await, Err(NetCheckError::NotFound)));
    assert!(matches!(dns.mx("auth.test").await, Err(NetCheckError::NotFound)));
    // Garbage names fail without a query.
    assert!(matches!(dns.a("bad..name").await, Err(NetCheckError::Lookup(_))));
}

#[test]
fn system_resolver_builds_from_resolv_conf() {
    // Only where the host has one; the point is that the system path constructs.
    if std::path::Path::new("/etc/resolv.conf").exists() {
        let dns = Dns::new(Upstream::System, Duration::from_secs(1));
        assert!(dns.is_ok(), "{dns:?}");
    }
}
