//! How the raw reader fails: bytes that do not parse ([`ParseError`]) and
//! frames that cannot be read ([`FrameError`]) and a client that cannot go
//! on ([`RawError`]).

use std::time::Duration;

/// Why the raw client failed. After any of these, drop the connection.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("AMQP URL: {0}")]
    Url(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("AMQP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    #[error("the broker closed the connection: {code} {text}")]
    ConnectionClosed { code: u16, text: String },
    #[error("the broker closed the channel: {code} {text}")]
    ChannelClosed { code: u16, text: String },
    #[error("AMQP protocol: {0}")]
    Protocol(String),
    #[error("malformed frame from the broker: {0}")]
    Malformed(#[from] ParseError),
}

impl RawError {
    /// Whether waiting can fix it: the connection failed, timed out or was
    /// closed by a broker shutting down. A URL, TLS, login or protocol
    /// problem is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io(_) | Self::Timeout(_) | Self::Frame(FrameError::Io(_)) => true,
            // 403 ACCESS_REFUSED, 530 NOT_ALLOWED (vhost): settings to fix.
            Self::ConnectionClosed { code, .. } => !matches!(code, 403 | 530),
            _ => false,
        }
    }
}

/// Why bytes did not parse. Offsets are into the content header payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated: {needed} more bytes needed at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("tables or arrays nested deeper than the limit of {limit}")]
    TooDeep { limit: usize },
    #[error("tables and arrays hold more than the limit of {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("content header of {size} bytes is over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("unknown field type {type_byte:#04x} at offset {offset}")]
    UnknownFieldType { type_byte: u8, offset: usize },
    #[error("content header of class {0}, not Basic (60)")]
    NotBasic(u16),
    #[error("property flags {0:#06x} ask for a continuation Basic does not have")]
    UnknownPropertyFlags(u16),
    #[error("{count} bytes after the last property, at offset {offset}")]
    TrailingBytes { offset: usize, count: usize },
    #[error("a short string of {0} bytes cannot be encoded (255 at most)")]
    ShortStringTooLong(usize),
}

impl ParseError {
    /// The same error with its offset counted from `base` bytes earlier: an
    /// inner table is read through a cursor of its own.
    pub(super) fn shifted(self, base: usize) -> Self {
        match self {
            Self::Truncated { offset, needed } => Self::Truncated {
                offset: offset + base,
                needed,
            },
            Self::UnknownFieldType { type_byte, offset } => Self::UnknownFieldType {
                type_byte,
                offset: offset + base,
            },
            Self::TrailingBytes { offset, count } => Self::TrailingBytes {
                offset: offset + base,
                count,
            },
            other => other,
        }
    }

    /// Which hard limit was exceeded, if this is a limit (not malformed bytes).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Self::TooDeep { .. } => Some("depth"),
            Self::TooManyEntries { .. } => Some("entries"),
            Self::TooLarge { .. } => Some("bytes"),
            _ => None,
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
    /// Checked before allocating, so a hostile size cannot exhaust memory.
    #[error("frame of {size} bytes exceeds the negotiated frame_max of {frame_max}")]
    TooLarge { size: u32, frame_max: u32 },
    #[error("frame ends with {0:#04x}, not 0xce: the stream is out of step")]
    BadEnd(u8),
}
