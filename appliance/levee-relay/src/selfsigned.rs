//! The self-signed certificate Levee makes for itself when none is configured: valid for a
//! year, and renewed by the first handshake in its last month, while the acceptor is in
//! use. A certificate someone else issued (an upload) at the same path is never replaced.

use rustls::pki_types::{pem::PemObject, CertificateDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tracing::{info, warn};

const DAY: u64 = 86_400;
/// A year: long enough to be no chore, short enough that a leaked key ages out.
const LIFETIME_DAYS: u64 = 365;
/// Renewed this long before it expires.
const RENEW_BEFORE_DAYS: u64 = 30;
/// After a failed renewal, the next try waits this long rather than running per handshake.
const RETRY_SECS: u64 = 3600;

/// The certificate in use and when it is due for renewal (`None`: not ours, never).
type Current = (Arc<CertifiedKey>, Option<u64>);

/// Serves the current certificate and renews it when due (see the module doc).
#[derive(Debug)]
pub(crate) struct SelfSigned {
    hostname: String,
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Current>,
}

impl SelfSigned {
    /// Loads the pair at `cert`/`key`, making or renewing it first when missing or due.
    pub fn open(hostname: &str, cert: &Path, key: &Path, now: u64) -> Result<SelfSigned, String> {
        let due = match std::fs::read(cert) {
            Ok(pem) => renewal_due(&pem).is_some_and(|at| now >= at),
            Err(_) => true,
        };
        if due || !key.exists() {
            make(hostname, cert, key, now)?;
        }
        let current = load(cert, key)?;
        Ok(SelfSigned {
            hostname: hostname.to_string(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(current),
        })
    }

    /// The certificate to present at `now`, renewed first when due.
    fn at(&self, now: u64) -> Arc<CertifiedKey> {
        {
            let c = self.current.read().unwrap_or_else(|p| p.into_inner());
            if c.1.is_none_or(|due| now < due) {
                return c.0.clone();
            }
        }
        let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
        if c.1.is_some_and(|due| now >= due) {
            match make(&self.hostname, &self.cert, &self.key, now)
                .and_then(|()| load(&self.cert, &self.key))
            {
                Ok(fresh) => {
                    info!(cert = %self.cert.display(), "self-signed certificate renewed");
                    *c = fresh;
                }
                Err(e) => {
                    warn!(cert = %self.cert.display(), error = %e, "cannot renew the self-signed certificate");
                    c.1 = Some(now + RETRY_SECS);
                }
            }
        }
        c.0.clone()
    }
}

impl ResolvesServerCert for SelfSigned {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.at(crate::now_unix()))
    }
}

/// Makes a fresh pair for `hostname`, valid from yesterday (clock skew) for a year.
fn make(hostname: &str, cert: &Path, key: &Path, now: u64) -> Result<(), String> {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])
        .map_err(|e| format!("certificate for {hostname}: {e}"))?;
    let (y, m, d) = ymd(now.saturating_sub(DAY));
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(now + LIFETIME_DAYS * DAY);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key_pair = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let made = params.self_signed(&key_pair).map_err(|e| format!("signing: {e}"))?;
    crate::tls::write_pair(cert, key, made.pem().as_bytes(), key_pair.serialize_pem().as_bytes())
        .map_err(|e| format!("writing the certificate: {e}"))
}

fn load(cert: &Path, key: &Path) -> Result<Current, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let (chain, private) = crate::tls::pem_pair(&cert_pem, &key_pem)?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("key: {e}"))?;
    let due = renewal_due(&cert_pem);
    Ok((Arc::new(CertifiedKey::new(chain, signer)), due))
}

/// When a self-signed certificate (PEM) is due for renewal; `None` for one another
/// issuer signed, or one that cannot be read (left alone: it is not ours to replace).
fn renewal_due(pem: &[u8]) -> Option<u64> {
    let first = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (self_issued, not_after) = der::issuer_is_subject_and_not_after(first.as_ref())?;
    self_issued.then(|| not_after.saturating_sub(RENEW_BEFORE_DAYS * DAY))
}

