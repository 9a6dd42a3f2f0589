//! `levee supervise` (root) and `levee engine`, the unprivileged child it runs.
//!
//! The supervisor keeps the three things that need root: the firewall (the gate), the
//! privileged listening sockets, and the right to change users. It binds the sockets once and
//! hands them to every engine it starts, so mail keeps queueing in the kernel's backlog while
//! an engine restarts. The engine can ask for exactly two privileged things over a socketpair,
//! one request per line, each answered `ok` or `err REASON`:
//!
//! ```text
//! ban 203.0.113.9 too many errors     add to the ban set, for gate.ban_timeout_secs
//! unban 203.0.113.9                   remove from the ban set
//! reapply                             re-read the config and re-apply the gate
//! ```
//!
//! The supervisor trusts none of it: lines are bounded, addresses parsed and checked against
//! the LAN and the SMTP sources, and a config is applied only after it validates.

use crate::notify::{self, Notifier};
use crate::{gate, logging};
use anyhow::{bail, Context, Result};
use levee_config::Config;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// Comma-separated descriptors of the inherited SMTP listeners, in `smtp.listen` order.
const LISTEN_FDS_ENV: &str = "LEVEE_LISTEN_FDS";
/// The engine's end of the socketpair to the supervisor.
const LINK_FD_ENV: &str = "LEVEE_SUPERVISOR_FD";
/// Longest request line; anything longer is a broken or hostile engine.
const MAX_LINE: usize = 256;
/// Longest ban reason kept for the log.
const MAX_REASON: usize = 64;
/// An engine that ran this long was healthy: the restart pause starts over from the minimum.
const STABLE_UPTIME: Duration = Duration::from_secs(60);
const MIN_RESTART_PAUSE: Duration = Duration::from_secs(1);
/// Bans the supervisor remembers (to keep them across a gate re-apply); more are refused.
const MAX_BANS: usize = 65536;
/// Queued ban requests in the engine; under a flood the excess is dropped, not buffered.
const BAN_QUEUE: usize = 1024;

// ----------------------------------------------------------------------------------------------
// The protocol

/// What the engine may ask of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ban { ip: IpAddr, reason: String },
    Unban { ip: IpAddr },
    Reapply,
}

impl Request {
    /// Parses one line (without its newline). Refuses anything but the three requests.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.splitn(3, ' ');
        let verb = words.next().unwrap_or_default();
        let ip = |w: Option<&str>| -> Result<IpAddr, String> {
            let w = w.ok_or_else(|| format!("{verb} needs an address"))?;
            w.parse().map_err(|_| format!("bad address {:?}", w.escape_debug().to_string()))
        };
        match verb {
            "ban" => {
                let ip = ip(words.next())?;
                let reason = words.next().unwrap_or("unspecified");
                if reason.len() > MAX_REASON
                    || !reason.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
                {
                    return Err("bad ban reason".into());
                }
                Ok(Request::Ban { ip, reason: reason.to_string() })
            }
            "unban" => {
                let ip = ip(words.next())?;
                if words.next().is_some() {
                    return Err("unban takes one address".into());
                }
                Ok(Request::Unban { ip })
            }
            "reapply" if words.next().is_none() => Ok(Request::Reapply),
            _ => Err(format!("unknown request {:?}", verb.escape_debug().to_string())),
        }
    }

    /// The request as one line, newline included.
    pub fn encode(&self) -> String {
        match self {
            Request::Ban { ip, reason } => format!("ban {ip} {reason}\n"),
            Request::Unban { ip } => format!("unban {ip}\n"),
            Request::Reapply => "reapply\n".into(),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Pure bookkeeping: restart pauses and live bans

/// Restart pauses: 1s, 2s, 4s ... up to `max`; back to 1s after a run of [`STABLE_UPTIME`].
#[derive(Debug)]
struct Backoff {
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        let max = max.max(MIN_RESTART_PAUSE);
        Backoff { max, next: MIN_RESTART_PAUSE }
    }

    /// The pause before the next start, after an engine that ran for `uptime`.
    fn after_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= STABLE_UPTIME {
            self.next = MIN_RESTART_PAUSE;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }
}

/// Bans in force, so that re-applying the rule set (which replaces the ban sets) keeps them.
#[derive(Debug, Default)]
struct Bans {
    until: HashMap<IpAddr, Instant>,
}

impl Bans {
    /// Whether a ban of `ip` for `timeout` would change anything: not when a ban with more
    /// than half its time left is already in force (a flood then costs no `nft` runs).
    fn needed(&self, ip: IpAddr, timeout: Duration, now: Instant) -> bool {
        self.until
            .get(&ip.to_canonical())
            .is_none_or(|u| u.saturating_duration_since(now) < timeout / 2)
    }

    fn insert(&mut self, ip: IpAddr, timeout: Duration, now: Instant) -> Result<(), String> {
        let ip = ip.to_canonical();
        if self.until.len() >= MAX_BANS && !self.until.contains_key(&ip) {
            self.prune(now);
            if self.until.len() >= MAX_BANS {
                return Err("the ban list is full".into());
            }
        }
        self.until.insert(ip, now + timeout);
        Ok(())
    }

    fn remove(&mut self, ip: IpAddr) {
        self.until.remove(&ip.to_canonical());
    }

    fn prune(&mut self, now: Instant) {
        self.until.retain(|_, u| *u > now);
    }

    /// The bans still running and their time left, in a stable order.
    fn live(&mut self, now: Instant) -> Vec<(IpAddr, Duration)> {
        self.prune(now);
        let mut v: Vec<_> = self.until.iter().map(|(ip, u)| (*ip, *u - now)).collect();
        v.sort();
        v
    }
}

// ----------------------------------------------------------------------------------------------
// Dropping privileges

/// The engine's user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Credentials {
    uid: u32,
    gid: u32,
}

