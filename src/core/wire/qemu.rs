//! QEMU's socket framing: how `-netdev stream` carries Ethernet frames over a byte stream.
//!
//! Each frame is a 4-byte big-endian length followed by exactly that many bytes of Ethernet
//! frame, with no padding (QEMU `net/stream.c`, `net_stream_receive`). Frames are whatever
//! the guest NIC handed over: an ARP request is 42 bytes, not the 60 of the wire minimum.
//! (`-netdev dgram` needs no framing: one datagram is one frame.)
//!
//! [`StreamDecoder`] owns one receive buffer, allocated once. The I/O side reads into
//! [`StreamDecoder::spare`], reports how much arrived with [`StreamDecoder::filled`], and
//! takes complete frames with [`StreamDecoder::next_frame`] until it returns `Ok(None)`.
//! A frame split across reads stays in the buffer until its last byte arrives; the bytes of
//! an incomplete frame are moved to the front of the buffer before the next read, which is
//! the only copy, and it is at most one frame long.
//!
//! A length of 0 or more than [`MAX_FRAME`] cannot come from QEMU: it means the client is not
//! speaking this protocol (or lost sync), and nothing after it can be trusted. The decoder
//! then reports [`FramingError`] and the caller disconnects the client.

use std::fmt;
use std::ops::Range;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Largest frame accepted: a 64 KiB IP packet plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65536 + 18;

/// The client sent a length no frame can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError {
    pub len: u32,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame length {} is not 1..={MAX_FRAME}", self.len)
    }
}

impl std::error::Error for FramingError {}

/// The length prefix of a frame of `len` bytes.
pub fn header(len: usize) -> [u8; LEN_BYTES] {
    (len as u32).to_be_bytes()
}

/// Reassembles frames from a QEMU stream.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Box<[u8]>,
    /// First byte not yet handed out.
    start: usize,
    /// End of the bytes received.
    end: usize,
    /// Set once a bad length was seen: the stream is unusable from there on.
    broken: Option<FramingError>,
}

impl StreamDecoder {
    /// A decoder with a buffer of `capacity` bytes (raised to fit one largest frame); a
    /// bigger buffer takes more frames per read.
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(LEN_BYTES + MAX_FRAME);
        StreamDecoder { buf: vec![0; cap].into_boxed_slice(), start: 0, end: 0, broken: None }
    }

    /// Where the next read should go. Never empty: a partial frame is moved to the front
    /// first, and the buffer holds the largest frame.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < LEN_BYTES + MAX_FRAME) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Self::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received but not handed out yet (a partial frame, or frames not taken yet).
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next complete frame, as a range of [`Self::data`]; `Ok(None)` when more bytes are
    /// needed.
    pub fn next_range(&mut self) -> Result<Option<Range<usize>>, FramingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let avail = &self.buf[self.start..self.end];
        let Some(hdr) = avail.first_chunk::<LEN_BYTES>() else { return Ok(None) };
        let len = u32::from_be_bytes(*hdr);
        if len == 0 || len as usize > MAX_FRAME {
            self.broken = Some(FramingError { len });
            return Err(FramingError { len });
        }
        let total = LEN_BYTES + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let r = self.start + LEN_BYTES..self.start + total;
        self.start += total;
        Ok(Some(r))
    }

    /// The next complete frame; `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        Ok(self.next_range()?.map(|r| &self.buf[r]))
    }

    /// The buffer that ranges from [`Self::next_range`] index into (valid until the next
    /// [`Self::spare`]).
    pub fn data(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&header(f.len()));
            out.extend_from_slice(f);
        }
        out
    }

    fn feed(d: &mut StreamDecoder, bytes: &[u8]) {
        let spare = d.spare();
        spare[..bytes.len()].copy_from_slice(bytes);
        d.filled(bytes.len());
    }

    #[test]
    fn frames_shorter_than_the_ethernet_minimum_come_out_as_sent() {
        let arp = [0xa5u8; 42];
        let tiny = [1u8; 14];
        let mut d = StreamDecoder::new(0);
        feed(&mut d, &framed(&[&arp, &tiny]));
        assert_eq!(d.next_frame().unwrap(), Some(&arp[..]));
        assert_eq!(d.next_frame().unwrap(), Some(&tiny[..]));
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_frame_split_at_every_byte_is_reassembled() {
        let f: Vec<u8> = (0..1514u32).map(|i| i as u8).collect();
        let stream = framed(&[&f, &f[..60]]);
        let mut d = StreamDecoder::new(0);
        let mut got = Vec::new();
        for b in &stream {
            feed(&mut d, std::slice::from_ref(b));
            while let Some(frame) = d.next_frame().unwrap() {
                got.push(frame.to_vec());
            }
        }
        assert_eq!(got, vec![f.clone(), f[..60].to_vec()]);
    }

    #[test]
    fn a_partial_frame_survives_compaction_at_the_buffer_end() {
        let f = vec![7u8; 60_000];
        let mut d = StreamDecoder::new(0); // room for one largest frame only
        let stream = framed(&[&f, &f, &f]);
        let mut got = 0;
        for chunk in stream.chunks(50_001) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = d.spare().len().min(rest.len());
                feed(&mut d, &rest[..n]);
                rest = &rest[n..];
                while let Some(frame) = d.next_frame().unwrap() {
                    assert_eq!(frame, &f[..]);
                    got += 1;
                }
            }
        }
        assert_eq!(got, 3);
    }

    #[test]
    fn zero_or_oversized_length_breaks_the_stream_for_good() {
        let mut d = StreamDecoder::new(0);
        feed(&mut d, &[0, 0, 0, 0, 1, 2, 3]);
        assert_eq!(d.next_frame(), Err(FramingError { len: 0 }));
        assert_eq!(d.next_frame(), Err(FramingError { len: 0 }), "stays broken");

        let mut d = StreamDecoder::new(0);
        feed(&mut d, b"GET / HTTP/1.1\r\n");
        assert_eq!(d.next_frame(), Err(FramingError { len: u32::from_be_bytes(*b"GET ") }));

        let mut d = StreamDecoder::new(0);
        feed(&mut d, &header(MAX_FRAME));
        assert_eq!(d.next_frame(), Ok(None), "the largest frame is legal, it just has not arrived");
        let mut d = StreamDecoder::new(0);
        feed(&mut d, &header(MAX_FRAME + 1));
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn a_good_frame_before_garbage_is_still_delivered() {
        let f = [9u8; 60];
        let mut bytes = framed(&[&f]);
        bytes.extend_from_slice(&[0xff; 8]);
        let mut d = StreamDecoder::new(0);
        feed(&mut d, &bytes);
        assert_eq!(d.next_frame().unwrap(), Some(&f[..]));
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn a_header_split_across_reads_waits_for_its_last_byte() {
        let f = [3u8; 100];
        let bytes = framed(&[&f]);
        let mut d = StreamDecoder::new(0);
        feed(&mut d, &bytes[..3]);
        assert_eq!(d.next_frame(), Ok(None));
        feed(&mut d, &bytes[3..50]);
        assert_eq!(d.next_frame(), Ok(None));
        feed(&mut d, &bytes[50..]);
        assert_eq!(d.next_frame().unwrap(), Some(&f[..]));
    }
}
