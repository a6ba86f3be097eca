//! Accepts the malformed `:authority` etcd 3.4's clients send.
//!
//! etcd 3.4's clientv3 dials a member found through `member list` with its full client URL as the
//! gRPC target, so requests arrive with `:authority: http://127.0.0.1:2379` (`etcdctl endpoint
//! status --cluster`, `hashkv --cluster`, `defrag --cluster` do this). grpc-go servers ignore the
//! authority; the h2 crate refuses such a stream with PROTOCOL_ERROR, and offers no switch.
//!
//! [`AuthorityFix`] sits between the socket and the HTTP/2 server. A gRPC client keeps one
//! authority for a connection, so the connection's first header block decides: when it is
//! fine, it and everything after pass through untouched (decoding every block costs more than
//! the request itself). When it carries a scheme, every header block of the connection is
//! rewritten: decoded with the client's HPACK context, the scheme stripped from `:authority`,
//! and encoded again with a context of our own (so the server's decoder always follows our
//! encoder, whichever blocks needed a fix). Other frames pass through untouched; responses are
//! not looked at.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest frame size every HTTP/2 peer must accept; rewritten blocks are cut to it.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is refused (h2's own default header list limit is 16 MiB).
const MAX_BLOCK: usize = 1 << 20;

enum Stage {
    Preface,
    /// Until the first header block: it decides between the two below.
    Frames,
    /// Re-encoding every header block of a client that sends scheme-prefixed authorities.
    Rewriting,
    /// Not HTTP/2 with prior knowledge, or a client with well-formed authorities.
    Passthrough,
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

pub struct AuthorityFix<S> {
    inner: S,
    stage: Stage,
    input: BytesMut,
    output: BytesMut,
    pending: Option<PendingBlock>,
    decoder: fluke_hpack::Decoder<'static>,
    encoder: fluke_hpack::Encoder<'static>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            stage: Stage::Preface,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::new(),
            pending: None,
            decoder: fluke_hpack::Decoder::new(),
            encoder: fluke_hpack::Encoder::new(),
            eof: false,
        }
    }

    /// Moves every complete unit of `input` to `output`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.stage {
                Stage::Passthrough => {
                    let all = self.input.split();
                    self.output.unsplit(all);
                    return Ok(());
                }
                Stage::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.stage = Stage::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.input.split_to(PREFACE.len());
                    self.output.unsplit(preface);
                    self.stage = Stage::Frames;
                }
                Stage::Frames | Stage::Rewriting => {
                    if self.input.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = (usize::from(self.input[0]) << 16)
                        | (usize::from(self.input[1]) << 8)
                        | usize::from(self.input[2]);
                    if self.input.len() < FRAME_HEADER + len {
                        self.input.reserve(FRAME_HEADER + len - self.input.len());
                        return Ok(());
                    }
                    let kind = self.input[3];
                    if kind != HEADERS && kind != CONTINUATION && self.pending.is_none() {
                        let frame = self.input.split_to(FRAME_HEADER + len);
                        self.output.unsplit(frame);
                        continue;
                    }
                    let mut frame = self.input.split_to(FRAME_HEADER + len);
                    let flags = frame[4];
                    let stream_id =
                        u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                    frame.advance(FRAME_HEADER);
                    self.collect(kind, flags, stream_id, frame)?;
                }
            }
        }
    }

    fn collect(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        mut payload: BytesMut,
    ) -> io::Result<()> {
        let malformed =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2: {what}"));
        match (kind, &mut self.pending) {
            (HEADERS, None) => {
                if flags & PADDED != 0 {
                    let pad = usize::from(
                        *payload
                            .first()
                            .ok_or_else(|| malformed("empty padded HEADERS"))?,
                    );
                    payload.advance(1);
                    if pad > payload.len() {
                        return Err(malformed("padding longer than HEADERS"));
                    }
                    payload.truncate(payload.len() - pad);
                }
                let priority = if flags & PRIORITY != 0 {
                    if payload.len() < 5 {
                        return Err(malformed("short HEADERS priority"));
                    }
                    let p = payload.split_to(5);
                    Some([p[0], p[1], p[2], p[3], p[4]])
                } else {
                    None
                };
                self.pending = Some(PendingBlock {
                    stream_id,
                    flags,
                    priority,
                    block: payload.to_vec(),
                });
            }
            (CONTINUATION, Some(p)) if p.stream_id == stream_id => {
                p.block.extend_from_slice(&payload);
                p.flags |= flags & END_HEADERS;
            }
            _ => return Err(malformed("header block interrupted")),
        }
        let pending = self.pending.as_ref().expect("just set");
        if pending.block.len() > MAX_BLOCK {
            return Err(malformed("header block too large"));
        }
        if pending.flags & END_HEADERS != 0 {
            let done = self.pending.take().expect("just checked");
            self.emit(done)?;
        }
        Ok(())
    }

    fn emit(&mut self, done: PendingBlock) -> io::Result<()> {
        let headers = self
            .decoder
            .decode(&done.block)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
        let schemed = |(name, value): &(Vec<u8>, Vec<u8>)| {
            name == b":authority" && value.windows(3).any(|w| w == b"://")
        };
        if matches!(self.stage, Stage::Frames) && !headers.iter().any(schemed) {
            // The client's own encoding goes on: the server's HPACK context follows it.
            self.stage = Stage::Passthrough;
            return self.write_block(&done, &done.block);
        }
        self.stage = Stage::Rewriting;
        let fixed: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority" {
                    (name, strip_scheme(value))
                } else {
                    (name, value)
                }
            })
            .collect();
        let mut block = Vec::with_capacity(done.block.len());
        self.encoder.encode_into(
            fixed.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
            &mut block,
        )?;
        self.write_block(&done, &block)
    }

    /// `block` as the HEADERS (and CONTINUATION) frames of `done`'s stream, in frames every peer
    /// accepts.
    fn write_block(&mut self, done: &PendingBlock, block: &[u8]) -> io::Result<()> {
        let mut payload = Vec::with_capacity(block.len() + 5);
        if let Some(p) = done.priority {
            payload.extend_from_slice(&p);
        }
        payload.extend_from_slice(block);
        let mut flags =
            (done.flags & END_STREAM) | if done.priority.is_some() { PRIORITY } else { 0 };
        let mut kind = HEADERS;
        let mut rest = payload.as_slice();
        loop {
            let take = rest.len().min(MAX_FRAME);
            let (chunk, tail) = rest.split_at(take);
            if tail.is_empty() {
                flags |= END_HEADERS;
            }
            self.output.put_uint(take as u64, 3);
            self.output.put_u8(kind);
            self.output.put_u8(flags);
            self.output.put_u32(done.stream_id);
            self.output.extend_from_slice(chunk);
            if tail.is_empty() {
                return Ok(());
            }
            rest = tail;
            kind = CONTINUATION;
            flags = 0;
        }
    }
}

