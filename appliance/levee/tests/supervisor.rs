//! `levee supervise` as a real process tree: the binary under test runs as root, starts the
//! engine as `nobody`, and is driven with signals while SMTP clients and a small SMTP sink
//! (the downstream server) run in this process on loopback ports.
//!
//! Needs root (CI runs as root); fails rather than skips without it. The gate test also needs
//! `nft`, `unshare` and `nsenter`; `LEVEE_SKIP_NFT=1` skips that one explicitly.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_levee");
/// An unprivileged user and group every Debian system has.
const USER: &str = "nobody";
const GROUP: &str = "nogroup";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "the supervisor tests need root");
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scratch directory the engine's user can traverse; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("levee-sv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_config(dir: &Path, listen: &str, downstream: &str, extra: &str) -> PathBuf {
    let path = dir.join("levee.toml");
    let text = format!(
        r#"hostname = "mx.example.test"
data_dir = "{data}"
[smtp]
listen = ["{listen}"]
tls = false
min_free_bytes = 1048576
max_errors = 3
[delivery]
retry_first_secs = 1
retry_max_interval_secs = 2
connect_timeout_secs = 5
[[domain]]
name = "example.test"
downstream = "{downstream}"
[supervisor]
user = "{USER}"
group = "{GROUP}"
restart_max_secs = 4
stop_timeout_secs = 20
{extra}"#,
        data = dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `levee supervise` (optionally behind a wrapper such as `unshare -n`); its log
/// goes to a file. Killed with its engine on drop if a test fails half-way.
struct Supervisor {
    child: Child,
    log: PathBuf,
}

impl Supervisor {
    fn start(dir: &Path, config: &Path) -> Supervisor {
        Supervisor::start_wrapped(dir, config, &[])
    }

    fn start_wrapped(dir: &Path, config: &Path, wrapper: &[&str]) -> Supervisor {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!("supervisor-{}.log", STARTS.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = if wrapper.is_empty() {
            Command::new(BIN)
        } else {
            let mut c = Command::new(wrapper[0]);
            c.args(&wrapper[1..]).arg(BIN);
            c
        };
        cmd.arg("supervise")
            .arg("--config")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env("LEVEE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().expect("starting levee supervise");
        Supervisor { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, limit: Duration) {
        assert!(
            wait_until(limit, || self.log().contains(needle)),
            "no {needle:?} in the supervisor log within {limit:?}:\n{}",
            self.log()
        );
    }

    /// The engine's pid: the supervisor's only child.
    fn engine(&self) -> Option<u32> {
        children(self.pid()).into_iter().next()
    }

    fn wait_engine(&self, not: Option<u32>) -> u32 {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(20), || {
            found = self.engine().filter(|p| Some(*p) != not);
            found.is_some()
        });
        assert!(ok, "no engine appeared:\n{}", self.log());
        found.unwrap()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the supervisor to exit within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "supervisor still running after {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            for pid in children(self.pid()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Processes whose parent is `parent`, from /proc.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name is in parentheses and may hold spaces: fields follow the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

// --------------------------------------------------------------------------------------------
// SMTP on both sides

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// One reply (all its lines); returns the code.
    fn reply(&mut self) -> std::io::Result<u16> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let code = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply {line:?}"))
            })?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    fn cmd(&mut self, line: &str) -> std::io::Result<u16> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\r\n")?;
        self.reply()
    }
}

/// Sends one message tagged `tag`; `Ok(true)` only when the server said 250 after DATA.
fn send_message(addr: SocketAddr, tag: &str) -> std::io::Result<bool> {
    let mut c = Conn::open(addr)?;
    if c.reply()? != 220 {
        return Ok(false);
    }
    if c.cmd("EHLO client.test")? != 250
        || c.cmd("MAIL FROM:<sender@client.test>")? != 250
        || c.cmd("RCPT TO:<user@example.test>")? != 250
        || c.cmd("DATA")? != 354
    {
        return Ok(false);
    }
    let body = format!(
        "From: sender@client.test\r\nTo: user@example.test\r\nSubject: {tag}\r\n\r\nbody of {tag}\r\n.\r\n"
    );
    c.writer.write_all(body.as_bytes())?;
    let accepted = c.reply()? == 250;
    let _ = c.cmd("QUIT");
    Ok(accepted)
}

/// The downstream server: accepts everything, slowly, and records the Subject of each
/// message. The pause (1s) before each 250 keeps messages in the queue when the engine stops.
struct Sink {
    addr: SocketAddr,
    subjects: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let subjects = Arc::new(Mutex::new(Vec::new()));
        let seen = subjects.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = sink_session(stream, &seen);
                });
            }
        });
        Sink { addr, subjects }
    }

    fn received(&self) -> HashSet<String> {
        self.subjects.lock().unwrap().iter().cloned().collect()
    }
}

