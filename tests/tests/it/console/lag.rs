//! The overview's publish → recorded lag, end to end: a replica in its own
//! process (so its metrics registry counts only this test's messages)
//! observes each decided delivery's stamp, and its console shows the
//! quantiles of the last minute.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idem_simulator::Faults;
use idem_tests::binary::{Proc, json_field, run};
use idem_tests::{TestEnv, wait_for};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::Browser;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

fn message(id: &str) -> (BasicProperties, Vec<u8>) {
    let body = format!(r#"{{"account_id":"acc_lag","amount":1,"currency":"EUR","n":"{id}"}}"#);
    (
        BasicProperties::default().with_message_id(id.into()),
        body.into_bytes(),
    )
}

fn stamped_ms(p: BasicProperties, value: AMQPValue) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(ShortString::from(idem_inbox::lag::HEADER_MS), value);
    p.with_headers(h)
}

/// The value of the un-labelled series `name` in a scrape (0 when absent).
fn scraped(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Invariants: a delivery stamped by the broker header (ms) or the AMQP
/// timestamp (s) is observed at the wait it had; a stamp that cannot be a
/// publish time (far future, 1970, not an integer) is counted as unusable
/// and never observed; an unstamped one is neither. The overview shows the
/// quantiles of what was observed since its earlier reading only: 10
/// messages that waited 20 s and 5 that waited 40 s give p50 25.0 s and
/// p99 59.1 s (linear within the buckets 10–30 s and 30–60 s), whatever
/// the replica observed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_the_publish_lag_of_the_last_minute() {
    let env = TestEnv::new(Faults::default()).await;
    let mut flags = env.run_flags();
    flags.extend(["--console".into(), "true".into()]);
    let replica = Proc::spawn(
        "idem run --console",
        &mut run(&flags, &[("IDEM_LOG_FORMAT", "json"), ("RUST_LOG", "info")]),
    );
    let http = replica
        .wait_for_line(Duration::from_secs(60), |line| {
            json_field(line, "http_addr")
        })
        .await;
    let (metrics, overview) = (
        format!("http://{http}/metrics"),
        format!("http://{http}/console/"),
    );
    let scrape = || async { reqwest::get(&metrics).await.unwrap().text().await.unwrap() };
    let observed = |s: &str| scraped(s, "idem_inbox_publish_lag_seconds_count");
    let unusable = |s: &str| scraped(s, "idem_inbox_publish_stamp_unusable_total");

    wait_for("the console answers", Duration::from_secs(30), || async {
        reqwest::get(&overview)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let mut b = Browser::new();
    let (_, _, page) = b.get(&overview, &[]).await;
    assert!(
        page.contains("no replica reports a stamped message"),
        "{page}"
    );

    // One fresh message before the console's reading: not in its window.
    let (p, body) = message("lag-early");
    env.publish_raw(p.with_timestamp(now_ms() / 1000), &body)
        .await;
    wait_for(
        "the early message observed",
        Duration::from_secs(30),
        || async { observed(&scrape().await) == 1.0 },
    )
    .await;
    // Its first reading shows the replica's total; had the trend tick read
    // it a moment before, the window is that tick to now, and empty.
    let (_, _, page) = b.get(&overview, &[]).await;
    assert!(
        page.contains("1 messages, since the replicas started")
            || page.contains("0 messages, last"),
        "{page}"
    );

    let now = now_ms();
    for i in 0..10 {
        let (p, body) = message(&format!("lag-header-{i}"));
        let ms = i64::try_from(now - 20_000).unwrap();
        env.publish_raw(stamped_ms(p, AMQPValue::LongLongInt(ms)), &body)
            .await;
    }
    for i in 0..5 {
        let (p, body) = message(&format!("lag-property-{i}"));
        env.publish_raw(p.with_timestamp(now / 1000 - 40), &body)
            .await;
    }
    let hostile = [
        stamped_ms(message("lag-future").0, AMQPValue::Timestamp(u64::MAX)),
        stamped_ms(message("lag-text").0, AMQPValue::LongString("1".into())),
        message("lag-1970").0.with_timestamp(0),
    ];
    for p in hostile {
        let body = message(&format!("{:?}", p.message_id())).1;
        env.publish_raw(p, &body).await;
    }
    env.publish_raw(message("lag-unstamped").0, &message("lag-unstamped").1)
        .await;
    wait_for("every message decided", Duration::from_secs(30), || async {
        let s = scrape().await;
        observed(&s) + unusable(&s) >= 19.0
    })
    .await;
    let s = scrape().await;
    assert_eq!((observed(&s), unusable(&s)), (16.0, 3.0), "{s}");

    let (_, _, page) = b.get(&overview, &[]).await;
    let card = page
        .split("id=\"publish-lag\"")
        .nth(1)
        .and_then(|c| c.split("</div></div>").next())
        .expect("the lag card");
    assert!(card.contains("25.0 s / 59.1 s"), "{card}");
    assert!(card.contains("15 messages, last "), "{card}");

    let (status, text) = replica.stop().await;
    assert!(status.success(), "{status:?}\n{text}");
    env.cleanup().await;
}
