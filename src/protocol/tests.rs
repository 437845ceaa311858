use super::*;
use serde_json::json;

#[test]
fn channel_names_follow_the_documented_rules() {
    for ok in [
        "lobby",
        "chat:lobby",
        "user:42",
        "a:b:c",
        "doc:x-1.v2@team/y=z",
    ] {
        assert!(ChannelName::parse(ok).is_ok(), "{ok}");
    }
    for (bad, error) in [
        ("", ChannelNameError::Empty),
        (":x", ChannelNameError::EmptyPart),
        ("x:", ChannelNameError::EmptyPart),
        ("a b", ChannelNameError::Character(' ')),
        ("ch*", ChannelNameError::Character('*')),
        ("na.me:x", ChannelNameError::Namespace),
        ("é", ChannelNameError::Character('é')),
        (&"x".repeat(256), ChannelNameError::TooLong(256)),
    ] {
        assert_eq!(ChannelName::parse(bad), Err(error), "{bad}");
    }
    assert_eq!(
        ChannelName::parse("chat:lobby").unwrap().namespace(),
        Some("chat")
    );
    assert_eq!(ChannelName::parse("lobby").unwrap().namespace(), None);
}

fn code_of(text: &str) -> (Option<u64>, ErrorCode) {
    let err = decode_request(text).expect_err(text);
    (err.id, err.code)
}

