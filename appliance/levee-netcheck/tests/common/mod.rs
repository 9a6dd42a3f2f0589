//! Test support: a real unbound serving tests/dns/netcheck.conf on a loopback port, and a
//! "black hole" port that accepts queries and never answers.

#![allow(dead_code)]

pub mod mmdb;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use levee_netcheck::{Dns, Upstream};

/// The shared records (also usable by system tests).
pub const ZONE: &str = include_str!("../../../../tests/dns/netcheck.conf");

/// An unbound child process answering only from local data; killed on drop.
pub struct Unbound {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unbound_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/unbound").exists() {
        "/usr/sbin/unbound"
    } else {
        "unbound"
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

impl Unbound {
    /// Starts unbound with the shared zone plus `extra` lines (e.g. a generated DKIM key)
    /// and waits (at most 10 s) until it answers.
    pub async fn start(extra: &str) -> Unbound {
        let mut last_log = String::new();
        // The port can be taken between probing and unbound binding it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "levee-netcheck-unbound-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = format!(
                "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  chroot: \"\"\n  \
                 username: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  \
                 verbosity: 0\n  do-ip6: no\n  num-threads: 1\n  so-reuseport: no\n  \
                 access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n  \
                 local-zone: \".\" static\n{ZONE}\n{extra}\nremote-control:\n  control-enable: no\n",
                dir = dir.display()
            );
            let conf_path = dir.join("unbound.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let log = std::fs::File::create(dir.join("unbound.log")).unwrap();
            let child = Command::new(unbound_binary())
                .arg("-d")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot run unbound (Debian package `unbound`)");
            let mut server = Unbound { child, dir, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
            if server.wait_ready().await {
                return server;
            }
            last_log = std::fs::read_to_string(server.dir.join("unbound.log")).unwrap_or_default();
        }
        panic!("unbound did not start:\n{last_log}");
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // A fresh resolver each try: a cached failure must not hide readiness.
            let probe = Dns::new(Upstream::Server(self.addr), Duration::from_millis(200)).unwrap();
            if probe.txt("ready.test").await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A resolver pointed at this server.
    pub fn dns(&self) -> Dns {
        Dns::new(Upstream::Server(self.addr), Duration::from_secs(2)).unwrap()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scratch directory removed on drop, even when the test panics.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!(
            "levee-netcheck-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port whose sockets are bound and never read: queries to it time out
/// (a closed port would answer at once with ICMP / RST instead).
pub struct BlackHole {
    _udp: UdpSocket,
    _tcp: TcpListener,
    pub addr: SocketAddr,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = udp.local_addr().unwrap();
            // The UDP port's TCP twin may be taken by someone else: pick another.
            if let Ok(tcp) = TcpListener::bind(addr) {
                return BlackHole { _udp: udp, _tcp: tcp, addr };
            }
        }
        panic!("no loopback port free for both UDP and TCP");
    }

    pub fn dns(&self, timeout: Duration) -> Dns {
        Dns::new(Upstream::Server(self.addr), timeout).unwrap()
    }
}
