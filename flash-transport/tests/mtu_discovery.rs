//! Path MTU discovery between two ends with this crate's QUIC settings on loopback: an observation-sized
//! message goes in far fewer packets than openpi-flash's fixed 1200-byte ones, and a bound of 1200 keeps
//! exactly those.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use openpi_flash_transport::quic::{self, LinkOptions};

/// About one ALOHA observation: four 224x224x3 cameras.
const MESSAGE_BYTES: usize = 600_000;

fn link(max_udp_payload_bytes: u16) -> LinkOptions {
    LinkOptions {
        max_idle_timeout_secs: 10,
        keep_alive_interval_secs: 2,
        initial_window_bytes: 1_048_576,
        max_message_bytes: 64 << 20,
        udp_buffer_bytes: quic::UDP_BUFFER_BYTES,
        max_udp_payload_bytes,
    }
}

fn endpoint(options: &LinkOptions, server: bool) -> quinn::Endpoint {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    quic::size_udp_buffers(&socket, options.udp_buffer_bytes).unwrap();
    let server_config = server.then(|| quic::server_config(options).unwrap());
    let runtime = quinn::default_runtime().unwrap();
    let mut endpoint =
        quinn::Endpoint::new(quic::endpoint_config(options).unwrap(), server_config, socket, runtime).unwrap();
    endpoint.set_default_client_config(quic::client_config(options).unwrap());
    endpoint
}

/// Datagrams the client sent for one message once discovery had its chance (a first message warms the path).
async fn datagrams_for_one_message(max_udp_payload_bytes: u16) -> u64 {
    quic::install_crypto_provider();
    let options = link(max_udp_payload_bytes);
    let server = endpoint(&options, true);
    let address: SocketAddr = server.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        for _ in 0..2 {
            let mut body = vec![0u8; MESSAGE_BYTES];
            recv.read_exact(&mut body).await.unwrap();
            send.write_all(&[1]).await.unwrap();
        }
        connection.closed().await;
    });
    let client = endpoint(&options, false);
    let connection = client.connect(address, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let message = vec![7u8; MESSAGE_BYTES];
    let mut ack = [0u8; 1];
    send.write_all(&message).await.unwrap();
    recv.read_exact(&mut ack).await.unwrap();
    if max_udp_payload_bytes > 1200 {
        // Discovery probes in the background once the handshake is confirmed: wait until it has raised the MTU.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while connection.stats().path.current_mtu <= 1200 {
            assert!(tokio::time::Instant::now() < deadline, "path MTU discovery never raised the MTU");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let before = connection.stats().udp_tx.datagrams;
    send.write_all(&message).await.unwrap();
    recv.read_exact(&mut ack).await.unwrap();
    let sent = connection.stats().udp_tx.datagrams - before;
    connection.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(5), receiver).await;
    client.wait_idle().await;
    sent
}

#[tokio::test]
async fn loopback_carries_an_observation_in_large_packets() {
    let sent = datagrams_for_one_message(quic::MAX_UDP_PAYLOAD_BYTES).await;
    // 600 KB at 1200 bytes a packet is 500+; discovered loopback packets are tens of KB.
    assert!(sent < 100, "{sent} datagrams for {MESSAGE_BYTES} bytes");
}

#[tokio::test]
async fn a_bound_of_1200_keeps_openpi_flash_packets() {
    let sent = datagrams_for_one_message(1200).await;
    assert!(sent >= (MESSAGE_BYTES / 1200) as u64, "{sent} datagrams for {MESSAGE_BYTES} bytes");
}