/// The calendar day of a Unix time, as rcgen takes it.
fn ymd(unix: u64) -> (i32, u8, u8) {
    let (y, m, d) = levee_types::civil::civil_from_days((unix / DAY) as i64);
    (y as i32, m as u8, d as u8)
}

/// Just enough DER to read a certificate's issuer, subject and notAfter (RFC 5280 4.1).
mod der {
    /// One tag-length-value: (tag, contents, what follows).
    fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = buf.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    pub fn issuer_is_subject_and_not_after(cert: &[u8]) -> Option<(bool, u64)> {
        let (_, certificate, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(certificate)?;
        let mut rest = tbs;
        let (tag, _, after) = tlv(rest)?;
        if tag == 0xa0 {
            rest = after; // [0] version
        }
        let (_, _, rest) = tlv(rest)?; // serialNumber
        let (_, _, rest) = tlv(rest)?; // signature algorithm
        let (_, issuer, rest) = tlv(rest)?;
        let (_, validity, rest) = tlv(rest)?;
        let (_, subject, _) = tlv(rest)?;
        let (_, _, validity) = tlv(validity)?; // notBefore
        let (tag, not_after, _) = tlv(validity)?;
        Some((issuer == subject, time(tag, not_after)?))
    }

    /// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), as Unix seconds.
    fn time(tag: u8, text: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
        let (year, rest) = match (tag, s.len()) {
            (0x17, 12) => {
                let yy: i64 = s[..2].parse().ok()?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
            }
            (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
            _ => return None,
        };
        let n = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
        let days = levee_types::civil::days_from_civil(year, n(0)?, n(2)?);
        let secs = days * 86_400 + n(4)? * 3600 + n(6)? * 60 + n(8)?;
        u64::try_from(secs).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: testssl found a 2,000-year self-signed certificate.
    #[test]
    fn the_certificate_lives_a_year_and_is_renewed_in_its_last_month() {
        let dir = crate::test_sink::Scratch::new("selfsigned");
        let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
        let now = 1_796_256_000; // 2026-12-03
        let s = SelfSigned::open("mx.example.test", &cert, &key, now).unwrap();
        let first = std::fs::read(&cert).unwrap();
        let der = CertificateDer::pem_slice_iter(&first).next().unwrap().unwrap();
        let (own, not_after) = der::issuer_is_subject_and_not_after(der.as_ref()).unwrap();
        assert!(own);
        assert_eq!((not_after - now) / DAY, LIFETIME_DAYS);
        let due = renewal_due(&first).unwrap();
        assert_eq!((not_after - due) / DAY, RENEW_BEFORE_DAYS);

        // Before the renewal point: the same certificate, at start and per handshake.
        let again = SelfSigned::open("mx.example.test", &cert, &key, due - 1).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        let served = again.at(due - 1);
        assert!(Arc::ptr_eq(&served, &again.at(due - 1)));
        // From it on: renewed on the next handshake, a year from then.
        let renewed = s.at(due);
        assert!(!Arc::ptr_eq(&renewed, &served));
        let second = std::fs::read(&cert).unwrap();
        assert_ne!(second, first);
        let (_, next_after) = der::issuer_is_subject_and_not_after(
            CertificateDer::pem_slice_iter(&second).next().unwrap().unwrap().as_ref(),
        )
        .unwrap();
        assert_eq!((next_after - due) / DAY, LIFETIME_DAYS);
    }

    #[test]
    fn a_certificate_another_issuer_signed_is_never_renewed() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(vec!["CA".to_string()]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "Levee test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.example.test".to_string()]).unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        assert_eq!(renewal_due(leaf.pem().as_bytes()), None);
        assert!(renewal_due(ca.pem().as_bytes()).is_some());
        assert_eq!(renewal_due(b"junk"), None);
    }
}
