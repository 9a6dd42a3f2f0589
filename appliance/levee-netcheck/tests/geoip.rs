//! GeoIP country lookups on a MaxMind DB written by the test itself.

mod common;

use std::net::IpAddr;

use levee_netcheck::GeoIp;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn country_codes_from_a_generated_database() {
    let scratch = common::ScratchDir::new("geoip");
    let dir = &scratch.0;
    let path = dir.join("test.mmdb");
    let db = common::mmdb::country_db(&[
        ("192.0.2.0/24", "nl"),
        ("198.51.100.0/25", "DE"),
        ("203.0.113.7/32", "BR"),
        ("2001:db8:1::/48", "JP"),
    ]);
    std::fs::write(&path, db).unwrap();
    let geo = GeoIp::open(&path).unwrap();

    assert_eq!(geo.country(ip("192.0.2.200")).as_deref(), Some("NL"));
    assert_eq!(geo.country(ip("198.51.100.127")).as_deref(), Some("DE"));
    assert_eq!(geo.country(ip("198.51.100.128")), None);
    assert_eq!(geo.country(ip("203.0.113.7")).as_deref(), Some("BR"));
    assert_eq!(geo.country(ip("203.0.113.8")), None);
    assert_eq!(geo.country(ip("2001:db8:1:2::3")).as_deref(), Some("JP"));
    assert_eq!(geo.country(ip("2001:db8:2::1")), None);

    let f = geo.check(ip("192.0.2.1"));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].symbol, "COUNTRY_NL");
    assert!(geo.check(ip("10.0.0.1")).is_empty());

    // Not a database at all.
    let junk = dir.join("junk.mmdb");
    std::fs::write(&junk, b"not a maxmind database").unwrap();
    assert!(GeoIp::open(&junk).is_err());
    assert!(GeoIp::open(&dir.join("missing.mmdb")).is_err());
}
