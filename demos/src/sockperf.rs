//! sockperf's message protocol (Mellanox/sockperf `src/message.h`, `server.h`), so that the
//! unmodified `sockperf ping-pong` / `under-load` clients can measure a server on the stack.
//!
//! A message is a 14-byte big-endian header (sequence u64, flags u16, total length u32 including
//! the header) and filler. The server answers a client message that asks for a reply (PONG) and
//! is not a warm-up by sending it back unchanged except for the CLIENT flag, which it clears: the
//! client drops replies that still carry it. Over TCP, messages follow each other back to back and
//! are framed by the length field.

/// Header size on the wire.
pub const HEADER: usize = 14;
/// The largest message sockperf's own server accepts (its MAX_PAYLOAD_SIZE).
pub const MAX_MESSAGE: usize = 65507;

const CLIENT: u16 = 0x1;
const PONG: u16 = 0x2;
const WARMUP: u16 = 0x4;

/// Why a TCP stream cannot be served any further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below the header size or above [`MAX_MESSAGE`].
    BadLength(u32),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadLength(n) => write!(
                f,
                "sockperf message length {n} outside {HEADER}..={MAX_MESSAGE}"
            ),
        }
    }
}

/// Turns a received message into its reply in place; returns whether to send it back.
/// Anything too short to be a message is ignored.
pub fn reply_in_place(msg: &mut [u8]) -> bool {
    if msg.len() < HEADER {
        return false;
    }
    let flags = u16::from_be_bytes([msg[8], msg[9]]);
    if flags & CLIENT == 0 || flags & WARMUP != 0 || flags & PONG == 0 {
        return false;
    }
    msg[8..10].copy_from_slice(&(flags & !CLIENT).to_be_bytes());
    true
}

/// The total length of the message at the start of `buf`, once its header is complete.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let n = u32::from_be_bytes([buf[10], buf[11], buf[12], buf[13]]);
    if (n as usize) < HEADER || n as usize > MAX_MESSAGE {
        return Err(FrameError::BadLength(n));
    }
    Ok(Some(n as usize))
}

/// Serves one TCP connection's byte stream: `input` appends what arrived to `pending`; every
/// complete message is answered through `out` (replies are written in place, so nothing is
/// allocated per message). Returns the bytes of `pending` consumed.
pub fn serve_stream(
    pending: &mut [u8],
    mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<usize, FrameError> {
    let mut at = 0;
    while let Some(len) = frame_len(&pending[at..])? {
        if pending.len() - at < len {
            break;
        }
        let msg = &mut pending[at..at + len];
        if reply_in_place(msg) && out(msg).is_err() {
            return Ok(pending.len());
        }
        at += len;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ping-pong request as sockperf 3.7 sent it (`-m 64`, seq 1), header and the start
    /// of its filler.
    fn request(seq: u64, flags: u16, len: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(len as usize, 0x96);
        m
    }

    #[test]
    fn ping_pong_request_gets_the_client_flag_cleared() {
        let mut m = request(1, 0x0003, 64);
        let before = m.clone();
        assert!(reply_in_place(&mut m));
        assert_eq!(&m[8..10], &[0x00, 0x02]);
        assert_eq!(m[..8], before[..8]);
        assert_eq!(m[10..], before[10..]);
    }

    #[test]
    fn no_reply_without_pong_for_warmups_and_server_messages() {
        for flags in [0x0001, 0x0007, 0x0002, 0x0000] {
            let mut m = request(5, flags, 14);
            assert!(!reply_in_place(&mut m), "flags {flags:#x}");
        }
        assert!(!reply_in_place(&mut [0u8; 13]));
    }

    #[test]
    fn tcp_stream_is_framed_by_the_length_field() {
        let mut stream = request(1, 3, 64);
        stream.extend(request(2, 1, 14)); // under-load message: no reply
        stream.extend(request(3, 3, 20));
        let partial = request(4, 3, 64);
        stream.extend_from_slice(&partial[..30]);
        let mut replies = Vec::new();
        let used = serve_stream(&mut stream, |m| {
            replies.push(m.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(used, 64 + 14 + 20);
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].len(), 64);
        assert_eq!(&replies[1][..8], &3u64.to_be_bytes());
        assert_eq!(&replies[1][8..10], &[0, 2]);
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut m = request(1, 3, 14);
        m[10..14].copy_from_slice(&13u32.to_be_bytes());
        assert_eq!(frame_len(&m), Err(FrameError::BadLength(13)));
        m[10..14].copy_from_slice(&70000u32.to_be_bytes());
        assert!(serve_stream(&mut m, |_| Ok(())).is_err());
        assert_eq!(frame_len(&m[..5]), Ok(None));
    }
}
