//! What the replicas say about themselves: each configured `/metrics`
//! (`IDEM_CONSOLE_REPLICAS`, and a replica's own with `idem run --console`)
//! is read when the overview is (and with the trends), for the provider
//! breaker, the broker session and the publish lag histogram. A replica's answer is input like any other: it is read with a
//! deadline, at most [`MAX_BODY`] bytes, and a line that does not parse is
//! ignored.

use std::time::Duration;

use url::Url;

use crate::lag::Histogram;

/// A replica's `/metrics` must answer within this.
const DEADLINE: Duration = Duration::from_secs(2);

/// The most of a replica's answer that is read.
const MAX_BODY: usize = 4 << 20;

/// The HTTP client that reads the replicas.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(DEADLINE)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// One replica as its metrics describe it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Replica {
    /// Where it was read.
    pub(crate) url: String,
    /// Why it could not be read.
    pub(crate) error: Option<String>,
    /// Its build (`idem_build_info{version}`).
    pub(crate) version: Option<String>,
    /// Its provider breaker is open (`None`: it does not dispatch).
    pub(crate) breaker_open: Option<bool>,
    /// Its consumer has a broker session (`None`: it does not consume).
    pub(crate) broker_connected: Option<bool>,
    /// Its publish → recorded lag since it started (`None`: it does not
    /// consume, or has not decided a stamped message yet).
    pub(crate) lag: Option<Histogram>,
}

/// Read every replica at once.
pub(crate) async fn read_all(client: &reqwest::Client, urls: &[Url]) -> Vec<Replica> {
    let mut reads = tokio::task::JoinSet::new();
    for (i, url) in urls.iter().enumerate() {
        let (client, url) = (client.clone(), url.clone());
        reads.spawn(async move { (i, read(&client, &url).await) });
    }
    let mut replicas: Vec<(usize, Replica)> = reads.join_all().await;
    replicas.sort_by_key(|(i, _)| *i);
    replicas.into_iter().map(|(_, r)| r).collect()
}

async fn read(client: &reqwest::Client, url: &Url) -> Replica {
    let shown = redacted(url);
    match fetch(client, url).await {
        Ok(text) => parse(shown, &text),
        Err(error) => Replica {
            url: shown,
            error: Some(error),
            version: None,
            breaker_open: None,
            broker_connected: None,
            lag: None,
        },
    }
}

async fn fetch(client: &reqwest::Client, url: &Url) -> Result<String, String> {
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("no answer: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("answer cut: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("answer over {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The URL without credentials, for the page.
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// The lag histogram's bucket series.
fn lag_buckets() -> String {
    format!("{}_bucket", idem_inbox::metrics::PUBLISH_LAG_SECONDS)
}

/// Read the figures out of a Prometheus text exposition.
fn parse(url: String, text: &str) -> Replica {
    let mut replica = Replica {
        url,
        error: None,
        version: None,
        breaker_open: None,
        broker_connected: None,
        lag: None,
    };
    let buckets = lag_buckets();
    let mut lag = Histogram::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if name == idem_dispatch::metrics::BREAKER_OPEN {
            replica.breaker_open = Some(replica.breaker_open.unwrap_or(false) || value > 0.0);
        } else if name == idem_inbox::metrics::BROKER_CONNECTED {
            replica.broker_connected =
                Some(replica.broker_connected.unwrap_or(true) && value > 0.0);
        } else if name == "idem_build_info" {
            replica.version = label(series, "version");
        } else if name == buckets
            && let Some(le) = label(series, "le")
        {
            lag.add(&le, value);
        }
    }
    replica.lag = (lag.count() > 0.0).then_some(lag);
    replica
}

/// The value of `label` in a series `name{a="x",b="y"}` (no escapes in it).
fn label(series: &str, label: &str) -> Option<String> {
    let labels = series.split_once('{')?.1.strip_suffix('}')?;
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == label).then(|| v.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_read_and_anything_else_ignored() {
        let text = "# HELP x\nidem_build_info{version=\"0.1.0\",profile=\"release\"} 1\n\
                    idem_dispatch_breaker_open 1\nidem_broker_connected 0\ngarbage\n\
                    idem_dispatch_breaker_open not-a-number\n\u{0}\u{ff}\n\
                    idem_inbox_publish_lag_seconds_bucket{le=\"1\"} 3\n\
                    idem_inbox_publish_lag_seconds_bucket{le=\"+Inf\"} 4\n\
                    idem_inbox_publish_lag_seconds_bucket{le=\"NaN\"} 4\n\
                    idem_inbox_publish_lag_seconds_sum 9.5\n";
        let r = parse("u".into(), text);
        let lag = r.lag.as_ref().expect("the lag histogram");
        assert_eq!(lag.count(), 4.0);
        assert_eq!(lag.quantile(0.5), Some(Ok(2.0 / 3.0)));
        assert_eq!(r.version.as_deref(), Some("0.1.0"));
        assert_eq!(r.breaker_open, Some(true));
        assert_eq!(r.broker_connected, Some(false));
        let none = parse("u".into(), "");
        assert_eq!(
            (
                none.breaker_open,
                none.broker_connected,
                none.version,
                none.lag
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn credentials_in_a_replica_url_are_not_shown() {
        let u = Url::parse("http://user:secret@10.0.0.5:9464/metrics").expect("url");
        assert_eq!(redacted(&u), "http://10.0.0.5:9464/metrics");
    }
}
