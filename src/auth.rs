//! Who a connection is, and what it may do: JWT verification and the channel permissions.
//!
//! ## Tokens
//! A [`Verifier`] holds the keys the operator configured: an HMAC secret (HS256), PEM public
//! keys (RS256 for RSA, ES256 for P-256, EdDSA for Ed25519) and a JWKS file. Each key accepts
//! exactly one algorithm, fixed by the key itself, so a token cannot choose how it is checked:
//! `alg: none` does not parse, and an HS256 token "signed" with an RSA public key finds no
//! HMAC key. `sub` is required and becomes the user id; `exp` and `nbf` are enforced with a
//! small leeway when present; a present `exp`, `nbf` or `iat` that is not a number (`null`, a
//! string) makes the token malformed; `aud` and `iss` when configured.
//!
//! ## Permissions
//! [`ChannelRules`] applies each namespace's [`SubscribeRule`] and `publish` option (from
//! [`Namespaces`], where every per-namespace option lives). The `user` namespace is personal
//! by default: `user:<id>` is readable only by the authenticated user `<id>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{Namespaces, SubscribeRule, TokenSettings};
use crate::protocol::ChannelName;

/// Why the configured keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // Each source follows in the printed chain: not repeated here.
    #[error("cannot read {path}")]
    Read {
        /// `token-public-key` or `token-jwks`.
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PEM RSA, P-256 or Ed25519 public key")]
    Pem { path: PathBuf },
    #[error("{path}: not a JWKS document")]
    Jwks {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: key {kid:?} cannot be used")]
    Jwk {
        path: PathBuf,
        kid: Option<String>,
        #[source]
        problem: JwkProblem,
    },
    #[error("--token-hmac-secret must be at least 32 bytes long")]
    ShortSecret,
}

impl KeyError {
    /// The setting at fault, by its long flag name.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Read { flag, .. } => flag,
            Self::Pem { .. } => "token-public-key",
            Self::Jwks { .. } | Self::Jwk { .. } => "token-jwks",
            Self::ShortSecret => "token-hmac-secret",
        }
    }
}

/// Why one key of a JWKS cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwkProblem {
    #[error("curve {0:?} is not supported")]
    Curve(EllipticCurve),
    #[error("symmetric keys do not belong in a JWKS; use --token-hmac-secret")]
    Symmetric,
    #[error("unsupported key type")]
    KeyType,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(KeyAlgorithm),
    #[error("alg {0:?} does not match the key type")]
    Mismatch(Algorithm),
    #[error("the key does not decode: {0}")]
    Decode(#[source] jsonwebtoken::errors::Error),
}

/// Why a token was rejected. The message reaches the client (as a close reason or an error
/// reply), so it says what is wrong without echoing the token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    #[error("token signature does not verify")]
    Signature,
    #[error("token claims rejected: {0}")]
    Claims(#[from] ClaimError),
    #[error("tokens are not accepted: the server has no token key configured")]
    NoKeys,
}

/// Which claim of a correctly signed token is wrong.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("missing {0}")]
    Missing(String),
    #[error("bad {0}")]
    Format(String),
    #[error("invalid claims: {0}")]
    Invalid(#[source] Arc<serde_json::Error>),
    #[error("wrong aud")]
    Audience,
    #[error("wrong iss")]
    Issuer,
    #[error("token is for another user")]
    OtherUser,
    #[error("token is for another channel")]
    OtherChannel,
    #[error("a subscription token needs a \"channel\" claim")]
    NoChannel,
}

/// A verified connection token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionClaims {
    /// `sub`: the user id.
    pub user: String,
    pub expires: Option<SystemTime>,
    /// `info`: what the application says about the user (shown in presence).
    pub info: Option<Arc<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct RawClaims {
    // Optional here so that a token without it is refused as "missing sub", not as JSON.
    #[serde(default)]
    sub: Option<String>,
    // A time claim that is present must be a NumericDate: `null` is not "no expiry".
    #[serde(default, deserialize_with = "present_time")]
    exp: Option<NumericDate>,
    #[serde(default, deserialize_with = "present_time")]
    nbf: Option<NumericDate>,
    /// `iat`, checked for its type only: a token issued "in the future" is merely the
    /// issuer's clock skew.
    #[serde(rename = "iat", default, deserialize_with = "present_time")]
    _iat: Option<NumericDate>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    info: Option<serde_json::Value>,
}

/// A JWT time (RFC 7519 §2): seconds since 1970, integer or fractional, kept as whole
/// milliseconds. `exp` is rounded down and `nbf` up, so rounding never widens a token's life;
/// values beyond [`LATEST_TIME_MS`] are clamped there, so no client-chosen number reaches time
/// arithmetic that could overflow.
#[derive(Clone, Copy, Debug, PartialEq)]
struct NumericDate(f64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let refuse = || serde::de::Error::custom("exp, nbf and iat must be numbers of seconds");
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Number(seconds) => seconds
                .as_f64()
                .filter(|s| s.is_finite())
                .map(NumericDate)
                .ok_or_else(refuse),
            _ => Err(refuse()),
        }
    }
}

