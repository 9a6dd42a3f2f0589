//! TLS set-up: the inbound acceptor (a configured or generated self-signed
//! certificate) and the outbound connector.

use crate::RelayError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `cert`/`key` PEM files, or makes a self-signed pair for `hostname` under
/// `dir` the first time and reuses it afterwards.
pub fn acceptor(
    hostname: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: &Path,
) -> Result<tokio_rustls::TlsAcceptor, RelayError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let (c, k) = (dir.join("smtp-cert.pem"), dir.join("smtp-key.pem"));
            if !c.exists() || !k.exists() {
                generate_self_signed(hostname, &c, &k)?;
            }
            (c, k)
        }
    };
    let tls_err = |what: &str, e: &dyn std::fmt::Display| RelayError::Tls(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = {
        let pem =
            std::fs::read(&cert_path).map_err(|e| tls_err(&cert_path.display().to_string(), &e))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err("certificate", &e))?
    };
    let key: PrivateKeyDer<'static> = {
        let pem =
            std::fs::read(&key_path).map_err(|e| tls_err(&key_path.display().to_string(), &e))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| tls_err("key", &e))?
            .ok_or_else(|| RelayError::Tls(format!("{}: no private key", key_path.display())))?
    };
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocols", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("certificate", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn generate_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), RelayError> {
    let certified = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| RelayError::Tls(format!("generating a certificate: {e}")))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(RelayError::Io)?;
    }
    write_private(key, certified.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, certified.cert.pem()).map_err(RelayError::Io)?;
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), RelayError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(RelayError::Io)?;
    f.write_all(data).map_err(RelayError::Io)
}

/// The outbound connector. Downstream servers are the customer's own and often carry
/// self-signed or internal certificates, so the connection is encrypted but not
/// authenticated (Postfix's "encrypt" level); `required` still never falls back to
/// plaintext.
pub fn connector() -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
