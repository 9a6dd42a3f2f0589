//! The HTML facts the filter judges; the scan itself is `levee-html`'s, shared with the URL checks.

pub(crate) use levee_html::{strip, url_host};

/// If a link's visible text is itself a web address whose registrable domain differs from the
/// link target's, returns (shown host, target host): the classic phishing disguise.
pub(crate) fn link_text_mismatch(href: &str, text: &str) -> Option<(String, String)> {
    let shown = url_host(text)?;
    let target = url_host(href)?;
    let reg = crate::bayes::registrable;
    (reg(&shown) != reg(&target)).then_some((shown, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_mismatch() {
        let m = |h: &str, t: &str| link_text_mismatch(h, t).is_some();
        assert!(m("http://evil.test/login", "https://www.paypal.com/signin"));
        assert!(m("https://x.evil.test", "www.bank.example"));
        assert!(!m("https://login.bank.example/a", "https://www.bank.example"));
        assert!(!m("http://evil.test/", "Click here"));
        assert!(!m("mailto:a@b.example", "www.b.example"));
    }
}