impl Credentials {
    fn resolve(s: &levee_config::Supervisor) -> Result<Credentials> {
        let user = nix::unistd::User::from_name(&s.user)
            .with_context(|| format!("looking up user {}", s.user))?
            .with_context(|| format!("supervisor.user {:?} does not exist", s.user))?;
        let group = nix::unistd::Group::from_name(&s.group)
            .with_context(|| format!("looking up group {}", s.group))?
            .with_context(|| format!("supervisor.group {:?} does not exist", s.group))?;
        let c = Credentials { uid: user.uid.as_raw(), gid: group.gid.as_raw() };
        if c.uid == 0 || c.gid == 0 {
            bail!("the engine must not run as root (supervisor.user/group)");
        }
        Ok(c)
    }
}

/// The highest capability number this kernel knows, for emptying the bounding set.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Makes `cmd` start as `creds` with no way back: supplementary groups replaced, no
/// capabilities in any set, no_new_privs, and killed if the supervisor dies. `inherit` are
/// the descriptors the engine receives (their close-on-exec flag is cleared in the child
/// only, so `nft` and other children of the supervisor never see them).
#[allow(unsafe_code)]
fn restrict(cmd: &mut tokio::process::Command, creds: Credentials, inherit: Vec<RawFd>) {
    let last_cap = last_cap();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. `drop_privileges` makes plain system calls through libc, allocates
    // nothing (`inherit` was built before the fork) and takes no lock.
    unsafe {
        cmd.pre_exec(move || drop_privileges(creds, &inherit, last_cap, parent));
    }
}

