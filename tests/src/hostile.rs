//! The hostile-producer suite's harness: the content headers hostile
//! producers send, built as bytes where no encoder will produce them (an
//! unknown field type, tables and arrays nested as deep as a frame allows, a
//! table of 10,000+ entries), published raw; the per-class outcome and its
//! table. The `idem run` replicas it watches are in `replica`.
//!
//! Every hostile message carries a *valid* charge body whose `account_id` is
//! its marker, so "nothing of it was charged" is checked at the provider,
//! and its quarantine row is found by the marker in the kept body (the body
//! is the one part of a message that is always recoverable).

mod replica;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use idem_inbox::raw::frame::FRAME_OVERHEAD;
use idem_inbox::raw::properties::{RawProperties, encode_content_header, nested_headers_payload};
use idem_inbox::raw::{Connection, RawField, RawTable};
use sqlx::PgPool;

pub use replica::{RECONNECT_LINE, RECONNECT_METRIC, Replica};

/// The headers flag of a Basic content header (AMQP 0-9-1 §4.2.6.1).
const HEADERS_FLAG: u16 = 1 << 13;
/// Class, weight, body size and flags: the bytes before the first property.
const HEADER_PREFIX: usize = 14;

/// One hostile message as it goes on the wire.
#[derive(Debug, Clone)]
pub struct HostileMessage {
    /// Unique in the run: the body's `account_id`.
    pub marker: String,
    /// The content header payload, as sent.
    pub header: Vec<u8>,
    pub body: Vec<u8>,
    /// The `message_id` bytes sent, if any: what a quarantine row should keep.
    pub message_id: Option<Vec<u8>>,
}

/// What the contract says must become of every message of a class.
#[derive(Debug, Clone)]
pub enum Expect {
    /// One quarantine row each, never charged; `reasons`: the reason codes
    /// the contract fixes for the class (empty: any non-empty code), and
    /// whether the row must keep the `message_id` bytes.
    Quarantined {
        reasons: &'static [&'static str],
        keeps_message_id: bool,
    },
    /// Charged exactly once, no quarantine row: what is odd about the
    /// message is not the producer's data (a refused `reply_to` still gets
    /// its charge, issue 12).
    ChargedOnce,
}

impl Expect {
    /// In the table's words.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Quarantined { .. } => "quarantine",
            Self::ChargedOnce => "charge once",
        }
    }
}

/// A hostile class: its messages, each followed (as a class) by valid charges.
#[derive(Debug, Clone)]
pub struct Class {
    pub name: &'static str,
    /// Its size or shape, for the table ("18723 deep, 131036 B").
    pub detail: String,
    pub messages: Vec<HostileMessage>,
    pub expect: Expect,
}

/// A valid charge body whose account is `marker`.
pub fn charge_body(marker: &str) -> Vec<u8> {
    format!(r#"{{"account_id":"{marker}","amount":100,"currency":"EUR"}}"#).into_bytes()
}

/// Persistent JSON with `message_id`: what a well-behaved producer sends.
pub fn json_properties(message_id: &[u8]) -> RawProperties {
    RawProperties {
        content_type: Some(b"application/json".to_vec()),
        delivery_mode: Some(2),
        message_id: Some(message_id.to_vec()),
        ..RawProperties::default()
    }
}

/// The content header of `properties` (whose `headers` must be `None`) with
/// `table` (a field table, its u32 length first) spliced in as the headers:
/// for tables the encoder will not build (too deep, unknown types).
pub fn header_with_table(body_size: u64, properties: &RawProperties, table: &[u8]) -> Vec<u8> {
    assert!(properties.headers.is_none(), "the table is spliced in");
    let mut header = encode_content_header(body_size, properties).unwrap();
    // Only content_type and content_encoding come before the headers.
    let before: usize = [&properties.content_type, &properties.content_encoding]
        .iter()
        .filter_map(|s| s.as_ref().map(|s| 1 + s.len()))
        .sum();
    let flags = u16::from_be_bytes([header[12], header[13]]) | HEADERS_FLAG;
    header[12..14].copy_from_slice(&flags.to_be_bytes());
    let at = HEADER_PREFIX + before;
    header.splice(at..at, table.iter().copied());
    header
}

/// The largest content header payload a frame of `frame_max` carries.
pub fn header_room(frame_max: u32) -> usize {
    (frame_max - FRAME_OVERHEAD) as usize
}

/// A headers table nesting `depth` tables (`F`), each the only value (key
/// `a`) of the one around it: `7 * depth - 3` bytes, built without recursion.
pub fn table_chain(depth: usize) -> Vec<u8> {
    nested_headers_payload(0, depth).split_off(HEADER_PREFIX)
}

/// The deepest [`table_chain`] that fits `budget` bytes.
pub fn table_chain_depth(budget: usize) -> usize {
    (budget + 3) / 7
}

/// A headers table `{a: A[A[...A[]...]]}` holding `depth` arrays, each the
/// only element of the one around it: `5 * depth + 6` bytes.
pub fn array_chain(depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 * depth + 6);
    out.extend_from_slice(&((5 * depth + 2) as u32).to_be_bytes());
    out.extend_from_slice(b"\x01aA");
    for level in 0..depth {
        // The arrays inside this one: 5 bytes each (type, length).
        out.extend_from_slice(&((5 * (depth - 1 - level)) as u32).to_be_bytes());
        if level + 1 < depth {
            out.push(b'A');
        }
    }
    out
}

