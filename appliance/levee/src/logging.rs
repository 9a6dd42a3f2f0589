//! Logs go to journald when its socket exists (the appliance), to stderr otherwise
//! (development, tests); the last lines are also kept in memory for the console.

use levee_relay::health::LogRing;
use std::sync::{Arc, OnceLock};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Lines kept for the console's system page.
const RING_LINES: usize = 500;

static RING: OnceLock<Arc<LogRing>> = OnceLock::new();

/// The in-memory copy of the log.
pub fn ring() -> Arc<LogRing> {
    RING.get_or_init(|| Arc::new(LogRing::new(RING_LINES))).clone()
}

/// Formats each event into a buffer and hands it to the ring when done; with
/// `stderr`, writes the same bytes there too, so an event is formatted once.
struct RingMaker {
    ring: Arc<LogRing>,
    stderr: bool,
}

struct RingWriter {
    ring: Arc<LogRing>,
    stderr: bool,
    buf: Vec<u8>,
}

impl std::io::Write for RingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        if self.stderr {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&self.buf);
        }
        self.ring.push(&String::from_utf8_lossy(&self.buf));
    }
}

impl<'a> MakeWriter<'a> for RingMaker {
    type Writer = RingWriter;

    fn make_writer(&'a self) -> RingWriter {
        RingWriter { ring: self.ring.clone(), stderr: self.stderr, buf: Vec::with_capacity(256) }
    }
}

/// The one formatting layer: its output goes to the ring, and to stderr with `stderr`.
fn ring_layer<S>(stderr: bool) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(RingMaker { ring: ring(), stderr })
}

pub fn init(prefer_journald: bool) {
    let filter = || EnvFilter::try_from_env("LEVEE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald_socket = std::path::Path::new("/run/systemd/journal/socket").exists();
    if prefer_journald && journald_socket {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter())
                .with(layer.with_syslog_identifier("levee".into()))
                .with(ring_layer(false))
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::registry().with(filter()).with(ring_layer(true)).try_init();
}
