//! Server TLS of one listener group (`otlp.tls` or `admin.tls`), reloaded when its files change.
//!
//! In: the PEM files of [`TlsConfig`]. Out: the rustls [`ServerConfig`] the next handshake
//! uses ([`TlsReloader::current`]). Before every handshake the files' metadata (modification
//! time, size, inode) is compared with what was last loaded; when it changed, the files are read
//! again and a new config replaces the old one, so a certificate rotated on disk (cert-manager
//! rewriting a Secret volume) serves from the next connection on, with no restart. A broken
//! replacement (a key that does not match the certificate, half-written PEM, a missing file)
//! keeps the old config and logs an error once per change. At start-up a broken set of files is
//! an error that names the key and the file.
//!
//! Versions: TLS 1.3, and TLS 1.2 unless `min_version = "1.3"`; aws-lc-rs' default cipher
//! suites. With `client_ca_file`, a client must present a certificate chaining to one of its
//! CAs, valid now and for client authentication (mTLS).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

use crate::config::{TlsConfig, TlsVersion};

/// What a port offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` only: gRPC clients (grpc-go since 1.67) insist on it.
    Grpc = 0,
    /// `h2` and `http/1.1`: the HTTP ports speak both.
    Http = 1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Grpc => vec![b"h2".to_vec()],
            Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// One port's view of a group's [`TlsReloader`].
#[derive(Clone)]
pub struct TlsPort {
    pub reloader: Arc<TlsReloader>,
    pub alpn: Alpn,
}

impl TlsPort {
    /// The config for the port's next handshake (see [`TlsReloader::current`]).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.reloader.current(self.alpn)
    }
}

/// A TLS configuration that could not be loaded; names the key and file.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {path:?}: {reason}")]
pub struct TlsError {
    pub key: String,
    pub path: PathBuf,
    pub reason: String,
}

