//! The console's certificate: an uploaded one in `data_dir/tls/console-{cert,key}.pem`,
//! else a self-signed one made at first start for the host name.
//!
//! The loading and the connector are the relay's (`levee_relay::tls`).

use crate::ConsoleError;
use levee_config::Config;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::path::PathBuf;

pub fn paths(config: &Config) -> (PathBuf, PathBuf) {
    let dir = config.data_dir.join("tls");
    (dir.join("console-cert.pem"), dir.join("console-key.pem"))
}

/// Builds the acceptor, making a self-signed pair the first time.
pub fn acceptor_for(config: &Config) -> Result<tokio_rustls::TlsAcceptor, ConsoleError> {
    let (cert, key) = paths(config);
    levee_relay::tls::self_signed_acceptor(&config.hostname.0, &cert, &key)
        .map_err(ConsoleError::Tls)
}

pub use levee_relay::tls::{acceptor_from_pem, write_pair};

/// The certificate's subject and validity, for the system page.
pub fn describe(config: &Config) -> String {
    let (cert, _) = paths(config);
    match std::fs::read(&cert) {
        Ok(pem) => {
            let n = CertificateDer::pem_slice_iter(&pem).filter(|c| c.is_ok()).count();
            format!(
                "{} ({} certificate{} in the chain)",
                cert.display(),
                n,
                if n == 1 { "" } else { "s" }
            )
        }
        Err(_) => "none yet (made at first start)".into(),
    }
}
