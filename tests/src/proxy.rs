//! [`TcpProxy`]: an in-process TCP proxy that can cut every connection through
//! it, or play dead, to simulate network failures between idem and its
//! PostgreSQL / RabbitMQ without touching the servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy on `127.0.0.1:<random port>` forwarding each connection to a
/// target. Cuts are abrupt: both sockets are closed with RST (zero linger),
/// so each side sees "connection reset", as with a failed network path.
/// Dropping the proxy closes the listener and every connection.
pub struct TcpProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// Where connections are forwarded to.
    target: SocketAddr,
    /// State shared with the accept loop and the connection tasks.
    shared: Arc<Shared>,
}

/// What the proxy's tasks share.
struct Shared {
    /// While true, new connections are closed at once.
    down: AtomicBool,
    /// Live connections: id -> token that cuts it.
    live: Mutex<HashMap<u64, CancellationToken>>,
    /// Next connection id.
    next_id: AtomicU64,
    /// Connections cut by [`TcpProxy::cut_all`] / [`TcpProxy::set_down`].
    cut: AtomicU64,
    /// Connections closed on arrival because the proxy was down.
    refused: AtomicU64,
    /// Connections accepted and forwarded.
    forwarded: AtomicU64,
    /// Cancelled when the proxy is dropped: ends the accept loop and every
    /// connection (their tokens are children of it).
    shutdown: CancellationToken,
}

impl TcpProxy {
    /// Listen on `127.0.0.1:0` and forward to `target`. Panics if it cannot
    /// bind (a broken test machine).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy listener address");
        let shared = Arc::new(Shared {
            down: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, target, Arc::clone(&shared)));
        Self {
            addr,
            target,
            shared,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Abort every live connection now (both sides get a reset); new
    /// connections are still accepted. Returns how many were cut.
    pub fn cut_all(&self) -> u64 {
        let cut: Vec<CancellationToken> = self
            .shared
            .live
            .lock()
            .unwrap()
            .drain()
            .map(|(_, token)| token)
            .collect();
        for token in &cut {
            token.cancel();
        }
        let n = cut.len() as u64;
        self.shared.cut.fetch_add(n, Ordering::SeqCst);
        if n > 0 {
            tracing::info!(target = %self.target, n, "proxy cut connections");
        }
        n
    }

    /// An outage: while down, live connections are cut and new ones are
    /// accepted and closed at once (connect succeeds, the handshake gets a
    /// reset). `set_down(false)` forwards again.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        tracing::info!(target = %self.target, down, "proxy outage");
        if down {
            self.cut_all();
        }
    }

    /// Whether the proxy is down (see [`TcpProxy::set_down`]).
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Connections cut so far (by [`TcpProxy::cut_all`] and outages).
    pub fn connections_cut(&self) -> u64 {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections closed on arrival because the proxy was down.
    pub fn connections_refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded so far.
    pub fn connections_forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Connections live right now.
    pub fn active(&self) -> usize {
        self.shared.live.lock().unwrap().len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Accept until shutdown; forward each connection in its own task.
async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
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

/// Forward one connection until either side closes or `token` is cancelled;
/// dropping the sockets then resets both sides.
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
        tokio::io::copy_bidirectional(&mut client, &mut server).await
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
