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
//! set of nodes and for clients (what `psmr certs` and `psmr local` use);
//! [`issue_client_cert`] adds a certificate for one more client. A client
//! certificate is only good for dialing (its extended key usage), so it can
//! never serve as a node's, and a node's name is checked on every stream
//! that claims it ([`peer_is_node`]). The tag of a client's certificate is
//! the top of its wire id ([`ClientTag`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

use psmr_core::ClientTag;
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
    /// A file holds no PEM object of the kind expected.
    #[error("{path}: no {what} in it (expected a PEM file)")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
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
    /// `psmr certs` would replace an existing CA or certificate.
    #[error(
        "{path} exists; replacing it locks out every process holding the old certificates (pass --force to replace it)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A client name that cannot be a certificate's file and DNS name.
    #[error("client name {name:?}: use 1 to 63 letters, digits and '-', not starting with 'node-'")]
    BadName {
        /// The name.
        name: String,
    },
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
        if chain.is_empty() {
            return Err(TlsError::Empty {
                path: cert.to_path_buf(),
                what: "certificate",
            });
        }
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
        if cas.is_empty() {
            return Err(TlsError::Empty {
                path: ca.to_path_buf(),
                what: "CA certificate",
            });
        }
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

    /// The tag a server computes for this identity's certificate
    /// ([`ClientTag::ANONYMOUS`] without one): the top bits of a client's
    /// wire id.
    pub fn client_tag(&self) -> ClientTag {
        self.identity
            .as_ref()
            .and_then(|i| i.chain.first())
            .map_or(ClientTag::ANONYMOUS, |leaf| ClientTag::of_certificate(leaf))
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

/// The leaf certificate the peer of `connection` presented (its chain to
/// the CA was checked during the handshake), if any.
fn peer_leaf(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().cloned()
}

/// The tag of the certificate the peer of `connection` authenticated with,
/// or [`ClientTag::ANONYMOUS`] if it presented none.
pub fn peer_client_tag(connection: &quinn::Connection) -> ClientTag {
    peer_leaf(connection).map_or(ClientTag::ANONYMOUS, |leaf| {
        ClientTag::of_certificate(&leaf)
    })
}

/// Whether the peer of `connection` presented a certificate valid for
/// `node-<id>` (its chain to the CA was checked during the handshake).
pub fn peer_is_node(connection: &quinn::Connection, id: NodeId) -> bool {
    let Some(leaf) = peer_leaf(connection) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(&leaf) else {
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

    /// The CA's private key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
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
        self.named_client(CLIENT)
    }

    /// Certificate and key of the client named `name` ([`issue_client_cert`]);
    /// [`CLIENT`] is the one every cluster gets.
    pub fn named_client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// The name of the client certificate [`generate_dev_certs`] issues.
pub const CLIENT: &str = "client";

/// Writes a development CA, a certificate for each of `nodes`, and one for
/// clients into `dir`. Refuses ([`TlsError::Exists`]) if the directory
/// already holds a CA, unless `replace`: a new CA locks every process
/// holding the old certificates out of the cluster. Private keys, the CA's
/// among them, are readable by their owner only. Node certificates may serve
/// and dial (TLS server and client authentication); client certificates may
/// only dial, so none can pass for a node.
pub fn generate_dev_certs(
    dir: &Path,
    nodes: &[NodeId],
    replace: bool,
) -> Result<CertPaths, TlsError> {
    create_dir(dir)?;
    let paths = CertPaths {
        dir: dir.to_path_buf(),
    };
    for existing in [paths.ca(), paths.ca_key()] {
        if !replace && existing.exists() {
            return Err(TlsError::Exists { path: existing });
        }
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "psmr development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_key(&paths.ca_key(), &ca_key.serialize_pem())?;
    write(&paths.ca(), ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);
    for &id in nodes {
        issue(&issuer, &node_name(id), Role::Node, paths.node(id))?;
    }
    issue(&issuer, CLIENT, Role::Client, paths.client())?;
    Ok(paths)
}

/// Issues a certificate for the client `name` in `dir`, signed by the CA
/// there (its `ca.key`): `<name>.pem` and `<name>.key`. Each client (or
/// tenant) with its own certificate has its own [`ClientTag`], so no other
/// client can act under its id. Refuses to replace an existing one unless
/// `replace`.
pub fn issue_client_cert(dir: &Path, name: &str, replace: bool) -> Result<PathBuf, TlsError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with("node-")
        && name != "ca";
    if !valid {
        return Err(TlsError::BadName {
            name: name.to_string(),
        });
    }
    let paths = CertPaths {
        dir: dir.to_path_buf(),
    };
    let (cert, key) = paths.named_client(name);
    if !replace && cert.exists() {
        return Err(TlsError::Exists { path: cert });
    }
    let ca_pem = read(&paths.ca())?;
    let ca_key_pem = read(&paths.ca_key())?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    issue(&issuer, name, Role::Client, (cert.clone(), key))?;
    Ok(cert)
}

/// What a certificate may be used for.
#[derive(Clone, Copy)]
enum Role {
    /// A cluster node: serves connections and dials other nodes.
    Node,
    /// A client: dials only.
    Client,
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    role: Role,
    (cert_path, key_path): (PathBuf, PathBuf),
) -> Result<(), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = match role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let cert = params.signed_by(&key, issuer)?;
    write_key(&key_path, &key.serialize_pem())?;
    write(&cert_path, cert.pem())
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: String) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a private key readable by its owner only: created with mode 0600
/// (never world-readable for an instant), and set to it if it existed.
fn write_key(path: &Path, pem: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    file.write_all(pem.as_bytes()).map_err(failed)
}
