//! Who a connection is, and what it may do: JWT verification and the channel rules.
//!
//! ## Tokens
//! A [`Verifier`] holds the keys the operator configured: an HMAC secret (HS256), PEM public
//! keys (RS256 for RSA, ES256 for P-256, EdDSA for Ed25519) and a JWKS file. Each key accepts
//! exactly one algorithm, fixed by the key itself, so a token cannot choose how it is checked:
//! `alg: none` does not parse, and an HS256 token "signed" with an RSA public key finds no
//! HMAC key. `sub` is required and becomes the user id; `exp` and `nbf` are enforced with a
//! small leeway when present; `aud` and `iss` when configured.
//!
//! ## Channel rules
//! A channel's namespace is the part before its first `:`. [`ChannelRules`] says, per
//! namespace, who may subscribe ([`SubscribeRule`]), whether clients may publish, and how much
//! history the channel keeps. The `user` namespace is personal by default: `user:<id>` is
//! readable only by the authenticated user `<id>`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::broker::HistoryRetention;
use crate::protocol::{ChannelName, Secret};

/// Where the token keys come from and how strictly tokens are checked.
#[derive(Clone, Debug, Default)]
pub struct TokenSettings {
    pub hmac_secret: Option<Secret>,
    pub public_keys: Vec<PathBuf>,
    pub jwks: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl TokenSettings {
    pub fn has_keys(&self) -> bool {
        self.hmac_secret.is_some() || !self.public_keys.is_empty() || self.jwks.is_some()
    }
}

/// Why the configured keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PEM RSA, P-256 or Ed25519 public key")]
    Pem { path: PathBuf },
    #[error("{path}: not a JWKS document: {source}")]
    Jwks {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: key {kid:?} cannot be used: {reason}")]
    Jwk {
        path: PathBuf,
        kid: Option<String>,
        reason: String,
    },
    #[error("--token-hmac-secret must be at least 32 bytes long")]
    ShortSecret,
}

/// Why a token was rejected. The message reaches the client (as a close reason or an error
/// reply), so it says what is wrong without echoing the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token signature does not verify")]
    Signature,
    #[error("token claims rejected: {0}")]
    Claims(String),
    #[error("tokens are not accepted: the server has no token key configured")]
    NoKeys,
}

/// A verified connection token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionClaims {
    /// `sub`: the user id.
    pub user: String,
    pub expires: Option<SystemTime>,
}

#[derive(Debug, Deserialize)]
struct RawClaims {
    // Optional here so that a token without it is refused as "missing sub", not as JSON.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
    #[serde(default)]
    channel: Option<String>,
}

/// A JWT time (RFC 7519 §2): seconds since 1970, integer or fractional, kept as whole
/// milliseconds. `exp` is rounded down and `nbf` up, so rounding never widens a token's life;
/// values beyond [`LATEST_TIME_MS`] are clamped there, so no client-chosen number reaches time
/// arithmetic that could overflow.
#[derive(Clone, Copy, Debug, PartialEq)]
struct NumericDate(f64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = serde_json::Number::deserialize(deserializer)?;
        seconds
            .as_f64()
            .filter(|s| s.is_finite())
            .map(NumericDate)
            .ok_or_else(|| serde::de::Error::custom("a time claim must be a number of seconds"))
    }
}

/// 9999-12-31T23:59:59Z in milliseconds: the latest time a token may name.
const LATEST_TIME_MS: i64 = 253_402_300_799_000;

impl NumericDate {
    fn floor_ms(self) -> i64 {
        // `as` saturates (and the clamp keeps the result a valid SystemTime offset).
        ((self.0 * 1000.0).floor() as i64).clamp(-LATEST_TIME_MS, LATEST_TIME_MS)
    }

    fn ceil_ms(self) -> i64 {
        ((self.0 * 1000.0).ceil() as i64).clamp(-LATEST_TIME_MS, LATEST_TIME_MS)
    }
}

/// Milliseconds since 1970 now (0 for a clock set before it).
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        i64::try_from(d.as_millis()).unwrap_or(LATEST_TIME_MS)
    })
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<Key>,
    leeway: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|k| k.algorithm).collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .finish_non_exhaustive()
    }
}

/// HMAC secrets shorter than the hash output make brute-forcing a token cheap (RFC 7518 §3.2).
const MIN_HMAC_SECRET: usize = 32;

