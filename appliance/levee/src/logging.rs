//! Logs go to journald when its socket exists (the appliance), to stderr otherwise
//! (development, tests).

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

pub fn init(prefer_journald: bool) {
    let filter = EnvFilter::try_from_env("LEVEE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald_socket = std::path::Path::new("/run/systemd/journal/socket").exists();
    if prefer_journald && journald_socket {
        if let Ok(layer) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer.with_syslog_identifier("levee".into()))
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
