//! Accepting connections on one port: TLS when configured, the wrong protocol refused.
//!
//! ```text
//! TcpListener --accept--> (one task per connection, at most HANDSHAKE_TIMEOUT)
//!     first byte 0x16 (a TLS handshake) on a TLS port     --> rustls handshake --> Conn::Tls
//!     anything else on a plain-text port                  --> Conn::Plain
//!     plain text on a TLS port, TLS on a plain-text port  --> answered, closed, counted
//! Conn --> Incoming (a Stream for tonic, an axum::serve::Listener for axum)
//! ```
//!
//! A slow or failing handshake never holds up other connections: each runs in its own task and
//! only finished connections reach the server. Refused connections are counted in
//! [`Refusals`] by reason (once per connection), and the client gets an answer it can
//! understand: plain text on a TLS port gets, for each request, HTTP `400` or gRPC
//! `UNAUTHENTICATED` saying that TLS is required; a TLS client on a plain-text port gets a plain
//! HTTP answer, which TLS clients report as "wrong version number" (OpenSSL) or "first record
//! does not look like a TLS handshake" (Go); a failed handshake gets rustls' alert (unknown CA,
//! certificate required, certificate expired, protocol version), and the connection is closed
//! only once the client has read it.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{
    refusals::{Listener, Reason, Refusals},
    tls::TlsPort,
};

/// How long a new connection may take to send its first bytes and finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// An accepted connection, past its TLS handshake if the port uses TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

/// The connections of one port that passed [`accept`]'s checks.
pub struct Incoming {
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

impl futures::Stream for Incoming {
    type Item = Result<Conn, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|next| next.map(|(conn, _)| Ok(conn)))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // Accepting stopped: axum's own shutdown signal ends its loop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts on `tcp` until `stop`, handing the connections that pass to the returned [`Incoming`].
pub fn accept(
    tcp: TcpListener,
    listener: Listener,
    tls: Option<TlsPort>,
    refusals: Arc<Refusals>,
    stop: CancellationToken,
) -> io::Result<Incoming> {
    let local = tcp.local_addr()?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(listener = listener.as_str(), %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (tls, refusals, tx) = (tls.clone(), Arc::clone(&refusals), tx.clone());
            tokio::spawn(async move {
                if let Some(conn) = admit(stream, remote, listener, tls.as_ref(), &refusals).await {
                    // The server may have stopped meanwhile; the connection is then dropped.
                    let _ = tx.send((conn, remote)).await;
                }
            });
        }
    });
    Ok(Incoming { rx, local })
}

/// Checks a new connection; `None` when it was refused (answered, closed and counted) or left.
async fn admit(
    stream: TcpStream,
    remote: SocketAddr,
    listener: Listener,
    tls: Option<&TlsPort>,
    refusals: &Refusals,
) -> Option<Conn> {
    let mut first = [0u8; 1];
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0],
        // Closed, failed or silent: nothing to serve and nothing refused.
        _ => return None,
    };
    let refuse = |reason: Reason, detail: &str| {
        refusals.count(listener, reason);
        tracing::info!(listener = listener.as_str(), %remote, reason = reason.as_str(), detail, "connection refused");
    };
    match (tls, first == TLS_HANDSHAKE) {
        (None, false) => Some(Conn::Plain(stream)),
        (None, true) => {
            refuse(Reason::TlsToPlaintextPort, "a TLS handshake on a plain-text port");
            answer_and_close(
                stream,
                &http1_answer("this port does not use TLS: connect without TLS (http://)"),
            )
            .await;
            None
        }
        (Some(_), false) => {
            refuse(Reason::PlaintextToTlsPort, "plain text on a TLS port");
            answer_plaintext(stream).await;
            None
        }
        (Some(tls), true) => {
            let acceptor = TlsAcceptor::from(tls.current());
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream).into_fallible()).await {
                Ok(Ok(stream)) => Some(Conn::Tls(Box::new(stream))),
                Ok(Err((error, stream))) => {
                    refuse(classify(&error), &error.to_string());
                    // rustls has sent its alert; closing at once could reset the connection
                    // before the client reads it (with TLS 1.3 a client sends its request
                    // before it learns that its certificate was refused).
                    answer_and_close(stream, &[]).await;
                    None
                }
                Err(_) => {
                    refuse(Reason::TlsHandshake, "the TLS handshake timed out");
                    None
                }
            }
        }
    }
}

/// The reason a TLS handshake failed, from rustls' error.
fn classify(error: &io::Error) -> Reason {
    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => Reason::MissingClientCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => Reason::UntrustedClientCertificate,
        _ => Reason::TlsHandshake,
    }
}

/// What a TLS port tells a plain-text client: every request on the connection (HTTP/1.1 or
/// HTTP/2, for at most [`HANDSHAKE_TIMEOUT`]) is answered that TLS is required: gRPC
/// `UNAUTHENTICATED` (not retryable: resending in plain text cannot succeed), else HTTP `400`.
/// A real answer rather than a closed connection, so the client's error says what to fix.
async fn answer_plaintext(stream: TcpStream) {
    const MESSAGE: &str =
        "this port requires TLS: connect with TLS (https://, or a gRPC client without -plaintext / insecure)";
    let service = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
        let version = request.version();
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let response = if grpc {
            tonic::Status::unauthenticated(MESSAGE).into_http::<axum::body::Body>()
        } else {
            // As for a refused token: read the body first, or the client may see a reset.
            crate::auth::drain(request.into_body()).await;
            let mut response = http::Response::new(axum::body::Body::from(format!("{MESSAGE}\n")));
            *response.status_mut() = http::StatusCode::BAD_REQUEST;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            if version <= http::Version::HTTP_11 {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            response
        };
        Ok::<_, Infallible>(response)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection).await;
}

