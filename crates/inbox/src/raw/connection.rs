//! A minimal AMQP 0-9-1 client over TCP or TLS: one connection, one channel,
//! `basic.get`, ack and reject, and a raw publish for tests.
//!
//! Every frame is read against the `frame_max` negotiated here (at most
//! [`ConnectOptions::frame_max`]) before anything is allocated for it, every
//! read and write has a deadline, and a body is kept in memory only up to
//! [`ConnectOptions::body_limit`] (the rest is drained, counted and hashed).
//! Heartbeats are turned off: a connection lives for one short repair.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};

pub use super::error::RawError;
use super::frame::{self, Cursor, Frame, Writer, encode_frame, read_frame};
use super::table::{Limits, RawField, RawTable, encode_table};
use super::target::Target;
use super::transport::{self, ReadHalf, WriteHalf};

/// The one channel this client opens.
pub(super) const CHANNEL: u16 = 1;

/// Bounds and deadlines for one connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The largest frame idem reads (checked before allocating), and what it
    /// offers the broker, which may lower it for what idem sends. RabbitMQ's
    /// default, so any frame the broker accepts from a publisher fits.
    pub frame_max: u32,
    /// Body bytes kept in memory; the rest is drained and only counted and hashed.
    pub body_limit: usize,
    /// Bounds on the content header's parse.
    pub limits: Limits,
    /// Deadline for each frame read or write, and for the TCP connect.
    pub io_timeout: Duration,
    /// Shown in the broker's management UI.
    pub connection_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            frame_max: 128 * 1024,
            body_limit: 1024 * 1024,
            limits: Limits::DEFAULT,
            io_timeout: Duration::from_secs(30),
            connection_name: "idem raw reader".into(),
        }
    }
}

/// A method frame: channel, class and method, and its arguments.
pub(super) struct Method {
    channel: u16,
    pub(super) id: (u16, u16),
    payload: Vec<u8>,
}

impl Method {
    /// A cursor at the arguments (after class and method ids).
    pub(super) fn args(&self) -> Cursor<'_> {
        Cursor::new(self.payload.get(4..).unwrap_or_default())
    }
}

/// One open connection with channel 1 open.
pub struct Connection {
    reader: BufReader<ReadHalf>,
    writer: WriteHalf,
    /// Negotiated: no frame larger than this is read or sent.
    frame_max: u32,
    /// What the broker offered in `connection.tune` (0: no limit): the
    /// largest frame it accepts from any client, publishers included.
    server_frame_max: u32,
    pub(super) options: ConnectOptions,
    /// Whether `confirm.select` was sent (on the first publish).
    confirms: bool,
}

impl Connection {
    /// Connect to an `amqp://user:pass@host:port/vhost` URL with default bounds.
    pub async fn connect(url: &str) -> Result<Self, RawError> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self, RawError> {
        let target = Target::parse(url)?;
        let (read, writer) = transport::open(&target, options.io_timeout).await?;
        let mut conn = Self {
            reader: BufReader::new(read),
            writer,
            frame_max: options.frame_max,
            server_frame_max: 0,
            options,
            confirms: false,
        };
        conn.write(b"AMQP\x00\x00\x09\x01".to_vec()).await?;
        conn.handshake(&target).await?;
        Ok(conn)
    }

    /// Start, Start-Ok, Tune, Tune-Ok, Open, Channel.Open.
    async fn handshake(&mut self, target: &Target) -> Result<(), RawError> {
        let start = self.expect(0, (10, 10)).await?;
        let mut args = start.args();
        args.take(2)?;
        args.long_bytes()?; // server properties: nothing idem needs
        let mechanisms = args.long_bytes()?;
        if !mechanisms.split(|b| *b == b' ').any(|m| m == b"PLAIN") {
            let offered = String::from_utf8_lossy(mechanisms).into_owned();
            return Err(RawError::Protocol(format!(
                "the broker offers no PLAIN login ({offered})"
            )));
        }
        let client = RawTable(vec![
            (b"product".to_vec(), RawField::LongString(b"idem".to_vec())),
            (
                b"connection_name".to_vec(),
                RawField::LongString(self.options.connection_name.clone().into_bytes()),
            ),
            // So a refused login is a Connection.Close with its reason, not a bare EOF.
            (
                b"capabilities".to_vec(),
                RawField::Table(RawTable(vec![(
                    b"authentication_failure_close".to_vec(),
                    RawField::Bool(true),
                )])),
            ),
        ]);
        let mut ok = Writer::method(10, 11);
        encode_table(&client, &mut ok)?;
        let response = [&b"\0"[..], &target.user, b"\0", &target.password].concat();
        ok.short_bytes(b"PLAIN")?
            .long_bytes(&response)
            .short_bytes(b"en_US")?;
        self.send(0, ok).await?;

        let tune = self.expect(0, (10, 30)).await?;
        let mut args = tune.args();
        let _channel_max = args.u16()?;
        let offered = args.u32()?;
        self.server_frame_max = offered;
        self.frame_max = match offered {
            0 => self.options.frame_max,
            n => n.min(self.options.frame_max),
        };
        let mut tune_ok = Writer::method(10, 31);
        tune_ok.u16(1).u32(self.frame_max).u16(0);
        self.send(0, tune_ok).await?;

        let mut open = Writer::method(10, 40);
        open.short_bytes(&target.vhost)?.short_bytes(b"")?.u8(0);
        self.send(0, open).await?;
        self.expect(0, (10, 41)).await?;

        let mut channel = Writer::method(20, 10);
        channel.short_bytes(b"")?;
        self.send(CHANNEL, channel).await?;
        self.expect(CHANNEL, (20, 11)).await?;
        Ok(())
    }

