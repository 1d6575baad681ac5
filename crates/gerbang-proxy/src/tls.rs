//! rustls configuration for the data plane (server side) and for `https://` upstreams (client
//! side). Inputs are PEM bytes that the binary read; this crate opens no file.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in the PEM data")]
    NoCertificate,
    #[error("PEM data could not be read: {0}")]
    Pem(String),
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Parses every certificate in a PEM bundle.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// Whether the listener asks clients for a certificate (mTLS), and which CAs it trusts for them.
#[derive(Debug, Clone, Default)]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// A certificate is verified when offered; clients without one are served (and must then
    /// authenticate otherwise).
    Optional(Vec<CertificateDer<'static>>),
    /// Every client must present a certificate that chains to these CAs.
    Required(Vec<CertificateDer<'static>>),
}

/// A server configuration with one certificate chain and key, offering HTTP/2 and HTTP/1.1 by
/// ALPN.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_client_auth(cert_pem, key_pem, ClientAuth::None)
}

/// [`server_config`] with client certificates verified against `client_auth`'s CAs.
pub fn server_config_with_client_auth(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = parse_certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(e.to_string()))?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(cas) | ClientAuth::Required(cas) if cas.is_empty() => {
            return Err(TlsError::NoCertificate);
        }
        ClientAuth::Optional(cas) => {
            builder.with_client_cert_verifier(client_verifier(cas, false)?)
        }
        ClientAuth::Required(cas) => builder.with_client_cert_verifier(client_verifier(cas, true)?),
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn client_verifier(
    cas: Vec<CertificateDer<'static>>,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca)?;
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| TlsError::Pem(format!("client CA: {e}")))
}

/// A client configuration for `https://` upstreams: the system's roots (when asked) plus extra
/// trusted roots from the configuration.
pub fn client_config(
    use_system_roots: bool,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if use_system_roots {
        // Unreadable system certificates are skipped, as every TLS client does; the count of
        // usable ones is logged.
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, "system trust roots loaded");
    }
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// For tests: a server configuration with a self-signed certificate for `localhost`, and a
/// client configuration that trusts it.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = ck.cert.pem();
    let key = ck.signing_key.serialize_pem();
    let server = server_config(cert.as_bytes(), key.as_bytes()).unwrap();
    let roots = parse_certs(cert.as_bytes()).unwrap();
    (server, client_config(false, &roots).unwrap())
}
