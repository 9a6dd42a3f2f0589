//! The rendered gate on a real network: three network namespaces joined by veth pairs,
//!
//! ```text
//!   lv-wan-PID  eth0 10.99.1.2 fd99:1::2 ---- wan0 10.99.1.1 fd99:1::1 \
//!                                                                      lv-box-PID (the gate)
//!   lv-lan-PID  eth0 10.99.2.2 fd99:2::2 ---- lan0 10.99.2.1 fd99:2::1 /
//! ```
//!
//! the rule set applied in lv-box with the real `nft -f`, and TCP listeners in lv-box. Every
//! address lives only inside these namespaces, so no packet leaves them. A second test fences a
//! "mail server" namespace with the downstream rules, both flavours.
//!
//! Needs root, nft, iproute2 and iptables (CI has them); fails rather than skips without them.
//! `LEVEE_SKIP_NFT=1` skips explicitly. The namespaces are removed on exit, also after a failure.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use levee_gate::{downstream_rules, render, Flavour, GateSpec, Nft};
use nix::sched::CloneFlags;
use socket2::{Domain, Socket, Type};

const SMTP: u16 = 25;
const CONSOLE: u16 = 443;
const SSH: u16 = 22;
/// A dropped SYN shows as a connect timeout; on a veth an accepted one takes microseconds.
const DROPPED_AFTER: Duration = Duration::from_millis(1000);

fn skip() -> bool {
    if std::env::var_os("LEVEE_SKIP_NFT").is_some_and(|v| v == "1") {
        eprintln!("LEVEE_SKIP_NFT=1: skipping the network namespace test");
        return true;
    }
    assert!(nix::unistd::geteuid().is_root(), "the netns test needs root (or LEVEE_SKIP_NFT=1)");
    false
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
}

/// Named network namespaces, deleted when dropped (veth ends go with them).
struct Lab {
    names: Vec<String>,
}

impl Lab {
    fn new(roles: &[&str]) -> Lab {
        let pid = std::process::id();
        let mut lab = Lab { names: Vec::new() };
        for role in roles {
            let name = format!("lv-{role}-{pid}");
            run(&["ip", "netns", "add", &name]);
            lab.names.push(name.clone());
            run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn ns(&self, role: &str) -> &str {
        let suffix = format!("-{}", std::process::id());
        self.names
            .iter()
            .find(|n| n.strip_prefix("lv-").and_then(|r| r.strip_suffix(&suffix)) == Some(role))
            .unwrap_or_else(|| panic!("no namespace for {role}"))
    }

    /// A veth pair between two namespaces; names are per namespace, so they cannot clash.
    fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        run(&[
            "ip", "-n", na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", nb,
        ]);
        run(&["ip", "-n", na, "link", "set", a_if, "up"]);
        run(&["ip", "-n", nb, "link", "set", b_if, "up"]);
    }

    fn addr(&self, role: &str, dev: &str, cidr: &str) {
        let ns = self.ns(role);
        let mut args = vec!["ip", "-n", ns, "addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad"); // usable at once, no duplicate address detection wait
        }
        run(&args);
    }

