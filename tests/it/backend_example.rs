//! The example backend of docs/backend.md (Python, standard library only) and the Node.js
//! signature check, run against a real Tidings: what the documentation shows works.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use tidings::protocol::{Outcome, Push};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{TestServer, WAIT, WsClient, serve_app, within};

const SECRET: &str = "webhook-secret-of-at-least-32-bytes!";

fn example(path: &str) -> String {
    format!("{}/docs/examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_documentation_shows_the_example_files_as_they_are() {
    let doc =
        std::fs::read_to_string(format!("{}/docs/backend.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for (file, lang) in [("backend.py", "python"), ("verify-signature.mjs", "js")] {
        let code = std::fs::read_to_string(example(file)).unwrap();
        assert!(
            doc.contains(&format!("```{lang}\n{code}```")),
            "docs/backend.md does not show docs/examples/{file} verbatim"
        );
    }
}

/// The example backend, started; its stdout yields the events it accepted.
async fn python_backend() -> (Child, u16, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new("python3")
        .arg(example("backend.py"))
        .env("WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within(WAIT, "the example backend's start", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let port = first
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    (child, port, lines)
}

#[tokio::test]
async fn the_python_example_backend_decides_and_receives_signed_webhooks() {
    let (_child, port, mut lines) = python_backend().await;
    let url = |path: &str| format!("http://127.0.0.1:{port}/{path}");
    let (connect, subscribe, publish) = (url("connect"), url("subscribe"), url("publish"));
    let (refresh, rpc, webhook) = (url("refresh"), url("rpc"), url("webhook"));
    let server = TestServer::start(&[
        "--proxy-connect",
        &connect,
        "--proxy-header",
        "Cookie",
        "--proxy-subscribe",
        &subscribe,
        "--proxy-publish",
        &publish,
        "--proxy-refresh",
        &refresh,
        "--proxy-rpc",
        &rpc,
        "--namespace",
        "room:proxy-subscribe=true,proxy-publish=true",
        "--webhook-url",
        &webhook,
        "--webhook-secret",
        SECRET,
    ])
    .await;
    let mut request = server.url("/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", "theme=dark; session=s3cret-ann".parse().unwrap());
    let mut ann = WsClient::connect_request(request, None).await.unwrap();
    assert_eq!(ann.connected().await.user, "ann");
    match ann.next_push().await {
        Push::Subscribed(pushed) => assert_eq!(pushed.channel, "user:ann"),
        other => panic!("expected the personal channel, got {other:?}"),
    }
    ann.subscribe("room:lobby").await;
    match ann
        .request(json!({"op": "subscribe", "channel": "room:staff"}))
        .await
    {
        Outcome::Error(err) => assert_eq!((err.code, err.message.as_str()), (1403, "staff only")),
        Outcome::Ok(body) => panic!("staff room answered {body}"),
    }
    ann.publish("room:lobby", json!({"text": "oh darn"})).await;
    assert_eq!(ann.next_pub().await.data, json!({"text": "oh ****"}));
    let whoami = json!({"op": "rpc", "method": "whoami"});
    assert_eq!(ann.ok(whoami).await, json!({"data": {"user": "ann"}}));

    // The example verified the signatures of what it printed.
    let mut seen = Vec::new();
    within(WAIT * 3, "the example's webhook events", async {
        while !seen.contains(&"channel_occupied room:lobby".to_owned()) {
            let line = lines.next_line().await.unwrap().unwrap();
            let event: Value = serde_json::from_str(line.strip_prefix("event ").unwrap()).unwrap();
            let subject = [&event["channel"], &event["user"]]
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            seen.push(format!("{} {subject}", event["type"].as_str().unwrap()));
        }
    })
    .await;
    assert_eq!(
        seen,
        [
            "user_online ann",
            "channel_occupied user:ann",
            "channel_occupied room:lobby"
        ]
    );
    // A forged request is refused.
    let forged = reqwest_like_post(port, "t=1,v1=00").await;
    assert_eq!(forged, 401);
}

/// POSTs an empty batch to the example's webhook route with `signature`; returns the status.
async fn reqwest_like_post(port: u16, signature: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"events":[]}"#;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nTidings-Signature: {signature}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    answer[9..12].parse().unwrap()
}

/// The Node.js recipe accepts a real webhook from Tidings and refuses it once tampered with.
#[tokio::test]
async fn the_node_recipe_verifies_a_real_webhook() {
    let captured: Arc<Mutex<Option<(String, Bytes)>>> = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let app = Router::new().route(
        "/hook",
        post({
            let (captured, notify) = (captured.clone(), notify.clone());
            move |headers: HeaderMap, body: Bytes| async move {
                let signature = headers["tidings-signature"].to_str().unwrap().to_owned();
                captured.lock().unwrap().get_or_insert((signature, body));
                notify.notify_one();
            }
        }),
    );
    let addr = serve_app(app).await;
    let hook = format!("http://{addr}/hook");
    let server = TestServer::start(&["--webhook-url", &hook, "--webhook-secret", SECRET]).await;
    let mut client = server.client("?name=zed").await;
    client.subscribe("news").await;
    within(WAIT, "a webhook", notify.notified()).await;
    let (signature, body) = captured.lock().unwrap().clone().unwrap();

    let verify = |body: Vec<u8>| {
        let script = format!(
            "import {{ verifyTidingsSignature }} from {module};
             const body = Buffer.from(process.env.BODY, 'base64');
             console.log(verifyTidingsSignature(process.env.SECRET, process.env.SIGNATURE, body));",
            module = json!(example("verify-signature.mjs")),
        );
        use base64::Engine;
        let output = std::process::Command::new("node")
            .args(["--input-type=module", "-e", &script])
            .env("SECRET", SECRET)
            .env("SIGNATURE", &signature)
            .env(
                "BODY",
                base64::engine::general_purpose::STANDARD.encode(body),
            )
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(verify(body.to_vec()), "true");
    let mut tampered = body.to_vec();
    tampered.push(b' ');
    assert_eq!(verify(tampered), "false");
}
