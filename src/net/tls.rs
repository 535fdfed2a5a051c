//! TLS for Orca's listeners and for its connections to peers, on rustls (Pingora's `rustls`
//! feature; no OpenSSL).
//!
//! **Listeners.** A listener's certificate and key are PEM files ([`TlsFiles`]). Pingora 0.9's
//! rustls `TlsSettings` builds its `ServerConfig` once, from files or from a
//! `ResolvesServerCert`, and offers no way to swap a certificate afterwards. So each TLS
//! listener gets a [`CertResolver`]: a resolver holding the current `CertifiedKey` behind a
//! lock (an `ArcSwap`-like cell: a handshake clones the `Arc` and lets go at once), installed
//! with `TlsSettings::set_cert_resolver`. [`CertResolver::reload`] reads the files again and,
//! only when both parse and the key goes with the certificate, swaps the new pair in: the next
//! handshake presents it, and connections already open keep the session they negotiated (a
//! download in flight is not touched). `SIGHUP` calls it ([`CertReloader`]).
//!
//! **Peers.** With `cluster.peer_ca`, the fill client dials peers over TLS and checks their
//! certificate against that CA only ([`load_ca`], set as the peer's own CA list), for the
//! name `cluster.peer_server_name` or, by default, the peer's host as the peer list spells it.
//! Pingora's rustls connector builds a client configuration with a root store from that list
//! for each new connection; peer connections are pooled ([`crate::net::pool`]), so that is paid
//! once per connection, not per fill.

use crate::metrics::TLS_RELOADS;
use parking_lot::RwLock;
use pingora::listeners::tls::TlsSettings;
use pingora::utils::tls::WrappedX509;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`); otherwise HTTP/1.1 only.
    pub http2: bool,
}

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no PEM `CERTIFICATE`.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the file is not a well-formed X.509 certificate.
    #[error("{} holds a certificate that is not valid X.509: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The file holds no private key.
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key cannot be used, or does not go with the certificate.
    #[error("key {} does not go with certificate {}: {source}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file, each checked to parse as X.509 (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsFileError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for cert in &certs {
        // Pingora's `WrappedX509` (the per-peer CA list) panics on DER it cannot parse: refuse
        // such a file here, with its name.
        if let Err(e) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            return Err(TlsFileError::BadCertificate {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    Ok(certs)
}

/// Reads a certificate chain and its key, and checks that they go together.
///
/// # Errors
///
/// Which file cannot be used, and why.
pub fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsFileError> {
    let certs = certificates(&files.cert)?;
    let key_pem = read(&files.key)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsFileError::NoKey {
                path: files.key.clone(),
            })
        }
        Err(source) => {
            return Err(TlsFileError::Pem {
                path: files.key.clone(),
                source,
            })
        }
    };
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(certs, key, &provider)
        .map(Arc::new)
        .map_err(|source| TlsFileError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })
}

/// The CA certificates of a PEM file, as Pingora's per-peer CA list
/// (`HttpPeer::options.ca`).
///
/// # Errors
///
/// Why the file cannot be used.
pub fn load_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, TlsFileError> {
    let certs = certificates(path)?;
    // Each was parsed above, so `parse_x509` (which panics on bad DER) cannot fail here.
    let list: Vec<WrappedX509> = certs
        .into_iter()
        .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
        .collect();
    Ok(Arc::from(list.into_boxed_slice()))
}

/// The leaf certificate's serial number (hex) and subject, for logs.
fn describe(key: &CertifiedKey) -> (String, String) {
    key.cert
        .first()
        .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| (c.raw_serial_as_string(), c.subject().to_string()))
        .unwrap_or_default()
}

/// The certificate a TLS listener presents, swappable while it runs (see the module docs).
#[derive(Debug)]
pub struct CertResolver {
    /// The listener's name (`edge`, `internal`), for logs and metrics.
    name: &'static str,
    files: TlsFiles,
    /// The pair in force. Handshakes clone the `Arc` and let go of the lock at once.
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    /// Loads `files` for the listener `name`.
    ///
    /// # Errors
    ///
    /// As [`load_certified_key`].
    pub fn new(name: &'static str, files: TlsFiles) -> Result<Arc<Self>, TlsFileError> {
        let current = load_certified_key(&files)?;
        let (serial, subject) = describe(&current);
        tracing::info!(listener = name, cert = %files.cert.display(), serial, subject, "TLS certificate loaded");
        Ok(Arc::new(Self {
            name,
            files,
            current: RwLock::new(current),
        }))
    }

    /// Reads the files again; on success the new pair is presented from the next handshake on.
    /// Returns the new leaf's serial number and subject.
    ///
    /// # Errors
    ///
    /// Why the files were refused; the pair in force stays.
    pub fn reload(&self) -> Result<(String, String), TlsFileError> {
        let key = load_certified_key(&self.files)?;
        let described = describe(&key);
        *self.current.write() = key;
        Ok(described)
    }

    /// Pingora's TLS settings for a listener presenting this resolver's certificate.
    pub fn settings(self: &Arc<Self>) -> TlsSettings {
        pingora::tls::install_default_crypto_provider();
        // The paths are ignored when a resolver is set (pingora-core's rustls `TlsSettings::build`).
        let mut settings = TlsSettings::intermediate("", "")
            .expect("TlsSettings::intermediate with a resolver is infallible");
        settings.set_cert_resolver(self.clone());
        if self.files.http2 {
            settings.enable_h2();
        }
        settings
    }

    /// The listener's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Reloads every TLS listener's certificate and key. The edge's `SIGHUP` handler
/// (`edge::auth::SighupReloader`) calls it on each signal, so one handler, which `/readyz`
/// waits for, reloads the certificates and the client keys.
pub struct CertReloader(Vec<Arc<CertResolver>>);

impl CertReloader {
    /// A reloader of `resolvers`.
    #[must_use]
    pub fn new(resolvers: Vec<Arc<CertResolver>>) -> Self {
        for resolver in &resolvers {
            TLS_RELOADS.with_label_values(&[resolver.name(), "ok"]);
            TLS_RELOADS.with_label_values(&[resolver.name(), "error"]);
        }
        Self(resolvers)
    }

    /// Whether there is no TLS listener.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The listeners' names.
    pub fn listeners(&self) -> Vec<&'static str> {
        self.0.iter().map(|r| r.name()).collect()
    }

    /// Reloads each listener's files once; a failure keeps that listener's pair in force.
    pub fn reload_all(&self) {
        for resolver in &self.0 {
            let listener = resolver.name();
            match resolver.reload() {
                Ok((serial, subject)) => {
                    TLS_RELOADS.with_label_values(&[listener, "ok"]).inc();
                    tracing::info!(listener, serial, subject, "TLS certificate reloaded");
                }
                Err(err) => {
                    TLS_RELOADS.with_label_values(&[listener, "error"]).inc();
                    tracing::error!(listener, %err, "TLS certificate not reloaded; the one in force stays");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn missing_and_malformed_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
            http2: false,
        };
        let e = load_certified_key(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");

        let empty = write(dir.path(), "empty.pem", "not pem at all\n");
        let e = load_certified_key(&TlsFiles {
            cert: empty.clone(),
            key: empty.clone(),
            http2: false,
        })
        .unwrap_err();
        assert!(matches!(e, TlsFileError::NoCertificate { .. }), "{e}");

        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = load_ca(&garbage).unwrap_err();
        assert!(matches!(e, TlsFileError::BadCertificate { .. }), "{e}");
        assert!(e.to_string().contains("garbage.pem"), "{e}");
    }
}
