//! Accepts the malformed `:authority` etcd 3.4's clients (and clients on Unix sockets) send.
//!
//! etcd 3.4's clientv3 dials a member found through `member list` with its full client URL as the
//! gRPC target, so requests arrive with `:authority: http://127.0.0.1:2379` (`etcdctl endpoint
//! status --cluster`, `hashkv --cluster`, `defrag --cluster` do this); on a Unix socket, clients
//! send the socket's URL or path. grpc-go servers ignore the authority; the h2 crate refuses
//! such a stream with PROTOCOL_ERROR, and offers no switch.
//!
//! [`AuthorityFix`] sits between the socket and the HTTP/2 server. A gRPC client keeps one
//! authority for a connection, so the connection's first header block decides: when it is
//! fine, it and everything after pass through untouched (decoding every block costs more than
//! the request itself). When h2 could not parse it, every header block of the connection is
//! rewritten: decoded with the client's HPACK context, `:authority` made one h2 takes,
//! and encoded again with a context of our own (so the server's decoder always follows our
//! encoder, whichever blocks needed a fix). Other frames pass through untouched; responses are
//! not looked at.
//!
//! Everything it reads comes from clients that have not been authenticated at the HTTP level,
//! so it holds them to the limits the server advertises ([`Http2Limits`]) before h2 could: a
//! frame longer than SETTINGS_MAX_FRAME_SIZE is refused from its 9-byte header, a header block
//! may be only a small multiple of SETTINGS_MAX_HEADER_LIST_SIZE on the wire, and decoding stops
//! copying once the decoded list passes that size (HPACK lets a 1-byte index stand for a
//! dynamic-table entry of kilobytes). A connection that breaks a limit is closed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest frame size every HTTP/2 peer must accept; rewritten blocks are cut to it.
const MAX_FRAME: usize = 16_384;
/// How much larger than the header list limit a header block may be on the wire. An encoder
/// spends fewer bytes on a field than the 32 bytes of overhead it counts for in the list size,
/// so honest blocks stay below the limit itself; the margin is for odd but legal encodings.
const BLOCK_TO_LIST_RATIO: usize = 2;
/// RFC 7541 §4.1: a field's size is its name and value plus this.
const FIELD_OVERHEAD: usize = 32;

