use super::*;
use levee_types::Domain;

const MINIMAL: &str = r#"hostname = "mx.example.test"
data_dir = "/var/lib/levee"
[smtp]
listen = ["127.0.0.1:2525"]
[[domain]]
name = "example.test"
downstream = "127.0.0.1:2626"
"#;

fn err(text: &str) -> (usize, String) {
    match Config::parse(text, "t.toml") {
        Err(ConfigError::Invalid { line, message, .. }) => (line, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn the_minimal_file_from_the_brief_parses_with_defaults() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.hostname.0, "mx.example.test");
    assert_eq!(c.smtp_listen(), vec!["127.0.0.1:2525".parse().unwrap()]);
    let d = &c.domains[0];
    assert_eq!(d.domain().as_str(), "example.test");
    assert_eq!(d.downstream.as_ref().unwrap().to_string(), "127.0.0.1:2626");
    assert!(d.ready());
    assert_eq!(d.tls, TlsPolicy::Opportunistic);
    assert_eq!(c.delivery.max_lifetime_secs, 5 * 24 * 3600);
}

#[test]
fn unknown_keys_name_their_line() {
    let text = MINIMAL.replace("[smtp]\n", "[smtp]\nlisten_on = 1\n");
    let (line, msg) = err(&text);
    assert_eq!(line, 4, "{msg}");
    assert!(msg.contains("listen_on"), "{msg}");
}

#[test]
fn bad_values_name_their_line() {
    let (line, msg) = err(&MINIMAL.replace("127.0.0.1:2626", "127.0.0.1:99999"));
    assert_eq!(line, 7, "{msg}");
    let (line, msg) = err(&MINIMAL.replace("\"127.0.0.1:2525\"", "\"nowhere\""));
    assert_eq!(line, 4, "{msg}");
    assert!(msg.contains("listen"), "{msg}");
    let (line, _) = err(&MINIMAL.replace("name = \"example.test\"", "name = \"exa mple\""));
    assert_eq!(line, 6);
    let (line, _) = err(&MINIMAL.replace("mx.example.test", "mx..example"));
    assert_eq!(line, 1);
}

#[test]
fn duplicate_domains_are_refused_at_the_second() {
    let text = format!("{MINIMAL}[[domain]]\nname = \"Example.TEST\"\n");
    let (line, msg) = err(&text);
    assert_eq!(line, 9, "{msg}");
}

#[test]
fn a_domain_without_downstream_is_valid_but_not_ready() {
    let text = format!("{MINIMAL}[[domain]]\nname = \"pending.test\"\n");
    let c = Config::parse(&text, "t").unwrap();
    assert!(!c.domains[1].ready());
    let text = format!("{MINIMAL}[[domain]]\nname = \"off.test\"\ndownstream = \"mail.off.test\"\nenabled = false\n");
    let c = Config::parse(&text, "t").unwrap();
    assert!(!c.domains[1].ready());
    assert_eq!(c.domains[1].downstream.as_ref().unwrap().port, 25);
}

#[test]
fn downstream_forms() {
    for (s, want) in [
        ("mail.example.test", "mail.example.test:25"),
        ("mail.example.test:587", "mail.example.test:587"),
        ("[2001:db8::1]:2525", "[2001:db8::1]:2525"),
        ("192.0.2.1", "192.0.2.1:25"),
        ("localhost:2626", "localhost:2626"),
        ("mx:Internal.Example.NET", "mx:internal.example.net"),
    ] {
        assert_eq!(s.parse::<Downstream>().unwrap().to_string(), want);
    }
    for bad in ["", "host:0", "a:b:c", "host:port", "-bad-.test", "mx:", "mx:[127.0.0.1]"] {
        assert!(bad.parse::<Downstream>().is_err(), "{bad}");
    }
}

#[test]
fn every_sample_config_in_the_repo_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut n = 0;
    for dir in ["overlay/etc/levee", "appliance/levee/samples"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") || name.ends_with(".toml.default") {
                Config::load(&e.path()).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
    }
    assert!(n > 0, "no sample configs found");
}

