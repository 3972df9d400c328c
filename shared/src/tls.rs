//! TLS client configuration shared by PostgreSQL and Redis: webpki roots plus
//! optional extra CAs (RDS's own CA, a test CA).

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::sync::{Arc, OnceLock};

/// The certificates in a PEM bundle.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))
}

/// Installs the process-wide rustls crypto provider once (aws-lc-rs, the one
/// every TLS-using dependency here is built with).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A verifying client config trusting the public web PKI and `extra_ca`.
/// Without an extra CA, one config is built per process and shared (the
/// database pool and the Claude client both want it at cold start).
pub fn client_config(extra_ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    static PUBLIC_ROOTS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let Some(pem) = extra_ca else {
        return Ok(PUBLIC_ROOTS
            .get_or_init(|| with_roots(public_roots()))
            .clone());
    };
    let mut roots = public_roots();
    for cert in parse_certs(pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    Ok(with_roots(roots))
}

fn public_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

fn with_roots(roots: RootCertStore) -> Arc<rustls::ClientConfig> {
    install_crypto_provider();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
