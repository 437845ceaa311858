use futures_util::SinkExt;
use serde_json::json;
use tidings::protocol::{Push, ServerFrame};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Ended, TestServer, WAIT, WsClient};

/// Checks that `client` still works: a ping request gets its reply.
async fn still_works(client: &mut WsClient) {
    assert_eq!(client.ok(json!({"op": "ping"})).await, json!({}));
}

async fn error_push(client: &mut WsClient) -> u16 {
    match client.next_push().await {
        Push::Error(err) => err.code,
        other => panic!("expected an error push, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_error_pushes_and_the_connection_stays_open() {
    let server = TestServer::start(&[]).await;
    let mut client = server.client("?name=t").await;
    client.connected().await;
    for (frame, code) in [
        ("{not json", 100),
        ("", 100),
        ("[1,2]", 101),
        ("42", 101),
        (r#"{"id":"seven","op":"ping"}"#, 101),
        (r#"{"op":"dance"}"#, 102),
        (r#"{"op":"subscribe"}"#, 103),
    ] {
        client.send_text(frame).await;
        assert_eq!(error_push(&mut client).await, code, "frame {frame:?}");
    }
    still_works(&mut client).await;
}

#[tokio::test]
async fn bad_commands_get_error_replies_with_their_id() {
    let server = TestServer::start(&["--max-subscriptions", "2"]).await;
    let mut client = server.client("?name=t").await;
    for (command, code) in [
        (json!({}), 101),
        (json!({"op": 5}), 101),
        (json!({"op": "fly"}), 102),
        (json!({"op": "subscribe"}), 103),
        (json!({"op": "subscribe", "channel": ["a"]}), 103),
        (json!({"op": "publish", "channel": "a"}), 103),
        (json!({"op": "connect", "name": 1}), 103),
        (json!({"op": "subscribe", "channel": "has space"}), 104),
        (json!({"op": "subscribe", "channel": "x".repeat(256)}), 104),
        (json!({"op": "publish", "channel": ":nons", "data": 1}), 104),
    ] {
        assert_eq!(client.error_code(command.clone()).await, code, "{command}");
    }
    client.subscribe("one").await;
    assert_eq!(
        client
            .error_code(json!({"op": "subscribe", "channel": "one"}))
            .await,
        107
    );
    client.subscribe("two").await;
    assert_eq!(
        client
            .error_code(json!({"op": "subscribe", "channel": "three"}))
            .await,
        108,
        "subscription limit"
    );
    client
        .ok(json!({"op": "unsubscribe", "channel": "one"}))
        .await;
    client.subscribe("three").await;
    still_works(&mut client).await;
}

#[tokio::test]
async fn binary_frames_get_an_error_push() {
    let server = TestServer::start(&[]).await;
    let mut client = server.client("?name=t").await;
    client.connected().await;
    client
        .ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(error_push(&mut client).await, 105);
    still_works(&mut client).await;
}

/// A subscriber and a publisher that must keep working while another connection is closed.
async fn bystanders(server: &TestServer) -> (WsClient, WsClient) {
    let mut reader = server.client("").await;
    reader.subscribe("calm").await;
    let writer = server.client("").await;
    (reader, writer)
}

async fn bystanders_still_work(reader: &mut WsClient, writer: &mut WsClient) {
    let offset = writer.publish("calm", json!("still here")).await;
    let publication = reader.next_pub().await;
    assert_eq!(
        (publication.offset, publication.data),
        (offset, json!("still here"))
    );
}

#[tokio::test]
async fn an_oversize_message_closes_with_1009_and_others_keep_working() {
    let server = TestServer::start(&["--max-message-size", "8KiB"]).await;
    let (mut reader, mut writer) = bystanders(&server).await;
    let mut big = server.client("").await;
    big.ok(json!({"op": "publish", "channel": "calm", "data": "x".repeat(7000)}))
        .await;
    reader.next_pub().await;
    big.send_json(&json!({"op": "publish", "channel": "calm", "data": "x".repeat(9000)}))
        .await;
    match big.ended(WAIT).await {
        Ended::Closed(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    bystanders_still_work(&mut reader, &mut writer).await;
}

/// Writes one raw client frame (masked, as RFC 6455 requires) under the WebSocket library.
async fn write_raw_frame(client: &mut WsClient, first_byte: u8, payload: &[u8]) {
    assert!(payload.len() < 126);
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    match client.ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(&frame).await.unwrap(),
        _ => unreachable!("tests use plain TCP"),
    }
}

#[tokio::test]
async fn rfc_6455_violations_close_with_the_rfc_codes() {
    let server = TestServer::start(&[]).await;
    let (mut reader, mut writer) = bystanders(&server).await;
    // (first byte, payload, expected close code)
    let cases: [(u8, &[u8], u16); 4] = [
        // FIN + RSV1 + text: reserved bit without a negotiated extension.
        (0xC1, b"{}", 1002),
        // FIN + opcode 0x3: a reserved data opcode.
        (0x83, b"{}", 1002),
        // Continuation frame with nothing to continue.
        (0x80, b"{}", 1002),
        // FIN + text with invalid UTF-8.
        (0x81, &[0xff, 0xfe, 0xfd], 1007),
    ];
    for (first_byte, payload, expected) in cases {
        let mut client = server.client("").await;
        still_works(&mut client).await;
        write_raw_frame(&mut client, first_byte, payload).await;
        match client.ended(WAIT).await {
            Ended::Closed(Some((code, _))) => {
                assert_eq!(code, expected, "frame starting {first_byte:#x}")
            }
            other => panic!("expected close {expected}, got {other:?}"),
        }
    }
    bystanders_still_work(&mut reader, &mut writer).await;
}

#[tokio::test]
async fn a_reply_never_arrives_for_a_pong_and_ids_are_echoed_exactly() {
    let server = TestServer::start(&[]).await;
    let mut client = server.client("?name=t").await;
    client.connected().await;
    client.send_text(r#"{"id":77,"op":"pong"}"#).await;
    client
        .send_text(r#"{"id":9007199254740993,"op":"ping"}"#)
        .await;
    match client.recv().await {
        ServerFrame::Reply(tidings::protocol::Reply { id, .. }) => assert_eq!(id, 9007199254740993),
        other => panic!("expected the ping reply first, got {other:?}"),
    }
}
