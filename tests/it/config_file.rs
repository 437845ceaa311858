use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use crate::support::{TestServer, WAIT, http_request, within};

/// Writes `text` to a file of its own under the temp directory.
fn config_file(tag: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tidings-config-{tag}-{}-{:x}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `tidings ARGS…` to completion with no `TIDINGS_*` from the test's environment;
/// returns the exit code, stdout and stderr.
async fn tidings(args: &[&str]) -> (i32, String, String) {
    let output = within(
        WAIT,
        "tidings to exit",
        Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(args)
            .env_remove("TIDINGS_LOG")
            .env_remove("TIDINGS_CONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_example_passes_the_check_and_holds_every_key() {
    let (code, example, _) = tidings(&["config", "example"]).await;
    assert_eq!(code, 0);
    let path = config_file("example", &example);
    let (code, stdout, stderr) = tidings(&["config", "check", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    // Every key of the reference appears in the example, set or commented out.
    let (_, reference, _) = tidings(&["config", "reference"]).await;
    let keys: Vec<&str> = reference
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    assert!(keys.len() > 30, "{reference}");
    for key in keys {
        assert!(
            example.contains(&format!("# flag --{key},")),
            "{key} missing from the example"
        );
    }
}

#[tokio::test]
async fn docs_config_md_is_the_generated_reference() {
    let (code, reference, _) = tidings(&["config", "reference"]).await;
    assert_eq!(code, 0);
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    assert!(
        docs == reference,
        "docs/config.md is out of date: run `cargo run --release -- config reference > docs/config.md`"
    );
}

#[tokio::test]
async fn each_kind_of_mistake_exits_2_naming_the_file_and_the_key() {
    let cases = [
        (
            "max-subscriptons = 3\n",
            "unknown key `max-subscriptons`; did you mean `max-subscriptions`?",
        ),
        (
            "max-subscriptions = \"lots\"\n",
            "key `max-subscriptions`: expected an integer, found a string",
        ),
        (
            "max-subscriptions = -3\n",
            "key `max-subscriptions`: invalid value \"-3\"",
        ),
        (
            "ping-interval = \"5 parsecs\"\n",
            "key `ping-interval`: invalid value \"5 parsecs\"",
        ),
        (
            "enable-echo = \"yes\"\n",
            "key `enable-echo`: expected a boolean",
        ),
        (
            "allowed-origin = [1]\n",
            "key `allowed-origin`: expected a string",
        ),
        (
            "[namespace.room]\npresence = \"maybe\"\n",
            "key `namespace.room.presence`: \"maybe\" is not true or false",
        ),
        (
            "[namespace.room]\nsubscribers = \"anyone\"\n",
            "key `namespace.room.subscribers`: unknown rule",
        ),
        (
            "[namespace.room]\njoin-leave = \"client\"\n",
            "key `namespace.room.join-leave`: needs presence = true",
        ),
        (
            "namespace = \"room\"\n",
            "key `namespace`: expected a table of namespaces",
        ),
        ("listen = \n", "not valid TOML: line 1, column 10"),
        // An inconsistent combination: the queue cannot hold one message.
        (
            "max-queue-size = 1024\n",
            "--max-queue-size (1024 bytes) must be at least --max-message-size",
        ),
    ];
    for (text, expected) in cases {
        let path = config_file("mistake", text);
        let file = path.to_str().unwrap();
        let (code, _, stderr) = tidings(&["config", "check", file]).await;
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert!(
            stderr.contains(file),
            "{text:?} does not name the file: {stderr}"
        );
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
        // The server refuses to start on the same mistake, with the same code and message.
        let (code, stdout, started) = tidings(&["--listen", "127.0.0.1:0", "--config", file]).await;
        assert_eq!(code, 2, "{text:?}: {started}");
        assert!(!stdout.contains("listening on"), "{stdout}");
        assert!(
            started.contains(file) && started.contains(expected),
            "{text:?}: {started}"
        );
    }
    let (code, _, stderr) = tidings(&["config", "check", "/nonexistent/tidings.toml"]).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/tidings.toml: cannot read it"),
        "{stderr}"
    );
}

/// Which of three API keys opens `/api/channels`: the one of the highest-precedence level set.
async fn accepted_key(args: &[&str], env: &[(&str, Option<&str>)]) -> Option<&'static str> {
    let server = TestServer::launch(args, env).await.unwrap();
    let mut accepted = None;
    for key in [
        "file-key-0123456789",
        "env-key-0123456789",
        "flag-key-0123456789",
    ] {
        let auth = format!("apikey {key}");
        let (status, body) =
            http_request(server.addr, "POST", "/api/channels", Some(&auth), "{}").await;
        match status {
            200 => {
                assert!(accepted.is_none(), "two keys accepted");
                accepted = Some(key);
            }
            401 | 404 => {}
            other => panic!("{other}: {body}"),
        }
    }
    accepted
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file_which_beats_the_default() {
    let path = config_file(
        "precedence",
        "api-key = \"file-key-0123456789\"\nmax-subscriptions = 7\n",
    );
    let file = path.to_str().unwrap();
    let no_env = [("TIDINGS_API_KEY", None)];
    let env = [("TIDINGS_API_KEY", Some("env-key-0123456789"))];
    // Default: no key, the API is off.
    assert_eq!(accepted_key(&[], &no_env).await, None);
    assert_eq!(
        accepted_key(&["--config", file], &no_env).await,
        Some("file-key-0123456789")
    );
    assert_eq!(
        accepted_key(&["--config", file], &env).await,
        Some("env-key-0123456789")
    );
    assert_eq!(
        accepted_key(
            &["--config", file, "--api-key", "flag-key-0123456789"],
            &env
        )
        .await,
        Some("flag-key-0123456789")
    );
    // TIDINGS_CONFIG names the file as --config does, and `tidings serve` reads it too.
    let env_file = [("TIDINGS_API_KEY", None), ("TIDINGS_CONFIG", Some(file))];
    assert_eq!(
        accepted_key(&["serve", "--listen", "127.0.0.1:0"], &env_file).await,
        Some("file-key-0123456789")
    );
}

#[tokio::test]
async fn namespaces_from_the_file_apply() {
    let path = config_file(
        "namespaces",
        "[namespace.news]\npublish = false\n\n[channel-rule]\nsubscribe = \"anyone\"\npublish = true\n",
    );
    let server = TestServer::start(&["--config", path.to_str().unwrap()]).await;
    let mut client = server.client("?name=ann").await;
    client.connected().await;
    client.subscribe("news:today").await;
    let code = client
        .error_code(serde_json::json!({"op": "publish", "channel": "news:today", "data": 1}))
        .await;
    assert_eq!(code, 110, "publishing is off in news");
    client.subscribe("other").await;
    client.publish("other", serde_json::json!(1)).await;
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let server = TestServer::launch(&["--log-format", "json"], &[("TIDINGS_LOG", Some("info"))])
        .await
        .unwrap();
    server.logs().wait_for("tidings started", WAIT).await;
    let text = server.logs().text();
    let mut lines = 0;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 0);
}
