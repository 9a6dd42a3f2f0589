//! `levee gate print` and `levee gate downstream` as a user runs them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_levee");

/// A config file in its own directory, removed with it when the guard drops.
struct Config(PathBuf);

impl Drop for Config {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl std::ops::Deref for Config {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

fn config(name: &str, gate: &str) -> Config {
    let dir = std::env::temp_dir().join(format!("levee-gate-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("levee.toml");
    let text = format!(
        r#"hostname = "mx.example.test"
data_dir = "/var/lib/levee"
[smtp]
listen = ["127.0.0.1:2525"]
[[domain]]
name = "example.test"
downstream = "10.0.0.5:2626"
source_address = "10.0.0.2"
{gate}"#
    );
    std::fs::write(&path, text).unwrap();
    Config(path)
}

fn levee(args: &[&str], config: &PathBuf) -> Output {
    Command::new(BIN).args(args).arg("--config").arg(config).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn print_shows_the_rule_set_and_nft_accepts_it() {
    let c = config("print", "[gate]\nenabled = true\nlan = [\"192.168.1.0/24\"]\nssh = true\n");
    let text = stdout(&levee(&["gate", "print"], &c));
    assert!(text.contains("table inet levee {"), "{text}");
    assert!(text.contains("ip saddr { 192.168.1.0/24 } tcp dport { 22 } accept"), "{text}");
    // The real parser, in a fresh network namespace so nothing here is touched (root only).
    if nix::unistd::geteuid().is_root() && std::env::var_os("LEVEE_SKIP_NFT").is_none() {
        let mut child = Command::new("unshare")
            .args(["-n", "nft", "-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn print_refuses_a_gate_that_locks_out_the_console() {
    let c = config("nolan", "[gate]\nenabled = true\n");
    let o = levee(&["gate", "print"], &c);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("console"));
    let c = config("hostbits", "[gate]\nlan = [\"192.168.1.1/24\"]\n");
    let o = levee(&["gate", "print"], &c);
    assert!(String::from_utf8_lossy(&o.stderr).contains("host bits"));
}

#[test]
fn downstream_in_both_flavours() {
    let c = config("down", "");
    let nft = stdout(&levee(&["gate", "downstream", "--appliance", "10.0.0.3"], &c));
    assert!(nft.contains("elements = { 10.0.0.2, 10.0.0.3 }"), "{nft}");
    assert!(nft.contains("tcp dport 2626 drop"), "{nft}");
    let ipt = stdout(&levee(&["gate", "downstream", "--flavour", "iptables", "--port", "25"], &c));
    assert!(ipt.contains("iptables -A LEVEE_DOWNSTREAM -s 10.0.0.2 -j RETURN"), "{ipt}");
    assert!(ipt.contains("--dport 25 -j LEVEE_DOWNSTREAM"), "{ipt}");
    let bad = levee(&["gate", "downstream", "--flavour", "pf"], &c);
    assert!(!bad.status.success());
}
