//! The connector tonic channels dial a member with: TCP, then a TLS
//! handshake (within [`limits::TLS_HANDSHAKE_TIMEOUT_MS`]) that accepts only
//! that member's keys.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tonic::transport::Uri;
use tracing::warn;

use crate::core::ids::OperatorId;
use crate::limits;

/// Dials one member for a tonic channel: TCP to the endpoint's host and
/// port, then a TLS handshake that accepts only that member's keys.
#[derive(Clone)]
pub struct Connector {
    member: OperatorId,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({})", self.member)
    }
}

impl Connector {
    /// A connector to `member` with `config`, sending `server_name`.
    pub(super) fn new(
        member: OperatorId,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Self {
        Self {
            member,
            config,
            server_name,
        }
    }
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let invalid =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {uri}"));
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host in peer endpoint"))?;
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("no port in peer endpoint"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let deadline = Duration::from_millis(limits::TLS_HANDSHAKE_TIMEOUT_MS);
            let handshake = tokio_rustls::TlsConnector::from(connector.config)
                .connect(connector.server_name, tcp);
            match tokio::time::timeout(deadline, handshake).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => {
                    warn!(peer = %connector.member, endpoint = %uri, error = %e, "TLS handshake with peer failed");
                    Err(e)
                }
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake with {} timed out", connector.member),
                )),
            }
        })
    }
}
