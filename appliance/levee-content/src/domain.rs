//! Registrable domains ("eTLD+1") from the public suffix list, the one answer every check
//! shares (a token, a rule's domain comparison, a URI list query).

/// The registrable domain of `host` per the public suffix list (its ICANN and private
/// sections, so `a.foo.github.io` gives `foo.github.io`), lower case, in ASCII (punycode).
/// A suffix the list does not know counts as one label (the list's own default rule `*`:
/// `x.evil.test` gives `evil.test`). `None` for a bare suffix (`co.uk`), a single label
/// (`localhost`), an IP literal, or a name that is no host name.
pub fn registrable_domain(host: &str) -> Option<String> {
    lookup(host).map(|(domain, _)| domain)
}

/// [`registrable_domain`], only when the list knows the suffix: a link reader's test that a
/// word is a host at all (`readme.txt` in prose is not a link).
pub(crate) fn listed_registrable_domain(host: &str) -> Option<String> {
    lookup(host).filter(|(_, known)| *known).map(|(domain, _)| domain)
}

/// The registrable domain and whether the list knows its suffix.
fn lookup(host: &str) -> Option<(String, bool)> {
    let host = host.trim().trim_end_matches('.');
    let ascii = if host.is_ascii() {
        host.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(host).ok()?
    };
    if ascii.len() > 253 || ascii.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return None;
    }
    if !ascii.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
        return None;
    }
    // a dotted quad would otherwise read as a domain under the default rule
    if ascii.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    let domain = psl::domain(ascii.as_bytes())?;
    let known = domain.suffix().is_known();
    std::str::from_utf8(domain.as_bytes()).ok().map(|d| (d.to_string(), known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_suffix_list_decides() {
        let reg = |h| registrable_domain(h);
        assert_eq!(reg("www.mail.evil.co.uk").as_deref(), Some("evil.co.uk"));
        assert_eq!(reg("www.example.co.uk").as_deref(), Some("example.co.uk"));
        assert_eq!(reg("A.B.Example.COM.").as_deref(), Some("example.com"));
        // private section: each user's site is its own domain
        assert_eq!(reg("a.foo.github.io").as_deref(), Some("foo.github.io"));
        assert_eq!(reg("foo.blogspot.com").as_deref(), Some("foo.blogspot.com"));
        // a short second-level label is not a suffix unless the list says so
        assert_eq!(reg("www.abc.de").as_deref(), Some("abc.de"));
        assert_eq!(reg("co.uk"), None);
        assert_eq!(reg("com"), None);
        assert_eq!(reg("github.io"), None);
        // unknown suffix: one label, as the list's default rule says; not a link host
        assert_eq!(reg("x.evil.test").as_deref(), Some("evil.test"));
        assert_eq!(listed_registrable_domain("x.evil.test"), None);
        assert_eq!(listed_registrable_domain("readme.txtx"), None);
        assert_eq!(listed_registrable_domain("a.foo.github.io").as_deref(), Some("foo.github.io"));
        assert_eq!(reg("bücher.example.de").as_deref(), Some("example.de"));
        assert_eq!(reg("www.bücher.de").as_deref(), Some("xn--bcher-kva.de"));
    }

    #[test]
    fn ip_literals_and_single_labels_have_none() {
        for host in ["localhost", "192.0.2.1", "[2001:db8::1]", "2001:db8::1", "", ".", "a..b.com"]
        {
            assert_eq!(registrable_domain(host), None, "{host}");
        }
    }
}