#[test]
fn supervisor_section_has_defaults_and_refuses_unknown_keys() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!((c.supervisor.user.as_str(), c.supervisor.group.as_str()), ("levee", "levee"));
    assert_eq!(c.supervisor.restart_max_secs, 60);
    let text = format!("{MINIMAL}[supervisor]\nuser = \"nobody\"\ngroup = \"nogroup\"\n");
    let c = Config::parse(&text, "t").unwrap();
    assert_eq!((c.supervisor.user.as_str(), c.supervisor.group.as_str()), ("nobody", "nogroup"));
    let (line, msg) = err(&format!("{MINIMAL}[supervisor]\nuid = 0\n"));
    assert_eq!(line, 9, "{msg}");
    let (_, msg) = err(&format!("{MINIMAL}[supervisor]\nuser = \"\"\n"));
    assert!(msg.contains("supervisor"), "{msg}");
}

#[test]
fn policy_weights_and_thresholds() {
    let text =
        format!("{MINIMAL}[policy]\nquarantine_at = 5.5\n[policy.weights]\nBAYES_99 = 9.0\n");
    let c = Config::parse(&text, "t").unwrap();
    assert_eq!(c.policy.quarantine_at, 5.5);
    assert_eq!(c.policy.weights["BAYES_99"], 9.0);
    assert_eq!(c.policy.quarantine_days, 30);
    let text = format!("{MINIMAL}[policy]\ntag_at = 9.0\nquarantine_at = 5.0\n");
    assert!(Config::parse(&text, "t").is_err());
}

#[test]
fn dns_lists_parse_and_bad_symbols_name_their_line() {
    let text = format!(
        "{MINIMAL}[checks]\ndns_server = \"127.0.0.1:5353\"\n[[checks.dnsbl]]\nzone = \"zen.example.net\"\nsymbol = \"ZEN\"\ncodes = {{ \"127.0.0.2\" = \"SBL\" }}\n"
    );
    let c = Config::parse(&text, "t").unwrap();
    assert_eq!(c.checks.dnsbl[0].symbol.0, "ZEN");
    assert_eq!(c.checks.dnsbl[0].codes.len(), 1);
    let (line, msg) = err(&text.replace("\"ZEN\"", "\"zen list\""));
    assert_eq!(line, 12, "{msg}");
}

#[test]
fn domain_policy_overrides_merge_over_the_global_policy() {
    let text = format!(
        "{MINIMAL}[domain.policy]\nreject_at = 8.0\n[domain.policy.weights]\nSPF_FAIL = 9.0\n\
         [[domain]]\nname = \"lenient.test\"\ndownstream = \"127.0.0.1:2626\"\n\
         [domain.policy]\ntag_at = 1.0\nquarantine_at = 50.0\nreject_at = 100.0\n\
         [[domain]]\nname = \"plain.test\"\ndownstream = \"127.0.0.1:2626\"\n\
         [policy]\nquarantine_at = 5.0\n[policy.weights]\nBAYES_99 = 9.0\nSPF_FAIL = 2.5\n"
    );
    let c = Config::parse(&text, "t").unwrap();
    let d = |s: &str| Domain::parse(s).unwrap();
    let strict = c.policy_for(&d("example.test"));
    assert_eq!((strict.tag_at, strict.quarantine_at, strict.reject_at), (4.0, 5.0, 8.0));
    assert_eq!((strict.weights["SPF_FAIL"], strict.weights["BAYES_99"]), (9.0, 9.0));
    let lenient = c.policy_for(&d("lenient.test"));
    assert_eq!((lenient.tag_at, lenient.quarantine_at, lenient.reject_at), (1.0, 50.0, 100.0));
    assert_eq!(lenient.weights["SPF_FAIL"], 2.5);
    // No override, and unknown domains: the global policy as written.
    for name in ["plain.test", "unknown.test"] {
        let p = c.policy_for(&d(name));
        assert_eq!((p.tag_at, p.quarantine_at, p.reject_at), (4.0, 5.0, 15.0));
        assert_eq!(p.weights, c.policy.weights);
    }
    assert!(c.domains[2].policy.is_none());
}

