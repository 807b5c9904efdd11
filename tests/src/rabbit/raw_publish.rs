//! Publish what no client library will send: a caller-built content header
//! (non-UTF-8 short strings, tables nested thousands deep) through idem's own
//! raw client, with a publisher confirm.

use anyhow::Context;
use idem_inbox::raw::Connection;
use idem_inbox::raw::frame::FRAME_OVERHEAD;
use idem_inbox::raw::properties::{RawProperties, encode_content_header, nested_headers_payload};

/// Publish `header_payload` (a Basic content header payload) and `body` to
/// `queue` through the default exchange, confirmed by the broker.
pub async fn publish_header(
    url: &str,
    queue: &str,
    header_payload: &[u8],
    body: &[u8],
) -> anyhow::Result<()> {
    let mut connection = Connection::connect(url).await.context("raw connect")?;
    connection
        .publish_raw("", queue, header_payload, body)
        .await
        .context("raw publish")?;
    connection.close().await.context("raw close")
}

/// Publish `body` with `properties` as given (any bytes in any short string).
pub async fn publish(
    url: &str,
    queue: &str,
    properties: &RawProperties,
    body: &[u8],
) -> anyhow::Result<()> {
    let header = encode_content_header(body.len() as u64, properties)?;
    publish_header(url, queue, &header, body).await
}

/// Publish `body` with a headers table nested `depth` deep, or as deep as
/// the negotiated frame allows if that is less; returns the depth sent.
pub async fn publish_nested(
    url: &str,
    queue: &str,
    depth: usize,
    body: &[u8],
) -> anyhow::Result<usize> {
    let mut connection = Connection::connect(url).await.context("raw connect")?;
    // 14 bytes of header before the table, 7 per level (the last one 4).
    let room = (connection.frame_max() - FRAME_OVERHEAD) as usize;
    let depth = depth.min((room - 14 + 3) / 7);
    let header = nested_headers_payload(body.len() as u64, depth);
    connection
        .publish_raw("", queue, &header, body)
        .await
        .with_context(|| format!("raw publish of a header nested {depth} deep"))?;
    connection.close().await.context("raw close")?;
    Ok(depth)
}
