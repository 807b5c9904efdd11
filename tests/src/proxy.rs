//! [`TcpProxy`]: an in-process TCP proxy that can cut every connection through
//! it, play dead, or cut one connection right after the client sent given
//! bytes (e.g. a `COMMIT`) while hiding the server's answer, to simulate
//! network failures between idem and its PostgreSQL / RabbitMQ without
//! touching the servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod relay;

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
    /// The armed one-shot trigger of [`TcpProxy::cut_after_client_sends`].
    trigger: Mutex<Option<Trigger>>,
    /// Connections cut by a trigger.
    fired: AtomicU64,
    /// Server-to-client bytes dropped on triggered connections before the cut.
    swallowed: AtomicU64,
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
            trigger: Mutex::new(None),
            fired: AtomicU64::new(0),
            swallowed: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(relay::accept_loop(listener, target, Arc::clone(&shared)));
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

    /// Arm a one-shot cut whose outcome the client cannot know: the next time
    /// the client-to-server stream of any connection contains `pattern` (also
    /// when it is split across reads), the read that completes it is still
    /// forwarded, so the server acts on it; from then on everything the
    /// server sends to that client is dropped, so the client never sees the
    /// answer; after `hold` (time for the server to finish the request) the
    /// connection is cut with a reset on both sides, as [`TcpProxy::cut_all`]
    /// does. Other connections are untouched. Arming again replaces an armed
    /// trigger. The proxy sees only what is on the wire: a client speaking
    /// TLS (e.g. PostgreSQL without `sslmode=disable`) never matches. See [`TcpProxy::triggers_fired`] and
    /// [`TcpProxy::bytes_swallowed`].
    ///
    /// Panics if `pattern` is empty.
    pub fn cut_after_client_sends(&self, pattern: &[u8], hold: Duration) {
        assert!(!pattern.is_empty(), "an empty pattern would match anything");
        *self.shared.trigger.lock().unwrap() = Some(Trigger {
            pattern: pattern.to_vec(),
            hold,
        });
        tracing::info!(target = %self.target, ?hold, "proxy trigger armed");
    }

    /// Connections cut by a trigger so far (counted once the cut is done).
    pub fn triggers_fired(&self) -> u64 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Bytes the server sent on triggered connections that the proxy dropped
    /// instead of forwarding: non-zero proves the server answered the request
    /// before the cut (so it did process it) and the client never saw it.
    pub fn bytes_swallowed(&self) -> u64 {
        self.shared.swallowed.load(Ordering::SeqCst)
    }
}

/// An armed [`TcpProxy::cut_after_client_sends`].
struct Trigger {
    /// Client bytes to look for.
    pattern: Vec<u8>,
    /// How long to keep the connection up (server answers dropped) before
    /// cutting it.
    hold: Duration,
}

impl Shared {
    /// Whether the armed trigger's pattern occurs in the client's stream,
    /// given `chunk` just read from it and `tail`, the end of what was read
    /// before (kept here, one byte shorter than the pattern, so a pattern
    /// split across reads is seen). A match disarms the trigger (one-shot,
    /// across connections) and returns its hold.
    fn take_trigger(&self, tail: &mut Vec<u8>, chunk: &[u8]) -> Option<Duration> {
        let mut armed = self.trigger.lock().unwrap();
        let Some(trigger) = armed.as_ref() else {
            tail.clear();
            return None;
        };
        let pattern = trigger.pattern.as_slice();
        tail.extend_from_slice(chunk);
        let seen = tail.windows(pattern.len()).any(|w| w == pattern);
        let stale = tail.len().saturating_sub(pattern.len() - 1);
        tail.drain(..stale);
        if !seen {
            return None;
        }
        let hold = trigger.hold;
        *armed = None;
        Some(hold)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
#[cfg(test)]
mod tests {
    use std::io;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// An echo server on a free port: echoes every connection until EOF.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut rx, mut tx) = socket.split();
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                });
            }
        });
        addr
    }

    /// Write `bytes` and read back exactly as many (the echo).
    async fn round_trip(client: &mut TcpStream, bytes: &[u8]) -> io::Result<Vec<u8>> {
        client.write_all(bytes).await?;
        let mut echo = vec![0u8; bytes.len()];
        client.read_exact(&mut echo).await?;
        Ok(echo)
    }

    /// Invariant: a pattern split across two reads fires the trigger; the
    /// server gets the bytes (its echo is counted as swallowed) but the client
    /// never sees an answer, only the cut, after the hold; the trigger is
    /// one-shot, so the same pattern on a new connection passes.
    #[tokio::test]
    async fn trigger_sees_a_split_pattern_hides_the_answer_and_fires_once() {
        let proxy = TcpProxy::start(echo_server().await).await;
        proxy.cut_after_client_sends(b"COMMIT", Duration::from_millis(200));
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut client, b"hello COM").await.unwrap(),
            b"hello COM"
        );
        let started = std::time::Instant::now();
        client.write_all(b"MIT!").await.unwrap();
        let mut buf = [0u8; 16];
        let seen = client.read(&mut buf).await;
        assert!(
            matches!(seen, Ok(0) | Err(_)),
            "the client saw only the cut: {seen:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "cut after the hold"
        );
        assert_eq!(proxy.triggers_fired(), 1);
        assert_eq!(
            proxy.bytes_swallowed(),
            4,
            "the echo of \"MIT!\" was dropped"
        );

        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        let echo = round_trip(&mut again, b"COMMIT").await.unwrap();
        assert_eq!(echo, b"COMMIT", "one-shot: no second cut");
        assert_eq!(proxy.triggers_fired(), 1);
        assert_eq!(proxy.connections_cut(), 0, "cut_all's counter is separate");
    }
}
