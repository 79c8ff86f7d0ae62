//! The `[u32 BE length][type u8][body]` envelope spoken on unix sockets and on the QUIC stream alike;
//! `length` counts the type byte and the body.
//!
//! The declared length comes from the peer, so it is a promise, not a fact: the body is read into a buffer
//! that grows as bytes arrive (to at most twice what arrived, or what arrived plus [`READ_CHUNK`]), so a
//! peer that declares 64 MiB and sends nothing costs nothing.

use std::fmt;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most the buffer grows ahead of the bytes that have arrived.
pub const READ_CHUNK: usize = 1 << 20;

/// Why a message could not be read. `TooLarge` and `Empty` mean the framing itself cannot be trusted any
/// more (the next byte is not known to start a message); `Truncated` and `Io` mean the peer is gone.
#[derive(Debug)]
pub enum EnvelopeError {
    /// The declared length (type + body) is above the reader's limit; nothing was read past the prefix.
    TooLarge {
        len: u32,
        max: u32,
    },
    /// A declared length of 0: no type byte.
    Empty,
    /// The peer closed after `got` of `len` bytes.
    Truncated {
        got: usize,
        len: u32,
    },
    Io(io::Error),
}

impl EnvelopeError {
    /// Whether the stream can no longer be read as messages although the peer may still be there: a refused
    /// prefix leaves its body unread, so the next byte is not known to start a message. Such a peer gets an
    /// error reply and is closed; a decode error inside a well-framed body needs neither.
    pub fn framing_broken(&self) -> bool {
        matches!(self, EnvelopeError::TooLarge { .. } | EnvelopeError::Empty)
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max} bytes")
            }
            EnvelopeError::Empty => write!(f, "empty message (length 0)"),
            EnvelopeError::Truncated { got, len } => {
                write!(f, "peer closed in the middle of a message ({got} of {len} bytes)")
            }
            EnvelopeError::Io(err) => write!(f, "read failed: {err}"),
        }
    }
}

impl std::error::Error for EnvelopeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EnvelopeError::Io(err) => Some(err),
            _ => None,
        }
    }
}

/// Reads one message. `Ok(None)` on a clean EOF before the prefix. A declared length above `max_len` is
/// refused before any of the body is read or allocated.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: u32,
) -> Result<Option<(u8, Vec<u8>)>, EnvelopeError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(EnvelopeError::Io(e)),
    }
    let len = u32::from_be_bytes(prefix);
    if len == 0 {
        return Err(EnvelopeError::Empty);
    }
    if len > max_len {
        return Err(EnvelopeError::TooLarge { len, max: max_len });
    }
    let mut kind = [0u8; 1];
    reader.read_exact(&mut kind).await.map_err(|e| truncated_or_io(e, 0, len))?;
    let mut body = Vec::new();
    read_incrementally(reader, len as usize - 1, &mut body)
        .await
        .map_err(|e| truncated_or_io(e, body.len() + 1, len))?;
    Ok(Some((kind[0], body)))
}

fn truncated_or_io(err: io::Error, got: usize, len: u32) -> EnvelopeError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        EnvelopeError::Truncated { got, len }
    } else {
        EnvelopeError::Io(err)
    }
}

/// Appends exactly `len` bytes to `out`, growing it only as data arrives (`UnexpectedEof` if the reader
/// ends first; `out` then holds what did arrive).
pub async fn read_incrementally<R: AsyncRead + Unpin>(reader: &mut R, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
    let target = out.len() + len;
    while out.len() < target {
        let want = (target - out.len()).min(READ_CHUNK);
        if out.capacity() == out.len() {
            // Grows by doubling, or by one chunk when that is more: the buffer stays within twice what
            // arrived, or what arrived plus one chunk.
            out.reserve(want);
        }
        let room = want.min(out.capacity() - out.len());
        let read = (&mut *reader).take(room as u64).read_buf(out).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Writes one message and flushes.
pub async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, kind: u8, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len() + 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message above 4 GiB"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(&[kind]).await?;
    writer.write_all(body).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_frame_bytes() {
        // The QUIC handshake is a Data frame (type 0x00) with an empty body.
        let mut buffer = Vec::new();
        write_message(&mut buffer, 0x00, &[]).await.unwrap();
        assert_eq!(buffer, vec![0x00, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(read_message(&mut buffer.as_slice(), 1).await.unwrap(), Some((0x00, vec![])));
    }

    #[tokio::test]
    async fn limits_are_checked_on_the_prefix() {
        let mut buffer = Vec::new();
        write_message(&mut buffer, 0x02, &[7; 99]).await.unwrap();
        assert!(matches!(
            read_message(&mut buffer.as_slice(), 99).await,
            Err(EnvelopeError::TooLarge { len: 100, max: 99 })
        ));
        assert_eq!(read_message(&mut buffer.as_slice(), 100).await.unwrap(), Some((0x02, vec![7; 99])));
        assert!(matches!(read_message(&mut [0u8, 0, 0, 0].as_slice(), 100).await, Err(EnvelopeError::Empty)));
        assert!(read_message(&mut [].as_slice(), 100).await.unwrap().is_none());
        let err = read_message(&mut [0u8, 0, 0, 9, 2, 1].as_slice(), 100).await.unwrap_err();
        assert!(matches!(err, EnvelopeError::Truncated { got: 2, len: 9 }), "{err}");
        assert!(EnvelopeError::TooLarge { len: 2, max: 1 }.framing_broken() && !err.framing_broken());
    }

    #[tokio::test]
    async fn a_declared_length_costs_memory_only_as_data_arrives() {
        // 64 MiB declared, 100 bytes sent, then EOF: the buffer never grew past one chunk.
        // (The allocation is virtual until written, so one chunk ahead costs no resident memory either.)
        let mut out = Vec::new();
        let err = read_incrementally(&mut [1u8; 100].as_slice(), 64 << 20, &mut out).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out, vec![1u8; 100]);
        assert!(out.capacity() <= READ_CHUNK, "capacity {}", out.capacity());
    }

    #[tokio::test]
    async fn a_body_arriving_in_small_pieces_across_chunks_is_read_whole() {
        let body: Vec<u8> = (0..(3 * READ_CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let (mut near, mut far) = tokio::io::duplex(4096);
        let sent = body.clone();
        let writer = tokio::spawn(async move { write_message(&mut far, 0x12, &sent).await });
        let (kind, got) = read_message(&mut near, u32::MAX).await.unwrap().unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(kind, 0x12);
        assert!(got == body, "body differs");
        assert!(got.capacity() <= 2 * body.len(), "capacity {}", got.capacity());
    }

    #[tokio::test]
    async fn a_stalled_peer_leaves_the_buffer_at_what_arrived() {
        // The peer declares 32 MiB, sends 10 bytes and stalls: the read is pending with ~10 bytes buffered.
        let (mut near, mut far) = tokio::io::duplex(64);
        far.write_all(&(32u32 << 20).to_be_bytes()).await.unwrap();
        far.write_all(&[0x02; 10]).await.unwrap();
        let mut out = Vec::new();
        let mut prefix = [0u8; 4];
        near.read_exact(&mut prefix).await.unwrap();
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            read_incrementally(&mut near, 32 << 20, &mut out),
        )
        .await;
        assert!(pending.is_err(), "the read should still be waiting");
        assert_eq!(out.len(), 10);
        assert!(out.capacity() <= READ_CHUNK, "capacity {}", out.capacity());
        drop(far);
    }
}
