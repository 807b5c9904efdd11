//! The one way background work waits: a sleep that ends at shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sleep for `delay` unless `shutdown` fires first. `true`: the delay passed;
/// `false`: shutdown (already fired, or fired meanwhile), so stop.
pub async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pause_sleeps_the_delay_or_stops_at_shutdown() {
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        assert!(pause(Duration::from_secs(3), &shutdown).await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        assert!(!pause(Duration::from_secs(3600), &shutdown).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // Already fired: no wait at all, even for a zero delay.
        assert!(!pause(Duration::ZERO, &shutdown).await);
    }
}
