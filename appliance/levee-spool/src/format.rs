//! The queue file format: a sequence of typed, length-prefixed records, in the spirit of
//! Postfix's queue files (a file without its end record is never trusted).
//!
//! ```text
//! record  = type:u8  length:u64be  payload[length]
//! file    = H(magic "LEVEEQF\0", version:u16be)
//!           M(meta: see `encode_meta`)
//!           B(body bytes)
//!           E(crc32 of every byte before the E record, u32be)
//! ```
//! Exactly these four records in this order, and nothing after the end record. Anything
//! else (short read, unknown type, wrong order, bad checksum, trailing bytes) is
//! corruption: the reader never returns a partial message.
//!
//! No file system access here: encoding writes to any `Write`, decoding reads any `Read`,
//! so the format is tested on byte slices.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use levee_types::{Action, Address, Body, Envelope, Finding, QueueId};

use crate::SpoolMeta;

pub(crate) const MAGIC: &[u8; 8] = b"LEVEEQF\0";
/// Version of the file layout (records). Bump when the record sequence changes.
pub(crate) const FILE_VERSION: u16 = 1;
/// Version of the meta record's field layout. Bump when a field is added.
const META_VERSION: u16 = 1;

const REC_HEADER: u8 = b'H';
const REC_META: u8 = b'M';
const REC_BODY: u8 = b'B';
const REC_END: u8 = b'E';

/// The meta record is small; a larger length is a corrupt length field, refused before
/// any allocation.
const MAX_META_LEN: u64 = 4 << 20;

/// Why a file is not a valid queue file. Text for people (logs, the corrupt list).
pub(crate) type Reason = String;

/// Computes the CRC of everything written through it.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_record<W: Write>(w: &mut W, kind: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&[kind])?;
    w.write_all(&(payload.len() as u64).to_be_bytes())?;
    w.write_all(payload)
}

/// Writes a complete queue file to `w` (not flushed to disk: the caller fsyncs).
pub(crate) fn encode<W: Write>(w: W, meta: &SpoolMeta, body: &[u8]) -> io::Result<W> {
    let mut cw = CrcWriter { inner: w, crc: crc32fast::Hasher::new() };
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&FILE_VERSION.to_be_bytes());
    write_record(&mut cw, REC_HEADER, &header)?;
    write_record(&mut cw, REC_META, &encode_meta(meta))?;
    write_record(&mut cw, REC_BODY, body)?;
    let CrcWriter { mut inner, crc } = cw;
    write_record(&mut inner, REC_END, &crc.finalize().to_be_bytes())?;
    Ok(inner)
}

