//! HTTP routes other than the protocol: the chat page, the JS client, health, and the echo
//! route (off unless enabled by flag or environment).

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestServer, WAIT, within};

#[tokio::test]
async fn the_chat_page_client_script_and_health_are_served() {
    let server = TestServer::start(&[]).await;
    let (status, head, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html")
    );
    assert!(body.contains("tidings.js"), "the page loads the client");

    let (status, head, body) = server.get("/tidings.js").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/javascript")
    );
    assert!(body.contains("export class Tidings"));

    let (status, _, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"status":"ok"}"#);

    let (status, _, _) = server.get("/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn echo_exists_only_when_enabled_and_echoes_text_and_binary() {
    let plain = TestServer::start(&[]).await;
    assert_eq!(plain.get("/ws/echo").await.0, 404);

    let server = TestServer::start(&["--enable-echo"]).await;
    let (mut ws, _) = within(
        WAIT,
        "connect",
        tokio_tungstenite::connect_async(server.url("/ws/echo")),
    )
    .await
    .unwrap();
    let big = "é".repeat(100_000);
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 255, 7]),
        Message::text(big),
    ] {
        ws.send(message.clone()).await.unwrap();
        let echoed = within(WAIT, "echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn echo_can_be_enabled_from_the_environment() {
    // The variable is set for the server's process only, not for the test runner.
    let server = TestServer::launch(&[], &[("TIDINGS_ENABLE_ECHO", Some("1"))])
        .await
        .unwrap();
    let (status, _, body) = server.get("/ws/echo").await;
    // The route exists: a plain GET is refused for lacking the upgrade, not "not found".
    assert_eq!(status, 400, "{body}");
    assert!(body.to_ascii_lowercase().contains("upgrade"), "{body}");
}