    /// The frame size negotiated with the broker.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// The frame size the broker offered (0: unlimited): what bounds the
    /// content headers publishers can send it, and so their nesting.
    pub fn server_frame_max(&self) -> u32 {
        self.server_frame_max
    }

    /// Acknowledge (the broker answers nothing; a bad tag closes the channel,
    /// which [`Connection::close`] reports).
    pub async fn ack(&mut self, delivery_tag: u64) -> Result<(), RawError> {
        let mut ack = Writer::method(60, 80);
        ack.u64(delivery_tag).u8(0);
        self.send(CHANNEL, ack).await
    }

    /// Acknowledge every unacked delivery up to and including `delivery_tag`.
    pub async fn ack_through(&mut self, delivery_tag: u64) -> Result<(), RawError> {
        let mut ack = Writer::method(60, 80);
        ack.u64(delivery_tag).u8(1);
        self.send(CHANNEL, ack).await
    }

    /// Close the channel and wait for the broker's close-ok: by then it has
    /// handled every method sent before on that channel (acks included).
    /// The connection stays open, channel-less: only [`Connection::close`]
    /// is left to call.
    pub async fn close_channel(&mut self) -> Result<(), RawError> {
        let mut close = Writer::method(20, 40);
        close.u16(200).short_bytes(b"done")?.u16(0).u16(0);
        self.send(CHANNEL, close).await?;
        loop {
            let frame = self.read().await?;
            match (frame.kind, method_id(&frame.payload)) {
                (frame::METHOD, Some((20, 41))) => return Ok(()),
                (frame::METHOD, Some((20, 40))) => {
                    let (code, text) = close_reason(&frame.payload)?;
                    return Err(RawError::ChannelClosed { code, text });
                }
                (frame::METHOD, Some((10, 50))) => {
                    let (code, text) = close_reason(&frame.payload)?;
                    return Err(RawError::ConnectionClosed { code, text });
                }
                _ => {} // content still in flight is of no use now
            }
        }
    }

    pub async fn reject(&mut self, delivery_tag: u64, requeue: bool) -> Result<(), RawError> {
        let mut reject = Writer::method(60, 90);
        reject.u64(delivery_tag).u8(u8::from(requeue));
        self.send(CHANNEL, reject).await
    }

    /// Publish a caller-built content header payload and a body, and wait
    /// for the broker's confirm. For tests that send what no client will.
    pub async fn publish_raw(
        &mut self,
        exchange: &str,
        routing_key: &str,
        header_payload: &[u8],
        body: &[u8],
    ) -> Result<(), RawError> {
        if !self.confirms {
            let mut select = Writer::method(85, 10);
            select.u8(0);
            self.send(CHANNEL, select).await?;
            self.expect(CHANNEL, (85, 11)).await?;
            self.confirms = true;
        }
        let room = (self.frame_max - frame::FRAME_OVERHEAD) as usize;
        if header_payload.len() > room {
            return Err(RawError::Protocol(format!(
                "a content header of {} bytes does not fit a frame of {}",
                header_payload.len(),
                self.frame_max
            )));
        }
        let mut publish = Writer::method(60, 40);
        publish.u16(0).short_bytes(exchange.as_bytes())?;
        publish.short_bytes(routing_key.as_bytes())?.u8(0);
        let mut bytes = encode_frame(frame::METHOD, CHANNEL, &publish.bytes);
        bytes.extend(encode_frame(frame::HEADER, CHANNEL, header_payload));
        for chunk in body.chunks(room) {
            bytes.extend(encode_frame(frame::BODY, CHANNEL, chunk));
        }
        self.write(bytes).await?;
        let confirm = self.next_method().await?;
        match confirm.id {
            (60, 80) => Ok(()),
            (60, 120) => Err(RawError::Protocol("the broker nacked the publish".into())),
            other => Err(unexpected("basic.ack", other)),
        }
    }

