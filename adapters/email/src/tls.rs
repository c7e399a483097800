//! TLS for both directions: one rustls client config (Mozilla's web roots plus an optional
//! `ca_file`) for IMAP, and the matching lettre parameters for SMTP. Certificates are always
//! verified: there is no "accept invalid certificates" switch.

use carebridge_contract::AdapterError;
use carebridge_contract::config::ConfigError;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;

/// Makes ring the process-wide rustls provider, once. Other crates (reqwest, teloxide) may have
/// installed it already; that is fine. Without a default, `ClientConfig::builder()` panics when
/// two providers are compiled in.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means "already installed": nothing to do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Reads the PEM certificates of a `ca_file`. The error names the path (not PHI), never the
/// contents.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, AdapterError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::Unreadable {
        what: "ca_file",
        path: path.to_path_buf(),
        kind: e.kind(),
    })?;
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut bytes.as_slice()).collect::<Result<_, _>>().map_err(|_| ConfigError::Unusable {
            what: "ca_file",
            path: path.to_path_buf(),
            problem: "is not valid PEM",
        })?;
    if certs.is_empty() {
        return Err(ConfigError::Unusable {
            what: "ca_file",
            path: path.to_path_buf(),
            problem: "holds no PEM certificate",
        }
        .into());
    }
    Ok(certs)
}

/// The rustls client config for IMAP: web roots plus the extra CAs.
pub(crate) fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, AdapterError> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| ConfigError::Value { key: "ca_file".into(), reason: format!("certificate rejected: {e}") })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Setup { what: "TLS setup", reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the server's certificate must match: `tls_name` if set, else the host.
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, AdapterError> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|_| {
        ConfigError::Value { key: "tls_name".into(), reason: format!("`{name}` is not a valid TLS server name") }.into()
    })
}

/// lettre's TLS parameters for SMTP, with the same trust as IMAP.
pub(crate) fn smtp_parameters(
    name: &str,
    ca_pem: Option<&[u8]>,
) -> Result<lettre::transport::smtp::client::TlsParameters, AdapterError> {
    use lettre::transport::smtp::client::{Certificate, TlsParameters};
    install_crypto_provider();
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let mut builder = TlsParameters::builder(bare.to_string());
    if let Some(pem) = ca_pem {
        let cert = Certificate::from_pem(pem)
            .map_err(|_| ConfigError::Value { key: "smtp.ca_file".into(), reason: "not valid PEM".into() })?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build_rustls().map_err(|e| ConfigError::Setup { what: "SMTP TLS setup", reason: e.to_string() }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ips_are_server_names() {
        assert!(server_name("imap.clinic.test").is_ok());
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_config_error_naming_the_path() {
        let err = read_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("cb-email-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty.pem"), "no certificates here\n").unwrap();
        assert!(read_ca_file(&dir.join("empty.pem")).is_err());
        assert!(client_config(&[]).is_ok());
    }
}
