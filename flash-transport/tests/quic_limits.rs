//! Hostile and broken QUIC peers against the real `server` binary: oversized and silent handshakes, and
//! more connections than `--max-connections`, beside a well-behaved robot. The backend is a small LocalFrame
//! peer on a unix socket in this process (it echoes INFER bodies), so the bridge and Triton are not needed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use openpi_flash_transport::local_frame::{kind, read_message, write_message, DType, LocalArray, LocalFrame};
use openpi_flash_transport::quic::{self, link, LinkOptions};
use openpi_flash_transport::{admission, arrow_codec};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

const LINK: LinkOptions = LinkOptions {
    max_idle_timeout_secs: 10,
    keep_alive_interval_secs: 2,
    initial_window_bytes: 1_048_576,
    max_message_bytes: 64 << 20,
    udp_buffer_bytes: quic::UDP_BUFFER_BYTES,
    max_udp_payload_bytes: quic::MAX_UDP_PAYLOAD_BYTES,
};

/// A LocalFrame backend: METADATA -> `{}` (msgpack), INFER -> the same body, RESET -> ack.
struct Backend {
    path: PathBuf,
    connections: Arc<AtomicUsize>,
}

async fn start_backend(name: &str) -> Backend {
    let path = std::env::temp_dir().join(format!("quic-limits-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                while let Ok(Some((request, body))) = read_message(&mut read, 64 << 20).await {
                    let reply = match request {
                        kind::METADATA => (kind::METADATA_RESPONSE, vec![0x80]),
                        kind::INFER => (kind::INFER_RESPONSE, body),
                        _ => (kind::RESET_RESPONSE, vec![]),
                    };
                    if write_message(&mut write, reply.0, &reply.1).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Backend { path, connections }
}

/// The server binary on a free port (`--listen-port 0`), ready once it logs the port it listens on.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(backend: &Backend, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_openpi-flash-transport"))
            .args(["server", "--listen-port", "0", "--backend-socket-path"])
            .arg(&backend.path)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("OPENPI_QUIC_TOKEN")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if let Some(port) = line.split("udp://").nth(1).and_then(|a| a.rsplit(':').next()) {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap());
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).expect("the server did not report its port");
        Server { child, port }
    }

    fn rss_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

fn client_endpoint() -> quinn::Endpoint {
    quic::install_crypto_provider();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quic::client_config(&LINK).unwrap());
    endpoint
}

async fn connect(endpoint: &quinn::Endpoint, port: u16) -> Result<quinn::Connection, quinn::ConnectionError> {
    endpoint.connect(([127, 0, 0, 1], port).into(), "localhost").unwrap().await
}

/// A well-behaved robot: handshake, metadata, then INFER round trips.
struct Robot {
    _connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Robot {
    async fn connect(endpoint: &quinn::Endpoint, port: u16) -> Robot {
        let connection = connect(endpoint, port).await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        write_message(&mut send, link::DATA, &[]).await.unwrap();
        let reply = read_message(&mut recv, 1 << 20).await.unwrap().unwrap();
        assert_eq!(reply, (link::DATA, vec![0x80]), "the backend's metadata");
        Robot { _connection: connection, send, recv }
    }

    async fn infer(&mut self) {
        let frame = LocalFrame {
            schema_id: "unknown".into(),
            arrays: vec![LocalArray {
                path: vec!["state".into()],
                dtype: DType::U8,
                shape: vec![3],
                data: vec![1, 2, 3],
            }],
            scalar_json: "{}".into(),
        };
        write_message(&mut self.send, link::DATA, &arrow_codec::encode(&frame).unwrap()).await.unwrap();
        let (reply_kind, body) = read_message(&mut self.recv, 1 << 20).await.unwrap().unwrap();
        assert_eq!(reply_kind, link::DATA);
        assert_eq!(arrow_codec::decode(&body).unwrap().arrays, frame.arrays);
    }
}

/// Opens a stream and sends a handshake prefix declaring `declared` bytes followed by `sent` bytes of it;
/// returns what the server answered and how long that took.
async fn hostile_handshake(endpoint: &quinn::Endpoint, port: u16, declared: u32, sent: usize) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let connection = connect(endpoint, port).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&declared.to_be_bytes()).await.unwrap();
    // The body is pushed from a task: flow control may hold it, and the server stops the stream anyway.
    let body = tokio::spawn(async move {
        let _ = send.write_all(&vec![0u8; sent]).await;
        send
    });
    let reply = tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv, 1 << 20)).await;
    let elapsed = started.elapsed();
    let (reply_kind, text) = reply.expect("no answer").expect("no error frame").expect("no error frame");
    assert_eq!(reply_kind, link::ERROR);
    body.abort();
    connection.close(0u32.into(), b"");
    (text, elapsed)
}

