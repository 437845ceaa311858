use super::*;
use crate::config::{NamespaceOptions, PERSONAL_NAMESPACE};
use crate::protocol::Secret;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn hmac_verifier() -> Verifier {
    Verifier::load(&TokenSettings {
        hmac_secret: Some(Secret::new(SECRET)),
        leeway: Duration::from_secs(2),
        ..Default::default()
    })
    .unwrap()
    .unwrap()
}

fn sign(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[test]
fn a_valid_hmac_token_names_its_user() {
    let claims = hmac_verifier()
        .connection(&sign(json!({"sub": "42", "exp": now() + 60})))
        .unwrap();
    assert_eq!(claims.user, "42");
    assert!(claims.expires.is_some());
}

#[test]
fn time_claims_are_enforced_with_leeway() {
    let v = hmac_verifier();
    assert!(matches!(
        v.connection(&sign(json!({"sub": "1", "exp": now() - 10}))),
        Err(AuthError::Expired)
    ));
    assert!(
        v.connection(&sign(json!({"sub": "1", "exp": now() - 1})))
            .is_ok()
    );
    assert!(matches!(
        v.connection(&sign(json!({"sub": "1", "nbf": now() + 60}))),
        Err(AuthError::NotYetValid)
    ));
    assert!(v.connection(&sign(json!({"sub": "1"}))).is_ok());
}

#[test]
fn time_claims_may_be_fractional_and_huge() {
    let v = hmac_verifier();
    let fractional = v
        .connection(&sign(
            json!({"sub": "1", "exp": now() as f64 + 600.5, "iat": 1.5}),
        ))
        .unwrap();
    let left = fractional
        .expires
        .unwrap()
        .duration_since(SystemTime::now());
    assert!(left.unwrap() > Duration::from_secs(599));
    assert!(matches!(
        v.connection(&sign(json!({"sub": "1", "nbf": now() as f64 + 60.25}))),
        Err(AuthError::NotYetValid)
    ));
    assert!(matches!(
        v.connection(&sign(json!({"sub": "1", "exp": now() as f64 - 10.5}))),
        Err(AuthError::Expired)
    ));
    // Far beyond any SystemTime arithmetic: accepted, clamped to the year 9999.
    let huge = v
        .connection(&sign(json!({"sub": "1", "exp": u64::MAX})))
        .unwrap();
    let clamped = UNIX_EPOCH + Duration::from_millis(LATEST_TIME_MS as u64);
    assert_eq!(huge.expires, Some(clamped));
    assert!(millis_until(clamped) < 1 << 53, "fits a JavaScript number");
    assert!(
        v.connection(&sign(json!({"sub": "1", "exp": 1e300})))
            .is_ok()
    );
    assert!(matches!(
        v.connection(&sign(json!({"sub": "1", "exp": "tomorrow"}))),
        Err(AuthError::Claims(_))
    ));
}

#[test]
fn a_present_time_claim_must_be_a_number() {
    let v = hmac_verifier();
    for claim in ["exp", "nbf", "iat"] {
        for value in [json!(null), json!("1700000000"), json!(true), json!({})] {
            let mut claims = json!({"sub": "1"});
            claims[claim] = value.clone();
            let refused = v.connection(&sign(claims));
            assert!(
                matches!(&refused, Err(AuthError::Claims(_))),
                "{claim}: {value} gave {refused:?}"
            );
        }
    }
}

#[test]
fn forged_and_malformed_tokens_are_rejected() {
    let v = hmac_verifier();
    let good = sign(json!({"sub": "1"}));
    let (head, _) = good.rsplit_once('.').unwrap();
    assert!(matches!(
        v.connection(&format!("{head}.AAAA")),
        Err(AuthError::Signature)
    ));
    assert!(matches!(
        v.connection("not a token"),
        Err(AuthError::Malformed)
    ));
    let other = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "1"}),
        &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
    )
    .unwrap();
    assert!(matches!(v.connection(&other), Err(AuthError::Signature)));
    assert!(matches!(
        v.connection(&sign(json!({"name": "no sub"}))),
        Err(AuthError::Claims(_))
    ));
}

#[test]
fn short_hmac_secrets_are_refused() {
    let err = Verifier::load(&TokenSettings {
        hmac_secret: Some(Secret::new("short")),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, KeyError::ShortSecret));
}

#[test]
fn personal_channels_belong_to_their_user() {
    let rules = ChannelRules::new(Arc::new(Namespaces::default()));
    let ch = ChannelName::parse("user:42").unwrap();
    let alice = Identity {
        user: "42".into(),
        authenticated: true,
        info: None,
    };
    let impostor = Identity {
        user: "42".into(),
        authenticated: false,
        info: None,
    };
    assert!(rules.check_subscribe(&alice, &ch, None, None).is_ok());
    assert!(rules.check_subscribe(&impostor, &ch, None, None).is_err());
    assert!(rules.check_publish(&ch).is_err());
    let open = NamespaceOptions {
        subscribe: SubscribeRule::Anyone,
        ..Namespaces::default().get(None).clone()
    };
    let listed = [(PERSONAL_NAMESPACE.to_owned(), open)]
        .into_iter()
        .collect();
    let namespaces = Namespaces::new(Namespaces::default().get(None).clone(), listed);
    let rules = ChannelRules::new(Arc::new(namespaces));
    assert!(rules.check_subscribe(&impostor, &ch, None, None).is_ok());
}