/// Header and data of capset(2), version 3 (two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[allow(unsafe_code)]
fn drop_privileges(
    creds: Credentials,
    inherit: &[RawFd],
    last_cap: u32,
    parent: libc::pid_t,
) -> std::io::Result<()> {
    use std::io::Error;
    let check = |r: libc::c_long| if r == -1 { Err(Error::last_os_error()) } else { Ok(()) };
    // EINVAL: a capability or prctl this kernel does not have, so there is nothing to drop.
    let unless_einval = |r: libc::c_int| {
        let e = Error::last_os_error();
        if r == -1 && e.raw_os_error() != Some(libc::EINVAL) {
            Err(e)
        } else {
            Ok(())
        }
    };
    // SAFETY: system calls on integers, and on pointers to locals that outlive each call.
    unsafe {
        for &fd in inherit {
            check(libc::fcntl(fd, libc::F_SETFD, 0).into())?;
        }
        // The bounding set needs CAP_SETPCAP, so it goes while we are still root.
        for cap in 0..=last_cap {
            unless_einval(libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0))?;
        }
        unless_einval(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        let gid: libc::gid_t = creds.gid;
        check(libc::setgroups(1, &gid).into())?;
        check(libc::setgid(gid).into())?;
        check(libc::setuid(creds.uid).into())?;
        // setuid away from root already empties the permitted and effective sets unless
        // SECBIT_KEEP_CAPS is set; clearing them explicitly does not depend on that.
        let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0).into())?;
        // After setuid, which clears it. If the supervisor died before this, go now.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0).into())?;
        if libc::getppid() != parent {
            return Err(Error::from_raw_os_error(libc::ESRCH));
        }
        // The proof: root is out of reach.
        if libc::setuid(0) == 0 {
            return Err(Error::from_raw_os_error(libc::EPERM));
        }
        // An ignored signal stays ignored across exec: a SIGHUP forwarded before the engine
        // has its handler would otherwise kill it. Its handler replaces this.
        if libc::signal(libc::SIGHUP, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(Error::last_os_error());
        }
    }
    Ok(())
}