#[test]
fn domain_thresholds_are_checked_after_merging_and_name_the_domain_policy() {
    // reject_at 5 is below the global quarantine_at 6: unordered only once merged.
    let text = format!("{MINIMAL}[domain.policy]\nreject_at = 5.0\n");
    let (line, msg) = err(&text);
    assert_eq!(line, 6, "{msg}");
    assert!(msg.contains("example.test") && msg.contains("tag_at <= quarantine_at"), "{msg}");
    // Lowering all three together is fine.
    let text =
        format!("{MINIMAL}[domain.policy]\ntag_at = 1.0\nquarantine_at = 2.0\nreject_at = 5.0\n");
    assert!(Config::parse(&text, "t").is_ok());
    // A global change that a domain's override no longer fits is refused too.
    let text = format!("{MINIMAL}[domain.policy]\ntag_at = 5.0\n[policy]\nquarantine_at = 4.5\n");
    let (_, msg) = err(&text);
    assert!(msg.contains("domain example.test"), "{msg}");
    let (line, msg) = err(&format!("{MINIMAL}[domain.policy.weights]\nSPF_FAIL = nan\n"));
    assert_eq!(line, 6, "{msg}");
    assert!(msg.contains("SPF_FAIL"), "{msg}");
}

#[test]
fn domain_policy_refuses_unknown_keys_and_bad_values_on_their_line() {
    let (line, msg) =
        err(&format!("{MINIMAL}[domain.policy]\ntag_at = 1.0\nquarantine_days = 3\n"));
    assert_eq!(line, 10, "{msg}");
    assert!(msg.contains("quarantine_days"), "{msg}");
    let (line, msg) = err(&format!("{MINIMAL}[domain.policy]\nreject_at = \"high\"\n"));
    assert_eq!(line, 9, "{msg}");
    let c = Config::parse(&format!("{MINIMAL}[domain.policy]\n"), "t").unwrap();
    assert!(c.domains[0].policy.as_ref().unwrap().is_empty());
}