/// A time claim that is there: a number, never `null` (absent claims take the field's default).
fn present_time<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<NumericDate>, D::Error> {
    NumericDate::deserialize(deserializer).map(Some)
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

fn read(flag: &'static str, path: &PathBuf) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        flag,
        path: path.clone(),
        source,
    })
}

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
            let pem = read("token-public-key", path)?;
            keys.push(pem_key(&pem).ok_or_else(|| KeyError::Pem { path: path.clone() })?);
        }
        if let Some(path) = &settings.jwks {
            let set: JwkSet =
                serde_json::from_slice(&read("token-jwks", path)?).map_err(|source| {
                    KeyError::Jwks {
                        path: path.clone(),
                        source,
                    }
                })?;
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone();
                let fail = |problem| KeyError::Jwk {
                    path: path.clone(),
                    kid: kid.clone(),
                    problem,
                };
                let algorithm = jwk_algorithm(jwk).map_err(fail)?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| fail(JwkProblem::Decode(e)))?;
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
            info: claims.info.map(Arc::new),
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
            return Err(ClaimError::OtherUser.into());
        }
        match claims.channel {
            Some(granted) if granted == channel.as_str() => Ok(()),
            Some(_) => Err(ClaimError::OtherChannel.into()),
            None => Err(ClaimError::NoChannel.into()),
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        // The library reads `exp` and `nbf` as integers only and refuses fractional ones,
        // which RFC 7519 allows: time claims are checked by `check_times` instead.
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
        validation
    }

    fn verify(&self, token: &str) -> Result<RawClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let candidates = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            });
        let validation = self.validation(header.alg);
        let mut error = AuthError::Algorithm(header.alg);
        for key in candidates {
            match jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation) {
                Ok(data) => {
                    if matches!(data.claims.sub.as_deref(), None | Some("")) {
                        return Err(ClaimError::Missing("sub".into()).into());
                    }
                    self.check_times(&data.claims)?;
                    return Ok(data.claims);
                }
                Err(err) => match rejection(err.kind(), header.alg) {
                    // Another key of the same algorithm may still verify it.
                    AuthError::Signature => error = AuthError::Signature,
                    final_error => return Err(final_error),
                },
            }
        }
        Err(error)
    }

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

/// What the library's refusal means to the client.
fn rejection(kind: &jsonwebtoken::errors::ErrorKind, algorithm: Algorithm) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => AuthError::Signature,
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAudience => ClaimError::Audience.into(),
        K::InvalidIssuer => ClaimError::Issuer.into(),
        K::MissingRequiredClaim(claim) => ClaimError::Missing(claim.clone()).into(),
        K::InvalidClaimFormat(claim) => ClaimError::Format(claim.clone()).into(),
        K::Json(err) => ClaimError::Invalid(err.clone()).into(),
        K::InvalidAlgorithm => AuthError::Algorithm(algorithm),
        _ => AuthError::Malformed,
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
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, JwkProblem> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref other => return Err(JwkProblem::Curve(other.clone())),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => return Err(JwkProblem::Symmetric),
        _ => return Err(JwkProblem::KeyType),
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
        other => return Err(JwkProblem::Algorithm(other)),
    };
    if declared.family() != implied.family() {
        return Err(JwkProblem::Mismatch(declared));
    }
    Ok(declared)
}

/// Who a connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<str>,
    /// Proven by a token; false for an anonymous, self-chosen name.
    pub authenticated: bool,
    /// The token's `info` claim.
    pub info: Option<Arc<serde_json::Value>>,
}

/// Why a command on a channel is refused.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Denied {
    #[error("{0} is for authenticated users only")]
    AuthenticatedOnly(ChannelName),
    #[error("{0} is a personal channel of another user")]
    OtherUsersChannel(ChannelName),
    #[error("{0} needs a subscription token")]
    NeedsToken(ChannelName),
    #[error("subscription token rejected: {0}")]
    Token(#[source] AuthError),
    #[error("clients may not publish in {0}")]
    NoPublishing(ChannelName),
}

/// Who may subscribe and publish where, by namespace.
#[derive(Clone, Debug)]
pub struct ChannelRules {
    namespaces: Arc<Namespaces>,
}

impl ChannelRules {
    pub fn new(namespaces: Arc<Namespaces>) -> Self {
        Self { namespaces }
    }

    /// Whether `identity` may subscribe to `channel`, given the subscription token it sent.
    pub fn check_subscribe(
        &self,
        identity: &Identity,
        channel: &ChannelName,
        token: Option<&str>,
        verifier: Option<&Verifier>,
    ) -> Result<(), Denied> {
        match self.namespaces.get(channel.namespace()).subscribe {
            SubscribeRule::Anyone => Ok(()),
            SubscribeRule::Authenticated if identity.authenticated => Ok(()),
            SubscribeRule::Authenticated => Err(Denied::AuthenticatedOnly(channel.clone())),
            SubscribeRule::User => {
                let owner = channel.as_str().split_once(':').map(|(_, id)| id);
                if identity.authenticated && owner == Some(&*identity.user) {
                    Ok(())
                } else {
                    Err(Denied::OtherUsersChannel(channel.clone()))
                }
            }
            SubscribeRule::Token => {
                let token = token.ok_or_else(|| Denied::NeedsToken(channel.clone()))?;
                let verifier = verifier.ok_or(Denied::Token(AuthError::NoKeys))?;
                verifier
                    .subscription(token, &identity.user, channel)
                    .map_err(Denied::Token)
            }
        }
    }

    /// Everything configured for `channel`'s namespace.
    pub fn options(&self, channel: &ChannelName) -> &crate::config::NamespaceOptions {
        self.namespaces.get(channel.namespace())
    }

    /// Whether a client may publish in `channel`.
    pub fn check_publish(&self, channel: &ChannelName) -> Result<(), Denied> {
        if self.namespaces.get(channel.namespace()).publish {
            Ok(())
        } else {
            Err(Denied::NoPublishing(channel.clone()))
        }
    }
}

/// Milliseconds from now until `at` (0 if it has passed).
pub fn millis_until(at: SystemTime) -> u64 {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
