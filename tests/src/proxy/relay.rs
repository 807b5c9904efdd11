//! The proxy's tasks: accepting, and relaying both directions of each
//! connection with the client's stream watched for the armed trigger.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Accept until shutdown; forward each connection in its own task.
pub(super) async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!(%target, "proxy accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Zero linger: closing sends RST, so a cut looks like a network failure.
        let _ = client.set_zero_linger();
        if shared.down.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let token = shared.shutdown.child_token();
        shared.live.lock().unwrap().insert(id, token.clone());
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(relay(id, client, target, token, Arc::clone(&shared)));
    }
}

/// Forward one connection until both sides have closed, either fails, or
/// `token` is cancelled; dropping the sockets then resets both sides.
async fn relay(
    id: u64,
    mut client: TcpStream,
    target: SocketAddr,
    token: CancellationToken,
    shared: Arc<Shared>,
) {
    let _ = client.set_nodelay(true);
    let forward = async {
        let mut server = TcpStream::connect(target).await?;
        let _ = server.set_zero_linger();
        let _ = server.set_nodelay(true);
        pump(&mut client, &mut server, &token, &shared).await
    };
    tokio::select! {
        // Checked first: after a cut, not one more byte is forwarded.
        biased;
        () = token.cancelled() => {}
        result = forward => {
            if let Err(e) = result {
                tracing::debug!(%target, "proxied connection ended: {e}");
            }
        }
    }
    shared.live.lock().unwrap().remove(&id);
}

/// Size of each direction's read buffer.
const BUF_SIZE: usize = 16 * 1024;

/// Both directions of one connection, like `tokio::io::copy_bidirectional`
/// (a half-close is passed on; the first error ends both), but with the
/// client's stream watched for the armed trigger. The halves are borrowed,
/// not owned, so that no FIN is sent when they drop: closing stays a reset.
async fn pump(
    client: &mut TcpStream,
    server: &mut TcpStream,
    token: &CancellationToken,
    shared: &Shared,
) -> io::Result<()> {
    // Set once the trigger fired on this connection: the server's bytes are
    // dropped from then on.
    let muted = AtomicBool::new(false);
    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    tokio::try_join!(
        upstream(&mut client_rx, &mut server_tx, &muted, token, shared),
        downstream(&mut server_rx, &mut client_tx, &muted, shared),
    )?;
    Ok(())
}

/// Client to server. When the trigger fires, mutes the other direction
/// *before* forwarding the bytes that fired it (so no answer to them can slip
/// through), forwards them, holds, then cancels `token`: the relay sees it
/// and drops both sockets.
async fn upstream(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    muted: &AtomicBool,
    token: &CancellationToken,
    shared: &Shared,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut tail = Vec::new();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let fired = shared.take_trigger(&mut tail, &buf[..n]);
        if fired.is_some() {
            muted.store(true, Ordering::SeqCst);
        }
        to.write_all(&buf[..n]).await?;
        if let Some(hold) = fired {
            tracing::info!(
                ?hold,
                "proxy trigger fired: server answers dropped, cutting after the hold"
            );
            tokio::time::sleep(hold).await;
            token.cancel();
            shared.fired.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
    }
}

/// Server to client; once `muted`, the server's bytes (and its EOF) are
/// dropped and counted instead.
async fn downstream(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    muted: &AtomicBool,
    shared: &Shared,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = from.read(&mut buf).await?;
        let mute = muted.load(Ordering::SeqCst);
        if mute {
            shared.swallowed.fetch_add(n as u64, Ordering::SeqCst);
        }
        match (n, mute) {
            (0, true) => return Ok(()),
            (0, false) => return to.shutdown().await,
            (_, true) => {}
            (_, false) => to.write_all(&buf[..n]).await?,
        }
    }
}
