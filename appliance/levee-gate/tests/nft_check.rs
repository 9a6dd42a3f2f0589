//! `nft -c` accepts every golden rule set, and the ban commands against it.
//!
//! Needs root and nft (CI has both); it fails rather than skips without them. Set
//! `LEVEE_SKIP_NFT=1` to skip explicitly. Each check runs in a fresh network namespace
//! (`unshare -n`), so the host's own rule set plays no part.

use std::path::Path;
use std::time::Duration;

use levee_gate::{ban_command, unban_command, GateError, Nft};

fn nft() -> Option<Nft> {
    if std::env::var_os("LEVEE_SKIP_NFT").is_some_and(|v| v == "1") {
        eprintln!("LEVEE_SKIP_NFT=1: skipping the nft checks");
        return None;
    }
    assert!(nix::unistd::geteuid().is_root(), "nft checks need root (or LEVEE_SKIP_NFT=1)");
    Some(Nft::with_command(["unshare", "-n", "nft"]))
}

fn goldens() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nft"))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "only {} golden .nft files in {}", v.len(), dir.display());
    v
}

#[test]
fn nft_accepts_every_golden() {
    let Some(nft) = nft() else { return };
    for (path, text) in goldens() {
        nft.check(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[test]
fn nft_accepts_ban_commands_in_the_same_transaction() {
    let Some(nft) = nft() else { return };
    let (_, minimal) = goldens().into_iter().find(|(p, _)| p.ends_with("/minimal.nft")).unwrap();
    let mut text = minimal;
    for addr in ["192.0.2.7", "2001:db8::7", "::ffff:198.51.100.1"] {
        let addr = addr.parse().unwrap();
        text += &ban_command(addr, Some(Duration::from_secs(60)));
        text += &ban_command(addr, None);
        text += &unban_command(addr);
    }
    nft.check(&text).unwrap();
}

#[test]
fn nft_refuses_a_broken_rule_set() {
    let Some(nft) = nft() else { return };
    // The check must be able to fail, or the test above proves nothing.
    let broken = "table inet levee { chain input { tcp dport { 25 } acceptt } }\n";
    match nft.check(broken) {
        Err(GateError::Nft { stderr, .. }) => assert!(stderr.contains("acceptt"), "{stderr}"),
        other => panic!("expected nft to refuse, got {other:?}"),
    }
}