/// Creates `data_dir` and gives it, and everything in it, to the engine's user (a previous
/// `levee run` as root may have left root-owned files there). Symlinks are not followed.
fn prepare_data_dir(dir: &Path, creds: Credentials) -> Result<()> {
    use std::os::unix::fs::{lchown, DirBuilderExt, MetadataExt};
    // A typo such as data_dir = "/var" must not hand a system directory to the engine.
    let depth = dir.components().filter(|c| matches!(c, std::path::Component::Normal(_))).count();
    if !dir.is_absolute() || depth < 2 {
        bail!("data_dir {} must be an absolute path at least two levels deep", dir.display());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.uid() != creds.uid || meta.gid() != creds.gid {
            lchown(&path, Some(creds.uid), Some(creds.gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// The supervisor

pub fn supervise(path: &Path) -> Result<()> {
    logging::init(true);
    if !nix::unistd::geteuid().is_root() {
        bail!("levee supervise must run as root (levee run runs the engine unprivileged)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        // First, so that a SIGTERM during start-up is a clean stop rather than a kill.
        let signals = Signals::new()?;
        start(path)?.run(signals).await
    })
}

/// The signals the supervisor acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Whether a stop was asked for already; does not wait.
    async fn stop_pending(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.term.recv() => true,
            _ = self.int.recv() => true,
            _ = std::future::ready(()) => false,
        }
    }
}

/// Loads the config, prepares the data directory, applies the gate and binds the listeners.
fn start(path: &Path) -> Result<Supervisor> {
    // The engine starts with the same path from another user; make it absolute.
    let path = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let config = Config::load(&path)?;
    let creds = Credentials::resolve(&config.supervisor)?;
    prepare_data_dir(&config.data_dir, creds)?;
    let mut sup = Supervisor {
        path,
        creds,
        gate_applied: false,
        config,
        listeners: Vec::new(),
        bans: Bans::default(),
        notifier: Notifier::from_env(),
        nft: levee_gate::Nft::system(),
    };
    let config = sup.config.clone();
    sup.apply_gate(&config).context("applying the gate")?;
    for addr in sup.config.smtp_listen() {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        info!(%addr, "bound");
        sup.listeners.push(l);
    }
    // The console's port (443) is privileged too; its descriptors follow the SMTP ones.
    for addr in sup.config.console.iter().flat_map(|c| c.listen.iter().map(|l| l.0)) {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        info!(%addr, "bound (console)");
        sup.listeners.push(l);
    }
    Ok(sup)
}

#[derive(Debug)]
struct Supervisor {
    path: PathBuf,
    config: Config,
    creds: Credentials,
    gate_applied: bool,
    listeners: Vec<std::net::TcpListener>,
    bans: Bans,
    notifier: Notifier,
    nft: levee_gate::Nft,
}

/// Why the supervisor's wait for an engine ended.
enum Ended {
    Exited(ExitStatus),
    Stop,
}

impl Supervisor {
    async fn run(mut self, mut sig: Signals) -> Result<()> {
        let watchdog = notify::watchdog_interval();
        let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut backoff =
            Backoff::new(Duration::from_secs(self.config.supervisor.restart_max_secs));
        let mut ready = false;
        loop {
            if sig.stop_pending().await {
                return self.stopped();
            }
            let started = Instant::now();
            let ended = match self.spawn() {
                Ok((mut child, link)) => {
                    info!(pid = child.id(), "engine started");
                    if !ready {
                        self.notifier.ready("serving");
                        ready = true;
                    }
                    let mut link = LinkReader::new(link)?;
                    let ended = loop {
                        tokio::select! {
                            status = child.wait() => break Ended::Exited(status?),
                            _ = sig.term.recv() => break Ended::Stop,
                            _ = sig.int.recv() => break Ended::Stop,
                            _ = sig.hup.recv() => {
                                self.notifier.reloading();
                                self.reload("SIGHUP");
                                if let Some(pid) = child.id() {
                                    signal_pid(pid, nix::sys::signal::Signal::SIGHUP);
                                }
                                self.notifier.ready("serving");
                            }
                            line = link.next_line(), if link.open => match line {
                                Ok(Some(line)) => {
                                    let reply = match self.handle(&line) {
                                        Ok(()) => "ok\n".to_string(),
                                        Err(e) => {
                                            warn!(request = %line.escape_debug(), error = %e, "engine request refused");
                                            format!("err {e}\n")
                                        }
                                    };
                                    link.reply(&reply);
                                }
                                Ok(None) => link.open = false,
                                Err(e) => {
                                    warn!(error = %e, "closing the link to the engine");
                                    link.open = false;
                                }
                            },
                            _ = tick.tick(), if watchdog.is_some() => self.notifier.watchdog(),
                        }
                    };
                    match ended {
                        Ended::Stop => return self.stop(child).await,
                        Ended::Exited(status) => describe(status),
                    }
                }
                Err(e) => format!("could not start: {e:#}"),
            };
            let uptime = started.elapsed();
            let pause = backoff.after_exit(uptime);
            error!(why = %ended, uptime_secs = uptime.as_secs(), restart_in_secs = pause.as_secs(), "engine died; restarting");
            self.notifier
                .status(&format!("engine died ({ended}); restarting in {}s", pause.as_secs()));
            let sleep = tokio::time::sleep(pause);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = sig.term.recv() => return self.stopped(),
                    _ = sig.int.recv() => return self.stopped(),
                    _ = sig.hup.recv() => self.reload("SIGHUP"),
                    _ = tick.tick(), if watchdog.is_some() => self.notifier.watchdog(),
                }
            }
        }
    }

    /// Starts one engine: the listeners and our end of a fresh socketpair go to it.
    fn spawn(&self) -> Result<(tokio::process::Child, UnixStream)> {
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        let mut fds: Vec<RawFd> = self.listeners.iter().map(|l| l.as_raw_fd()).collect();
        let list = fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",");
        fds.push(theirs.as_raw_fd());
        // /proc/self/exe is resolved in the child, so an upgraded binary on disk does not
        // mix versions: the engine is exactly this build.
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg0("levee")
            .arg("engine")
            .arg("--config")
            .arg(&self.path)
            .env(LISTEN_FDS_ENV, list)
            .env(LINK_FD_ENV, theirs.as_raw_fd().to_string())
            // Only the supervisor speaks to systemd for the service.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null());
        restrict(&mut cmd, self.creds, fds);
        let child = cmd.spawn().context("starting the engine")?;
        drop(theirs);
        Ok((child, ours))
    }

    /// SIGTERM to the engine, which stops accepting, answers live sessions 421 and finishes
    /// its writes; SIGKILL only if it overruns `stop_timeout_secs`.
    async fn stop(self, mut child: tokio::process::Child) -> Result<()> {
        self.notifier.stopping();
        info!("stopping the engine");
        if let Some(pid) = child.id() {
            signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let limit = Duration::from_secs(self.config.supervisor.stop_timeout_secs);
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => info!(status = %describe(status?), "engine stopped"),
            Err(_) => {
                warn!(timeout_secs = limit.as_secs(), "engine did not stop in time; killing it");
                child.kill().await?;
            }
        }
        self.stopped()
    }

    fn stopped(&self) -> Result<()> {
        self.notifier.stopping();
        info!("supervisor stopped");
        Ok(())
    }

    /// Re-reads and re-validates the config, then applies its gate. On any error the old
    /// config and rule set stay in force.
    fn reload(&mut self, why: &str) {
        match self.try_reload() {
            Ok(()) => info!(why, "config reloaded"),
            Err(e) => {
                error!(why, error = %format!("{e:#}"), "config reload refused; keeping the old one")
            }
        }
    }

    fn try_reload(&mut self) -> Result<()> {
        let new = Config::load(&self.path)?;
        if new.gate.enabled {
            // Validate fully before touching anything.
            gate::spec(&new.gate)?;
        }
        self.apply_gate(&new)?;
        if new.smtp_listen() != self.config.smtp_listen() {
            warn!("smtp.listen changed: restart levee supervise to bind the new addresses");
        }
        if Credentials::resolve(&new.supervisor).ok() != Some(self.creds) {
            warn!("supervisor.user/group changed: restart levee supervise to apply it");
        }
        self.config = new;
        Ok(())
    }

    /// Applies `config`'s gate with the live bans kept; removes the table when the gate is
    /// switched off.
    fn apply_gate(&mut self, config: &Config) -> Result<()> {
        if config.gate.enabled {
            let spec = gate::spec(&config.gate)?;
            let text = gate::ruleset_keeping_bans(&spec, self.bans.live(Instant::now()))?;
            self.nft.apply(&text)?;
            self.gate_applied = true;
            info!(bans = self.bans.until.len(), "gate applied");
        } else if self.gate_applied {
            let t = levee_gate::TABLE;
            self.nft.apply(&format!("add table inet {t}\ndelete table inet {t}\n"))?;
            self.gate_applied = false;
            self.bans = Bans::default();
            info!("gate disabled: table removed");
        }
        Ok(())
    }

    /// One request from the engine, checked before anything is done.
    fn handle(&mut self, line: &str) -> Result<(), String> {
        match Request::parse(line)? {
            Request::Ban { ip, reason } => {
                let gate = &self.config.gate;
                gate::check_ban_target(ip, gate)?;
                if !gate.enabled {
                    info!(client = %ip, reason, "ban not applied: the gate is disabled");
                    return Ok(());
                }
                let timeout = Duration::from_secs(gate.ban_timeout_secs);
                let now = Instant::now();
                if !self.bans.needed(ip, timeout, now) {
                    return Ok(());
                }
                self.bans.insert(ip, timeout, now)?;
                if let Err(e) = self.nft.ban(ip, Some(timeout)) {
                    self.bans.remove(ip);
                    return Err(e.to_string());
                }
                info!(client = %ip, reason, timeout_secs = timeout.as_secs(), "banned");
                Ok(())
            }
            Request::Unban { ip } => {
                self.bans.remove(ip);
                if self.gate_applied {
                    self.nft.unban(ip).map_err(|e| e.to_string())?;
                }
                info!(client = %ip, "unbanned");
                Ok(())
            }
            Request::Reapply => self.try_reload().map_err(|e| format!("{e:#}")),
        }
    }
}