/// Reads and checks a complete queue file. With `keep_body` false the body is checked
/// (checksum) but not kept, so recovery does not hold every body in memory.
pub(crate) fn decode<R: Read>(r: R, keep_body: bool) -> Result<(SpoolMeta, Vec<u8>), Reason> {
    let mut r = CrcReader { inner: r, crc: crc32fast::Hasher::new() };

    let (kind, len) = read_record_head(&mut r, "header")?;
    if kind != REC_HEADER || len != (MAGIC.len() + 2) as u64 {
        return Err("not a levee queue file (no header record)".into());
    }
    let header = read_payload(&mut r, len, "header")?;
    if &header[..MAGIC.len()] != MAGIC {
        return Err("not a levee queue file (bad magic)".into());
    }
    let version = u16::from_be_bytes([header[8], header[9]]);
    if version != FILE_VERSION {
        return Err(format!("unsupported queue file version {version}"));
    }

    let (kind, len) = read_record_head(&mut r, "meta")?;
    if kind != REC_META {
        return Err(format!("expected meta record, found type {kind:#04x}"));
    }
    if len > MAX_META_LEN {
        return Err(format!("meta record length {len} is implausible"));
    }
    let meta_bytes = read_payload(&mut r, len, "meta")?;

    let (kind, len) = read_record_head(&mut r, "body")?;
    if kind != REC_BODY {
        return Err(format!("expected body record, found type {kind:#04x}"));
    }
    let body = if keep_body {
        read_payload(&mut r, len, "body")?
    } else {
        let copied = io::copy(&mut (&mut r).take(len), &mut io::sink())
            .map_err(|e| format!("reading body: {e}"))?;
        if copied != len {
            return Err(format!("body record truncated ({copied} of {len} bytes)"));
        }
        Vec::new()
    };

    let computed = r.crc.clone().finalize();
    let mut inner = r.inner;
    let (kind, len) = read_record_head(&mut inner, "end")?;
    if kind != REC_END || len != 4 {
        return Err(format!("expected end record, found type {kind:#04x} length {len}"));
    }
    let stored = read_payload(&mut inner, 4, "end")?;
    let stored = u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]);
    if stored != computed {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {computed:08x})"));
    }
    let mut extra = [0u8; 1];
    match inner.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err("bytes after the end record".into()),
        Err(e) => return Err(format!("reading after end record: {e}")),
    }

    // Decode the meta only after the checksum held: a corrupt file never reaches the
    // field decoder's error paths with attacker-shaped lengths as its first line of defence.
    let meta = decode_meta(&meta_bytes)?;
    Ok((meta, body))
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn read_record_head<R: Read>(r: &mut R, what: &str) -> Result<(u8, u64), Reason> {
    let mut head = [0u8; 9];
    read_exact_or_reason(r, &mut head, what)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[1..]);
    Ok((head[0], u64::from_be_bytes(len)))
}

fn read_payload<R: Read>(r: &mut R, len: u64, what: &str) -> Result<Vec<u8>, Reason> {
    // `take` + `read_to_end` grows the buffer as bytes arrive, so a corrupt huge length
    // fails at end of file instead of allocating it up front.
    let mut out = Vec::new();
    r.take(len).read_to_end(&mut out).map_err(|e| format!("reading {what} record: {e}"))?;
    if out.len() as u64 != len {
        return Err(format!("{what} record truncated ({} of {len} bytes)", out.len()));
    }
    Ok(out)
}

fn read_exact_or_reason<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), Reason> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("truncated before the {what} record"),
        _ => format!("reading {what} record: {e}"),
    })
}

// ---- meta record -------------------------------------------------------------------

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
}

struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Reason> {
        if self.buf.len() < n {
            return Err(format!("meta record ends inside {what}"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Reason> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, Reason> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, Reason> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Reason> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    fn f64(&mut self, what: &str) -> Result<f64, Reason> {
        Ok(f64::from_bits(self.u64(what)?))
    }
    fn bool(&mut self, what: &str) -> Result<bool, Reason> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("{what}: bad flag {v}")),
        }
    }
    fn str(&mut self, what: &str) -> Result<String, Reason> {
        let len = self.u32(what)? as usize;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
    }
    fn opt_str(&mut self, what: &str) -> Result<Option<String>, Reason> {
        if self.bool(what)? {
            self.str(what).map(Some)
        } else {
            Ok(None)
        }
    }
    fn address(&mut self, what: &str) -> Result<Address, Reason> {
        let s = self.str(what)?;
        // utf8 = true: an SMTPUTF8 address was accepted at receipt; parsing is otherwise
        // identical, and printing then parsing an Address gives the same Address.
        Address::parse(&s, true).map_err(|e| format!("{what} {s:?}: {e}"))
    }
    /// A count of items that each take at least `min_item` bytes: refuses counts the
    /// remaining bytes cannot hold, so a corrupt count cannot reserve huge vectors.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, Reason> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(format!("{what}: count {n} exceeds the record"));
        }
        Ok(n)
    }
}

fn body_code(b: Body) -> u8 {
    match b {
        Body::SevenBit => 0,
        Body::EightBitMime => 1,
        Body::BinaryMime => 2,
    }
}

fn encode_ip(e: &mut Enc, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            e.u8(4);
            e.0.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            e.u8(6);
            e.0.extend_from_slice(&v6.octets());
        }
    }
}

