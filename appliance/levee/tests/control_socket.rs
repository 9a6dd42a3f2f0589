//! The CLI beside a running engine: `levee queue`, `lists`, `train` and `status` go
//! through the real `levee run`'s control socket; with the engine stopped the same
//! commands open the store; a store held by another process with no engine answering
//! gets one sentence, never sled's lock error.

mod common;
use common::{corpus, text, Dir};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_levee");
/// Start-up, shutdown and any one command get this long.
const DEADLINE: Duration = Duration::from_secs(60);

fn scratch(name: &str) -> Dir {
    common::scratch("ctl", name)
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A config under `root`: SMTP on a free loopback port, mail for example.test to a port
/// nobody listens on (so it stays queued), no SpamAssassin rules (fast start).
fn config(root: &Path) -> (PathBuf, u16) {
    let port = free_port();
    let text = format!(
        "hostname = \"mx.example.test\"\n\
         data_dir = \"{}\"\n\
         [smtp]\nlisten = [\"127.0.0.1:{port}\"]\ngreet_pause_ms = 0\nmin_free_bytes = 1048576\n\
         [rules]\nspamassassin = false\n\
         [[domain]]\nname = \"example.test\"\ndownstream = \"127.0.0.1:{}\"\n",
        root.join("data").display(),
        free_port()
    );
    let path = root.join("levee.toml");
    std::fs::write(&path, text).unwrap();
    (path, port)
}

/// Runs one command to its end, killed past the deadline.
fn levee(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut child = Command::new(BIN)
        .args(args.iter().map(|a| a.as_ref()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!(
                "levee {:?} took longer than {DEADLINE:?}",
                args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A command that must succeed; its stdout.
fn ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let o = levee(args);
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `levee run`, stopped with SIGTERM (and killed if it does not stop in time).
struct Engine {
    child: Child,
    log: PathBuf,
}

impl Engine {
    fn start(config: &Path, root: &Path) -> Engine {
        let log = root.join("engine.log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut engine = Engine { child, log };
        // Connect rather than run a command: a command that found no socket yet would open
        // the store itself and could take sled's lock from under the starting engine.
        let socket = root.join("data").join("control.sock");
        wait_until("the engine's control socket", || {
            let gone = engine.child.try_wait().unwrap();
            assert!(gone.is_none(), "the engine exited: {}", engine.log_text());
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        engine
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        wait_until("the engine to stop", || self.child.try_wait().unwrap().is_some());
        let status = self.child.wait().unwrap();
        let log = self.log_text();
        assert!(status.success(), "{status}\n{log}");
        assert!(log.contains("control socket closed"), "{log}");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends one message over SMTP and returns its queue id.
fn send(port: u16) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut read = BufReader::new(stream.try_clone().unwrap());
    let mut write = stream;
    // The last line of a reply: `NNN ` rather than `NNN-`.
    let mut reply = |expect: &str| -> String {
        loop {
            let mut line = String::new();
            assert!(read.read_line(&mut line).unwrap() > 0, "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                assert!(line.starts_with(expect), "wanted {expect}, got {line}");
                return line;
            }
        }
    };
    reply("220");
    for (cmd, code) in [
        ("EHLO client.example\r\n", "250"),
        ("MAIL FROM:<alice@sender.example>\r\n", "250"),
        ("RCPT TO:<bob@example.test>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        write.write_all(cmd.as_bytes()).unwrap();
        reply(code);
    }
    write
        .write_all(b"From: alice@sender.example\r\nSubject: lunch\r\n\r\nsee you at noon\r\n.\r\n")
        .unwrap();
    let queued = reply("250");
    write.write_all(b"QUIT\r\n").unwrap();
    queued.split_whitespace().last().unwrap().to_string()
}

#[test]
fn commands_go_through_the_running_engine_and_open_the_store_when_it_is_stopped() {
    let d = scratch("through");
    let (config, port) = config(&d.0);
    let (spam, ham) = corpus(&d.0);
    let data = d.0.join("data");
    let engine = Engine::start(&config, &d.0);
    let socket = data.join("control.sock");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let id = send(port);
    let queue = ok(&[&"queue", &"--config", &config]);
    assert!(queue.contains(&id) && queue.contains("bob@example.test"), "{id}: {queue}");

    assert_eq!(
        ok(&[&"lists", &"add", &"--config", &config, &"block", &"sender-domain", &"spam.example"])
            .trim()
            .parse::<u64>()
            .map(|_| ()),
        Ok(())
    );
    let lists = ok(&[&"lists", &"show", &"--config", &config]);
    assert!(lists.contains("block sender-domain spam.example"), "{lists}");
    let bad = levee(&[&"lists", &"add", &"--config", &config, &"block", &"nonsense"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("the engine refused"), "{}", text(&bad.stderr));

    let trained = levee(&[&"train", &"--data", &data, &"--spam", &spam, &"--ham", &ham]);
    assert!(trained.status.success(), "{}", text(&trained.stderr));
    let out = text(&trained.stdout);
    assert!(out.contains("trained on 2 spam and 1 ham through the running engine"), "{out}");
    assert!(out.contains("knows 2 spam, 1 ham"), "{out}");
    assert!(text(&trained.stderr).contains("trained 3/3"), "{}", text(&trained.stderr));
    let reset = levee(&[&"train", &"--data", &data, &"--spam", &spam, &"--reset"]);
    assert!(!reset.status.success());
    assert!(text(&reset.stderr).contains("needs the engine stopped"), "{}", text(&reset.stderr));

    let status = ok(&[&"status", &"--config", &config]);
    assert!(status.contains("engine: running"), "{status}");
    assert!(status.contains("queued: 1"), "{status}");
    assert!(status.contains("list entries: 1"), "{status}");
    assert!(status.contains("model: 2 spam, 1 ham"), "{status}");

    engine.stop();
    assert!(!socket.exists(), "the socket is removed at shutdown");

    // Stopped: the same commands, on the store directly, see what the engine stored.
    let queue = ok(&[&"queue", &"--config", &config]);
    assert!(queue.contains(&id), "{queue}");
    let lists = ok(&[&"lists", &"show", &"--config", &config]);
    assert!(lists.contains("block sender-domain spam.example"), "{lists}");
    let out = ok(&[&"train", &"--data", &data, &"--spam", &spam, &"--ham", &ham, &"--no-rules"]);
    assert!(
        out.contains("trained on 2 spam and 1 ham; the model now knows 4 spam, 2 ham"),
        "{out}"
    );
    let status = ok(&[&"status", &"--config", &config]);
    assert!(
        status.contains("engine: stopped") && status.contains("model: 4 spam, 2 ham"),
        "{status}"
    );
}

#[test]
fn a_socket_left_by_a_dead_engine_is_passed_over() {
    let d = scratch("stale");
    let (config, _) = config(&d.0);
    let data = d.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Bound and closed: the file stays, nobody listens (connection refused).
    drop(std::os::unix::net::UnixListener::bind(data.join("control.sock")).unwrap());
    let status = ok(&[&"status", &"--config", &config]);
    assert!(status.contains("engine: stopped"), "{status}");
}

#[test]
fn a_store_held_by_another_process_without_a_socket_gets_one_sentence() {
    let d = scratch("held");
    let (config, _) = config(&d.0);
    let data = d.0.join("data");
    let (spam, ham) = corpus(&d.0);
    std::fs::create_dir_all(&data).unwrap();
    drop(std::os::unix::net::UnixListener::bind(data.join("control.sock")).unwrap());
    // sled's lock is per process: this test process holds it, as a starting engine would.
    let store = levee_store::Store::open(&data.join("db")).unwrap();
    let runs: [&[&dyn AsRef<std::ffi::OsStr>]; 4] = [
        &[&"queue", &"--config", &config],
        &[&"lists", &"show", &"--config", &config],
        &[&"status", &"--config", &config],
        &[&"train", &"--data", &data, &"--spam", &spam, &"--ham", &ham, &"--no-rules"],
    ];
    for args in runs {
        let o = levee(args);
        assert!(!o.status.success());
        let err = text(&o.stderr);
        assert!(err.contains("in use by another process and no engine answers"), "{err}");
        assert!(!err.contains("WouldBlock") && !err.contains("os error"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    drop(store);
}