fn sink_session(stream: TcpStream, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 sink.test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => w.write_all(b"250-sink.test\r\n250 8BITMIME\r\n")?,
            "DATA" => {
                w.write_all(b"354 go ahead\r\n")?;
                let mut subject = None;
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    if let Some(s) = line.strip_prefix("Subject: ") {
                        subject.get_or_insert_with(|| s.trim_end().to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(1000));
                seen.lock().unwrap().extend(subject);
                w.write_all(b"250 2.0.0 stored\r\n")?;
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"250 ok\r\n")?,
        }
    }
}

fn banner(addr: SocketAddr) -> bool {
    Conn::open(addr).and_then(|mut c| c.reply()).is_ok_and(|code| code == 220)
}

// --------------------------------------------------------------------------------------------

#[test]
fn the_engine_runs_unprivileged_and_is_restarted_after_a_kill() {
    require_root();
    let dir = Scratch::new("restart");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_config(&dir.0, &addr.to_string(), "127.0.0.1:9", "");
    let mut sup = Supervisor::start(&dir.0, &config);
    let first = sup.wait_engine(None);
    assert!(wait_until(Duration::from_secs(20), || banner(addr)), "no banner:\n{}", sup.log());

    // The engine: nobody, no way back to root.
    let nobody = nix::unistd::User::from_name(USER).unwrap().unwrap().uid.as_raw().to_string();
    let uids: Vec<String> =
        status_field(first, "Uid").split_whitespace().map(str::to_string).collect();
    assert_eq!(uids, [nobody.clone(), nobody.clone(), nobody.clone(), nobody], "real/eff/saved/fs");
    let gid = nix::unistd::Group::from_name(GROUP).unwrap().unwrap().gid.as_raw().to_string();
    assert_eq!(status_field(first, "Groups"), gid);
    assert_eq!(status_field(first, "NoNewPrivs"), "1");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(status_field(first, set), "0000000000000000", "{set}");
    }
    // The supervisor stays root; it is the one that applies the gate.
    assert_eq!(status_field(sup.pid(), "Uid").split_whitespace().next(), Some("0"));
    // The data directory now belongs to the engine's user.
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.0.join("data")).unwrap();
        assert_eq!(
            meta.uid().to_string(),
            status_field(first, "Uid").split_whitespace().next().unwrap()
        );
    }

    // Kill it: a new engine, logged with the reason, serving on the same socket.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let second = sup.wait_engine(Some(first));
    assert_ne!(first, second);
    sup.wait_log("killed by SIGKILL", Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(20), || banner(addr)), "no banner after restart");
    assert_eq!(status_field(second, "NoNewPrivs"), "1");
    assert_eq!(status_field(second, "CapEff"), "0000000000000000");

    // SIGHUP with a broken config: refused, the engine keeps serving.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("[smtp]", "[smtp]\nno_such_key = 1")).unwrap();
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    sup.wait_log("config reload refused", Duration::from_secs(10));
    std::fs::write(&config, &good).unwrap();
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    sup.wait_log("config reloaded", Duration::from_secs(10));
    // Forwarded: the engine reloads too (its own log line, target `levee`).
    sup.wait_log("INFO levee: config reloaded", Duration::from_secs(10));
    assert_eq!(sup.engine(), Some(second), "a reload restarted the engine:\n{}", sup.log());
    assert!(banner(addr));

    sup.signal(nix::sys::signal::Signal::SIGTERM);
    let status = sup.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", sup.log());
    assert!(children(sup.pid()).is_empty());
    assert!(!Path::new(&format!("/proc/{second}")).exists(), "engine outlived the supervisor");
}