impl Verifier {
    /// Reads the configured keys; `None` when none are configured.
    pub fn load(settings: &TokenSettings) -> Result<Option<Self>, KeyError> {
        if !settings.has_keys() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hmac_secret {
            let secret = secret.expose();
            if secret.len() < MIN_HMAC_SECRET {
                return Err(KeyError::ShortSecret);
            }
            keys.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for path in &settings.public_keys {
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            keys.push(pem_key(&pem).ok_or_else(|| KeyError::Pem { path: path.clone() })?);
        }
        if let Some(path) = &settings.jwks {
            let text = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|source| KeyError::Jwks {
                path: path.clone(),
                source,
            })?;
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone();
                let fail = |reason: String| KeyError::Jwk {
                    path: path.clone(),
                    kid: kid.clone(),
                    reason,
                };
                let algorithm = jwk_algorithm(jwk).map_err(fail)?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| fail(e.to_string()))?;
                keys.push(Key {
                    kid: kid.clone(),
                    algorithm,
                    key,
                });
            }
        }
        Ok(Some(Self {
            keys,
            leeway: settings.leeway.as_secs(),
            audience: settings.audience.clone(),
            issuer: settings.issuer.clone(),
        }))
    }

    /// Verifies a connection token.
    pub fn connection(&self, token: &str) -> Result<ConnectionClaims, AuthError> {
        let claims = self.verify(token)?;
        Ok(ConnectionClaims {
            user: claims.sub.unwrap_or_default(),
            // Validation refused an `exp` in the past, so the offset is positive.
            expires: claims.exp.map(|exp| {
                let ms = u64::try_from(exp.floor_ms()).unwrap_or(0);
                UNIX_EPOCH + Duration::from_millis(ms)
            }),
        })
    }

    /// Verifies a subscription token: it must name `user` and `channel`.
    pub fn subscription(
        &self,
        token: &str,
        user: &str,
        channel: &ChannelName,
    ) -> Result<(), AuthError> {
        let claims = self.verify(token)?;
        if claims.sub.as_deref() != Some(user) {
            return Err(AuthError::Claims("token is for another user".into()));
        }
        match claims.channel {
            Some(granted) if granted == channel.as_str() => Ok(()),
            Some(_) => Err(AuthError::Claims("token is for another channel".into())),
            None => Err(AuthError::Claims(
                "a subscription token needs a \"channel\" claim".into(),
            )),
        }
    }

    fn verify(&self, token: &str) -> Result<RawClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        // The library reads `exp` and `nbf` as integers only and refuses fractional ones,
        // which RFC 7519 allows: time claims are checked below instead.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["sub"]);
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let mut error = AuthError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation) {
                Ok(data) => {
                    if matches!(data.claims.sub.as_deref(), None | Some("")) {
                        return Err(AuthError::Claims("missing sub".into()));
                    }
                    self.check_times(&data.claims)?;
                    return Ok(data.claims);
                }
                Err(err) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    error = match err.kind() {
                        K::InvalidSignature => AuthError::Signature,
                        K::ExpiredSignature => return Err(AuthError::Expired),
                        K::ImmatureSignature => return Err(AuthError::NotYetValid),
                        K::InvalidAudience => return Err(AuthError::Claims("wrong aud".into())),
                        K::InvalidIssuer => return Err(AuthError::Claims("wrong iss".into())),
                        K::MissingRequiredClaim(claim) => {
                            return Err(AuthError::Claims(format!("missing {claim}")));
                        }
                        K::InvalidClaimFormat(claim) => {
                            return Err(AuthError::Claims(format!("bad {claim}")));
                        }
                        K::Json(err) => {
                            return Err(AuthError::Claims(format!("invalid claims: {err}")));
                        }
                        K::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                        _ => AuthError::Malformed,
                    };
                }
            }
        }
        Err(error)
    }
}

impl Verifier {
    /// `exp` must not have passed and `nbf` must have come, both give or take the leeway.
    fn check_times(&self, claims: &RawClaims) -> Result<(), AuthError> {
        let now = now_ms();
        let leeway = i64::try_from(self.leeway.saturating_mul(1000)).unwrap_or(LATEST_TIME_MS);
        if claims
            .exp
            .is_some_and(|exp| exp.floor_ms() < now.saturating_sub(leeway))
        {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.ceil_ms() > now.saturating_add(leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

/// A PEM public key and the one algorithm it verifies.
fn pem_key(pem: &[u8]) -> Option<Key> {
    let key = |algorithm, key| {
        Some(Key {
            kid: None,
            algorithm,
            key,
        })
    };
    if let Ok(decoding) = DecodingKey::from_rsa_pem(pem) {
        return key(Algorithm::RS256, decoding);
    }
    if let Ok(decoding) = DecodingKey::from_ec_pem(pem) {
        return key(Algorithm::ES256, decoding);
    }
    if let Ok(decoding) = DecodingKey::from_ed_pem(pem) {
        return key(Algorithm::EdDSA, decoding);
    }
    None
}

/// The algorithm a JWK verifies: its `alg` when present, else the one its key type implies.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys do not belong in a JWKS; use --token-hmac-secret".into());
        }
        _ => return Err("unsupported key type".into()),
    };
    let Some(declared) = jwk.common.key_algorithm else {
        return Ok(implied);
    };
    let declared = match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => return Err(format!("algorithm {other:?} is not accepted")),
    };
    if declared.family() != implied.family() {
        return Err(format!("alg {declared:?} does not match the key type"));
    }
    Ok(declared)
}

