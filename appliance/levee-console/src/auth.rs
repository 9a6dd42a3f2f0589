//! Passwords, sessions, CSRF tokens, login throttling and permissions: the pure parts,
//! so each rule is testable without HTTP.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use levee_store::{Role, Session, Throttle, User};
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// A session ends after this long without a request...
pub const IDLE_TIMEOUT_SECS: u64 = 30 * 60;
/// ...and this long after login whatever happens.
pub const ABSOLUTE_TIMEOUT_SECS: u64 = 12 * 3600;
/// Failed logins allowed for one (account, source) pair per window.
pub const PAIR_LIMIT: u32 = 5;
/// Failed logins allowed from one source, whatever the account, per window.
pub const SOURCE_LIMIT: u32 = 30;
pub const THROTTLE_WINDOW_SECS: u64 = 15 * 60;
pub const MIN_PASSWORD_LEN: usize = 10;

/// argon2id with the crate's defaults (19 MiB, 2 passes): OWASP's current minimum.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut raw = [0u8; 16];
    getrandom::getrandom(&mut raw).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// True only for a well-formed argon2id hash that matches. Any other stored string
/// (empty, truncated, another algorithm) never authenticates.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else { return false };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
}

/// A hash that matches no password anyone will type: unknown users are verified
/// against it so that they take as long as known ones.
pub fn dummy_hash() -> String {
    hash_password(&random_token()).unwrap_or_default()
}

/// 32 random bytes as hex (session ids, CSRF tokens, API tokens).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    // The OS RNG failing is not something a web console can recover from.
    getrandom::getrandom(&mut b).expect("the OS random number generator works");
    hex::encode(b)
}

/// What the store keeps instead of a session id or API token.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn session_alive(s: &Session, now: u64) -> bool {
    now < s.created_at.saturating_add(ABSOLUTE_TIMEOUT_SECS)
        && now < s.last_seen.saturating_add(IDLE_TIMEOUT_SECS)
}

/// The throttling "source": an IPv4 address, or an IPv6 /64 (one customer's LAN gets
/// a whole /64, so single addresses would be free to rotate).
pub fn source_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

pub fn pair_key(account: &str, ip: IpAddr) -> String {
    format!("pair:{}|{}", account.to_lowercase(), source_key(ip))
}

pub fn source_throttle_key(ip: IpAddr) -> String {
    format!("src:{}", source_key(ip))
}

/// Failures still counting at `now` (a window that has passed counts nothing).
pub fn live_failures(t: &Throttle, now: u64) -> u32 {
    if now >= t.window_start.saturating_add(THROTTLE_WINDOW_SECS) {
        0
    } else {
        t.failures
    }
}

/// One more failure.
pub fn record_failure(t: &Throttle, now: u64) -> Throttle {
    match live_failures(t, now) {
        0 => Throttle { failures: 1, window_start: now },
        n => Throttle { failures: n.saturating_add(1), window_start: t.window_start },
    }
}

/// Whether a login attempt may be checked against a key whose record is `t` and whose
/// limit is `limit` ([`PAIR_LIMIT`] or [`SOURCE_LIMIT`]). The account is never locked
/// as a whole: a flood from one source blocks that source, not the admin elsewhere.
pub fn under_limit(t: &Throttle, limit: u32, now: u64) -> bool {
    live_failures(t, now) < limit
}

/// The record once an attempt is counted before its password is checked: an attempt
/// in flight counts as failed, so guesses sent in parallel cannot share one count. A
/// refused attempt (already at `limit`) changes nothing, so refusals never extend a
/// lock-out.
pub fn reserve(t: Throttle, limit: u32, now: u64) -> Throttle {
    if under_limit(&t, limit, now) {
        record_failure(&t, now)
    } else {
        t
    }
}

/// Gives back one reserved attempt (it succeeded, or another key refused it).
pub fn release(t: Throttle, now: u64) -> Throttle {
    match live_failures(&t, now) {
        0 => t,
        n => Throttle { failures: n - 1, window_start: t.window_start },
    }
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// See every message, the log, the queue, settings (read-only).
    ViewAll,
    /// Release, delete, report any quarantined message.
    QuarantineAll,
    /// Edit the global and per-domain allow/block lists.
    Lists,
    /// Change settings (domains, policy, system), the queue, reports.
    Settings,
    /// Manage users.
    Users,
}

