//! The console's certificate: an uploaded one in `data_dir/tls/console-{cert,key}.pem`,
//! else a self-signed one made at first start for the host name.
//!
//! The relay has the same loader privately (`levee-relay/src/tls.rs`); once it exports
//! `acceptor`, [`acceptor_from_files`] becomes a call to it.

use crate::ConsoleError;
use levee_config::Config;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn paths(config: &Config) -> (PathBuf, PathBuf) {
    let dir = config.data_dir.join("tls");
    (dir.join("console-cert.pem"), dir.join("console-key.pem"))
}

/// Builds the acceptor, making a self-signed pair the first time.
pub fn acceptor_for(config: &Config) -> Result<tokio_rustls::TlsAcceptor, ConsoleError> {
    let (cert, key) = paths(config);
    if !cert.exists() || !key.exists() {
        let made = rcgen::generate_simple_self_signed(vec![config.hostname.0.clone()])
            .map_err(|e| ConsoleError::Tls(format!("generating a certificate: {e}")))?;
        write_pair(
            &cert,
            &key,
            made.cert.pem().as_bytes(),
            made.key_pair.serialize_pem().as_bytes(),
        )
        .map_err(|e| ConsoleError::Tls(format!("writing the certificate: {e}")))?;
    }
    let cert_pem =
        std::fs::read(&cert).map_err(|e| ConsoleError::Tls(format!("{}: {e}", cert.display())))?;
    let key_pem =
        std::fs::read(&key).map_err(|e| ConsoleError::Tls(format!("{}: {e}", key.display())))?;
    acceptor_from_pem(&cert_pem, &key_pem).map_err(ConsoleError::Tls)
}

/// Checks a certificate chain and key (PEM) and builds an acceptor from them.
pub fn acceptor_from_pem(cert: &[u8], key: &[u8]) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Writes a pair (key readable by the engine user only), each file atomically.
pub fn write_pair(cert: &Path, key: &Path, cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = cert.parent() {
        std::fs::create_dir_all(d)?;
    }
    for (path, data, mode) in [(key, key_pem, 0o600), (cert, cert_pem, 0o644)] {
        let tmp = path.with_extension("pem.new");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

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

/// The downstream probe's connector: encrypted but not authenticated, like the relay's
/// own delivery (downstream servers often carry internal certificates).
pub fn any_cert_connector() -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
