//! Length-prefixed framing: `[u32 big-endian length][payload]`.
//!
//! Owns the frame format, its size limit and the decoders for it: a pure, synchronous [`decode_frame`] (the
//! one the fuzzers drive) and the async [`read_frame`] / [`write_frame`] used on QUIC streams. A length
//! prefix above the maximum is refused before anything is allocated for it; memory for a frame grows only
//! as its bytes actually arrive. Nothing here may panic on any input.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The default upper bound of one frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Size of the length prefix in bytes.
pub const LENGTH_PREFIX: usize = 4;

/// How much buffer [`read_frame`] reserves before the payload's bytes arrive.
const INITIAL_READ_CAPACITY: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the receiver accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The stream ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    /// The underlying stream failed.
    #[error("frame i/o: {0}")]
    Io(#[from] io::Error),
}

/// Reads the payload length from a 4-byte prefix and checks it against `max`.
pub fn payload_len(prefix: [u8; LENGTH_PREFIX], max: usize) -> Result<usize, FrameError> {
    let announced = u32::from_be_bytes(prefix);
    // A u32 always fits a usize on the 32- and 64-bit targets Meridian supports; saturate elsewhere so the
    // comparison below refuses it.
    let len = usize::try_from(announced).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes the first frame of `buf`.
///
/// Returns `Ok(None)` while `buf` does not yet hold a whole frame, and `Ok(Some((payload, consumed)))` once
/// it does, where `consumed` is the number of bytes of `buf` the frame occupies (prefix included). A length
/// above `max` is an error as soon as the prefix is complete.
pub fn decode_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LENGTH_PREFIX>() else {
        return Ok(None);
    };
    let len = payload_len(*prefix, max)?;
    match rest.get(..len) {
        Some(payload) => Ok(Some((payload, LENGTH_PREFIX + len))),
        None => Ok(None),
    }
}

/// Decodes `buf` as exactly one complete frame: a shorter buffer is [`FrameError::Truncated`]. Bytes after
/// the frame are left to the caller, through the returned `consumed` count.
pub fn decode_complete_frame(buf: &[u8], max: usize) -> Result<(&[u8], usize), FrameError> {
    match decode_frame(buf, max)? {
        Some(frame) => Ok(frame),
        None => {
            let expected = match buf.split_first_chunk::<LENGTH_PREFIX>() {
                Some((prefix, _)) => LENGTH_PREFIX + payload_len(*prefix, max)?,
                None => LENGTH_PREFIX,
            };
            Err(FrameError::Truncated {
                expected,
                got: buf.len(),
            })
        }
    }
}

/// Encodes `payload` as one frame, refusing payloads above `max`.
pub fn encode_frame(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let prefix = prefix_for(payload.len(), max)?;
    let mut out = Vec::with_capacity(LENGTH_PREFIX + payload.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    Ok(out)
}

fn prefix_for(len: usize, max: usize) -> Result<[u8; LENGTH_PREFIX], FrameError> {
    let wire_max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    let limit = max.min(wire_max);
    if len > limit {
        return Err(FrameError::TooLarge { len, max: limit });
    }
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max: limit })?;
    Ok(len.to_be_bytes())
}

/// Reads one frame from `reader`.
///
/// Returns `Ok(None)` when the stream ends cleanly before the first byte of a frame, and
/// [`FrameError::Truncated`] when it ends inside one.
pub async fn read_frame<R>(reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    match read_prefix(reader, max).await? {
        None => Ok(None),
        Some(len) => read_payload(reader, len).await.map(Some),
    }
}

/// Reads a frame's length prefix and checks it against `max`, so a reader can decide what to do before
/// any of the payload is read (e.g. reserve memory for it). `Ok(None)` when the stream ends cleanly first.
pub async fn read_prefix<R>(reader: &mut R, max: usize) -> Result<Option<usize>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut got = 0;
    while got < LENGTH_PREFIX {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                expected: LENGTH_PREFIX,
                got,
            });
        }
        got += n;
    }
    payload_len(prefix, max).map(Some)
}

