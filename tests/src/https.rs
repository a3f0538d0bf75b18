//! An HTTPS client for the agent's TLS listeners (rustls, trusting only
//! the test's own certificate authority), and a plain-HTTP attempt at one.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

use crate::{Response, get_over};

/// A new certificate authority and a server certificate for 127.0.0.1
/// and localhost signed by it, as PEM: (CA, certificate, key).
pub fn certificate() -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: with rcgen's one default name for both, a
    // verifier such as BoringSSL takes the leaf for self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "apm test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// A client that trusts the PEM certificate `ca` (and nothing else).
pub fn client(ca: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.context("CA certificate")?)?;
    }
    // ring builds in seconds with no C toolchain beyond cc; rustls now
    // deprecates it for lacking post-quantum key exchange, which a
    // metrics endpoint can do without.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GET `path` over TLS from `addr`, whose certificate must name `host`.
pub fn get_tls(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(host.to_owned())?;
    let session = rustls::ClientConnection::new(config.clone(), name)?;
    get_over(rustls::StreamOwned::new(session, tcp), addr, path, headers)
}

/// What a TLS listener sends back to a plain-HTTP request carrying
/// `headers`: every byte until it closes (or 5 s pass).
pub fn plain_attempt(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    match s.write_all(request.as_bytes()) {
        Ok(()) => {}
        // Closed before it read the whole request: refused, which is
        // what is under test; what it sent first is still read below.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(e.into()),
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the alert is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(raw),
            Err(e) => return Err(e.into()),
        }
    }
}
