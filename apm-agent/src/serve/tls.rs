//! TLS on the admin and metrics listeners (`--tls-cert`, `--tls-key`), so
//! a bearer token never crosses the network in clear: rustls with the
//! ring provider, TLS 1.2 and 1.3, HTTP/1.1 inside.
//!
//! Handshakes run concurrently (at most [`MAX_HANDSHAKES`] at once), each
//! bounded by [`HANDSHAKE_TIMEOUT`], so a silent client delays nobody. A
//! connection that does not open with a TLS ClientHello (plain HTTP) fails
//! its handshake and is closed unanswered. The certificate and key are
//! re-read when their files change (a renewed Kubernetes Secret), checked
//! at most every [`RELOAD_CHECK`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ServerConfig,
        server::{ClientHello, ResolvesServerCert},
        sign::CertifiedKey,
    },
    server::TlsStream,
};
use tracing::{debug, info, warn};

/// How long a client has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 64;
/// How often the certificate files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The server side of TLS for both listeners, from a PEM certificate chain
/// (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    // ring builds in seconds with no C toolchain beyond cc; rustls now
    // deprecates it for lacking post-quantum key exchange, which a
    // metrics endpoint can do without.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Reloading::new(cert, key, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is
/// given and plain HTTP otherwise.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            axum::serve(TlsListener::new(listener, config)?, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A TCP listener whose connections come out as finished TLS sessions.
struct TlsListener {
    sessions: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, sessions) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(Self {
            sessions,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.sessions.recv().await {
            Some(session) => session,
            // The accept loop ended (it never does on its own): no more
            // connections, and the server waits for its shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accepts TCP connections and hands each one's handshake to a task of
/// its own; finished sessions go to `sessions`.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sessions: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                debug!(error = %e, "accepting a TLS connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, sessions) = (acceptor.clone(), sessions.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(session)) => {
                    let _ = sessions.send((session, peer)).await;
                }
                // Plain HTTP, a scanner, a client that distrusts our
                // certificate: closed, and not worth a line above debug.
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The certificate and key of `--tls-cert` and `--tls-key`, re-read when
/// either file changes.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Stamp, Stamp),
    checked: Instant,
}

impl Reloading {
    fn new(
        cert: &Path,
        key: &Path,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let stamps = stamps(cert, key);
        let loaded = load(cert, key, provider)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider: provider.clone(),
            state: Mutex::new(Loaded {
                key: Arc::new(loaded),
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current key, re-read first if the files changed.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().ok()?;
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let now = stamps(&self.cert, &self.key);
            if now != state.stamps {
                state.stamps = now;
                match load(&self.cert, &self.key, &self.provider) {
                    Ok(key) => {
                        state.key = Arc::new(key);
                        info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot reload the TLS certificate; keeping the previous one")
                    }
                }
            }
        }
        Some(state.key.clone())
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// What tells a file was replaced: its modification time, and its inode
/// (a Secret's update swaps a symlink; a rename keeps the new file's
/// time, which may equal the old one's to the timer tick).
type Stamp = Option<(SystemTime, u64)>;

fn stamps(cert: &Path, key: &Path) -> (Stamp, Stamp) {
    use std::os::unix::fs::MetadataExt as _;
    let stamp = |p: &Path| {
        let meta = std::fs::metadata(p).ok()?;
        Some((meta.modified().ok()?, meta.ino()))
    };
    (stamp(cert), stamp(key))
}

/// Reads and checks a certificate chain and its key.
fn load(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading --tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading --tls-key {}: {e}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "--tls-key {} does not belong to --tls-cert {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate and key for `localhost` written to a fresh directory.
    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, made.cert.pem()).expect("write cert");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
        (cert, key)
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "apm-tls-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_matching_pair_loads_and_anything_else_is_refused_with_the_file_named() {
        let dir = dir();
        let (cert, key) = pair(&dir, "a");
        let (_, other_key) = pair(&dir, "b");
        assert!(server_config(&cert, &key).is_ok());
        let mismatch = server_config(&cert, &other_key).expect_err("wrong key");
        assert!(mismatch.contains("does not belong"), "{mismatch}");
        let missing = server_config(&dir.join("none.crt"), &key).expect_err("missing");
        assert!(missing.contains("none.crt"), "{missing}");
        let empty = dir.join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let no_pem = server_config(&empty, &key).expect_err("no PEM");
        assert!(no_pem.contains("empty.crt"), "{no_pem}");
        // A key file holding a certificate is no key.
        assert!(server_config(&cert, &cert).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_renewed_certificate_is_picked_up_and_a_broken_one_is_not() {
        let dir = dir();
        let (cert, key) = pair(&dir, "live");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Reloading::new(&cert, &key, &provider).expect("load");
        let first = resolver.current().expect("key");
        // Renewed in place: seen at the next check.
        let (new_cert, new_key) = pair(&dir, "next");
        std::fs::rename(&new_cert, &cert).expect("rename");
        std::fs::rename(&new_key, &key).expect("rename");
        let due = || Instant::now().checked_sub(RELOAD_CHECK).expect("uptime");
        resolver.state.lock().expect("lock").checked = due();
        let second = resolver.current().expect("key");
        assert_ne!(first.cert, second.cert);
        // Broken: the last good one stays.
        std::fs::write(&key, "garbage").expect("write");
        if let Ok(mut state) = resolver.state.lock() {
            state.checked = due();
            state.stamps.1 = None;
        }
        assert_eq!(resolver.current().expect("key").cert, second.cert);
        std::fs::remove_dir_all(dir).ok();
    }
}
