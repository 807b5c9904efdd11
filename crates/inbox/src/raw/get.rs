//! `basic.get`: the head message of a queue, its content header kept as
//! bytes beside its parse, its body kept up to a bound and drained past it.

use sha2::{Digest, Sha256};

use super::ParseError;
use super::connection::{CHANNEL, Connection, unexpected};
use super::error::RawError;
use super::frame::{self, Writer};
use super::properties::{RawProperties, body_size, parse_content_header};

/// A message taken with `basic.get`, as bytes.
#[derive(Debug, Clone)]
pub struct RawDelivery {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: Vec<u8>,
    pub routing_key: Vec<u8>,
    /// Messages left in the queue after this one, as the broker counted.
    pub message_count: u32,
    /// The content header payload as received, whether or not it parsed.
    pub header: Vec<u8>,
    /// The properties, or why they did not parse (a limit, or bad bytes).
    pub properties: Result<RawProperties, ParseError>,
    /// At most [`body_limit`](super::ConnectOptions::body_limit) bytes: a prefix when truncated.
    pub body: Vec<u8>,
    /// The whole body's size, as received.
    pub body_size: u64,
    /// SHA-256 of the whole body, as received.
    pub body_sha256: [u8; 32],
}

impl RawDelivery {
    /// Whether [`RawDelivery::body`] is only a prefix.
    pub fn body_truncated(&self) -> bool {
        (self.body.len() as u64) < self.body_size
    }
}

impl Connection {
    /// Take the head message of `queue` (unacked), or `None` if it is empty.
    pub async fn basic_get(&mut self, queue: &str) -> Result<Option<RawDelivery>, RawError> {
        let mut get = Writer::method(60, 70);
        get.u16(0).short_bytes(queue.as_bytes())?.u8(0);
        self.send(CHANNEL, get).await?;
        let answer = self.next_method().await?;
        match answer.id {
            (60, 72) => return Ok(None),
            (60, 71) => {}
            other => return Err(unexpected("basic.get-ok or get-empty", other)),
        }
        let mut args = answer.args();
        let delivery_tag = args.u64()?;
        let redelivered = args.u8()? & 1 != 0;
        let exchange = args.short_bytes()?.to_vec();
        let routing_key = args.short_bytes()?.to_vec();
        let message_count = args.u32()?;
        let header = self.content_frame(frame::HEADER).await?.payload;
        let size = body_size(&header)?;
        let properties = parse_content_header(&header, &self.options.limits).map(|h| h.properties);
        let (body, body_sha256) = self.read_body(size).await?;
        Ok(Some(RawDelivery {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count,
            header,
            properties,
            body,
            body_size: size,
            body_sha256,
        }))
    }

    /// Body frames until `size` bytes came; keeps a bounded prefix.
    async fn read_body(&mut self, size: u64) -> Result<(Vec<u8>, [u8; 32]), RawError> {
        let keep = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(self.options.body_limit);
        let mut body = Vec::with_capacity(keep);
        let mut hash = Sha256::new();
        let mut received = 0u64;
        while received < size {
            let frame = self.content_frame(frame::BODY).await?;
            received += frame.payload.len() as u64;
            if received > size {
                return Err(RawError::Protocol(format!(
                    "body frames exceed the declared {size} bytes"
                )));
            }
            hash.update(&frame.payload);
            let room = keep - body.len();
            body.extend_from_slice(&frame.payload[..room.min(frame.payload.len())]);
        }
        Ok((body, hash.finalize().into()))
    }
}