fn signal_pid(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(e) = nix::sys::signal::kill(pid, sig) {
        warn!(%pid, signal = %sig, error = %e, "could not signal the engine");
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => status.to_string(),
    }
}

/// The supervisor's end of the link: bounded lines in, replies out without ever blocking
/// (an engine that does not read its replies loses them, it cannot stall the supervisor).
struct LinkReader {
    stream: tokio::net::UnixStream,
    buf: Vec<u8>,
    open: bool,
}

impl LinkReader {
    fn new(stream: UnixStream) -> Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(LinkReader {
            stream: tokio::net::UnixStream::from_std(stream)?,
            buf: Vec::new(),
            open: true,
        })
    }

    /// The next line; `None` at end of stream. Cancel-safe: the only await is the read, and
    /// what it read is kept in `buf`.
    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return String::from_utf8(line[..pos].to_vec())
                    .map(Some)
                    .map_err(|_| std::io::Error::other("request is not UTF-8"));
            }
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::other("request line too long"));
            }
            let mut chunk = [0u8; MAX_LINE];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn reply(&self, text: &str) {
        if !matches!(self.stream.try_write(text.as_bytes()), Ok(n) if n == text.len()) {
            warn!("reply to the engine dropped");
        }
    }
}

// ----------------------------------------------------------------------------------------------
// The engine (the child)