#[test]
fn learning_keys_are_optional_validated_and_unknown_ones_refused() {
    assert_eq!(Config::parse(MINIMAL, "t.toml").unwrap().learning, Learning::default());
    let c = Config::parse(
        &format!("{MINIMAL}[learning]\nautolearn = false\nmax_lead = 4\nmax_catch_drop = 0.5\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!((c.learning.autolearn, c.learning.max_lead), (Some(false), Some(4)));
    assert_eq!(c.learning.max_catch_drop, Some(0.5));
    let (_, m) = err(&format!("{MINIMAL}[learning]\nmax_fp_rise = -1.0\n"));
    assert!(m.contains("learning.max_fp_rise"), "{m}");
    let (_, m) = err(&format!("{MINIMAL}[learning]\nuser_step = 9.0\n"));
    assert!(m.contains("learning.user_step"), "{m}");
    let (line, m) = err(&format!("{MINIMAL}[learning]\nmax_leads = 4\n"));
    assert!(m.contains("max_leads") && line == 9, "{line}: {m}");
}

#[test]
fn report_addresses_default_to_the_host_name_and_can_be_changed_or_turned_off() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(
        c.report_addresses(),
        Some(("spam@mx.example.test".into(), "ham@mx.example.test".into()))
    );
    assert_eq!(c.report_kind("Spam@MX.example.test"), Some(true));
    assert_eq!(c.report_kind("ham@mx.example.test"), Some(false));
    assert_eq!(c.report_kind("spam@otherhost.test"), None);
    let custom = format!("{MINIMAL}[learning]\nreport_spam = \"junk@example.test\"\n");
    let c = Config::parse(&custom, "t.toml").unwrap();
    assert_eq!(c.report_kind("junk@example.test"), Some(true));
    assert_eq!(c.report_kind("spam@mx.example.test"), None);
    let off = format!("{MINIMAL}[learning]\nreports = false\n");
    assert_eq!(Config::parse(&off, "t.toml").unwrap().report_kind("spam@mx.example.test"), None);
    let (line, msg) = err(&format!("{MINIMAL}[learning]\nreport_ham = \"not an address\"\n"));
    assert_eq!(line, 9, "{msg}");
    let (_, msg) = err(&format!("{MINIMAL}[learning]\nreport_ham = \"spam@mx.example.test\"\n"));
    assert!(msg.contains("must differ"), "{msg}");
}

#[test]
fn timeouts_have_defaults_and_refuse_zero_and_huge_values_on_their_line() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    let s = &c.smtp;
    let got = [
        s.idle_timeout_secs,
        s.command_timeout_secs,
        s.data_timeout_secs,
        s.tls_handshake_timeout_secs,
        s.write_timeout_secs,
    ]
    .map(Seconds::get);
    assert_eq!(got, [300, 60, 900, 10, 60]);
    let d = &c.delivery;
    let got =
        [d.connect_timeout_secs, d.command_timeout_secs, d.data_timeout_secs].map(Seconds::get);
    assert_eq!(got, [30, 300, 600]);
    assert_eq!(d.data_timeout(), Duration::from_secs(600));

    let set = |key: &str, v: &str| MINIMAL.replace("[smtp]\n", &format!("[smtp]\n{key} = {v}\n"));
    let c = Config::parse(&set("tls_handshake_timeout_secs", "3"), "t").unwrap();
    assert_eq!(c.smtp.tls_handshake_timeout_secs.duration(), Duration::from_secs(3));
    for key in [
        "idle_timeout_secs",
        "command_timeout_secs",
        "data_timeout_secs",
        "tls_handshake_timeout_secs",
        "write_timeout_secs",
        "session_timeout_secs",
        "stress_idle_timeout_secs",
        "stress_command_timeout_secs",
        "stress_session_timeout_secs",
        "error_delay_max_secs",
    ] {
        for bad in ["0", "604801", "18446744073709551615", "-1", "\"10\""] {
            let (line, msg) = err(&set(key, bad));
            assert_eq!(line, 4, "{key} = {bad}: {msg}");
        }
        let mut most = set(key, "604800");
        if key == "data_timeout_secs" {
            // The session deadline may not be shorter than the data deadline.
            most = most.replace("[smtp]\n", "[smtp]\nsession_timeout_secs = 604800\n");
        }
        assert!(Config::parse(&most, "t").is_ok(), "{key}");
    }
    let (line, msg) = err(&format!("{MINIMAL}[delivery]\ndata_timeout_secs = 0\n"));
    assert_eq!(line, 9, "{msg}");
    assert!(msg.contains("out of range"), "{msg}");
}

