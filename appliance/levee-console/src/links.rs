//! Signed, expiring one-click links for digests: each names one action on one
//! quarantined message for one recipient, so a leaked link can do that and nothing else.
//!
//! Form: `{action}.{queue id}.{hex recipient}.{expires}.{hex HMAC-SHA256}`. The key is
//! derived from the store's install secret, so links die with the install and the
//! secret itself is never used twice for different things.

use hmac::{Hmac, Mac};
use levee_types::QueueId;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAction {
    Release,
    /// Release and allow the sender for this recipient.
    ReleaseAllow,
}

impl LinkAction {
    fn as_str(self) -> &'static str {
        match self {
            LinkAction::Release => "release",
            LinkAction::ReleaseAllow => "allow",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "release" => Some(LinkAction::Release),
            "allow" => Some(LinkAction::ReleaseAllow),
            _ => None,
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            LinkAction::Release => "Release this message",
            LinkAction::ReleaseAllow => "Release this message and always allow its sender",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub action: LinkAction,
    pub id: QueueId,
    pub rcpt: String,
    pub expires: u64,
}

/// The link key: HMAC(install secret, purpose label).
pub fn derive_key(install_secret: &[u8; 32]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(install_secret).expect("HMAC takes any key length");
    mac.update(b"levee console one-click links v1");
    mac.finalize().into_bytes().into()
}

/// The first-run setup code: shown only where someone with the box is (the log, the
/// appliance's own screen, a file on the data partition), so a stranger on the LAN
/// who reaches an unconfigured console first cannot make himself its admin. Stable
/// for an install, so restarts do not change what the screen shows.
pub fn setup_code(install_secret: &[u8; 32]) -> String {
    let mut mac = HmacSha256::new_from_slice(install_secret).expect("HMAC takes any key length");
    mac.update(b"levee console first-run setup code v1");
    let bytes = mac.finalize().into_bytes();
    // 12 characters from an alphabet without look-alikes (no 0/O, 1/I/L).
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
    bytes.iter().take(12).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

fn mac(key: &[u8; 32], body: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body.as_bytes());
    m
}

pub fn sign(key: &[u8; 32], link: &Link) -> String {
    let body = format!(
        "{}.{}.{}.{}",
        link.action.as_str(),
        link.id,
        hex::encode(link.rcpt.to_lowercase()),
        link.expires
    );
    let sig = hex::encode(mac(key, &body).finalize().into_bytes());
    format!("{body}.{sig}")
}

/// The link if the signature is good and it has not expired at `now`.
pub fn verify(key: &[u8; 32], token: &str, now: u64) -> Option<Link> {
    let (body, sig) = token.rsplit_once('.')?;
    let sig = hex::decode(sig).ok()?;
    // verify_slice compares in constant time.
    mac(key, body).verify_slice(&sig).ok()?;
    let mut parts = body.split('.');
    let action = LinkAction::parse(parts.next()?)?;
    let id = QueueId::parse(parts.next()?)?;
    let rcpt = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
    let expires: u64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || now >= expires {
        return None;
    }
    Some(Link { action, id, rcpt, expires })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_only_untampered_and_unexpired() {
        let key = derive_key(&[7u8; 32]);
        let link = Link {
            action: LinkAction::ReleaseAllow,
            id: QueueId::from_u64(0xABC),
            rcpt: "bob@example.test".into(),
            expires: 2000,
        };
        let t = sign(&key, &link);
        assert_eq!(verify(&key, &t, 1999), Some(link.clone()));
        assert_eq!(verify(&key, &t, 2000), None, "expired");
        assert_eq!(verify(&derive_key(&[8u8; 32]), &t, 1000), None, "other install");
        // Change any one character: refused.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            if let Ok(s) = String::from_utf8(b) {
                if s != t {
                    assert_eq!(verify(&key, &s, 1000), None, "tampered at {i}: {s}");
                }
            }
        }
        // Swapping the action keeps the rest but breaks the signature.
        let swapped = t.replacen("allow", "release", 1);
        assert_eq!(verify(&key, &swapped, 1000), None);
        assert_ne!(derive_key(&[7u8; 32]), [7u8; 32]);
    }
}