/// Who a connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<str>,
    /// Proven by a token; false for an anonymous, self-chosen name.
    pub authenticated: bool,
}

/// Who may subscribe to a namespace's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeRule {
    Anyone,
    /// Connections with a verified token.
    Authenticated,
    /// Connections that present a subscription token for the channel.
    Token,
    /// Personal channels: `<namespace>:<id>` only for the authenticated user `<id>`.
    User,
}

/// The rules of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRule {
    pub subscribe: SubscribeRule,
    /// Whether clients may publish (the server API always may).
    pub publish: bool,
    /// History kept for the namespace's channels; `None` uses the server-wide setting.
    pub history: Option<HistoryRetention>,
}

/// Why a command on a channel is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0}")]
    Permission(String),
    #[error("subscription token rejected: {0}")]
    Token(AuthError),
}

/// Per-namespace rules, with the server-wide default for channels without a namespace or in
/// a namespace nobody configured.
#[derive(Clone, Debug)]
pub struct ChannelRules {
    default: NamespaceRule,
    namespaces: HashMap<String, NamespaceRule>,
}

/// The namespace of personal channels unless configured otherwise.
pub const PERSONAL_NAMESPACE: &str = "user";

impl ChannelRules {
    /// `namespaces` overrides the defaults; `user` is personal unless listed.
    pub fn new(default: NamespaceRule, namespaces: HashMap<String, NamespaceRule>) -> Self {
        let mut namespaces = namespaces;
        namespaces
            .entry(PERSONAL_NAMESPACE.to_owned())
            .or_insert(NamespaceRule {
                subscribe: SubscribeRule::User,
                publish: false,
                history: None,
            });
        Self {
            default,
            namespaces,
        }
    }

    /// The rule that applies to `channel`.
    pub fn rule(&self, channel: &ChannelName) -> &NamespaceRule {
        channel
            .namespace()
            .and_then(|ns| self.namespaces.get(ns))
            .unwrap_or(&self.default)
    }

    /// Whether `identity` may subscribe to `channel`, given the subscription token it sent.
    pub fn check_subscribe(
        &self,
        identity: &Identity,
        channel: &ChannelName,
        token: Option<&str>,
        verifier: Option<&Verifier>,
    ) -> Result<(), Denied> {
        match self.rule(channel).subscribe {
            SubscribeRule::Anyone => Ok(()),
            SubscribeRule::Authenticated if identity.authenticated => Ok(()),
            SubscribeRule::Authenticated => Err(Denied::Permission(format!(
                "{channel} is for authenticated users only"
            ))),
            SubscribeRule::User => {
                let owner = channel.as_str().split_once(':').map(|(_, id)| id);
                if identity.authenticated && owner == Some(&*identity.user) {
                    Ok(())
                } else {
                    Err(Denied::Permission(format!(
                        "{channel} is a personal channel of another user"
                    )))
                }
            }
            SubscribeRule::Token => {
                let token = token.ok_or_else(|| {
                    Denied::Permission(format!("{channel} needs a subscription token"))
                })?;
                let verifier = verifier.ok_or(Denied::Token(AuthError::NoKeys))?;
                verifier
                    .subscription(token, &identity.user, channel)
                    .map_err(Denied::Token)
            }
        }
    }

    /// Whether a client may publish in `channel`.
    pub fn check_publish(&self, channel: &ChannelName) -> Result<(), Denied> {
        if self.rule(channel).publish {
            Ok(())
        } else {
            Err(Denied::Permission(format!(
                "clients may not publish in {channel}"
            )))
        }
    }
}

impl Default for ChannelRules {
    fn default() -> Self {
        Self::new(
            NamespaceRule {
                subscribe: SubscribeRule::Anyone,
                publish: true,
                history: None,
            },
            HashMap::new(),
        )
    }
}

