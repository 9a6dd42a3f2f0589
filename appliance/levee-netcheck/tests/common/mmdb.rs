//! A minimal MaxMind DB (format 2.0) writer, enough for a test country database:
//! an IPv6 search tree (IPv4 networks live under ::/96, as in GeoLite2), 24-bit records,
//! and `{country: {iso_code: "XX"}}` values.
//!
//! Layout (<https://maxmind.github.io/MaxMind-DB/>): the search tree (node_count nodes of
//! two 3-byte big-endian records; a record below node_count is the next node, equal to it
//! means no data, above it is node_count + 16 + an offset into the data section), 16 zero
//! bytes, the data section, then "\xAB\xCD\xEFMaxMind.com" and the metadata map.

use std::net::IpAddr;

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds a database mapping each network to a country code.
pub fn country_db(networks: &[(&str, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    for (net, iso) in networks {
        let offset = data.len();
        encode_country(&mut data, iso);
        let (addr, prefix) = net.split_once('/').expect("network like 192.0.2.0/24");
        let addr: IpAddr = addr.parse().unwrap();
        let prefix: usize = prefix.parse().unwrap();
        let (bits, prefix) = match addr {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_compatible()), prefix + 96),
            IpAddr::V6(v6) => (u128::from(v6), prefix),
        };
        let mut node = 0;
        for depth in 0..prefix {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth == prefix - 1 {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(next) => next,
                    _ => {
                        nodes.push([Rec::Empty, Rec::Empty]);
                        let next = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(next);
                        next
                    }
                };
            }
        }
    }
    let node_count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for rec in node {
            let value = match *rec {
                Rec::Empty => node_count,
                Rec::Node(n) => n,
                Rec::Data(off) => node_count + 16 + off,
            };
            let value = u32::try_from(value).unwrap();
            out.extend_from_slice(&value.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let mut meta = Vec::new();
    map(&mut meta, 9);
    string(&mut meta, "node_count");
    uint32(&mut meta, u32::try_from(node_count).unwrap());
    string(&mut meta, "record_size");
    uint16(&mut meta, 24);
    string(&mut meta, "ip_version");
    uint16(&mut meta, 6);
    string(&mut meta, "database_type");
    string(&mut meta, "Levee-Test-Country");
    string(&mut meta, "languages");
    array(&mut meta, 1);
    string(&mut meta, "en");
    string(&mut meta, "binary_format_major_version");
    uint16(&mut meta, 2);
    string(&mut meta, "binary_format_minor_version");
    uint16(&mut meta, 0);
    string(&mut meta, "build_epoch");
    uint64(&mut meta, 1_700_000_000);
    string(&mut meta, "description");
    map(&mut meta, 1);
    string(&mut meta, "en");
    string(&mut meta, "Levee test database");
    out.extend_from_slice(&meta);
    out
}

fn encode_country(out: &mut Vec<u8>, iso: &str) {
    map(out, 1);
    string(out, "country");
    map(out, 1);
    string(out, "iso_code");
    string(out, iso);
}

/// A control byte for a standard type (1..=7) with a size below 29.
fn control(out: &mut Vec<u8>, typ: u8, size: usize) {
    assert!(size < 29, "the test writer only does short values");
    out.push((typ << 5) | u8::try_from(size).unwrap());
}

/// Extended types (8 and up) put 0 in the type bits and `type - 7` in the next byte.
fn extended(out: &mut Vec<u8>, typ: u8, size: usize) {
    assert!(size < 29);
    out.push(u8::try_from(size).unwrap());
    out.push(typ - 7);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn map(out: &mut Vec<u8>, pairs: usize) {
    control(out, 7, pairs);
}

fn array(out: &mut Vec<u8>, items: usize) {
    extended(out, 11, items);
}

fn minimal(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[skip..]
}

fn uint16(out: &mut Vec<u8>, v: u16) {
    let b = v.to_be_bytes();
    let m = minimal(&b);
    control(out, 5, m.len());
    out.extend_from_slice(m);
}

fn uint32(out: &mut Vec<u8>, v: u32) {
    let b = v.to_be_bytes();
    let m = minimal(&b);
    control(out, 6, m.len());
    out.extend_from_slice(m);
}

fn uint64(out: &mut Vec<u8>, v: u64) {
    let b = v.to_be_bytes();
    let m = minimal(&b);
    extended(out, 9, m.len());
    out.extend_from_slice(m);
}
