//! SPF, DKIM, DMARC and ARC through the mail and content stages, against a real unbound
//! serving tests/dns/netcheck.conf plus a DKIM key generated for this run.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{BlackHole, Unbound};
use levee_netcheck::{DnsList, Finding, NetChecks, NetConfig};
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};

const HOST: &str = "mx.levee.test";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fresh Ed25519 key and the TXT record that publishes it as auth.test's selector `sel`.
fn key() -> (Vec<u8>, String) {
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap().public_key();
    let record = format!(
        "local-data: 'sel._domainkey.auth.test. 300 IN TXT \"v=DKIM1; k=ed25519; p={}\"'\n",
        base64(&public)
    );
    (pkcs8, record)
}

fn message(from: &str, body: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: bob@example.net\r\nSubject: lunch\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@auth.test>\r\n\r\n{body}\r\n"
    )
}

fn sign(pkcs8: &[u8], msg: &str) -> String {
    let key = Ed25519Key::from_pkcs8_der(pkcs8).unwrap();
    let signature = DkimSigner::from_key(key)
        .domain("auth.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(msg.as_bytes())
        .unwrap();
    format!("{}{msg}", signature.to_header())
}

fn symbols(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.symbol.as_str()).collect()
}

fn checks(server: &Unbound, config: NetConfig) -> NetChecks {
    NetChecks::new(server.dns(), NetConfig { hostname: HOST.into(), ..config }, None)
}

#[tokio::test]
async fn spf_at_mail_from() {
    let server = Unbound::start("").await;
    let checks = checks(&server, NetConfig::default());
    let cases = [
        ("192.0.2.10", "alice@auth.test", "SPF_PASS"),
        ("198.51.100.7", "alice@auth.test", "SPF_FAIL"),
        ("198.51.100.7", "bob@soft.test", "SPF_SOFTFAIL"),
        ("198.51.100.7", "carol@bare.test", "SPF_NONE"),
        // Null reverse path: the HELO identity is checked ("v=spf1 a -all" on mail.good.test).
        ("192.0.2.10", "", "SPF_PASS"),
        ("198.51.100.7", "", "SPF_FAIL"),
    ];
    for (addr, from, want) in cases {
        let f = checks.mail_stage(ip(addr), "mail.good.test", from).await.unwrap().findings();
        assert_eq!(symbols(&f), [want], "{addr} {from:?}: {f:?}");
    }
}

#[tokio::test]
async fn dkim_dmarc_and_authentication_results() {
    let (pkcs8, record) = key();
    let server = Unbound::start(&record).await;
    let checks = checks(&server, NetConfig::default());
    let signed = sign(&pkcs8, &message("alice@auth.test", "See you at noon."));

    // Authorised IP, valid signature: everything passes.
    let r = checks
        .content_stage(
            ip("192.0.2.10"),
            "mail.good.test",
            "alice@auth.test",
            None,
            signed.as_bytes(),
        )
        .await;
    assert_eq!(symbols(&r.findings), ["SPF_PASS", "DKIM_PASS", "DMARC_PASS", "ARC_NONE"], "{r:?}");
    let ar = &r.authentication_results;
    assert!(ar.starts_with("mx.levee.test;"), "{ar}");
    for part in
        ["spf=pass", "smtp.mailfrom=", "dkim=pass", "header.d=auth.test", "dmarc=pass", "arc=none"]
    {
        assert!(ar.contains(part), "{part} missing in {ar}");
    }
    assert!(!ar.ends_with("\r\n"), "a value, not a line: {ar:?}");

    // Body changed in transit: DKIM fails, DMARC still passes through aligned SPF.
    let tampered = signed.replace("noon", "midnight");
    let r = checks
        .content_stage(
            ip("192.0.2.10"),
            "mail.good.test",
            "alice@auth.test",
            None,
            tampered.as_bytes(),
        )
        .await;
    assert_eq!(symbols(&r.findings), ["SPF_PASS", "DKIM_FAIL", "DMARC_PASS", "ARC_NONE"], "{r:?}");
    assert!(r.authentication_results.contains("dkim=fail"), "{}", r.authentication_results);

    // A forgery from elsewhere, unsigned: the domain's reject policy is the finding.
    let forged = message("alice@auth.test", "Pay this invoice.");
    let r = checks
        .content_stage(
            ip("198.51.100.7"),
            "evil.example",
            "alice@auth.test",
            None,
            forged.as_bytes(),
        )
        .await;
    assert_eq!(
        symbols(&r.findings),
        ["SPF_FAIL", "DKIM_NONE", "DMARC_POLICY_REJECT", "ARC_NONE"],
        "{r:?}"
    );
    assert!(r.authentication_results.contains("dmarc=fail"), "{}", r.authentication_results);
    assert!(
        r.authentication_results.contains("policy.dmarc=reject"),
        "{}",
        r.authentication_results
    );

    // Quarantine policy, soft-failing SPF.
    let soft = message("bob@soft.test", "Hello.");
    let r = checks
        .content_stage(ip("198.51.100.7"), "evil.example", "bob@soft.test", None, soft.as_bytes())
        .await;
    assert_eq!(
        symbols(&r.findings),
        ["SPF_SOFTFAIL", "DKIM_NONE", "DMARC_POLICY_QUARANTINE", "ARC_NONE"],
        "{r:?}"
    );

    // No SPF and no DMARC published.
    let bare = message("carol@bare.test", "Hi.");
    let r = checks
        .content_stage(ip("198.51.100.7"), "evil.example", "carol@bare.test", None, bare.as_bytes())
        .await;
    assert_eq!(symbols(&r.findings), ["SPF_NONE", "DKIM_NONE", "DMARC_NONE", "ARC_NONE"], "{r:?}");
}

