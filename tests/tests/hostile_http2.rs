//! A member's HTTP/2 front end must hold clients that have not sent a single valid request to
//! bounded memory: oxcd decodes the first header blocks of every connection itself (to fix the
//! `:authority` etcd 3.4 clients send) before h2's own limits apply. Raw sockets send what no
//! honest client sends; the member must close those connections, stay small and keep serving.

use std::time::Duration;

use oxcd_tests::{send_signal, Flavor, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// Every HTTP/2 peer must accept frames this large.
const FRAME: usize = 16 * 1024;
/// How far the member's RSS may rise over its idle RSS while it is attacked.
const RSS_HEADROOM: u64 = 64 << 20;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// A header block sent as a HEADERS frame and as many CONTINUATION frames as it needs.
fn header_frames(block: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(FRAME).collect();
    let mut wire = Vec::with_capacity(block.len() + 9 * chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if i + 1 == chunks.len() {
            END_HEADERS | END_STREAM
        } else {
            0
        };
        wire.extend(frame(kind, flags, 1, chunk));
    }
    wire
}

/// A request whose header block inserts a ~4 KB header into the client's HPACK dynamic table
/// and then refers to it by index, one byte per reference, for about 1 MiB: decoded naively,
/// about 4 GB of headers. The authority carries a scheme, as etcd 3.4's clients send it, so
/// every later block of the connection is decoded too.
fn indexed_reference_bomb(authority: &str) -> Vec<u8> {
    let big = vec![b'x'; 4000];
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/etcdserverpb.KV/Range"),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
    ];
    // The first is a literal with incremental indexing, every later one a 1-byte index.
    fields.extend(std::iter::repeat_n(
        (&b"x-bomb"[..], &big[..]),
        (1 << 20) - 4200,
    ));
    let block = loona_hpack::Encoder::new().encode(fields);
    header_frames(&block)
}

/// A frame header announcing a frame of 16 MiB (HTTP/2's largest), then its payload.
fn oversized_frame() -> Vec<u8> {
    let mut wire = vec![0xff, 0xff, 0xff, HEADERS, END_HEADERS, 0, 0, 0, 1];
    wire.resize(9 + (16 << 20) - 1, 0);
    wire
}

/// A header block that ends inside a dynamic table size update's integer.
fn truncated_size_update() -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x3f])
}

/// A dynamic table size update far above the 4096 bytes the server allows, then a 64 KB
/// header inserted into that table.
fn oversized_table() -> Vec<u8> {
    let mut block = Vec::new();
    loona_hpack::encoder::encode_integer_into(1 << 30, 5, 0x20, &mut block).unwrap();
    let big = vec![b'y'; 64_000];
    block.extend(loona_hpack::Encoder::new().encode([(&b"x-big"[..], &big[..])]));
    header_frames(&block)
}

/// Connects, sends the preface, an empty SETTINGS and `attack`, then holds the connection
/// until the member closes it (or `hold` passes). Write errors are expected: a member that
/// refuses the attack closes the socket while it is still being written.
async fn assault(port: u16, attack: Vec<u8>, hold: Duration) {
    let Ok(mut socket) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(SETTINGS, 0, 0, &[]));
    wire.extend(attack);
    let _ = socket.write_all(&wire).await;
    let _ = tokio::time::timeout(hold, async {
        let mut sink = [0u8; 4096];
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_header_blocks_and_frames_leave_the_member_small_and_serving() {
    let mut server = Server::start(Flavor::Oxcd).await;
    let pid = server.pid().expect("the member runs");
    let port = server.spec().client_port;
    server
        .client()
        .await
        .put("before", "attack", None)
        .await
        .unwrap();
    let idle = rss_bytes(pid).expect("the member's /proc status");
    let ceiling = idle + RSS_HEADROOM;

    // Samples RSS throughout; past the ceiling the member is killed at once, so a member that
    // does decode the bomb fails the test instead of exhausting the machine.
    let (done, mut stop) = tokio::sync::oneshot::channel::<()>();
    let watchdog = tokio::spawn(async move {
        let mut peak = idle;
        loop {
            let rss = rss_bytes(pid).unwrap_or(0);
            peak = peak.max(rss);
            if rss > ceiling {
                let _ = send_signal(pid, "KILL");
                return peak;
            }
            tokio::select! {
                _ = &mut stop => return peak,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });

    let authority = format!("http://127.0.0.1:{port}");
    let hold = Duration::from_secs(3);
    let mut attacks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        attacks.spawn(assault(port, indexed_reference_bomb(&authority), hold));
    }
    for _ in 0..6 {
        attacks.spawn(assault(port, oversized_frame(), hold));
    }
    attacks.spawn(assault(port, truncated_size_update(), hold));
    attacks.spawn(assault(port, oversized_table(), hold));
    tokio::time::timeout(Duration::from_secs(60), async {
        while attacks.join_next().await.is_some() {}
    })
    .await
    .expect("the attacks finish");

    let _ = done.send(());
    let peak = watchdog.await.unwrap();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "RSS {:.0} MiB idle, {:.0} MiB at most under attack",
        mib(idle),
        mib(peak)
    );
    assert!(
        peak <= ceiling,
        "RSS rose from {:.0} MiB idle to {:.0} MiB under attack (limit +{} MiB); the member was killed",
        mib(idle),
        mib(peak),
        RSS_HEADROOM >> 20
    );
    assert!(server.is_running(), "the member died under attack");
    let mut fresh = server.client().await;
    fresh.put("after", "attack", None).await.unwrap();
    let got = fresh.get("before", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"attack");
    assert!(server.is_running());
}
