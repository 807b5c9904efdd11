//! AMQP 0-9-1 frames and the primitive types inside them: a bounds-checked
//! [`Cursor`] for reading (every read can fail with [`ParseError::Truncated`],
//! none can panic), a [`Writer`] for the few methods idem sends, and
//! [`read_frame`], which checks a frame's declared size against the
//! negotiated `frame_max` before it allocates anything.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{FrameError, ParseError};

/// Frame types (AMQP 0-9-1 §4.2.3).
pub const METHOD: u8 = 1;
pub const HEADER: u8 = 2;
pub const BODY: u8 = 3;
pub const HEARTBEAT: u8 = 8;
/// The octet every frame ends with; anything else means the stream is out of step.
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size before the payload, plus the end octet after it.
pub const FRAME_OVERHEAD: u32 = 8;

/// One frame off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// [`METHOD`], [`HEADER`], [`BODY`] or [`HEARTBEAT`] (others are refused by the caller).
    pub kind: u8,
    /// 0 for the connection, 1 for idem's only channel.
    pub channel: u16,
    /// The payload, at most `frame_max - 8` bytes.
    pub payload: Vec<u8>,
}

/// Read one frame; its payload may be at most `frame_max - 8` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_max: u32,
) -> Result<Frame, FrameError> {
    let mut head = [0u8; 7];
    reader.read_exact(&mut head).await?;
    let kind = head[0];
    let channel = u16::from_be_bytes([head[1], head[2]]);
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
    if size > frame_max.saturating_sub(FRAME_OVERHEAD) {
        return Err(FrameError::TooLarge {
            size: size.saturating_add(FRAME_OVERHEAD),
            frame_max,
        });
    }
    let mut payload = vec![0u8; size as usize];
    reader.read_exact(&mut payload).await?;
    let end = reader.read_u8().await?;
    if end != FRAME_END {
        return Err(FrameError::BadEnd(end));
    }
    Ok(Frame {
        kind,
        channel,
        payload,
    })
}

/// A whole frame, ready to write.
pub fn encode_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD as usize);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    // Callers keep payloads under frame_max, which is a u32.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

/// Reads AMQP primitives from a payload; its offset is into the whole
/// payload, so errors point at the byte that was missing.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    /// The whole payload.
    bytes: &'a [u8],
    /// The next byte to read.
    offset: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// The next `n` bytes, or `Truncated` if fewer are left.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.remaining() {
            return Err(ParseError::Truncated {
                offset: self.offset,
                needed: n,
            });
        }
        let taken = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, ParseError> {
        self.array().map(u16::from_be_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, ParseError> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, ParseError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A short string as bytes: UTF-8 or not is the caller's business.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], ParseError> {
        let len = self.u8()?;
        self.take(len as usize)
    }

    /// A long string (or byte array) as bytes.
    pub fn long_bytes(&mut self) -> Result<&'a [u8], ParseError> {
        let len = self.u32()?;
        self.take(len as usize)
    }
}

/// Builds a method or header payload.
#[derive(Debug, Default)]
pub struct Writer {
    /// The payload so far.
    pub bytes: Vec<u8>,
}

impl Writer {
    /// A method payload: class and method ids first.
    pub fn method(class: u16, method: u16) -> Self {
        let mut w = Self::default();
        w.u16(class).u16(method);
        w
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A short string; more than 255 bytes cannot be encoded.
    pub fn short_bytes(&mut self, v: &[u8]) -> Result<&mut Self, ParseError> {
        let len = u8::try_from(v.len()).map_err(|_| ParseError::ShortStringTooLong(v.len()))?;
        self.bytes.push(len);
        self.bytes.extend_from_slice(v);
        Ok(self)
    }

    pub fn long_bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.bytes.extend_from_slice(v);
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_frame_round_trips() {
        let bytes = encode_frame(METHOD, 1, b"abc");
        let frame = read_frame(&mut &bytes[..], 4096).await.unwrap();
        assert_eq!(
            frame,
            Frame {
                kind: METHOD,
                channel: 1,
                payload: b"abc".to_vec()
            }
        );
    }

    /// A declared size over frame_max is refused from the 7 header bytes
    /// alone: nothing is allocated for it.
    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_allocation() {
        let head = [BODY, 0, 1, 0xff, 0xff, 0xff, 0xff];
        let err = read_frame(&mut &head[..], 131_072).await.unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    frame_max: 131_072,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_wrong_end_octet_is_an_error() {
        let mut bytes = encode_frame(METHOD, 0, b"x");
        *bytes.last_mut().unwrap() = 0;
        let err = read_frame(&mut &bytes[..], 4096).await.unwrap_err();
        assert!(matches!(err, FrameError::BadEnd(0)), "{err}");
    }

    #[test]
    fn a_cursor_never_reads_past_the_end() {
        let mut c = Cursor::new(&[0, 5, b'a']);
        assert_eq!(c.u8().unwrap(), 0);
        assert_eq!(
            c.short_bytes(),
            Err(ParseError::Truncated {
                offset: 2,
                needed: 5
            })
        );
        let mut c = Cursor::new(&[0xff; 3]);
        assert!(c.long_bytes().is_err());
        assert!(c.u64().is_err());
    }
}