#[test]
fn sigterm_during_a_load_exits_cleanly_and_loses_no_message() {
    require_root();
    let dir = Scratch::new("load");
    let sink = Sink::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(&dir.0, &addr.to_string(), &sink.addr.to_string(), "");
    let mut sup = Supervisor::start(&dir.0, &config);
    sup.wait_engine(None);
    assert!(wait_until(Duration::from_secs(20), || banner(addr)), "no banner:\n{}", sup.log());

    // Four clients send as fast as they can; every 250 is recorded.
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (accepted, attempts, stop) = (accepted.clone(), attempts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut failures = 0;
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) || failures > 20 {
                        break;
                    }
                    let tag = format!("m-{t}-{n}");
                    attempts.fetch_add(1, Ordering::Relaxed);
                    match send_message(addr, &tag) {
                        Ok(true) => {
                            accepted.lock().unwrap().insert(tag);
                        }
                        Ok(false) | Err(_) => {
                            failures += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || accepted.lock().unwrap().len() >= 40),
        "the load never got going:\n{}",
        sup.log()
    );

    // Mid-load: stop.
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    let status = sup.wait_exit(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "{status}:\n{}", sup.log());
    assert!(sup.log().contains("engine stopped status=exit status 0"), "{}", sup.log());
    let accepted = accepted.lock().unwrap().clone();
    let delivered = sink.received().len();
    eprintln!(
        "{} of {} attempts accepted before/while stopping; {delivered} delivered by then",
        accepted.len(),
        attempts.load(Ordering::Relaxed),
    );

    // Whatever got its 250 is delivered: now, or by the next start from the spool.
    let mut again = Supervisor::start(&dir.0, &config);
    again.wait_engine(None);
    again.wait_log("SMTP listening", Duration::from_secs(20));
    let done = wait_until(Duration::from_secs(90), || sink.received().is_superset(&accepted));
    let missing: Vec<_> = accepted.difference(&sink.received()).cloned().collect();
    assert!(
        done,
        "{} accepted messages never delivered: {missing:?}\n{}",
        missing.len(),
        again.log()
    );
    again.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(again.wait_exit(Duration::from_secs(30)).success(), "{}", again.log());
}

#[test]
fn with_the_gate_on_in_a_fresh_netns_rules_are_applied_and_bans_arrive() {
    if std::env::var_os("LEVEE_SKIP_NFT").is_some_and(|v| v == "1") {
        eprintln!("LEVEE_SKIP_NFT=1: skipping the gate test");
        return;
    }
    require_root();
    let dir = Scratch::new("gate");
    // Inside the namespace only; 10.77.0.1 is a plain (banable) address on its loopback.
    let addr: SocketAddr = "10.77.0.1:2525".parse().unwrap();
    let gate = "[gate]\nenabled = true\nsmtp_ports = [25]\nconsole_ports = [443]\n\
                lan = [\"192.168.77.0/24\"]\nban_timeout_secs = 900\n";
    let config = write_config(&dir.0, &addr.to_string(), "127.0.0.1:9", gate);
    let script = "ip link set lo up && ip addr add 10.77.0.1/32 dev lo && exec \"$0\" \"$@\"";
    let mut sup =
        Supervisor::start_wrapped(&dir.0, &config, &["unshare", "-n", "sh", "-c", script]);
    sup.wait_engine(None);
    sup.wait_log("SMTP listening", Duration::from_secs(20));
    let netns = format!("--net=/proc/{}/ns/net", sup.pid());
    let nft = |args: &[&str]| -> String {
        let out = Command::new("nsenter").arg(&netns).arg("nft").args(args).output().unwrap();
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = nft(&["list", "table", "inet", "levee"]);
    assert!(table.contains("policy drop"), "{table}");
    assert!(table.contains("192.168.77.0/24"), "{table}");
    assert!(table.contains("tcp dport 443"), "{table}");
    // The printed rule set is the applied one.
    let printed =
        Command::new(BIN).args(["gate", "print", "--config"]).arg(&config).output().unwrap();
    assert!(printed.status.success());
    assert!(String::from_utf8_lossy(&printed.stdout)
        .contains("ip saddr { 192.168.77.0/24 } tcp dport { 443 } accept"));

    // A relay probe from 10.77.0.1 (inside the namespace): the engine asks, the supervisor bans.
    let probe = {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", sup.pid())).unwrap();
        std::thread::spawn(move || -> std::io::Result<Vec<u16>> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut c = Conn::open(addr)?;
            let mut codes =
                vec![c.reply()?, c.cmd("EHLO probe.test")?, c.cmd("MAIL FROM:<x@probe.test>")?];
            for d in ["a.test", "b.test", "c.test"] {
                codes.push(c.cmd(&format!("RCPT TO:<victim@{d}>"))?);
            }
            let _ = c.cmd("QUIT");
            Ok(codes)
        })
        .join()
        .unwrap()
        .unwrap()
    };
    assert_eq!(probe, [220, 250, 250, 550, 550, 550]);
    let banned = || nft(&["list", "set", "inet", "levee", "ban4"]).contains("10.77.0.1");
    assert!(wait_until(Duration::from_secs(10), banned), "no ban:\n{}", sup.log());
    sup.wait_log("banned", Duration::from_secs(5));

    // A reload re-applies the whole table; the ban survives it.
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    sup.wait_log("config reloaded", Duration::from_secs(10));
    assert!(banned(), "ban lost by the reload:\n{}", nft(&["list", "table", "inet", "levee"]));

    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(sup.wait_exit(Duration::from_secs(30)).success(), "{}", sup.log());
}