/// The HTTP/2 settings the server advertises, which [`AuthorityFix`] enforces too.
#[derive(Clone, Copy, Debug)]
pub struct Http2Limits {
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// SETTINGS_HEADER_TABLE_SIZE: the largest HPACK dynamic table a client may ask for.
    pub header_table_size: u32,
}

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
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    limits: Http2Limits,
    eof: bool,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2: {what}"))
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S, limits: Http2Limits) -> AuthorityFix<S> {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(limits.header_table_size as usize);
        AuthorityFix {
            inner,
            stage: Stage::Preface,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::new(),
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            limits,
            eof: false,
        }
    }

    /// Like [`AuthorityFix::new`] on a connection whose first bytes, `read`, were already taken
    /// from `inner` (to tell HTTP/2 from HTTP/1.1).
    pub fn resume(inner: S, limits: Http2Limits, read: &[u8]) -> io::Result<AuthorityFix<S>> {
        let mut fix = AuthorityFix::new(inner, limits);
        fix.input.extend_from_slice(read);
        fix.process()?;
        Ok(fix)
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
                    if len > self.limits.max_frame_size as usize {
                        return Err(malformed("frame larger than SETTINGS_MAX_FRAME_SIZE"));
                    }
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
        if pending.block.len() > BLOCK_TO_LIST_RATIO * self.limits.max_header_list_size as usize {
            return Err(malformed("header block too large"));
        }
        if pending.flags & END_HEADERS != 0 {
            let done = self.pending.take().expect("just checked");
            self.emit(done)?;
        }
        Ok(())
    }

    fn emit(&mut self, done: PendingBlock) -> io::Result<()> {
        let headers = self.decode(&done.block)?;
        let odd =
            |(name, value): &(Vec<u8>, Vec<u8>)| name == b":authority" && !is_authority(value);
        if matches!(self.stage, Stage::Frames) && !headers.iter().any(odd) {
            // The client's own encoding goes on: the server's HPACK context follows it.
            self.stage = Stage::Passthrough;
            return self.write_block(&done, &done.block);
        }
        self.stage = Stage::Rewriting;
        let fixed: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority" && !is_authority(&value) {
                    (name, fix_authority(value))
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

    /// Decodes `block` with the client's HPACK context, refusing a header list larger than
    /// SETTINGS_MAX_HEADER_LIST_SIZE. Fields past that size are counted, never copied.
    fn decode(&mut self, block: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = self.limits.max_header_list_size as usize;
        // Every field counts at least its 32 bytes of overhead against the limit, so a block
        // with more fields is refused before any string is decoded: decoding costs per string
        // (a Huffman table each), and a block of tiny fields would otherwise burn CPU for free.
        if field_count(block).is_some_and(|fields| fields > limit / FIELD_OVERHEAD) {
            return Err(malformed(
                "header block has too many fields for SETTINGS_MAX_HEADER_LIST_SIZE",
            ));
        }
        let mut size = 0usize;
        let mut headers = Vec::new();
        self.decoder
            .decode_with_cb(block, |name, value| {
                size = size.saturating_add(name.len() + value.len() + FIELD_OVERHEAD);
                if size <= limit {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| malformed(&format!("HPACK: {e}")))?;
        if size > limit {
            return Err(malformed(
                "header block has too many fields for SETTINGS_MAX_HEADER_LIST_SIZE",
            ));
        }
        Ok(headers)
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

/// How many header fields an HPACK block holds, read from its representations' prefixes and
/// string lengths alone (RFC 7541, section 6); `None` when it is malformed, which the decoder
/// then reports.
fn field_count(block: &[u8]) -> Option<usize> {
    /// An integer with an `n`-bit prefix; returns it and the bytes after it.
    fn integer(bytes: &[u8], n: u32) -> Option<(usize, &[u8])> {
        let (first, mut rest) = bytes.split_first()?;
        let mask = (1usize << n) - 1;
        let mut value = usize::from(*first) & mask;
        if value < mask {
            return Some((value, rest));
        }
        for shift in (0..28).step_by(7) {
            let (byte, after) = rest.split_first()?;
            rest = after;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value, rest));
            }
        }
        None
    }
    fn string(bytes: &[u8]) -> Option<&[u8]> {
        let (len, rest) = integer(bytes, 7)?;
        rest.get(len..)
    }
    let mut rest = block;
    let mut fields = 0;
    while let Some(first) = rest.first() {
        rest = match first {
            b if b & 0x80 != 0 => integer(rest, 7)?.1,
            b if b & 0xe0 == 0x20 => {
                rest = integer(rest, 5)?.1;
                continue;
            }
            b => {
                let prefix = if b & 0xc0 == 0x40 { 6 } else { 4 };
                let (index, after) = integer(rest, prefix)?;
                let value = if index == 0 { string(after)? } else { after };
                string(value)?
            }
        };
        fields += 1;
    }
    Some(fields)
}

/// Whether h2 takes `value` as an `:authority` (it resets a stream whose authority it cannot
/// parse).
fn is_authority(value: &[u8]) -> bool {
    hyper::http::uri::Authority::try_from(value).is_ok()
}

/// An `:authority` h2 takes for one it would refuse: `http://host:port` becomes `host:port`; one
/// with no host and port left, such as a Unix socket's path (`/run/etcd.sock`,
/// `unix:///run/etcd.sock`, which clients on Unix sockets send), becomes `localhost`, the name
/// grpc-go gives such peers.
fn fix_authority(value: Vec<u8>) -> Vec<u8> {
    let host_port = match value.windows(3).position(|w| w == b"://") {
        Some(at) => {
            let rest = &value[at + 3..];
            let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
            &rest[..end]
        }
        None => &value[..],
    };
    if is_authority(host_port) {
        host_port.to_vec()
    } else {
        b"localhost".to_vec()
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
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tokio::io::AsyncReadExt;

    /// hyper's defaults, which the server advertises.
    const LIMITS: Http2Limits = Http2Limits {
        max_frame_size: 16 * 1024,
        max_header_list_size: 16 * 1024,
        header_table_size: 4096,
    };

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
        let mut decoder = loona_hpack::Decoder::new();
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

    async fn through_fix(wire: &[u8]) -> io::Result<Vec<u8>> {
        let mut fixed = AuthorityFix::new(wire, LIMITS);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await?;
        Ok(out)
    }

    fn schemed_request(encoder: &mut loona_hpack::Encoder<'_>) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":path", b"/etcdserverpb.KV/Range"),
            (b":authority", b"http://127.0.0.1:2379"),
        ])
    }

    fn assert_refused(result: io::Result<Vec<u8>>, why: &str) {
        match result {
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                assert!(e.to_string().contains(why), "{e}");
            }
            Ok(out) => panic!("passed {} bytes instead of refusing: {why}", out.len()),
        }
    }

    #[tokio::test]
    async fn strips_the_scheme_from_authority_and_keeps_hpack_contexts_in_step() {
        let mut client = loona_hpack::Encoder::new();
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

        let out = through_fix(&wire).await.unwrap();
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
    async fn a_socket_path_authority_becomes_localhost_after_bytes_already_read() {
        let mut client = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        for (stream, authority) in [
            (1, &b"/tmp/d/etcd.sock"[..]),
            (3, b"unix:///tmp/d/etcd.sock"),
        ] {
            let block = client.encode(vec![
                (&b":method"[..], &b"POST"[..]),
                (&b":path"[..], &b"/etcdserverpb.KV/Range"[..]),
                (&b":authority"[..], authority),
            ]);
            wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        // The preface was read already, to tell HTTP/2 from HTTP/1.1.
        let (sniffed, rest) = wire.split_at(PREFACE.len());
        let mut fixed = AuthorityFix::resume(rest, LIMITS, sniffed).unwrap();
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        let blocks = server_view(&out);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            let authority = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
        }
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_fine_passes_through_untouched() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (&b":path"[..], &b"/etcdserverpb.KV/Range"[..]),
            (&b":authority"[..], &b"127.0.0.1:2379"[..]),
        ]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let later = client.encode(vec![(&b":authority"[..], &b"127.0.0.1:2379"[..])]);
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &later));
        assert_eq!(through_fix(&wire).await.unwrap(), wire);
    }

    #[tokio::test]
    async fn other_protocols_pass_through() {
        let wire = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(through_fix(&wire).await.unwrap(), wire);
    }

    #[tokio::test]
    async fn a_frame_longer_than_max_frame_size_is_refused_from_its_header() {
        let mut wire = PREFACE.to_vec();
        // 16 MiB announced; none of it sent.
        wire.extend([0xff, 0xff, 0xff, HEADERS, END_HEADERS, 0, 0, 0, 1]);
        assert_refused(through_fix(&wire).await, "SETTINGS_MAX_FRAME_SIZE");
    }

    #[tokio::test]
    async fn indexed_references_past_the_header_list_limit_are_refused() {
        let big = vec![b'x'; 4000];
        let mut block = schemed_request(&mut loona_hpack::Encoder::new());
        // One literal inserted into the dynamic table, then 1-byte references to it: 4.1 KB
        // on the wire that decode to 40 KB.
        let mut encoder = loona_hpack::Encoder::new();
        block.extend(encoder.encode(std::iter::repeat_n((&b"x-bomb"[..], &big[..]), 10)));
        assert!(block.len() < 4200);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        assert_refused(through_fix(&wire).await, "SETTINGS_MAX_HEADER_LIST_SIZE");
    }

    #[tokio::test]
    async fn a_header_block_longer_than_twice_the_list_limit_is_refused_before_it_ends() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            HEADERS,
            0,
            1,
            &schemed_request(&mut loona_hpack::Encoder::new()),
        ));
        // CONTINUATION frames that never end the block.
        for _ in 0..3 {
            wire.extend(frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME]));
        }
        assert_refused(through_fix(&wire).await, "header block too large");
    }

    #[tokio::test]
    async fn a_size_update_above_the_advertised_table_size_is_refused() {
        let mut block = Vec::new();
        loona_hpack::encoder::encode_integer_into(4097, 5, 0x20, &mut block).unwrap();
        block.extend(schemed_request(&mut loona_hpack::Encoder::new()));
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        assert_refused(through_fix(&wire).await, "Dynamic table size exceeds");
    }

    #[test]
    fn fields_are_counted_without_decoding_them() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = schemed_request(&mut encoder);
        let decoded = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(field_count(&block), Some(decoded.len()));
        assert_eq!(field_count(&block[..block.len() - 1]), None, "truncated");
        // A size update is no field; two indexed fields follow it.
        assert_eq!(field_count(&[0x3f, 0xe1, 0x1f, 0x82, 0x84]), Some(2));
    }

    #[tokio::test]
    async fn a_block_of_more_fields_than_the_list_could_hold_is_refused_undecoded() {
        // 1-byte literal fields (never indexed, indexed name :method, empty value): far below the
        // raw block cap, far above what 16 KiB of header list can hold at 32 bytes a field.
        let mut block = Vec::new();
        for _ in 0..600 {
            block.extend_from_slice(&[0x12, 0x00]);
        }
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        assert_refused(through_fix(&wire).await, "too many fields");
    }

    #[tokio::test]
    async fn a_truncated_size_update_is_refused() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f]));
        assert_refused(through_fix(&wire).await, "HPACK");
    }

    /// A header block that is valid, cut short, or a valid one with random bytes overwritten,
    /// inserted or removed; or random bytes.
    fn hostile_block(rng: &mut StdRng, encoder: &mut loona_hpack::Encoder<'_>) -> Vec<u8> {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.gen_range(0..8))
            .map(|_| {
                let name = (0..rng.gen_range(0..12)).map(|_| rng.gen()).collect();
                let value = (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect();
                (name, value)
            })
            .collect();
        let mut block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        match rng.gen_range(0..5) {
            0 => block.truncate(rng.gen_range(0..=block.len())),
            1 => {
                for _ in 0..rng.gen_range(1..4) {
                    if let Some(at) = (!block.is_empty()).then(|| rng.gen_range(0..block.len())) {
                        block[at] = rng.gen();
                    }
                }
            }
            2 => {
                let at = rng.gen_range(0..=block.len());
                let noise: Vec<u8> = (0..rng.gen_range(1..6)).map(|_| rng.gen()).collect();
                block.splice(at..at, noise);
            }
            3 if !block.is_empty() => {
                let from = rng.gen_range(0..block.len());
                let to = rng.gen_range(from..=block.len());
                block.drain(from..to);
            }
            _ => block = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect(),
        }
        block
    }

    /// Connections whose first block asks for rewriting (so every later block is decoded too),
    /// followed by hostile blocks: decoding may fail, but must never panic.
    #[test]
    fn arbitrary_header_blocks_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x0c0d_4a11);
        let (mut refused, mut passed) = (0, 0);
        for _ in 0..3000 {
            let mut encoder = loona_hpack::Encoder::new();
            let mut wire = PREFACE.to_vec();
            wire.extend(frame(
                HEADERS,
                END_HEADERS,
                1,
                &schemed_request(&mut encoder),
            ));
            for stream in 0..rng.gen_range(1..6u32) {
                let block = hostile_block(&mut rng, &mut encoder);
                wire.extend(frame(HEADERS, END_HEADERS, 3 + 2 * stream, &block));
            }
            let mut fix = AuthorityFix::new((), LIMITS);
            // Fed in random pieces, as a socket delivers them.
            let mut rest = wire.as_slice();
            let mut result = Ok(());
            while !rest.is_empty() && result.is_ok() {
                let (piece, tail) = rest.split_at(rng.gen_range(1..=rest.len()));
                fix.input.extend_from_slice(piece);
                result = fix.process();
                rest = tail;
            }
            match result {
                Ok(()) => passed += 1,
                Err(_) => refused += 1,
            }
        }
        // Both outcomes must have been exercised for the test to mean anything.
        assert!(
            refused > 100 && passed > 100,
            "{refused} refused, {passed} passed"
        );
    }
}