#[tokio::test]
async fn arc_sealed_message_passes_and_broken_seal_fails() {
    let (pkcs8, record) = key();
    let server = Unbound::start(&record).await;
    let checks = checks(&server, NetConfig::default());
    let signed = sign(&pkcs8, &message("alice@auth.test", "Forwarded by a list."));

    // A forwarder (auth.test itself, reusing the key) verifies and seals.
    let authenticator = MessageAuthenticator(server.dns().resolver().clone());
    let parsed = AuthenticatedMessage::parse(signed.as_bytes()).unwrap();
    let dkim = authenticator.verify_dkim(&parsed).await;
    let arc = authenticator.verify_arc(&parsed).await;
    let results =
        AuthenticationResults::new("forwarder.auth.test").with_dkim_results(&dkim, "auth.test");
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
    fn seal<K: SigningKey<Hasher = Sha256>>(
        key: K,
        parsed: &AuthenticatedMessage<'_>,
        results: &AuthenticationResults<'_>,
        arc: &mail_auth::ArcOutput<'_>,
    ) -> String {
        ArcSealer::from_key(key)
            .domain("auth.test")
            .selector("sel")
            .headers(["From", "To", "Subject", "DKIM-Signature"])
            .seal(parsed, results, arc)
            .unwrap()
            .to_header()
    }
    let sealed = format!("{}{}{signed}", seal(key, &parsed, &results, &arc), results.to_header());

    let r = checks
        .content_stage(
            ip("192.0.2.10"),
            "mail.good.test",
            "alice@auth.test",
            None,
            sealed.as_bytes(),
        )
        .await;
    assert!(symbols(&r.findings).contains(&"ARC_PASS"), "{r:?}");
    assert!(r.authentication_results.contains("arc=pass"), "{}", r.authentication_results);

    let broken = sealed.replace("Subject: lunch", "Subject: free money");
    let r = checks
        .content_stage(
            ip("192.0.2.10"),
            "mail.good.test",
            "alice@auth.test",
            None,
            broken.as_bytes(),
        )
        .await;
    assert!(symbols(&r.findings).contains(&"ARC_FAIL"), "{r:?}");
}