#[tokio::test]
async fn oversized_handshakes_are_refused_at_once_and_cost_no_memory() {
    let backend = start_backend("oversized").await;
    let server = Server::start(&backend, &[]);
    let endpoint = client_endpoint();
    // One first, so that the allocator and quinn's tables are warm before the baseline.
    hostile_handshake(&endpoint, server.port, 64 << 20, 256 << 10).await;
    let peak_before = server.rss_kib("VmHWM:");
    // All at once, as a flood would come (they were 6 concurrent ones that grew the sidecar by 290 MB).
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (endpoint, port) = (endpoint.clone(), server.port);
        attempts.spawn(async move { hostile_handshake(&endpoint, port, 64 << 20, 1 << 20).await });
    }
    for (text, elapsed) in attempts.join_all().await {
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("exceeds the limit of 4096 bytes"), "{text}");
        assert!(elapsed < Duration::from_secs(5), "refused after {elapsed:?}");
    }
    let peak_after = server.rss_kib("VmHWM:");
    eprintln!("server peak RSS: {peak_before} KiB before, {peak_after} KiB after 20 oversized handshakes");
    assert!(
        peak_after < peak_before + 8 * 1024,
        "20 oversized handshakes raised the server's peak RSS from {peak_before} to {peak_after} KiB"
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0, "the bridge was dialed before the handshake");
    let (text, _) = hostile_handshake(&endpoint, server.port, admission::HANDSHAKE_MAX_BYTES + 1, 10).await;
    assert!(String::from_utf8(text).unwrap().contains("exceeds the limit"));
    let mut robot = Robot::connect(&endpoint, server.port).await; // still serving
    robot.infer().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_after_the_timeout() {
    let backend = start_backend("silent").await;
    let server = Server::start(&backend, &["--handshake-timeout-secs", "1"]);
    let endpoint = client_endpoint();

    // Connected, but no stream opened (nothing sent): closed with the timeout as the reason.
    let started = Instant::now();
    let silent = connect(&endpoint, server.port).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(8), silent.closed()).await.expect("still open");
    let elapsed = started.elapsed();
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(close) if String::from_utf8_lossy(&close.reason).contains("handshake timeout")),
        "{reason}"
    );
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(6), "closed after {elapsed:?}");

    // Half a handshake frame, then silence: an error frame, then the close.
    let started = Instant::now();
    let (text, elapsed) = {
        let connection = connect(&endpoint, server.port).await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&[0, 0, 0, 100, link::DATA, 1, 2, 3]).await.unwrap();
        send.flush().await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(8), read_message(&mut recv, 1 << 20)).await;
        let (reply_kind, text) = reply.expect("no answer").unwrap().unwrap();
        assert_eq!(reply_kind, link::ERROR);
        tokio::time::timeout(Duration::from_secs(8), connection.closed()).await.expect("still open");
        (String::from_utf8(text).unwrap(), started.elapsed())
    };
    assert!(text.contains("handshake timeout"), "{text}");
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(6), "closed after {elapsed:?}");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_while_a_robot_keeps_its_answers() {
    let backend = start_backend("limit").await;
    let server = Server::start(&backend, &["--max-connections", "2"]);
    let endpoint = client_endpoint();
    let mut robot = Robot::connect(&endpoint, server.port).await;
    robot.infer().await;
    let hog = Robot::connect(&endpoint, server.port).await;
    for _ in 0..5 {
        let started = Instant::now();
        let refused = connect(&endpoint, server.port).await.unwrap_err();
        assert!(
            matches!(&refused, quinn::ConnectionError::ConnectionClosed(close)
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
            "{refused}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "refused after {:?}", started.elapsed());
        robot.infer().await;
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2, "refused connections must not reach the bridge");

    // A slot comes back when a session ends (the server notices the close at once).
    hog._connection.close(0u32.into(), b"bye");
    drop(hog);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        match connect(&endpoint, server.port).await {
            Ok(connection) => {
                let (mut send, mut recv) = connection.open_bi().await.unwrap();
                write_message(&mut send, link::DATA, &[]).await.unwrap();
                let _ = read_message(&mut recv, 1 << 20).await.unwrap().unwrap();
                break Robot { _connection: connection, send, recv };
            }
            Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(err) => panic!("no slot came back: {err}"),
        }
    };
    again.infer().await;
    robot.infer().await;
}