    fn nft(&self, role: &str) -> Nft {
        Nft::with_command(["ip", "netns", "exec", self.ns(role), "nft"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `f` on a fresh thread inside namespace `ns`; the calling thread stays where it is.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("{ns}: {e}"));
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Connected,
    /// Reached the host, nothing listening (RST): the gate let it through.
    Refused,
    /// No answer: dropped.
    TimedOut,
}
use Outcome::*;

fn connect(ns: &str, src: Option<&str>, dst: &str, port: u16) -> Outcome {
    let dst = SocketAddr::new(dst.parse::<IpAddr>().unwrap(), port);
    let src = src.map(|s| SocketAddr::new(s.parse::<IpAddr>().unwrap(), 0));
    in_ns(ns, || {
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None).unwrap();
        if let Some(src) = src {
            sock.bind(&src.into()).unwrap_or_else(|e| panic!("bind {src}: {e}"));
        }
        match sock.connect_timeout(&dst.into(), DROPPED_AFTER) {
            Ok(()) => Connected,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Refused,
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => TimedOut,
            Err(e) => panic!("connect {dst} from {ns}: {e}"),
        }
    })
}

/// A dual-stack TCP listener in a namespace that accepts and closes until dropped.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &str, port: u16) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (ns.to_owned(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let sock = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
            sock.set_only_v6(false).unwrap();
            sock.set_reuse_address(true).unwrap();
            let addr: SocketAddr = format!("[::]:{port}").parse().unwrap();
            sock.bind(&addr.into()).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
            sock.listen(64).unwrap();
            let listener: TcpListener = sock.into();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            // Bounded by the stop flag, which Drop sets.
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("listener did not start");
        Listener { stop, thread: Some(thread) }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asserts each (from, to, port) gets the expected outcome, reporting all mismatches at once.
fn expect(lab: &Lab, step: &str, cases: &[(&str, &str, u16, Outcome)]) {
    let mut wrong = Vec::new();
    for &(from, to, port, want) in cases {
        let got = connect(lab.ns(from), None, to, port);
        if got != want {
            wrong.push(format!("{from} -> [{to}]:{port}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{step}:\n{}", wrong.join("\n"));
}

const BOX_WAN4: &str = "10.99.1.1";
const BOX_WAN6: &str = "fd99:1::1";
const BOX_LAN4: &str = "10.99.2.1";
const BOX_LAN6: &str = "fd99:2::1";
const WAN4: &str = "10.99.1.2";
const WAN6: &str = "fd99:1::2";

#[test]
fn gate_on_a_real_network() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new(&["wan", "lan", "box"]);
    lab.link("box", "wan0", "wan", "eth0");
    lab.link("box", "lan0", "lan", "eth0");
    lab.addr("box", "wan0", "10.99.1.1/24");
    lab.addr("box", "wan0", "fd99:1::1/64");
    lab.addr("box", "lan0", "10.99.2.1/24");
    lab.addr("box", "lan0", "fd99:2::1/64");
    lab.addr("wan", "eth0", "10.99.1.2/24");
    lab.addr("wan", "eth0", "fd99:1::2/64");
    lab.addr("lan", "eth0", "10.99.2.2/24");
    lab.addr("lan", "eth0", "fd99:2::2/64");

    let mut spec = GateSpec {
        smtp_ports: vec![SMTP],
        console_ports: vec![CONSOLE],
        lan: vec!["10.99.2.0/24".parse().unwrap(), "fd99:2::/64".parse().unwrap()],
        smtp_rate_per_minute: 5,
        ban_timeout: Duration::from_secs(2),
        ..GateSpec::default()
    };
    let nft = lab.nft("box");
    let ruleset = render(&spec).unwrap();
    nft.check(&ruleset).unwrap();
    // Before any traffic, so IPv6 neighbour discovery must pass the gate too.
    nft.apply(&ruleset).unwrap();
    let _smtp = Listener::start(lab.ns("box"), SMTP);
    let _console = Listener::start(lab.ns("box"), CONSOLE);

    // 1. SMTP from both sides; the console and SSH from the LAN only.
    expect(
        &lab,
        "initial rule set",
        &[
            ("wan", BOX_WAN4, SMTP, Connected),
            ("wan", BOX_WAN6, SMTP, Connected),
            ("lan", BOX_LAN4, SMTP, Connected),
            ("lan", BOX_LAN6, SMTP, Connected),
            ("lan", BOX_LAN4, CONSOLE, Connected),
            ("lan", BOX_LAN6, CONSOLE, Connected),
            ("wan", BOX_WAN4, CONSOLE, TimedOut),
            ("wan", BOX_WAN6, CONSOLE, TimedOut),
            ("lan", BOX_LAN4, SSH, TimedOut), // ssh is off
        ],
    );

    // 2. A ban drops the banned address only, and expires by itself (the set's default, 2s).
    let banned_at = Instant::now();
    nft.ban(WAN4.parse().unwrap(), None).unwrap();
    expect(
        &lab,
        "WAN IPv4 banned",
        &[
            ("wan", BOX_WAN4, SMTP, TimedOut),
            ("wan", BOX_WAN6, SMTP, Connected),
            ("lan", BOX_LAN4, SMTP, Connected),
        ],
    );
    std::thread::sleep(Duration::from_millis(2600).saturating_sub(banned_at.elapsed()));
    expect(&lab, "ban expired", &[("wan", BOX_WAN4, SMTP, Connected)]);

    // 3. An explicit timeout, and unban before it runs out.
    nft.ban(WAN6.parse().unwrap(), Some(Duration::from_secs(600))).unwrap();
    expect(&lab, "WAN IPv6 banned", &[("wan", BOX_WAN6, SMTP, TimedOut)]);
    nft.unban(WAN6.parse().unwrap()).unwrap();
    nft.unban(WAN6.parse().unwrap()).unwrap(); // harmless when not banned
    expect(&lab, "WAN IPv6 unbanned", &[("wan", BOX_WAN6, SMTP, Connected)]);

    // 4. Replace the live table (fresh rate buckets) with SSH on: LAN reaches port 22 (refused:
    //    nothing listens there), WAN does not.
    spec.ssh = true;
    nft.apply(&render(&spec).unwrap()).unwrap();
    expect(
        &lab,
        "rule set replaced, ssh on",
        &[("lan", BOX_LAN4, SSH, Refused), ("wan", BOX_WAN4, SSH, TimedOut)],
    );

    // 5. The per-source rate limit: 5 a minute with a burst of 5, so 10 quick connections from
    //    one source get 5 through; another source keeps its own bucket.
    let outcomes: Vec<Outcome> =
        (0..10).map(|_| connect(lab.ns("wan"), None, BOX_WAN4, SMTP)).collect();
    let through = outcomes.iter().filter(|o| **o == Connected).count();
    assert_eq!(through, 5, "rate limit: {outcomes:?}");
    assert!(outcomes[..5].iter().all(|o| *o == Connected), "{outcomes:?}");
    assert!(outcomes[5..].iter().all(|o| *o == TimedOut), "{outcomes:?}");
    expect(
        &lab,
        "other sources unaffected",
        &[("wan", BOX_WAN6, SMTP, Connected), ("lan", BOX_LAN4, SMTP, Connected)],
    );

    // 6. The table holds what we think it does.
    let listing = nft.run(&["list", "table", "inet", "levee"], "").unwrap();
    assert!(listing.contains("10.99.1.2"), "WAN source missing from the rate set:\n{listing}");
    assert!(listing.contains("policy drop"), "{listing}");

    eprintln!("netns gate test took {:?}", started.elapsed());
}

#[test]
fn downstream_rules_fence_the_mail_server() {
    if skip() {
        return;
    }
    // lv-app-PID is the appliance, with a second address that is NOT the appliance's;
    // lv-mx-PID is the organisation's mail server.
    let lab = Lab::new(&["app", "mx"]);
    lab.link("app", "eth0", "mx", "eth0");
    for (role, cidr) in [
        ("app", "10.99.3.1/24"),
        ("app", "10.99.3.3/24"),
        ("app", "fd99:3::1/64"),
        ("app", "fd99:3::3/64"),
        ("mx", "10.99.3.2/24"),
        ("mx", "fd99:3::2/64"),
    ] {
        lab.addr(role, "eth0", cidr);
    }
    let _mx = Listener::start(lab.ns("mx"), SMTP);
    let (app, mx) = (lab.ns("app"), lab.ns("mx"));
    let appliance: Vec<IpAddr> = vec!["10.99.3.1".parse().unwrap(), "fd99:3::1".parse().unwrap()];
    let probe = |step: &str| {
        let cases = [
            (app, Some("10.99.3.1"), "10.99.3.2", Connected),
            (app, Some("fd99:3::1"), "fd99:3::2", Connected),
            (app, Some("10.99.3.3"), "10.99.3.2", TimedOut),
            (app, Some("fd99:3::3"), "fd99:3::2", TimedOut),
            (mx, None, "127.0.0.1", Connected),
            (mx, None, "::1", Connected),
        ];
        for (ns, src, dst, want) in cases {
            let got = connect(ns, src, dst, SMTP);
            assert_eq!(got, want, "{step}: {src:?} -> {dst}");
        }
    };

    // Open before the guard: the bystander address gets through.
    assert_eq!(connect(app, Some("10.99.3.3"), "10.99.3.2", SMTP), Connected);

    let nft_rules = downstream_rules(&appliance, SMTP, Flavour::Nftables);
    lab.nft("mx").apply(&nft_rules).unwrap();
    probe("nftables guard");
    lab.nft("mx").apply(&nft_rules).unwrap(); // re-loadable
    lab.nft("mx").apply("delete table inet levee_downstream\n").unwrap();
    assert_eq!(connect(app, Some("10.99.3.3"), "10.99.3.2", SMTP), Connected);

    let script = downstream_rules(&appliance, SMTP, Flavour::Iptables);
    for _ in 0..2 {
        // Twice: re-running must not stack a second jump or fail.
        run(&["ip", "netns", "exec", mx, "sh", "-c", &script]);
    }
    probe("iptables guard");
    let out = Command::new("ip").args(["netns", "exec", mx, "iptables", "-S", "INPUT"]).output();
    let rules = String::from_utf8(out.unwrap().stdout).unwrap();
    assert_eq!(rules.matches("LEVEE_DOWNSTREAM").count(), 1, "{rules}");
}
