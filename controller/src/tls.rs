//! TLS for the config and usage streams, which carry every tenant's provider keys and MCP
//! secrets: the certificate the controller serves (given, or made once for a local setup),
//! and optionally the CA that dataplanes' client certificates must chain to (mutual TLS).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Files of a self-made CA and the certificates it issued, in one directory.
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "tls.crt";
pub const SERVER_KEY: &str = "tls.key";
/// A client certificate for dataplanes, for mutual TLS.
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";

/// What the config stream is served with.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Dataplanes must present a certificate issued by this CA.
    pub client_ca_pem: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Why certificates could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TlsError {
    let path = path.display().to_string();
    move |source| TlsError::Io { what, path, source }
}

impl ServerTls {
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io("reading", p));
        Ok(Self {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: client_ca.map(read).transpose()?,
        })
    }

    pub fn config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        // A client that opens a connection and never finishes the handshake is dropped.
        let config = tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .timeout(std::time::Duration::from_secs(10));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// Makes, in `dir`, a CA and a server certificate for `names` (DNS names or IP
/// addresses), and a client certificate for dataplanes, unless they are there already;
/// answers the paths of the server certificate and key. Keys are written readable by
/// the owner only.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
    if cert.exists() && key.exists() && dir.join(CA_CERT).exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tollgate config stream CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut server = CertificateParams::new(names.to_vec())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "tollgate-controller");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "tollgate-dataplane");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &ca)?;

    write(dir, CA_KEY, &ca.key().serialize_pem(), true)?;
    write(dir, SERVER_KEY, &server_key.serialize_pem(), true)?;
    write(dir, SERVER_CERT, &server_cert.pem(), false)?;
    write(dir, CLIENT_KEY, &client_key.serialize_pem(), true)?;
    write(dir, CLIENT_CERT, &client_cert.pem(), false)?;
    // Last: its presence says the set is complete.
    write(dir, CA_CERT, &ca.pem(), false)?;
    tracing::info!(dir = %dir.display(), "made a CA and certificates for the config stream");
    Ok((cert, key))
}

fn write(dir: &Path, name: &str, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("writing", &path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_made_set_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (cert, key) = self_signed(dir.path(), &names).unwrap();
        let first = std::fs::read_to_string(&cert).unwrap();
        assert!(first.starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is the owner's only");
        self_signed(dir.path(), &names).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), first);
        for f in [CA_CERT, CLIENT_CERT, CLIENT_KEY] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        ServerTls::from_files(&cert, &key, Some(&dir.path().join(CA_CERT)))
            .unwrap()
            .config();
    }
}