    /// Close politely; reports a channel the broker closed meanwhile (a bad ack).
    pub async fn close(mut self) -> Result<(), RawError> {
        let mut close = Writer::method(10, 50);
        close.u16(200).short_bytes(b"done")?.u16(0).u16(0);
        self.send(0, close).await?;
        let mut closed_channel = None;
        loop {
            let frame = self.read().await?;
            match (frame.kind, method_id(&frame.payload)) {
                (frame::METHOD, Some((10, 51))) => break,
                (frame::METHOD, Some((20, 40))) => {
                    closed_channel = Some(close_reason(&frame.payload)?)
                }
                _ => {} // anything still in flight is of no use now
            }
        }
        match closed_channel {
            Some((code, text)) => Err(RawError::ChannelClosed { code, text }),
            None => Ok(()),
        }
    }

    /// The next method frame, heartbeats skipped; a close from the broker is
    /// answered and returned as an error with its reply text.
    pub(super) async fn next_method(&mut self) -> Result<Method, RawError> {
        loop {
            let frame = self.read().await?;
            match frame.kind {
                frame::HEARTBEAT => continue,
                frame::METHOD => {}
                other => {
                    return Err(RawError::Protocol(format!(
                        "frame type {other} where a method was expected"
                    )));
                }
            }
            let Some(id) = method_id(&frame.payload) else {
                return Err(RawError::Protocol(
                    "method frame shorter than its ids".into(),
                ));
            };
            match id {
                (10, 50) => {
                    let (code, text) = close_reason(&frame.payload)?;
                    self.send(0, Writer::method(10, 51)).await?;
                    return Err(RawError::ConnectionClosed { code, text });
                }
                (20, 40) => {
                    let (code, text) = close_reason(&frame.payload)?;
                    self.send(frame.channel, Writer::method(20, 41)).await?;
                    return Err(RawError::ChannelClosed { code, text });
                }
                _ => {}
            }
            return Ok(Method {
                channel: frame.channel,
                id,
                payload: frame.payload,
            });
        }
    }

    async fn expect(&mut self, channel: u16, id: (u16, u16)) -> Result<Method, RawError> {
        let method = self.next_method().await?;
        if method.id != id || method.channel != channel {
            return Err(unexpected(
                &format!("{id:?} on channel {channel}"),
                method.id,
            ));
        }
        Ok(method)
    }

    /// The next content frame of `kind` on the channel, heartbeats skipped.
    pub(super) async fn content_frame(&mut self, kind: u8) -> Result<Frame, RawError> {
        loop {
            let frame = self.read().await?;
            if frame.kind == frame::HEARTBEAT {
                continue;
            }
            if frame.kind != kind || frame.channel != CHANNEL {
                return Err(RawError::Protocol(format!(
                    "frame type {} on channel {} where content type {kind} was expected",
                    frame.kind, frame.channel
                )));
            }
            return Ok(frame);
        }
    }

    async fn read(&mut self) -> Result<Frame, RawError> {
        let deadline = self.options.io_timeout;
        // Read against idem's own bound, not the negotiated size: RabbitMQ
        // sends a content header whole, however large (it grows past the
        // negotiated size on redelivery, with `x-delivery-count` or `x-death`).
        let bound = self.options.frame_max.max(self.frame_max);
        tokio::time::timeout(deadline, read_frame(&mut self.reader, bound))
            .await
            .map_err(|_| RawError::Timeout(deadline))?
            .map_err(RawError::from)
    }

    pub(super) async fn send(&mut self, channel: u16, method: Writer) -> Result<(), RawError> {
        self.write(encode_frame(frame::METHOD, channel, &method.bytes))
            .await
    }

    async fn write(&mut self, bytes: Vec<u8>) -> Result<(), RawError> {
        let deadline = self.options.io_timeout;
        tokio::time::timeout(deadline, self.writer.write_all(&bytes))
            .await
            .map_err(|_| RawError::Timeout(deadline))?
            .map_err(RawError::from)
    }
}

fn method_id(payload: &[u8]) -> Option<(u16, u16)> {
    let mut c = Cursor::new(payload);
    Some((c.u16().ok()?, c.u16().ok()?))
}

/// Reply code and text of a Connection.Close or Channel.Close.
fn close_reason(payload: &[u8]) -> Result<(u16, String), RawError> {
    let mut args = Cursor::new(payload.get(4..).unwrap_or_default());
    let code = args.u16()?;
    let text = String::from_utf8_lossy(args.short_bytes()?).into_owned();
    Ok((code, text))
}

pub(super) fn unexpected(wanted: &str, got: (u16, u16)) -> RawError {
    RawError::Protocol(format!("expected {wanted}, got method {}.{}", got.0, got.1))
}