#[test]
fn bad_frames_get_precise_codes() {
    assert_eq!(code_of("{"), (None, ErrorCode::MalformedJson));
    assert_eq!(code_of("nope"), (None, ErrorCode::MalformedJson));
    assert_eq!(code_of("[1]"), (None, ErrorCode::InvalidCommand));
    assert_eq!(
        code_of(r#"{"id":-1,"op":"ping"}"#),
        (None, ErrorCode::InvalidCommand)
    );
    assert_eq!(code_of(r#"{"id":3}"#), (Some(3), ErrorCode::InvalidCommand));
    assert_eq!(
        code_of(r#"{"id":3,"op":7}"#),
        (Some(3), ErrorCode::InvalidCommand)
    );
    assert_eq!(
        code_of(r#"{"id":4,"op":"fly"}"#),
        (Some(4), ErrorCode::UnknownOp)
    );
    assert_eq!(
        code_of(r#"{"id":5,"op":"subscribe"}"#),
        (Some(5), ErrorCode::InvalidField)
    );
    assert_eq!(
        code_of(r#"{"id":5,"op":"subscribe","channel":1}"#),
        (Some(5), ErrorCode::InvalidField)
    );
    assert_eq!(
        code_of(r#"{"id":6,"op":"publish","channel":"a"}"#),
        (Some(6), ErrorCode::InvalidField)
    );
    assert_eq!(
        code_of(r#"{"id":7,"op":"publish","channel":"a b","data":1}"#),
        (Some(7), ErrorCode::InvalidChannel)
    );
    assert_eq!(
        code_of(r#"{"id":8,"op":"connect","name":5}"#),
        (Some(8), ErrorCode::InvalidField)
    );
    assert_eq!(
        code_of(r#"{"id":9,"op":"publish","channel":"a","data":1,"idempotency_key":"a b"}"#),
        (Some(9), ErrorCode::InvalidField)
    );
    assert_eq!(
        code_of(r#"{"id":10,"op":"refresh"}"#),
        (Some(10), ErrorCode::InvalidField)
    );
    assert_eq!(
        code_of(r#"{"id":11,"op":"history","channel":"a","limit":-1}"#),
        (Some(11), ErrorCode::InvalidField)
    );
}

#[test]
fn field_errors_name_the_field() {
    let err = decode_request(r#"{"id":8,"op":"connect","name":5}"#).unwrap_err();
    assert!(err.message.contains("\"name\""), "{}", err.message);
    let err = decode_request(r#"{"id":6,"op":"publish","channel":"a"}"#).unwrap_err();
    assert!(err.message.contains("data"), "{}", err.message);
    let long = format!(
        r#"{{"op":"history","channel":"a","limit":"{}"}}"#,
        "9".repeat(5000)
    );
    let err = decode_request(&long).unwrap_err();
    assert!(
        err.message.len() <= 260,
        "not echoed whole: {}",
        err.message.len()
    );
}

#[test]
fn publish_keeps_data_verbatim_including_null() {
    let request = decode_request(r#"{"id":1,"op":"publish","channel":"c","data":null}"#)
        .expect("valid publish");
    match request.command {
        Command::Publish(publish) => assert_eq!(publish.data.get(), "null"),
        other => panic!("decoded as {other:?}"),
    }
    let request =
        decode_request(r#"{"op":"publish","channel":"c","data":{"text":"hi","n":[1,2]}}"#)
            .expect("valid publish");
    assert_eq!(request.id, None);
    match request.command {
        Command::Publish(publish) => {
            assert_eq!(publish.data.get(), r#"{"text":"hi","n":[1,2]}"#)
        }
        other => panic!("decoded as {other:?}"),
    }
}

#[test]
fn requests_a_client_builds_are_what_the_server_decodes() {
    let channel = ChannelName::parse("chat:lobby").unwrap();
    let requests: Vec<Request<serde_json::Value>> = vec![
        Request {
            id: Some(1),
            command: Command::Subscribe(Subscribe {
                channel: channel.clone(),
                since: Some(StreamPosition {
                    offset: 3,
                    epoch: "e".into(),
                }),
                token: Some(Secret::new("t")),
                extras: Default::default(),
            }),
        },
        Request {
            id: None,
            command: Command::Publish(Publish {
                channel: channel.clone(),
                data: json!({"text": "hi"}),
                idempotency_key: Some(IdempotencyKey::parse("k-1").unwrap()),
                webhook: false,
            }),
        },
        Request {
            id: Some(2),
            command: Command::Pong,
        },
    ];
    let decoded: Vec<Request> = requests
        .iter()
        .map(|r| decode_request(&serde_json::to_string(r).unwrap()).unwrap())
        .collect();
    match &decoded[0].command {
        Command::Subscribe(s) => {
            assert_eq!((decoded[0].id, &s.channel), (Some(1), &channel));
            assert_eq!(s.since.as_ref().map(|p| p.offset), Some(3));
            assert_eq!(s.token.as_ref().map(Secret::expose), Some("t"));
        }
        other => panic!("decoded as {other:?}"),
    }
    match &decoded[1].command {
        Command::Publish(p) => {
            assert_eq!(p.data.get(), r#"{"text":"hi"}"#);
            assert_eq!(
                p.idempotency_key.as_ref().map(IdempotencyKey::as_str),
                Some("k-1")
            );
        }
        other => panic!("decoded as {other:?}"),
    }
    assert!(matches!(decoded[2].command, Command::Pong));
    assert_eq!(
        serde_json::to_string(&requests[2]).unwrap(),
        r#"{"id":2,"op":"pong"}"#
    );
}

#[test]
fn replies_and_pushes_round_trip_through_server_frame() {
    let publication = Publication {
        channel: ChannelName::parse("chat:lobby").unwrap(),
        offset: 7,
        epoch: "ep".into(),
        data: Arc::<RawValue>::from(RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap()),
        info: ClientInfo {
            client: "c1".into(),
            user: "alice".into(),
        },
    };
    let text = encode(&Push::Pub(publication));
    match serde_json::from_str::<Push<PublicationRef<'_, serde_json::Value>>>(&text).unwrap() {
        Push::Pub(view) => {
            assert_eq!((view.channel.as_ref(), view.offset), ("chat:lobby", 7));
            assert_eq!(
                (view.epoch.as_ref(), view.data),
                ("ep", json!({"text":"hi"}))
            );
        }
        other => panic!("read as {other:?}"),
    }
    let frame = ServerFrame::parse(&text).unwrap();
    match frame {
        ServerFrame::Push(Push::Pub(push)) => {
            assert_eq!(push.offset, 7);
            assert_eq!(push.channel.as_str(), "chat:lobby");
            assert_eq!(push.data, json!({"text":"hi"}));
            assert_eq!(&*push.info.user, "alice");
        }
        other => panic!("parsed as {other:?}"),
    }
    let reply = ServerFrame::parse(&encode_ok(3, &PublishOk { offset: 9 })).unwrap();
    assert_eq!(
        reply,
        ServerFrame::Reply(Reply {
            id: 3,
            outcome: Outcome::Ok(json!({"offset":9}))
        })
    );
    let error = ServerFrame::parse(&encode_error(None, ErrorCode::UnknownOp, "x")).unwrap();
    assert_eq!(
        error,
        ServerFrame::Push(Push::Error(ErrorBody {
            code: 102,
            message: "x".into()
        }))
    );
    assert_eq!(
        ServerFrame::parse(PING_FRAME).unwrap(),
        ServerFrame::Push(Push::Ping {})
    );
    assert_eq!(encode(&Push::<()>::Ping {}), PING_FRAME);
}