/// The deepest [`array_chain`] that fits `budget` bytes.
pub fn array_chain_depth(budget: usize) -> usize {
    (budget - 6) / 5
}

/// A headers table of one entry `x-odd` whose field type is `type_byte`,
/// followed by four bytes a parser may take for its value.
pub fn unknown_type_table(type_byte: u8) -> Vec<u8> {
    let mut entry = b"\x05x-odd".to_vec();
    entry.push(type_byte);
    entry.extend_from_slice(b"\x00\x00\x00\x01");
    let mut out = (entry.len() as u32).to_be_bytes().to_vec();
    out.extend(entry);
    out
}

/// A headers table of `entries` distinct entries `kNNNNN: t` (9 bytes each).
pub fn huge_table(entries: usize) -> RawTable {
    RawTable(
        (0..entries)
            .map(|i| (format!("k{i:05}").into_bytes(), RawField::Bool(true)))
            .collect(),
    )
}

/// The broker's answer to one raw publish.
#[derive(Debug, Clone)]
pub enum Published {
    /// Confirmed: the message is in the queue.
    Accepted,
    /// The broker closed the connection or channel, or nacked: the message
    /// never entered the queue (nothing for idem to quarantine).
    Refused(String),
}

/// Publishes raw messages to one queue, reconnecting after a refusal (the
/// broker closes the connection on a frame it cannot parse).
pub struct RawPublisher {
    url: String,
    queue: String,
    connection: Option<Connection>,
}

impl RawPublisher {
    pub fn new(url: &str, queue: &str) -> Self {
        Self {
            url: url.to_owned(),
            queue: queue.to_owned(),
            connection: None,
        }
    }

    /// The negotiated frame size (connecting if need be).
    pub async fn frame_max(&mut self) -> u32 {
        self.connection().await.frame_max()
    }

    async fn connection(&mut self) -> &mut Connection {
        if self.connection.is_none() {
            self.connection = Some(Connection::connect(&self.url).await.unwrap());
        }
        self.connection.as_mut().unwrap()
    }

    /// Publish `message` through the default exchange, confirmed.
    pub async fn publish(&mut self, message: &HostileMessage) -> Published {
        let queue = self.queue.clone();
        let connection = self.connection().await;
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            connection.publish_raw("", &queue, &message.header, &message.body),
        )
        .await;
        match sent {
            Ok(Ok(())) => Published::Accepted,
            Ok(Err(e)) => {
                self.connection = None;
                Published::Refused(e.to_string())
            }
            Err(_) => {
                self.connection = None;
                Published::Refused("no confirm within 30 s".into())
            }
        }
    }

    pub async fn close(mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = connection.close().await;
        }
    }
}

/// A quarantine row, as the suite matches it to the message it came from.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QuarantineRow {
    pub id: i64,
    pub reason_code: String,
    pub message_id: Option<Vec<u8>>,
    /// The kept body's first 512 bytes.
    pub body: Vec<u8>,
    /// The first 4 KiB of the content header as received, where idem's own
    /// reader took the message (`NULL` for what lapin read, and before the
    /// column exists).
    pub raw_header: Option<Vec<u8>>,
    /// The broker's `x-death` reason, for a row the dead-letter drain wrote
    /// (`Some("?")` when the drain found no reason).
    pub dead_letter: Option<String>,
}