#[test]
fn session_deadline_stress_and_error_delays_have_defaults_and_bounds() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    let s = &c.smtp;
    let got = [
        s.session_timeout_secs,
        s.stress_idle_timeout_secs,
        s.stress_command_timeout_secs,
        s.stress_session_timeout_secs,
        s.error_delay_max_secs,
    ]
    .map(Seconds::get);
    assert_eq!(got, [1800, 10, 10, 300, 5]);
    assert_eq!((s.stress_at_percent.get(), s.soft_error_limit), (80, 3));
    // 80% of 500: the 400th connection is not past it, the 401st is.
    assert!(!s.stress_at_percent.exceeded(400, 500));
    assert!(s.stress_at_percent.exceeded(401, 500));

    let set = |extra: &str| MINIMAL.replace("[smtp]\n", &format!("[smtp]\n{extra}\n"));
    let (_, msg) = err(&set("session_timeout_secs = 600"));
    assert!(msg.contains("at least smtp.data_timeout_secs (900)"), "{msg}");
    assert!(Config::parse(&set("session_timeout_secs = 600\ndata_timeout_secs = 600"), "t").is_ok());
    for bad in ["0", "101", "-1", "\"80\"", "0.5"] {
        let (line, msg) = err(&set(&format!("stress_at_percent = {bad}")));
        assert_eq!(line, 4, "stress_at_percent = {bad}: {msg}");
    }
    assert_eq!(
        Config::parse(&set("stress_at_percent = 100"), "t").unwrap().smtp.stress_at_percent.get(),
        100
    );
}

#[test]
fn the_hop_limit_defaults_to_50_and_refuses_zero_and_huge_values_on_its_line() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.smtp.max_received_headers.get(), 50);
    let set =
        |v: &str| MINIMAL.replace("[smtp]\n", &format!("[smtp]\nmax_received_headers = {v}\n"));
    assert_eq!(Config::parse(&set("30"), "t").unwrap().smtp.max_received_headers.get(), 30);
    assert_eq!(Config::parse(&set("1000"), "t").unwrap().smtp.max_received_headers.get(), 1000);
    for bad in ["0", "1001", "18446744073709551615", "-1", "\"50\""] {
        let (line, msg) = err(&set(bad));
        assert_eq!(line, 4, "max_received_headers = {bad}: {msg}");
    }
    assert!(err(&set("0")).1.contains("out of range"));
}

#[test]
fn log_retention_defaults_to_30_days_and_is_bounded() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.log.retention_days.days(), 30);
    assert_eq!(c.log.retention_days.as_secs(), 30 * 86_400);
    for days in [1, 365, 3650] {
        let c =
            Config::parse(&format!("{MINIMAL}[log]\nretention_days = {days}\n"), "t.toml").unwrap();
        assert_eq!(u64::from(c.log.retention_days.days()), days);
    }
    for bad in ["0", "3651", "-1", "70000", "\"30\"", "1.5"] {
        let (line, msg) = err(&format!("{MINIMAL}[log]\nretention_days = {bad}\n"));
        assert_eq!(line, 9, "{bad}: {msg}");
    }
    let (_, msg) = err(&format!("{MINIMAL}[log]\nretention_days = 0\n"));
    assert!(msg.contains("between 1 and 3650"), "{msg}");
    let (line, msg) = err(&format!("{MINIMAL}[log]\nretention = 3\n"));
    assert_eq!(line, 9, "{msg}");
}

#[test]
fn verify_takes_a_pin_or_a_ca_file_and_nothing_else_does() {
    let pin = format!("sha256:{}", "AB:".repeat(31) + "CD");
    let text =
        format!("{MINIMAL}tls = \"verify\"\ntls_pin = \"{pin}\"\ntls_ca = \"/etc/ca.pem\"\n");
    let c = Config::parse(&text, "t.toml").unwrap();
    let d = &c.domains[0];
    assert_eq!(d.tls, TlsPolicy::Verify);
    let mut want = [0xab; 32];
    want[31] = 0xcd;
    assert_eq!(d.tls_pin, Some(CertPin(want)));
    assert_eq!(d.tls_ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));

    let (line, msg) = err(&format!("{MINIMAL}tls = \"verify\"\ntls_pin = \"sha256:abc\"\n"));
    assert_eq!(line, 9, "{msg}");
    assert!(msg.contains("64 hex digits"), "{msg}");
    let (line, msg) = err(&format!("{MINIMAL}tls_ca = \"/etc/ca.pem\"\n"));
    assert_eq!(line, 6, "the domain's name line: {msg}");
    assert!(msg.contains("tls = \"verify\""), "{msg}");
}
