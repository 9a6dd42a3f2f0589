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

/// Formats each event into a buffer and hands it to the ring when done.
struct RingMaker(Arc<LogRing>);

struct RingWriter {
    ring: Arc<LogRing>,
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
        self.ring.push(&String::from_utf8_lossy(&self.buf));
    }
}

impl<'a> MakeWriter<'a> for RingMaker {
    type Writer = RingWriter;

    fn make_writer(&'a self) -> RingWriter {
        RingWriter { ring: self.0.clone(), buf: Vec::with_capacity(256) }
    }
}

/// A formatting layer whose output goes to the ring.
fn ring_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().with_ansi(false).with_writer(RingMaker(ring()))
}

pub fn init(prefer_journald: bool) {
    let filter = || EnvFilter::try_from_env("LEVEE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald_socket = std::path::Path::new("/run/systemd/journal/socket").exists();
    if prefer_journald && journald_socket {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter())
                .with(layer.with_syslog_identifier("levee".into()))
                .with(ring_layer())
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr))
        .with(ring_layer())
        .try_init();
}