pub(crate) fn encode_meta(m: &SpoolMeta) -> Vec<u8> {
    let mut e = Enc::default();
    let env = &m.envelope;
    e.u16(META_VERSION);
    e.str(m.id.as_str());
    e.u64(m.received_at);
    e.str(m.action.as_str());
    e.f64(m.score);
    encode_ip(&mut e, env.client_ip);
    e.opt_str(env.client_name.as_deref());
    e.str(&env.helo);
    e.u8(env.tls as u8);
    e.u8(body_code(env.body));
    e.u8(env.smtputf8 as u8);
    match env.declared_size {
        None => e.u8(0),
        Some(n) => {
            e.u8(1);
            e.u64(n);
        }
    }
    e.opt_str(env.mail_from.as_ref().map(|a| a.to_string()).as_deref());
    e.u32(env.rcpt_to.len() as u32);
    for r in &env.rcpt_to {
        e.str(&r.to_string());
    }
    e.u32(m.findings.len() as u32);
    for (f, w) in &m.findings {
        e.str(&f.symbol);
        e.str(&f.detail);
        e.f64(*w);
    }
    e.0
}

pub(crate) fn decode_meta(buf: &[u8]) -> Result<SpoolMeta, Reason> {
    let mut d = Dec { buf };
    let version = d.u16("meta version")?;
    if version != META_VERSION {
        return Err(format!("unsupported meta version {version}"));
    }
    let id_s = d.str("queue id")?;
    let id = QueueId::parse(&id_s).ok_or_else(|| format!("bad queue id {id_s:?}"))?;
    let received_at = d.u64("received_at")?;
    let action_s = d.str("action")?;
    let action = Action::parse(&action_s).ok_or_else(|| format!("bad action {action_s:?}"))?;
    let score = d.f64("score")?;
    let client_ip = match d.u8("client ip family")? {
        4 => {
            let b = d.take(4, "client ip")?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(d.take(16, "client ip")?);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        f => return Err(format!("bad client ip family {f}")),
    };
    let client_name = d.opt_str("client name")?;
    let helo = d.str("helo")?;
    let tls = d.bool("tls")?;
    let body = match d.u8("body type")? {
        0 => Body::SevenBit,
        1 => Body::EightBitMime,
        2 => Body::BinaryMime,
        b => return Err(format!("bad body type {b}")),
    };
    let smtputf8 = d.bool("smtputf8")?;
    let declared_size = if d.bool("declared size")? { Some(d.u64("declared size")?) } else { None };
    let mail_from = if d.bool("mail from")? { Some(d.address("mail from")?) } else { None };
    let n = d.count("recipients", 4)?;
    let mut rcpt_to = Vec::with_capacity(n);
    for _ in 0..n {
        rcpt_to.push(d.address("recipient")?);
    }
    let n = d.count("findings", 16)?;
    let mut findings = Vec::with_capacity(n);
    for _ in 0..n {
        let symbol = d.str("finding symbol")?;
        let detail = d.str("finding detail")?;
        let weight = d.f64("finding weight")?;
        findings.push((Finding { symbol, detail }, weight));
    }
    if !d.buf.is_empty() {
        return Err(format!("{} unexpected bytes after the meta fields", d.buf.len()));
    }
    Ok(SpoolMeta {
        id,
        envelope: Envelope {
            mail_from,
            rcpt_to,
            helo,
            client_ip,
            client_name,
            tls,
            body,
            smtputf8,
            declared_size,
        },
        received_at,
        action,
        score,
        findings,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_meta(id: QueueId) -> SpoolMeta {
        SpoolMeta {
            id,
            envelope: Envelope {
                mail_from: Some(Address::parse("Sender.Name+x@example.test", false).unwrap()),
                rcpt_to: vec![
                    Address::parse("a@dest.test", false).unwrap(),
                    Address::parse("jürgen@dest.test", true).unwrap(),
                ],
                helo: "helo with\r\nodd \0 bytes ü".into(),
                client_ip: "2001:db8::25".parse().unwrap(),
                client_name: Some("mx.example.test".into()),
                tls: true,
                body: Body::EightBitMime,
                smtputf8: true,
                declared_size: Some(12345),
            },
            received_at: 1_700_000_000,
            action: Action::Tag,
            score: 5.25,
            findings: vec![
                (Finding::new("DNSBL_TEST", "listed at 127.0.0.2"), 3.5),
                (Finding::new("EMPTY_DETAIL", ""), -0.0),
            ],
        }
    }

    fn encoded(meta: &SpoolMeta, body: &[u8]) -> Vec<u8> {
        encode(Vec::new(), meta, body).unwrap()
    }

    #[test]
    fn round_trip_is_exact() {
        let meta = sample_meta(QueueId::from_u64(0x0123_4567_89AB_CDEF));
        let body = b"Subject: hi\r\n\r\nbinary \0\xff\r\n.\r\n".to_vec();
        let bytes = encoded(&meta, &body);
        let (m, b) = decode(&bytes[..], true).unwrap();
        assert_eq!(b, body);
        assert_eq!(m.id, meta.id);
        assert_eq!(m.envelope, meta.envelope);
        assert_eq!(m.findings.len(), 2);
        assert_eq!(m.findings[0], meta.findings[0]);
        assert_eq!(m.findings[1].1.to_bits(), (-0.0f64).to_bits());
        assert_eq!(m.score.to_bits(), meta.score.to_bits());
        assert_eq!((m.action, m.received_at), (meta.action, meta.received_at));
    }

    #[test]
    fn null_sender_and_ipv4_round_trip() {
        let mut meta = sample_meta(QueueId::from_u64(1));
        meta.envelope.mail_from = None;
        meta.envelope.client_ip = "192.0.2.7".parse().unwrap();
        meta.envelope.client_name = None;
        meta.envelope.declared_size = None;
        meta.findings.clear();
        let (m, b) = decode(&encoded(&meta, b"")[..], true).unwrap();
        assert_eq!(m.envelope, meta.envelope);
        assert!(b.is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let meta = sample_meta(QueueId::from_u64(7));
        let bytes = encoded(&meta, b"body bytes\r\n");
        let mut checked = 0;
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], true).is_err(), "truncated at {len} accepted");
            assert!(decode(&bytes[..len], false).is_err(), "truncated at {len} accepted");
            checked += 1;
        }
        assert_eq!(checked, bytes.len());
        assert!(decode(&bytes[..], false).is_ok());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let meta = sample_meta(QueueId::from_u64(7));
        let bytes = encoded(&meta, b"body bytes\r\n");
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= mask;
                assert!(decode(&bad[..], true).is_err(), "flip {mask:#x} at {i} accepted");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encoded(&sample_meta(QueueId::from_u64(7)), b"x");
        bytes.push(0);
        let err = decode(&bytes[..], true).unwrap_err();
        assert!(err.contains("after the end record"), "{err}");
    }

    #[test]
    fn huge_length_fields_fail_without_allocating() {
        let mut bytes = encoded(&sample_meta(QueueId::from_u64(7)), b"x");
        // Body length field: find the 'B' record after the meta record.
        let meta_len = u64::from_be_bytes(bytes[20..28].try_into().unwrap()) as usize;
        let body_at = 19 + 9 + meta_len;
        assert_eq!(bytes[body_at], REC_BODY);
        bytes[body_at + 1..body_at + 9].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode(&bytes[..], true).is_err());
    }

    #[test]
    fn meta_decoder_refuses_short_and_long_input() {
        let meta = encode_meta(&sample_meta(QueueId::from_u64(9)));
        for len in 0..meta.len() {
            assert!(decode_meta(&meta[..len]).is_err(), "meta truncated at {len} accepted");
        }
        let mut long = meta.clone();
        long.push(0);
        assert!(decode_meta(&long).is_err());
        assert!(decode_meta(&meta).is_ok());
    }
}