#[tokio::test]
async fn content_stage_deadline_gives_timeout_findings_and_temperror() {
    let hole = BlackHole::new();
    let (pkcs8, _) = key();
    let signed = sign(&pkcs8, &message("alice@auth.test", "Hello https://evil-shop.com/ there"));
    let checks = NetChecks::new(
        hole.dns(Duration::from_secs(30)),
        NetConfig {
            hostname: HOST.into(),
            uribl: vec![DnsList {
                zone: "dbl.test".into(),
                symbol: "URIBL_TEST".into(),
                codes: vec![],
            }],
            content_timeout: Duration::from_millis(400),
            mail_timeout: Duration::from_millis(300),
            ..NetConfig::default()
        },
        None,
    );
    let started = Instant::now();
    let r = checks
        .content_stage(
            ip("192.0.2.10"),
            "mail.good.test",
            "alice@auth.test",
            None,
            signed.as_bytes(),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(
        symbols(&r.findings),
        ["SPF_TIMEOUT", "DKIM_TIMEOUT", "DMARC_TIMEOUT", "ARC_NONE", "URIBL_TEST_TIMEOUT"],
        "{r:?}"
    );
    for part in ["spf=temperror", "dkim=temperror", "dmarc=temperror"] {
        assert!(r.authentication_results.contains(part), "{part}: {}", r.authentication_results);
    }
    assert_eq!(
        symbols(&checks.mail_stage(ip("192.0.2.10"), "h", "a@auth.test").await.unwrap().findings()),
        ["SPF_TIMEOUT"]
    );
}

/// SPF asked at MAIL is the SPF of the end of DATA: its result goes into DMARC and the
/// header without a second query. Proved with a resolver that cannot answer by then: the
/// content stage runs against a black hole, yet reports the SPF pass and aligned DMARC
/// that only the MAIL-stage answer can give.
#[tokio::test]
async fn content_stage_reuses_the_spf_result_from_mail() {
    let server = Unbound::start("").await;
    let live = checks(&server, NetConfig::default());
    let spf = live.mail_stage(ip("192.0.2.10"), "mail.good.test", "alice@auth.test").await.unwrap();
    assert_eq!(symbols(&spf.findings()), ["SPF_PASS"]);
    assert_eq!(spf.domain(), "auth.test");

    let hole = BlackHole::new();
    let offline = NetChecks::new(
        hole.dns(Duration::from_secs(30)),
        NetConfig {
            hostname: HOST.into(),
            content_timeout: Duration::from_millis(400),
            ..NetConfig::default()
        },
        None,
    );
    let msg = message("alice@auth.test", "Hello.");
    let r = offline
        .content_stage(
            ip("192.0.2.10"),
            "mail.good.test",
            "alice@auth.test",
            Some(&spf),
            msg.as_bytes(),
        )
        .await;
    assert_eq!(symbols(&r.findings)[0], "SPF_PASS", "{r:?}");
    assert!(r.authentication_results.contains("spf=pass"), "{}", r.authentication_results);
    // Without the earlier result the same stage has to ask, and times out.
    let r = offline
        .content_stage(ip("192.0.2.10"), "mail.good.test", "alice@auth.test", None, msg.as_bytes())
        .await;
    assert_eq!(symbols(&r.findings)[0], "SPF_TIMEOUT", "{r:?}");
    // A result for other identities is not reused.
    let r = offline
        .content_stage(
            ip("192.0.2.99"),
            "mail.good.test",
            "alice@auth.test",
            Some(&spf),
            msg.as_bytes(),
        )
        .await;
    assert_eq!(symbols(&r.findings)[0], "SPF_TIMEOUT", "{r:?}");

    // A timed-out MAIL stage stays a visible timeout at the end of DATA.
    let slow = NetChecks::new(
        hole.dns(Duration::from_secs(30)),
        NetConfig {
            hostname: HOST.into(),
            mail_timeout: Duration::from_millis(200),
            ..NetConfig::default()
        },
        None,
    );
    let late =
        slow.mail_stage(ip("192.0.2.10"), "mail.good.test", "alice@auth.test").await.unwrap();
    assert_eq!((late.output.as_ref(), symbols(&late.findings())), (None, vec!["SPF_TIMEOUT"]));
    let r = live
        .content_stage(
            ip("192.0.2.10"),
            "mail.good.test",
            "alice@auth.test",
            Some(&late),
            msg.as_bytes(),
        )
        .await;
    assert_eq!(symbols(&r.findings)[0], "SPF_TIMEOUT", "{r:?}");
    assert!(r.authentication_results.contains("spf=temperror"), "{}", r.authentication_results);
}

/// `auth = false` (config `checks.auth`): no SPF, DKIM, DMARC or ARC at either stage, for
/// a message whose SPF fails when the checks are on.
#[tokio::test]
async fn auth_off_asks_and_reports_nothing() {
    let (pkcs8, record) = key();
    let server = Unbound::start(&record).await;
    let signed = sign(&pkcs8, &message("alice@auth.test", "See you at noon."));
    let forged = (ip("198.51.100.7"), "evil.example", "alice@auth.test");
    let on = checks(&server, NetConfig::default());
    let spf = on.mail_stage(forged.0, forged.1, forged.2).await.unwrap();
    assert_eq!(symbols(&spf.findings()), ["SPF_FAIL"]);

    let off = checks(&server, NetConfig { auth: false, ..NetConfig::default() });
    assert_eq!(off.mail_stage(forged.0, forged.1, forged.2).await, None);
    let r = off.content_stage(forged.0, forged.1, forged.2, None, signed.as_bytes()).await;
    assert_eq!(symbols(&r.findings), Vec::<&str>::new(), "{r:?}");
    assert_eq!(r.authentication_results, "");

    // No query at all: against a resolver that never answers, both stages return at
    // once, where asking would wait for the stage deadline.
    let hole = BlackHole::new();
    let silent = NetChecks::new(
        hole.dns(Duration::from_secs(30)),
        NetConfig {
            hostname: HOST.into(),
            auth: false,
            mail_timeout: Duration::from_secs(5),
            content_timeout: Duration::from_secs(5),
            ..NetConfig::default()
        },
        None,
    );
    let started = Instant::now();
    assert_eq!(silent.mail_stage(forged.0, forged.1, forged.2).await, None);
    let r = silent.content_stage(forged.0, forged.1, forged.2, None, signed.as_bytes()).await;
    assert!(r.findings.is_empty(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}