/// Reads the `len` payload bytes that follow a prefix read by [`read_prefix`]. Memory grows only as the
/// bytes arrive.
pub async fn read_payload<R>(reader: &mut R, len: usize) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut payload = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
    let limit = u64::try_from(len).unwrap_or(u64::MAX);
    let read = (&mut *reader).take(limit).read_to_end(&mut payload).await?;
    if read < len {
        return Err(FrameError::Truncated {
            expected: LENGTH_PREFIX + len,
            got: LENGTH_PREFIX + read,
        });
    }
    Ok(payload)
}

/// Writes `payload` as one frame to `writer` and flushes it. Payloads the 4-byte prefix cannot describe
/// are refused with [`FrameError::TooLarge`].
pub async fn write_frame<W>(writer: &mut W, payload: &[u8]) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let prefix = prefix_for(payload.len(), usize::MAX)?;
    writer.write_all(&prefix).await?;
    writer.write_all(payload).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_waits_for_a_whole_frame() {
        let frame = encode_frame(b"hello", 16).unwrap();
        for cut in 0..frame.len() {
            assert!(
                decode_frame(&frame[..cut], 16).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (payload, consumed) = decode_frame(&frame, 16).unwrap().unwrap();
        assert_eq!(payload, b"hello");
        assert_eq!(consumed, frame.len());
    }

    #[test]
    fn decode_leaves_the_next_frame_alone() {
        let mut buf = encode_frame(b"one", 16).unwrap();
        buf.extend(encode_frame(b"", 16).unwrap());
        buf.extend(encode_frame(b"three", 16).unwrap());
        let mut rest = &buf[..];
        let mut seen = Vec::new();
        while let Some((payload, consumed)) = decode_frame(rest, 16).unwrap() {
            seen.push(payload.to_vec());
            rest = &rest[consumed..];
        }
        assert!(rest.is_empty());
        assert_eq!(seen, vec![b"one".to_vec(), Vec::new(), b"three".to_vec()]);
    }

    #[test]
    fn oversized_prefix_is_refused_from_the_prefix_alone() {
        let prefix = 17u32.to_be_bytes();
        match decode_frame(&prefix, 16) {
            Err(FrameError::TooLarge { len: 17, max: 16 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(
            decode_frame(&huge, DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            encode_frame(&[0; 17], 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
    }

    #[test]
    fn complete_decode_reports_truncation() {
        let frame = encode_frame(b"hello", 16).unwrap();
        match decode_complete_frame(&frame[..6], 16) {
            Err(FrameError::Truncated {
                expected: 9,
                got: 6,
            }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
        match decode_complete_frame(&frame[..2], 16) {
            Err(FrameError::Truncated {
                expected: 4,
                got: 2,
            }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn async_round_trip_and_clean_end() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"first").await.unwrap();
        write_frame(&mut wire, b"").await.unwrap();
        let mut reader = &wire[..];
        assert_eq!(
            read_frame(&mut reader, 16).await.unwrap().as_deref(),
            Some(&b"first"[..])
        );
        assert_eq!(
            read_frame(&mut reader, 16).await.unwrap().as_deref(),
            Some(&b""[..])
        );
        assert!(read_frame(&mut reader, 16).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn async_read_reports_truncation_and_size() {
        let wire = encode_frame(b"hello", 16).unwrap();
        for cut in 1..wire.len() {
            let mut reader = &wire[..cut];
            match read_frame(&mut reader, 16).await {
                Err(FrameError::Truncated { expected, got }) => {
                    assert_eq!(got, cut);
                    assert_eq!(expected, if cut < 4 { 4 } else { 9 });
                }
                other => panic!("cut {cut}: expected Truncated, got {other:?}"),
            }
        }
        let mut reader = &wire[..];
        assert!(matches!(
            read_frame(&mut reader, 4).await,
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
    }

    #[tokio::test]
    async fn async_read_does_not_trust_the_announced_length() {
        // Announces the maximum but delivers three bytes: the reader must fail without reserving 16 MiB.
        let mut wire = u32::try_from(DEFAULT_MAX_FRAME)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        wire.extend_from_slice(b"abc");
        let mut reader = &wire[..];
        assert!(matches!(
            read_frame(&mut reader, DEFAULT_MAX_FRAME).await,
            Err(FrameError::Truncated { got: 7, .. })
        ));
    }
}
