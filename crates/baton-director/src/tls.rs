//! The accept loop every Baton daemon with mutual TLS shares (the director
//! and media agents): bounded connections, a bounded handshake, HTTP/1.1
//! with a header timeout and a bounded lifetime, and the verified peer
//! certificate's fingerprint handed to the handlers as a [`Peer`].

use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The fingerprint (SHA-256, hex) of the certificate the connection
/// presented, if any (already checked against the CA and its revocation
/// list at the handshake).
#[derive(Clone, Debug)]
pub struct Peer(pub Option<String>);

impl Peer {
    /// The peer of a request (none if the request did not come through
    /// [`serve`]).
    pub fn of<B>(req: &axum::http::Request<B>) -> Peer {
        req.extensions()
            .get::<Peer>()
            .cloned()
            .unwrap_or(Peer(None))
    }
}

/// Connections served at once (more wait to be accepted).
pub const MAX_CONNECTIONS: usize = 2048;
/// The longest a connection lives: a node reconnects (and its certificate
/// is checked again) at least this often.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// Serves `router` on `listener` for ever, each new connection with the
/// TLS configuration `tls` holds at that moment (swapped when the
/// revocation list changes). `failed` is called for each failed handshake.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    router: axum::Router,
    failed: Arc<dyn Fn() + Send + Sync>,
) {
    // Connections are bounded: past the limit, new ones wait.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let cfg = tls.read().expect("tls config").clone();
        let router = router.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                failed();
                return;
            };
            let peer = Peer(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| crate::pki::fingerprint(c)),
            );
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    router.clone().oneshot(req)
                },
            );
            // Slow or idle clients do not hold a connection for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

/// A server configuration for mutual TLS: clients are checked against
/// `ca_der` and the revocation list `crl_der` (or may come without a
/// certificate when `allow_anonymous`); the server presents `chain_pem` with
/// `key_pem`. No session resumption: every connection is a full handshake,
/// so a certificate is never carried past its revocation unchecked.
pub fn server_config(
    ca_der: &[u8],
    crl_der: Vec<u8>,
    allow_anonymous: bool,
    chain: Vec<Vec<u8>>,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| e.to_string())?;
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .with_crls(vec![CertificateRevocationListDer::from(crl_der)]);
    if allow_anonymous {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| e.to_string())?;
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// The DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| e.to_string())
}