/// What identifies the version of a file on disk; `None` when it cannot be read.
type Fingerprint = Option<(SystemTime, u64, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// The configs of a group's two ports (indexed by [`Alpn`]), from the same files.
type Configs = [Arc<ServerConfig>; 2];

struct State {
    /// The files as last looked at (loaded, or failed to load).
    seen: Vec<Fingerprint>,
    current: Configs,
}

/// The server TLS config of one listener group (both its ports), with its files watched.
pub struct TlsReloader {
    /// `otlp.tls` or `admin.tls`, for messages.
    key: &'static str,
    config: TlsConfig,
    state: Mutex<State>,
}

impl TlsReloader {
    /// Loads the files of `config` (`key` names it in errors); fails if they are unusable.
    pub fn load(key: &'static str, config: TlsConfig) -> Result<Self, TlsError> {
        let seen = files(&config).iter().map(|p| fingerprint(p)).collect();
        let current = build_both(key, &config)?;
        Ok(Self { key, config, state: Mutex::new(State { seen, current }) })
    }

    /// The config for the next handshake on a port offering `alpn`: reloaded first if a file
    /// changed since last looked at.
    pub fn current(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let now: Vec<Fingerprint> = files(&self.config).iter().map(|p| fingerprint(p)).collect();
        let mut state = self.state.lock().expect("tls state lock");
        if now != state.seen {
            state.seen = now;
            match build_both(self.key, &self.config) {
                Ok(configs) => {
                    state.current = configs;
                    tracing::info!(key = self.key, "tls: certificate files changed, reloaded");
                }
                Err(error) => tracing::error!(
                    %error,
                    "tls: certificate files changed but cannot be loaded, serving the previous \
                     certificate until they are fixed"
                ),
            }
        }
        Arc::clone(&state.current[alpn as usize])
    }
}

fn files(config: &TlsConfig) -> Vec<&Path> {
    let mut files = vec![config.cert_file.as_path(), config.key_file.as_path()];
    files.extend(config.client_ca_file.as_deref());
    files
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn build_both(key: &str, config: &TlsConfig) -> Result<Configs, TlsError> {
    let base = build(key, config)?;
    let with = |alpn: Alpn| {
        let mut config = base.clone();
        config.alpn_protocols = alpn.protocols();
        Arc::new(config)
    };
    Ok([with(Alpn::Grpc), with(Alpn::Http)])
}

fn build(key: &str, config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let err = |field: &str, path: &Path, reason: String| TlsError {
        key: format!("{key}.{field}"),
        path: path.to_path_buf(),
        reason,
    };
    let chain = read_certs(&config.cert_file).map_err(|r| err("cert_file", &config.cert_file, r))?;
    let private_key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        err("key_file", &config.key_file, format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))
    })?;
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| err("min_version", Path::new(""), e.to_string()))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file).map_err(|r| err("client_ca_file", ca_file, r))? {
                roots
                    .add(cert)
                    .map_err(|e| err("client_ca_file", ca_file, format!("not a usable CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err("client_ca_file", ca_file, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, private_key)
        .map_err(|e| err("key_file", &config.key_file, format!("does not go with {key}.cert_file: {e}")))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod test_certs {
    //! Certificates made with the `openssl` command line for the tests of this crate.

    use std::{path::Path, process::Command};

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Writes `{name}.key` and `{name}.crt`: a self-signed CA.
    #[rustfmt::skip]
    pub fn ca(dir: &Path, name: &str) {
        openssl(dir, &[
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", &format!("{name}.key"), "-out", &format!("{name}.crt"), "-days", "2",
            "-subj", &format!("/CN={name}"), "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// Writes `{name}.key` and `{name}.crt` signed by the CA `{ca}`: a server certificate for
    /// localhost and 127.0.0.1, or a client certificate.
    #[rustfmt::skip]
    pub fn leaf(dir: &Path, ca: &str, name: &str, server: bool) {
        openssl(dir, &[
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}"),
        ]);
        let ext = if server {
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        } else {
            "extendedKeyUsage=clientAuth\n"
        };
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(dir, &[
            "x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.crt"),
            "-CAkey", &format!("{ca}.key"), "-CAcreateserial", "-out", &format!("{name}.crt"),
            "-days", "2", "-extfile", &format!("{name}.ext"),
        ]);
    }

    /// Writes `{name}.key` and `{name}.crt`: a client certificate signed by `{ca}` that expired
    /// in 2020 (`openssl x509` of OpenSSL 3.0 cannot back-date, `openssl ca` can).
    #[rustfmt::skip]
    pub fn expired_leaf(dir: &Path, ca: &str, name: &str) {
        openssl(dir, &[
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}"),
        ]);
        let conf = format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {name}.index\nnew_certs_dir = .\nserial = {name}.serial\n\
             default_md = sha256\npolicy = p\nx509_extensions = e\nunique_subject = no\n\
             [p]\ncommonName = supplied\n[e]\nextendedKeyUsage = clientAuth\n"
        );
        std::fs::write(dir.join(format!("{name}.cnf")), conf).unwrap();
        std::fs::write(dir.join(format!("{name}.index")), "").unwrap();
        std::fs::write(dir.join(format!("{name}.serial")), "01\n").unwrap();
        openssl(dir, &[
            "ca", "-batch", "-notext", "-config", &format!("{name}.cnf"), "-cert", &format!("{ca}.crt"),
            "-keyfile", &format!("{ca}.key"), "-in", &format!("{name}.csr"), "-out", &format!("{name}.crt"),
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::{test_certs::*, *};

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
            client_ca_file: None,
            min_version: TlsVersion::Tls12,
        }
    }

    #[test]
    fn start_up_errors_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = TlsReloader::load("otlp.tls", config(dir.path())).err().unwrap().to_string();
        assert!(err.starts_with("otlp.tls.cert_file = ") && err.contains("cannot read"), "{err}");

        ca(dir.path(), "ca");
        leaf(dir.path(), "ca", "server", true);
        leaf(dir.path(), "ca", "other", true);
        let mismatched = TlsConfig { key_file: dir.path().join("other.key"), ..config(dir.path()) };
        let err = TlsReloader::load("admin.tls", mismatched).err().unwrap().to_string();
        assert!(err.starts_with("admin.tls.key_file = ") && err.contains("does not go with"), "{err}");

        std::fs::write(dir.path().join("empty.pem"), "not pem\n").unwrap();
        let no_ca = TlsConfig { client_ca_file: Some(dir.path().join("empty.pem")), ..config(dir.path()) };
        let err = TlsReloader::load("otlp.tls", no_ca).err().unwrap().to_string();
        assert!(err.starts_with("otlp.tls.client_ca_file = ") && err.contains("no PEM CERTIFICATE"), "{err}");

        let reloader = TlsReloader::load("otlp.tls", config(dir.path())).expect("a matching pair loads");
        assert_eq!(
            reloader.current(Alpn::Grpc).alpn_protocols,
            vec![b"h2".to_vec()],
            "gRPC clients insist on h2"
        );
        assert_eq!(reloader.current(Alpn::Http).alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_replaced_pair_is_served_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "ca");
        leaf(d, "ca", "server", true);
        let reloader = TlsReloader::load("otlp.tls", config(d)).unwrap();
        let first = Arc::as_ptr(&reloader.current(Alpn::Grpc));
        assert_eq!(Arc::as_ptr(&reloader.current(Alpn::Grpc)), first, "unchanged files are not read again");

        // A new pair, written the way cert-manager's volume update lands: a new file per name.
        leaf(d, "ca", "next", true);
        std::fs::rename(d.join("next.crt"), d.join("server.crt")).unwrap();
        std::fs::rename(d.join("next.key"), d.join("server.key")).unwrap();
        let second = reloader.current(Alpn::Grpc);
        assert_ne!(Arc::as_ptr(&second), first, "a replaced pair is loaded");

        // Half a rotation: a new certificate beside the old key does not load; the pair stays.
        leaf(d, "ca", "third", true);
        std::fs::rename(d.join("third.crt"), d.join("server.crt")).unwrap();
        assert!(
            Arc::ptr_eq(&reloader.current(Alpn::Grpc), &second),
            "a broken replacement keeps the old pair"
        );
        assert!(Arc::ptr_eq(&reloader.current(Alpn::Grpc), &second));
        // The rotation completes: the key arrives and the new pair loads.
        std::fs::rename(d.join("third.key"), d.join("server.key")).unwrap();
        assert!(!Arc::ptr_eq(&reloader.current(Alpn::Grpc), &second), "the completed pair is loaded");
    }
}