pub fn engine(path: &Path) -> Result<()> {
    logging::init(true);
    let listen_fds = std::env::var(LISTEN_FDS_ENV).with_context(|| {
        format!("levee engine is started by levee supervise (no {LISTEN_FDS_ENV})")
    })?;
    let link_fd = std::env::var(LINK_FD_ENV).with_context(|| format!("no {LINK_FD_ENV}"))?;
    let mut listeners = Vec::new();
    for fd in listen_fds.split(',').filter(|s| !s.is_empty()) {
        let l = std::net::TcpListener::from(adopt_fd(fd)?);
        l.local_addr().with_context(|| format!("descriptor {fd} is not a TCP listener"))?;
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    let link = UnixStream::from(adopt_fd(&link_fd)?);
    let config = Config::load(path)?;
    let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    info!(uid = nix::unistd::getuid().as_raw(), listeners = ?addrs, "engine starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut listeners = listeners
            .into_iter()
            .map(tokio::net::TcpListener::from_std)
            .collect::<std::io::Result<Vec<_>>>()?;
        let console_listeners =
            listeners.split_off(config.smtp_listen().len().min(listeners.len()));
        let console_on = config.console.is_some();
        let engine = levee_relay::Engine::open(config)?;
        engine.set_log_ring(crate::logging::ring());
        engine.set_config_path(std::path::absolute(path)?);
        let client = LinkClient::start(link);
        engine.set_ban_hook(Box::new(move |ip, reason| {
            client.ask(Request::Ban { ip, reason: reason.to_string() })
        }));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let console = console_on.then(|| {
            tokio::spawn(levee_console::serve(engine.clone(), console_listeners, stop_rx.clone()))
        });
        let control = levee_relay::control::start(engine.clone(), stop_rx.clone());
        let relay = tokio::spawn(engine.clone().run(listeners, stop_rx));
        crate::wait_for_stop(Some(path), &engine).await?;
        let _ = stop_tx.send(true);
        relay.await.context("relay task")??;
        if let Some(c) = control {
            c.await.context("control socket task")?;
        }
        if let Some(c) = console {
            c.await.context("console task")??;
        }
        Ok(())
    })
}

/// Takes ownership of a descriptor the supervisor passed down, and marks it close-on-exec
/// again so nothing the engine starts inherits it.
#[allow(unsafe_code)]
fn adopt_fd(text: &str) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd: RawFd = text.trim().parse().with_context(|| format!("bad descriptor {text:?}"))?;
    if fd < 3 {
        bail!("descriptor {fd} is stdio, not an inherited socket");
    }
    // SAFETY: fcntl on an integer descriptor only queries and sets its flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        bail!("descriptor {fd} is not open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the supervisor opened this descriptor for us and names it once in the
    // environment; it is adopted here once, at start-up, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The engine's end of the link. Requests are queued to a thread that talks to the
/// supervisor, so the ban hook (called from the relay's tasks) never blocks.
struct LinkClient {
    tx: std::sync::mpsc::SyncSender<Request>,
}

