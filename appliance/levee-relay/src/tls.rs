//! TLS set-up shared by the relay and the console: acceptors from PEM (uploaded,
//! configured or made self-signed at first start) and the outbound connector.

use crate::RelayError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SMTP acceptor: `cert`/`key` PEM files if configured, else a self-signed pair
/// for `hostname` under `dir`, made the first time and reused afterwards.
pub fn acceptor(
    hostname: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: &Path,
) -> Result<tokio_rustls::TlsAcceptor, RelayError> {
    match (cert, key) {
        (Some(c), Some(k)) => acceptor_from_files(c, k),
        _ => self_signed_acceptor(hostname, &dir.join("smtp-cert.pem"), &dir.join("smtp-key.pem")),
    }
    .map_err(RelayError::Tls)
}

/// An acceptor from a pair of files, made self-signed for `hostname` if missing, and
/// renewed before it expires while the acceptor is in use (`selfsigned.rs`).
pub fn self_signed_acceptor(
    hostname: &str,
    cert: &Path,
    key: &Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let resolver = crate::selfsigned::SelfSigned::open(hostname, cert, key, crate::now_unix())?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(server_order(config))
}

/// The server picks the cipher suite by its own order (strongest first), not the
/// client's: a client cannot talk it down to a weaker suite it also offers.
fn server_order(mut config: rustls::ServerConfig) -> tokio_rustls::TlsAcceptor {
    config.ignore_client_order = true;
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn acceptor_from_files(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    acceptor_from_pem(&cert_pem, &key_pem)
}

/// A certificate chain (at least one certificate) and its private key, from PEM.
pub(crate) fn pem_pair(
    cert: &[u8],
    key: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
    Ok((certs, key))
}

/// Checks a certificate chain and key (PEM) and builds an acceptor from them.
pub fn acceptor_from_pem(cert: &[u8], key: &[u8]) -> Result<tokio_rustls::TlsAcceptor, String> {
    let (certs, key) = pem_pair(cert, key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(server_order(config))
}

/// Writes a pair (the key readable by its owner only), each file atomically.
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

/// The connector for `tls = "verify"`: the downstream's certificate must be the pinned
/// one (`pin`, its SHA-256), or else chain to a CA in `ca` (PEM; the system's bundle when
/// `None`) for the name the delivery connects to.
pub fn verifying_connector(
    ca: Option<&Path>,
    pin: Option<levee_config::CertPin>,
) -> Result<tokio_rustls::TlsConnector, String> {
    let verifier: Arc<dyn ServerCertVerifier> = match pin {
        Some(pin) => Arc::new(Pinned { pin, provider: provider() }),
        None => {
            let path = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
            let pem = std::fs::read(path).map_err(|e| format!("tls_ca {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("tls_ca {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("tls_ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("tls_ca {}: no certificate in it", path.display()));
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("tls_ca {}: {e}", path.display()))?
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Accepts exactly one certificate, by its hash: a downstream with a self-signed or
/// internal certificate can still be authenticated (as Postfix's "fingerprint" level).
#[derive(Debug)]
struct Pinned {
    pin: levee_config::CertPin,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == self.pin.0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        AnyCert(self.provider.clone()).verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        AnyCert(self.provider.clone()).verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("levee-tls-{}", std::process::id()));
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        self_signed_acceptor("mx.example.test", &c, &k).unwrap();
        let first = std::fs::read(&c).unwrap();
        self_signed_acceptor("mx.example.test", &c, &k).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(acceptor_from_pem(b"junk", b"junk").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