pub fn allowed(role: Role, p: Perm) -> bool {
    match role {
        Role::Admin => true,
        Role::QuarantineManager => matches!(p, Perm::ViewAll | Perm::QuarantineAll | Perm::Lists),
        Role::Auditor => p == Perm::ViewAll,
        Role::User => false,
    }
}

/// Whether `user` may see and act on mail addressed to `rcpts`: staff who may act on
/// every quarantine (or view it, for reads), else only an end user's own addresses.
pub fn owns_any(user: &User, rcpts: &[String]) -> bool {
    rcpts.iter().any(|r| user.addresses.iter().any(|a| a.eq_ignore_ascii_case(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_malformed_hashes_never_do() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        for bad in [
            "",
            "x",
            "$argon2id$",
            &h[..h.len() - 5],
            "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
        ] {
            assert!(!verify_password("correct horse battery", bad), "{bad}");
            assert!(!verify_password("", bad), "{bad}");
        }
        assert!(!verify_password("anything", &dummy_hash()));
    }

    #[test]
    fn sessions_expire_idle_and_absolute() {
        let s = Session { user: "a".into(), csrf: "c".into(), created_at: 1000, last_seen: 1000 };
        assert!(session_alive(&s, 1000 + IDLE_TIMEOUT_SECS - 1));
        assert!(!session_alive(&s, 1000 + IDLE_TIMEOUT_SECS));
        let busy = Session { last_seen: 1000 + ABSOLUTE_TIMEOUT_SECS - 10, ..s.clone() };
        assert!(session_alive(&busy, 1000 + ABSOLUTE_TIMEOUT_SECS - 1));
        assert!(!session_alive(&busy, 1000 + ABSOLUTE_TIMEOUT_SECS));
    }

    #[test]
    fn throttling_blocks_the_pair_and_the_source_not_the_account() {
        let now = 10_000;
        let mut pair = Throttle::default();
        for _ in 0..PAIR_LIMIT {
            assert!(under_limit(&pair, PAIR_LIMIT, now));
            pair = reserve(pair, PAIR_LIMIT, now);
        }
        assert_eq!(pair.failures, PAIR_LIMIT);
        assert!(!under_limit(&pair, PAIR_LIMIT, now));
        // A refused attempt is not counted.
        assert_eq!(reserve(pair, PAIR_LIMIT, now + 1), pair);
        // The same account from another source is a different pair: still allowed.
        assert!(under_limit(&Throttle::default(), PAIR_LIMIT, now));
        // The window passes.
        assert!(under_limit(&pair, PAIR_LIMIT, now + THROTTLE_WINDOW_SECS));
        // A source that tries many accounts hits its own cap.
        let mut src = Throttle::default();
        for _ in 0..SOURCE_LIMIT {
            src = reserve(src, SOURCE_LIMIT, now);
        }
        assert!(!under_limit(&src, SOURCE_LIMIT, now));
        // A success gives its reservation back; nothing goes below zero.
        assert_eq!(release(src, now).failures, SOURCE_LIMIT - 1);
        assert_eq!(release(Throttle::default(), now), Throttle::default());
        assert_eq!(release(src, now + THROTTLE_WINDOW_SECS), src);
        assert_ne!(
            pair_key("Admin", "10.0.0.1".parse().unwrap()),
            pair_key("admin", "10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            pair_key("Admin", "10.0.0.1".parse().unwrap()),
            pair_key("admin", "10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            source_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            source_key("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_eq!(source_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }

    #[test]
    fn roles_grant_what_they_say() {
        assert!(allowed(Role::Admin, Perm::Users));
        assert!(allowed(Role::QuarantineManager, Perm::QuarantineAll));
        assert!(!allowed(Role::QuarantineManager, Perm::Settings));
        assert!(allowed(Role::Auditor, Perm::ViewAll));
        assert!(!allowed(Role::Auditor, Perm::QuarantineAll));
        for p in [Perm::ViewAll, Perm::QuarantineAll, Perm::Lists, Perm::Settings, Perm::Users] {
            assert!(!allowed(Role::User, p));
        }
        assert!(ct_eq("abc", "abc") && !ct_eq("abc", "abd") && !ct_eq("abc", "ab"));
    }
}