impl LinkClient {
    fn start(stream: UnixStream) -> LinkClient {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Request>(BAN_QUEUE);
        std::thread::Builder::new()
            .name("levee-link".into())
            .spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut writer = match stream.try_clone() {
                    Ok(w) => w,
                    Err(e) => return error!(error = %e, "link to the supervisor unusable"),
                };
                let mut reader = BufReader::new(stream);
                for req in rx {
                    let mut reply = String::new();
                    let result = writer
                        .write_all(req.encode().as_bytes())
                        .and_then(|()| reader.read_line(&mut reply));
                    match result {
                        Ok(_) if reply == "ok\n" => {}
                        Ok(_) => {
                            warn!(request = ?req, reply = reply.trim_end(), "supervisor refused")
                        }
                        Err(e) => {
                            warn!(request = ?req, error = %e, "no answer from the supervisor")
                        }
                    }
                }
            })
            .expect("spawning a thread at start-up");
        LinkClient { tx }
    }

    fn ask(&self, req: Request) {
        if self.tx.try_send(req).is_err() {
            warn!("too many pending requests to the supervisor; one dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Ban { ip: "203.0.113.9".parse().unwrap(), reason: "too many errors".into() },
            Request::Ban { ip: "2001:db8::1".parse().unwrap(), reason: "pregreet".into() },
            Request::Unban { ip: "203.0.113.9".parse().unwrap() },
            Request::Reapply,
        ] {
            let line = r.encode();
            assert!(line.ends_with('\n'));
            assert_eq!(Request::parse(line.trim_end_matches('\n')).unwrap(), r);
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "ban",
            "ban 1.2.3",
            "ban 1.2.3.4/24 x",
            "ban 1.2.3.4 \x1b[31m",
            &format!("ban 1.2.3.4 {}", "x".repeat(MAX_REASON + 1)),
            "unban",
            "unban 1.2.3.4 extra",
            "reapply now",
            "exec /bin/sh",
            "BAN 1.2.3.4 x",
            "flush",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Request::parse("ban 1.2.3.4").unwrap(),
            Request::Ban { ip: "1.2.3.4".parse().unwrap(), reason: "unspecified".into() }
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_stable_run() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let quick = Duration::from_millis(100);
        let pauses: Vec<u64> = (0..6).map(|_| b.after_exit(quick).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.after_exit(STABLE_UPTIME).as_secs(), 1);
        assert_eq!(b.after_exit(quick).as_secs(), 2);
    }

    #[test]
    fn bans_expire_and_report_time_left() {
        let mut bans = Bans::default();
        let t0 = Instant::now();
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        bans.insert(a, Duration::from_secs(100), t0).unwrap();
        bans.insert(b, Duration::from_secs(10), t0).unwrap();
        assert!(!bans.needed(a, Duration::from_secs(100), t0 + Duration::from_secs(10)));
        assert!(bans.needed(a, Duration::from_secs(100), t0 + Duration::from_secs(60)));
        let live = bans.live(t0 + Duration::from_secs(5));
        assert_eq!(
            live,
            vec![
                ("198.51.100.7".parse().unwrap(), Duration::from_secs(5)),
                (a, Duration::from_secs(95)),
            ]
        );
        assert_eq!(bans.live(t0 + Duration::from_secs(20)), vec![(a, Duration::from_secs(80))]);
        bans.remove(a);
        assert!(bans.live(t0).is_empty());
    }

    #[test]
    fn root_is_never_the_engine_user() {
        let s = levee_config::Supervisor { user: "root".into(), ..Default::default() };
        assert!(Credentials::resolve(&s).is_err());
        let s = levee_config::Supervisor {
            user: "nobody".into(),
            group: "no-such-group-levee".into(),
            ..Default::default()
        };
        assert!(Credentials::resolve(&s).is_err());
    }

    #[test]
    fn a_shallow_data_dir_is_never_chowned() {
        let c = Credentials { uid: 65534, gid: 65534 };
        for bad in ["/", "/var", "/tmp/", "relative/dir"] {
            assert!(prepare_data_dir(Path::new(bad), c).is_err(), "{bad}");
        }
    }

    #[test]
    fn describe_names_signals() {
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by SIGKILL");
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
    }
}
