//! Mutual TLS inside the cluster (docs/ARCHITECTURE.md, "Processes and data flow").
//!
//! Every acceptor and replica holds a certificate for the DNS name
//! `node-<id>`, signed by the cluster CA. Servers require the cluster CA for
//! every client certificate presented; a connection that claims to be node
//! `n` must present a certificate valid for `node-<n>`. Clients authenticate
//! the cluster by its CA; their own certificate is optional unless the
//! cluster requires it.
//!
//! [`generate_dev_certs`] writes a development CA and certificates for a
//! set of nodes and for clients (what `psmr certs` and `psmr local` use).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

use psmr_core::proto::NodeId;

/// ALPN of psmr's QUIC connections.
pub const ALPN: &[u8] = b"psmr/1";

/// The DNS name in the certificate of node `id`.
pub fn node_name(id: NodeId) -> String {
    format!("node-{}", id.0)
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM object.
    #[error("{path}: not a PEM {what}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
        /// What the PEM parser reported.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC needs a TLS 1.3 cipher suite.
    #[error("no TLS 1.3 cipher suite for QUIC")]
    NoQuicSuite,
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A generated file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate chain and its key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| pem_error(cert, "certificate", source))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|source| pem_error(key, "private key", source))?;
        Ok(Identity { chain, key })
    }
}

fn pem_error(path: &Path, what: &'static str, source: rustls_pki_types::pem::Error) -> TlsError {
    match source {
        rustls_pki_types::pem::Error::Io(e) => TlsError::Read {
            path: path.to_path_buf(),
            source: e,
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            what,
            source,
        },
    }
}

/// The cluster CA and, for nodes and authenticated clients, an identity.
#[derive(Clone)]
pub struct Tls {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    identity: Option<Identity>,
}

impl Tls {
    /// Trusts the CA in `ca` (PEM) and presents `identity` if given.
    pub fn load(ca: &Path, identity: Option<Identity>) -> Result<Tls, TlsError> {
        let mut roots = RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| pem_error(ca, "CA certificate", source))?;
        for cert in cas {
            roots.add(cert)?;
        }
        Ok(Tls {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots: Arc::new(roots),
            identity,
        })
    }

    /// The QUIC server configuration of a node: its own certificate; client
    /// certificates must chain to the CA, and are required if
    /// `require_client_certificates`.
    pub fn server_config(
        &self,
        require_client_certificates: bool,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let identity = self
            .identity
            .clone()
            .ok_or(TlsError::Rustls(rustls::Error::NoCertificatesPresented))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone());
        let verifier = if require_client_certificates {
            verifier.build()?
        } else {
            verifier.allow_unauthenticated().build()?
        };
        let mut crypto = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain, identity.key)?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|_| TlsError::NoQuicSuite)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    /// The QUIC client configuration: trusts the cluster CA, presents the
    /// identity if there is one.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone());
        let mut crypto = match self.identity.clone() {
            Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
            None => builder.with_no_client_auth(),
        };
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|_| TlsError::NoQuicSuite)?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

/// Whether the peer of `connection` presented a certificate valid for
/// `node-<id>` (its chain to the CA was checked during the handshake).
pub fn peer_is_node(connection: &quinn::Connection, id: NodeId) -> bool {
    let Some(identity) = connection.peer_identity() else {
        return false;
    };
    let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Paths of the files [`generate_dev_certs`] writes into a directory.
pub struct CertPaths {
    /// The directory.
    pub dir: PathBuf,
}

impl CertPaths {
    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Certificate and key of node `id`.
    pub fn node(&self, id: NodeId) -> (PathBuf, PathBuf) {
        let name = node_name(id);
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// Certificate and key for clients.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }
}

/// Writes a development CA, a certificate for each of `nodes`, and one for
/// clients into `dir`. For development and tests only: the CA key is
/// written beside the certificates.
pub fn generate_dev_certs(dir: &Path, nodes: &[NodeId]) -> Result<CertPaths, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let paths = CertPaths {
        dir: dir.to_path_buf(),
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "psmr development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&paths.ca(), ca_cert.pem())?;
    write(&dir.join("ca.key"), ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);
    let issue = |name: String, (cert_path, key_path): (PathBuf, PathBuf)| -> Result<(), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer)?;
        write(&cert_path, cert.pem())?;
        write(&key_path, key.serialize_pem())
    };
    for &id in nodes {
        issue(node_name(id), paths.node(id))?;
    }
    issue("client".to_string(), paths.client())?;
    Ok(paths)
}

fn write(path: &Path, contents: String) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}