/// Every quarantine row, oldest first, its bytes cut to what the suite compares.
pub async fn quarantine_rows(pool: &PgPool) -> Vec<QuarantineRow> {
    let has_raw_header: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = 'quarantine' AND column_name = 'raw_header')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let raw_header = if has_raw_header {
        "substring(raw_header FROM 1 FOR 4096)"
    } else {
        "NULL::bytea"
    };
    // Prefixes only: the suite polls, the markers are in a body's first
    // bytes, and 4 KiB of a header show it was kept as sent.
    sqlx::query_as(&format!(
        "SELECT id, reason_code, message_id, substring(body FROM 1 FOR 512) AS body,
                {raw_header} AS raw_header,
                CASE WHEN properties ? 'dead_letter'
                     THEN coalesce(properties->'dead_letter'->>'reason', '?') END AS dead_letter
         FROM quarantine ORDER BY id"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

impl QuarantineRow {
    /// Whether the row kept the content header of `message`: (a prefix of)
    /// the bytes sent, or a header the broker re-encoded (a quorum queue
    /// adds `x-delivery-count`) that still holds the `message_id` sent.
    pub fn kept_header(&self, message: &HostileMessage) -> bool {
        let Some(kept) = self.raw_header.as_deref().filter(|k| !k.is_empty()) else {
            return false;
        };
        let holds = |needle: &[u8]| kept.windows(needle.len()).any(|w| w == needle);
        message.header.starts_with(kept) || message.message_id.as_deref().is_some_and(holds)
    }

    /// Whether the row's kept body (whole, or a prefix) holds `marker`'s body.
    pub fn is_of(&self, marker: &str) -> bool {
        let needle = format!("\"{marker}\"");
        self.body
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

/// One line of the suite's table.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub class: &'static str,
    /// [`Class::detail`].
    pub detail: String,
    /// [`Expect::as_str`] of the class.
    pub expected: &'static str,
    pub messages: usize,
    /// Accepted by the broker (refused ones never reached idem).
    pub accepted: usize,
    /// Messages with exactly one quarantine row.
    pub quarantined: usize,
    /// Rows beyond the first for one message (must be 0).
    pub extra_rows: usize,
    /// The rows of each message that has more than one, described.
    pub duplicates: Vec<String>,
    /// Rows (the first or extra) the dead-letter drain wrote.
    pub via_dead_letters: usize,
    pub reasons: BTreeSet<String>,
    /// Rows that kept the `message_id` bytes as sent.
    pub kept_message_id: usize,
    /// Rows that kept the content header's bytes as sent.
    pub kept_header: usize,
    /// Rows that kept neither (nothing raw to inspect but the body).
    pub kept_nothing_raw: usize,
    /// Charges the provider made for the class's hostile messages.
    pub hostile_charged: usize,
    /// Valid messages behind the class charged exactly once, and in all.
    pub valid_once: usize,
    pub valid: usize,
    /// Valid messages charged more than once (must be 0).
    pub valid_doubled: usize,
    /// From the first publish until the class and its valid messages settled.
    pub settled_after: Option<Duration>,
    /// What the broker said to the messages it refused.
    pub refusals: Vec<String>,
}

/// The outcomes as a Markdown table (for `docs/guarantees.md`).
pub fn markdown_table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| class | messages | expected | quarantined | charged | reason codes | \
         raw bytes kept (message_id / header) | valid behind it charged once | time to settle |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for o in outcomes {
        let reasons = if o.reasons.is_empty() {
            "–".to_owned()
        } else {
            o.reasons.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        let refused = if o.accepted < o.messages {
            format!(" ({} refused by the broker)", o.messages - o.accepted)
        } else {
            String::new()
        };
        let settled = o.settled_after.map_or_else(
            || "not settled".to_owned(),
            |d| format!("{:.1} s", d.as_secs_f64()),
        );
        let class = if o.detail.is_empty() {
            o.class.to_owned()
        } else {
            format!("{} ({})", o.class, o.detail)
        };
        let mut quarantined = o.quarantined.to_string();
        if o.extra_rows > 0 {
            let _ = write!(quarantined, " (+{} extra)", o.extra_rows);
        }
        if o.via_dead_letters > 0 {
            let _ = write!(quarantined, " ({} via .dead)", o.via_dead_letters);
        }
        let _ = writeln!(
            out,
            "| {class} | {}{refused} | {} | {quarantined} | {} | {reasons} | {} / {} | {}/{} | {settled} |",
            o.messages,
            o.expected,
            o.hostile_charged,
            o.kept_message_id,
            o.kept_header,
            o.valid_once,
            o.valid,
        );
    }
    out
}

#[cfg(test)]
#[path = "hostile/tests.rs"]
mod tests;