/// `http://host:port` becomes `host:port`; anything else is left alone.
fn strip_scheme(value: Vec<u8>) -> Vec<u8> {
    match value.windows(3).position(|w| w == b"://") {
        Some(at) => {
            let rest = &value[at + 3..];
            let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
            rest[..end].to_vec()
        }
        None => value,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                        continue;
                    }
                    this.input.extend_from_slice(read.filled());
                    this.process()?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Decodes the header blocks of `bytes` (after the preface) as the server would.
    fn server_view(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = fluke_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut blocks = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            if rest[3] == HEADERS {
                blocks.push(
                    decoder
                        .decode(&rest[FRAME_HEADER..FRAME_HEADER + len])
                        .unwrap(),
                );
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn strips_the_scheme_from_authority_and_keeps_hpack_contexts_in_step() {
        let mut client = fluke_hpack::Encoder::new();
        let request = |authority: &'static [u8], path: &'static [u8]| {
            vec![
                (&b":method"[..], &b"POST"[..]),
                (&b":scheme"[..], &b"http"[..]),
                (&b":path"[..], path),
                (&b":authority"[..], authority),
                (&b"content-type"[..], &b"application/grpc"[..]),
            ]
        };
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = client.encode(request(
            b"http://127.0.0.1:2379",
            b"/etcdserverpb.Maintenance/Status",
        ));
        // The first block split over HEADERS and CONTINUATION.
        wire.extend(frame(HEADERS, 0, 1, &first[..3]));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, &first[3..]));
        wire.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        let second = client.encode(request(b"127.0.0.1:2379", b"/etcdserverpb.KV/Range"));
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));

        let mut fixed = AuthorityFix::new(wire.as_slice());
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        let blocks = server_view(&out);
        assert_eq!(blocks.len(), 2);
        for (block, path) in blocks.iter().zip([
            &b"/etcdserverpb.Maintenance/Status"[..],
            b"/etcdserverpb.KV/Range",
        ]) {
            let get = |name: &[u8]| {
                block
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(get(b":authority").unwrap(), b"127.0.0.1:2379");
            assert_eq!(get(b":path").unwrap(), path);
        }
        // The DATA frame passed through untouched.
        assert!(out
            .windows(14)
            .any(|w| w == frame(0x0, END_STREAM, 1, b"\0\0\0\0\0").as_slice()));
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_fine_passes_through_untouched() {
        let mut client = fluke_hpack::Encoder::new();
        let block = client.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (&b":path"[..], &b"/etcdserverpb.KV/Range"[..]),
            (&b":authority"[..], &b"127.0.0.1:2379"[..]),
        ]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let later = client.encode(vec![(&b":authority"[..], &b"127.0.0.1:2379"[..])]);
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &later));
        let mut fixed = AuthorityFix::new(wire.as_slice());
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, wire);
    }

    #[tokio::test]
    async fn other_protocols_pass_through() {
        let wire = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let mut fixed = AuthorityFix::new(wire.as_slice());
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, wire);
    }
}