/// Parses a namespace rule: `NAME:key=value,…` with keys `subscribe`
/// (`anyone|authenticated|token|user`), `publish` (`true|false`), `history-size` (count) and
/// `history-ttl` (duration). Unset keys take `base`'s values.
pub fn parse_namespace(
    spec: &str,
    base: &NamespaceRule,
) -> Result<(String, NamespaceRule), String> {
    let (name, rules) = spec.split_once(':').unwrap_or((spec, ""));
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(format!(
            "{spec:?}: a namespace rule is NAME:key=value,… with NAME made of letters, digits, _ and -"
        ));
    }
    let mut rule = base.clone();
    let mut size = None;
    let mut ttl = None;
    for pair in rules.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: {pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "subscribe" => {
                rule.subscribe = match value {
                    "anyone" => SubscribeRule::Anyone,
                    "authenticated" => SubscribeRule::Authenticated,
                    "token" => SubscribeRule::Token,
                    "user" => SubscribeRule::User,
                    other => {
                        return Err(format!(
                            "{spec:?}: subscribe={other} is not anyone, authenticated, token or user"
                        ));
                    }
                }
            }
            "publish" => {
                rule.publish = value
                    .parse()
                    .map_err(|_| format!("{spec:?}: publish={value} is not true or false"))?
            }
            "history-size" => {
                size = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("{spec:?}: history-size={value} is not a count"))?,
                )
            }
            "history-ttl" => {
                ttl = Some(
                    humantime::parse_duration(value)
                        .map_err(|e| format!("{spec:?}: history-ttl={value}: {e}"))?,
                )
            }
            other => {
                return Err(format!(
                    "{spec:?}: unknown key {other:?} (subscribe, publish, history-size, history-ttl)"
                ));
            }
        }
    }
    if size.is_some() || ttl.is_some() {
        let inherited = base.history.unwrap_or_default();
        rule.history = Some(HistoryRetention {
            size: size.unwrap_or(inherited.size),
            ttl: ttl.unwrap_or(inherited.ttl),
        });
    }
    Ok((name.to_owned(), rule))
}

/// Milliseconds from now until `at` (0 if it has passed).
pub fn millis_until(at: SystemTime) -> u64 {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(
            v.connection(&sign(json!({"sub": "1", "exp": now() - 10}))),
            Err(AuthError::Expired)
        );
        assert!(
            v.connection(&sign(json!({"sub": "1", "exp": now() - 1})))
                .is_ok()
        );
        assert_eq!(
            v.connection(&sign(json!({"sub": "1", "nbf": now() + 60}))),
            Err(AuthError::NotYetValid)
        );
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
        assert_eq!(
            v.connection(&sign(json!({"sub": "1", "nbf": now() as f64 + 60.25}))),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            v.connection(&sign(json!({"sub": "1", "exp": now() as f64 - 10.5}))),
            Err(AuthError::Expired)
        );
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
    fn forged_and_malformed_tokens_are_rejected() {
        let v = hmac_verifier();
        let good = sign(json!({"sub": "1"}));
        let (head, _) = good.rsplit_once('.').unwrap();
        assert_eq!(
            v.connection(&format!("{head}.AAAA")),
            Err(AuthError::Signature)
        );
        assert_eq!(v.connection("not a token"), Err(AuthError::Malformed));
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "1"}),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
        )
        .unwrap();
        assert_eq!(v.connection(&other), Err(AuthError::Signature));
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
    fn namespace_specs_parse() {
        let base = ChannelRules::default().default;
        let (name, rule) = parse_namespace(
            "news:subscribe=authenticated,publish=false,history-size=5",
            &base,
        )
        .unwrap();
        assert_eq!(name, "news");
        assert_eq!(rule.subscribe, SubscribeRule::Authenticated);
        assert!(!rule.publish);
        assert_eq!(rule.history.unwrap().size, 5);
        assert!(parse_namespace("news:subscribe=nobody", &base).is_err());
        assert!(parse_namespace("bad name:publish=true", &base).is_err());
        assert!(parse_namespace("news:colour=blue", &base).is_err());
    }

    #[test]
    fn personal_channels_belong_to_their_user() {
        let rules = ChannelRules::default();
        let ch = ChannelName::parse("user:42").unwrap();
        let alice = Identity {
            user: "42".into(),
            authenticated: true,
        };
        let impostor = Identity {
            user: "42".into(),
            authenticated: false,
        };
        assert!(rules.check_subscribe(&alice, &ch, None, None).is_ok());
        assert!(rules.check_subscribe(&impostor, &ch, None, None).is_err());
        assert!(rules.check_publish(&ch).is_err());
    }
}
