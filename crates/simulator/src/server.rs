//! The accept loop. Each TCP connection is served by its own hyper HTTP/1
//! connection task, so a handler can make the client see "no answer" by
//! resetting its connection: it cancels the connection's [`ConnKill`], the task
//! drops the connection, and the socket (set to `SO_LINGER` 0) sends a TCP RST.
//! Other connections are untouched. With a TLS acceptor, the same happens
//! under TLS (the reset is of the TCP connection beneath).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, warn};

/// How long open connections may finish their requests after shutdown.
const GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Request extension: cancelling it resets the request's TCP connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnKill(pub(crate) CancellationToken);

/// A TCP stream that closes with a reset (RST) instead of a FIN when dropped
/// after its connection was killed.
struct KillableIo {
    /// The socket.
    stream: TcpStream,
    /// Cancelled when the connection must end with a reset.
    kill: CancellationToken,
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Drop for KillableIo {
    fn drop(&mut self) {
        if self.kill.is_cancelled()
            && let Err(e) = self.stream.set_zero_linger()
        {
            debug!(error = %e, "cannot set SO_LINGER 0; the connection closes with a FIN");
        }
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `shutdown` resolves, then lets open connections finish for up to [`GRACE`]
/// and aborts the rest.
pub(crate) async fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stopping = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        router.clone(),
                        stream,
                        peer,
                        tls.clone(),
                        stopping.clone(),
                    ));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    stopping.cancel();
    let drained = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            "connections still open after the grace period; aborting them"
        );
        connections.shutdown().await;
    }
    debug!("provider simulator stopped");
    Ok(())
}

/// Serves one connection (after its TLS handshake, if any) until it ends,
/// is killed, or drains after shutdown.
async fn serve_connection(
    router: Router,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    stopping: CancellationToken,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let kill = ConnKill(CancellationToken::new());
    let io = KillableIo {
        stream,
        kill: kill.0.clone(),
    };
    let Some(acceptor) = tls else {
        return serve_http(router, TokioIo::new(io), peer, kill, stopping).await;
    };
    match tokio::time::timeout(HANDSHAKE, acceptor.accept(io)).await {
        Ok(Ok(io)) => serve_http(router, TokioIo::new(io), peer, kill, stopping).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

/// HTTP/1 over `io` (plain or TLS) until it ends, is killed, or drains.
async fn serve_http<I>(
    router: Router,
    io: TokioIo<I>,
    peer: SocketAddr,
    kill: ConnKill,
    stopping: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request_kill = kill.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(request_kill.clone());
        router.clone().call(request)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = kill.0.cancelled() => {
                debug!(%peer, "connection reset: no answer");
                break;
            }
            () = stopping.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A simulator serving in a background task; stops when dropped.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    addr: SocketAddr,
    /// Cancelled to stop the server.
    stop: CancellationToken,
    /// The serving task.
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Starts `serve` on `listener` in a background task.
    pub(crate) fn start(router: Router, listener: TcpListener) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            router,
            listener,
            None,
            stop.clone().cancelled_owned(),
        ));
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for a charge client, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets open connections finish (bounded), and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
