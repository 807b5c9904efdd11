//! The provider simulator in process, over real HTTP: where the suites count
//! charges.

use idem_simulator::Simulator;
use tokio_util::sync::CancellationToken;

/// Serve `sim` on `127.0.0.1:<free port>` (in a task of the caller's runtime)
/// until the returned token is cancelled; returns its base URL and the token.
pub async fn serve(sim: &Simulator) -> anyhow::Result<(String, CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let (sim, stopped) = (sim.clone(), stop.clone());
    tokio::spawn(async move {
        sim.serve(listener, async move { stopped.cancelled().await })
            .await
    });
    Ok((url, stop))
}