fn http1_answer(message: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{message}\n",
        message.len() + 1
    )
    .into_bytes()
}

/// Reads what the client sent (so closing does not reset the connection before the answer is
/// read), writes `answer`, and closes once the client has read it or after a second.
async fn answer_and_close(mut stream: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 16 * 1024];
        let _ = stream.read(&mut sink).await;
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    };
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::{
        config::{TlsConfig, TlsVersion},
        tls::{Alpn, TlsReloader, test_certs},
    };

    /// A port whose admitted connections are answered by an echo task: one byte in, `y` out.
    struct Port {
        addr: SocketAddr,
        refusals: Arc<Refusals>,
        _stop: tokio_util::sync::DropGuard,
    }

    async fn port(tls: Option<TlsConfig>) -> Port {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let refusals = Arc::new(Refusals::unregistered());
        let tls = tls.map(|c| TlsPort {
            reloader: Arc::new(TlsReloader::load("otlp.tls", c).unwrap()),
            alpn: Alpn::Http,
        });
        let stop = CancellationToken::new();
        let mut incoming = accept(tcp, Listener::OtlpHttp, tls, Arc::clone(&refusals), stop.clone()).unwrap();
        tokio::spawn(async move {
            while let Some((mut conn, _)) = incoming.rx.recv().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    if conn.read_exact(&mut byte).await.is_ok() {
                        let _ = conn.write_all(b"y").await;
                        let _ = conn.flush().await;
                    }
                });
            }
        });
        Port { addr, refusals, _stop: stop.drop_guard() }
    }

    fn certs(dir: &Path) -> TlsConfig {
        test_certs::ca(dir, "ca");
        test_certs::leaf(dir, "ca", "server", true);
        TlsConfig {
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
            client_ca_file: None,
            min_version: TlsVersion::Tls12,
        }
    }

    fn client(dir: &Path, identity: Option<&str>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(name) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(dir.join(format!("{name}.crt"))).unwrap()],
                    PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap(),
                )
                .unwrap(),
        };
        TlsConnector::from(Arc::new(config))
    }

    /// Connects with TLS and exchanges a byte with the echo task, which a refused client
    /// certificate fails (with TLS 1.3 the client learns of the refusal only when it reads).
    async fn tls_roundtrip(port: &Port, connector: &TlsConnector) -> io::Result<()> {
        let tcp = TcpStream::connect(port.addr).await?;
        let mut client = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
        client.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut byte))
            .await
            .map_err(|_| io::Error::other("no answer within 5 s"))??;
        assert_eq!(&byte, b"y");
        Ok(())
    }

    async fn plain_exchange(addr: SocketAddr, send: &[u8]) -> Vec<u8> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(send).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
        answer
    }

    #[tokio::test]
    async fn tls_port_serves_tls_and_refuses_plain_text_with_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let port = port(Some(certs(dir.path()))).await;
        tls_roundtrip(&port, &client(dir.path(), None)).await.expect("a TLS client is served");

        let answer = plain_exchange(port.addr, b"GET /v1/logs HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("this port requires TLS"), "{answer}");

        // A gRPC client in plain text: its call fails with a status saying what to do.
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", port.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            health.check(tonic_health::pb::HealthCheckRequest::default()),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("this port requires TLS"), "{status:?}");
        assert_eq!(port.refusals.get(Listener::OtlpHttp, Reason::PlaintextToTlsPort), 2);

        tls_roundtrip(&port, &client(dir.path(), None)).await.expect("and it still serves TLS clients");
    }

    #[tokio::test]
    async fn plain_port_refuses_a_tls_client() {
        let dir = tempfile::tempdir().unwrap();
        certs(dir.path());
        let port = port(None).await;
        let err = tls_roundtrip(&port, &client(dir.path(), None)).await.unwrap_err();
        assert!(
            err.to_string().contains("corrupt message") || err.to_string().contains("InvalidContentType"),
            "{err}"
        );
        assert_eq!(port.refusals.get(Listener::OtlpHttp, Reason::TlsToPlaintextPort), 1);
        let mut tcp = TcpStream::connect(port.addr).await.unwrap();
        tcp.write_all(b"G").await.unwrap();
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"y", "a plain connection is handed on with its first bytes");
    }

    #[tokio::test]
    async fn mtls_refuses_missing_untrusted_and_expired_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut config = certs(d);
        test_certs::ca(d, "other-ca");
        test_certs::leaf(d, "ca", "client", false);
        test_certs::leaf(d, "other-ca", "stranger", false);
        test_certs::expired_leaf(d, "ca", "expired");
        config.client_ca_file = Some(d.join("ca.crt"));
        let port = port(Some(config)).await;

        tls_roundtrip(&port, &client(d, Some("client"))).await.expect("a trusted client is served");
        let err = tls_roundtrip(&port, &client(d, None)).await.unwrap_err().to_string();
        assert!(err.contains("CertificateRequired"), "{err}");
        let err = tls_roundtrip(&port, &client(d, Some("stranger"))).await.unwrap_err().to_string();
        assert!(err.contains("UnknownCA"), "{err}");
        let err = tls_roundtrip(&port, &client(d, Some("expired"))).await.unwrap_err().to_string();
        assert!(err.contains("CertificateExpired"), "{err}");
        let get = |reason| port.refusals.get(Listener::OtlpHttp, reason);
        assert_eq!(get(Reason::MissingClientCertificate), 1);
        assert_eq!(get(Reason::UntrustedClientCertificate), 2);
        tls_roundtrip(&port, &client(d, Some("client"))).await.expect("others are still served");
    }
}
