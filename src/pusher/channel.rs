//! Pusher channel names: their kinds (public, `private-`, `presence-`, `private-encrypted-`,
//! `cache-`, and the sign-in's `#server-to-user-`), and where each lives among Tidings'
//! channels.
//!
//! Each app's channels are its own: `news` of app `7` is the Tidings channel `pusher:7/news`
//! (`pusher-presence:7/…` for presence channels, whose namespace has presence on). Pusher
//! allows `,` `;` and (for the server-to-user channel) `#`, which Tidings' names do not, so
//! they are escaped with `=`: `=` is `==`, `,` is `=c`, `;` is `=s`, `#` is `=h`. Native
//! clients could subscribe to those names, but the channel rules of the two namespaces keep
//! them out ([`NAMESPACE`], [`PRESENCE_NAMESPACE`]).

use crate::protocol::ChannelName;

/// The namespace of every Pusher app's channels but presence ones.
pub const NAMESPACE: &str = "pusher";
/// The namespace of Pusher presence channels (presence on).
pub const PRESENCE_NAMESPACE: &str = "pusher-presence";
/// Pusher's longest channel name.
pub const MAX_LEN: usize = 164;

/// What a channel's name makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub access: Access,
    /// `cache-`: a subscriber gets the last event at once, or `pusher:cache_miss`.
    pub cache: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone may subscribe.
    Public,
    /// `private-`: a subscription signed by the app's auth endpoint.
    Private,
    /// `private-encrypted-`: signed like a private one; the payloads are opaque to the server.
    Encrypted,
    /// `presence-`: signed, with the member's `channel_data`.
    Presence,
    /// `#server-to-user-ID`: the signed-in user's own channel, subscribed by the sign-in.
    ServerToUser,
}

impl Kind {
    /// Whether a subscription must be signed (and client events are allowed).
    pub fn is_signed(self) -> bool {
        !matches!(self.access, Access::Public | Access::ServerToUser)
    }
}

/// Why a name is not a Pusher channel this server can hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} characters long; the limit is {MAX_LEN}")]
    TooLong(usize),
    #[error(
        "channel name contains {0:?}; allowed are letters, digits and _ - = @ , . ; \
         (and # in #server-to-user-)"
    )]
    Character(char),
}

/// The kind of `name`, if it is a valid Pusher channel name.
pub fn kind(name: &str) -> Result<Kind, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let length = name.chars().count();
    if length > MAX_LEN {
        return Err(NameError::TooLong(length));
    }
    let server_to_user = name.starts_with("#server-to-user-");
    let body = if server_to_user { &name[1..] } else { name };
    if let Some(bad) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-=@,.;".contains(*c)))
    {
        return Err(NameError::Character(bad));
    }
    if server_to_user {
        return Ok(Kind {
            access: Access::ServerToUser,
            cache: false,
        });
    }
    let (access, rest) = if let Some(rest) = name.strip_prefix("private-encrypted-") {
        (Access::Encrypted, rest)
    } else if let Some(rest) = name.strip_prefix("private-") {
        (Access::Private, rest)
    } else if let Some(rest) = name.strip_prefix("presence-") {
        (Access::Presence, rest)
    } else {
        (Access::Public, name)
    };
    Ok(Kind {
        access,
        cache: rest.starts_with("cache-"),
    })
}

/// The Tidings channel of app `app`'s channel `name` (a valid Pusher name), or `None` when
/// escaped it would be longer than a Tidings channel may be.
pub fn internal(app: &str, name: &str, kind: Kind) -> Option<ChannelName> {
    let namespace = if kind.access == Access::Presence {
        PRESENCE_NAMESPACE
    } else {
        NAMESPACE
    };
    let mut internal = String::with_capacity(namespace.len() + app.len() + name.len() + 8);
    internal.push_str(namespace);
    internal.push(':');
    internal.push_str(app);
    internal.push('/');
    for c in name.chars() {
        match c {
            '=' => internal.push_str("=="),
            ',' => internal.push_str("=c"),
            ';' => internal.push_str("=s"),
            '#' => internal.push_str("=h"),
            c => internal.push(c),
        }
    }
    ChannelName::parse(&internal).ok()
}

/// The app and Pusher name of a Tidings channel made by [`internal`]; `None` for any other.
pub fn external(channel: &ChannelName) -> Option<(&str, String)> {
    let (namespace, rest) = channel.as_str().split_once(':')?;
    if namespace != NAMESPACE && namespace != PRESENCE_NAMESPACE {
        return None;
    }
    let (app, escaped) = rest.split_once('/')?;
    let mut name = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '=' {
            name.push(c);
            continue;
        }
        name.push(match chars.next()? {
            '=' => '=',
            'c' => ',',
            's' => ';',
            'h' => '#',
            _ => return None,
        });
    }
    Some((app, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_says_its_kind() {
        let cases = [
            ("news", Access::Public, false),
            ("cache-prices", Access::Public, true),
            ("private-orders", Access::Private, false),
            ("private-cache-orders", Access::Private, true),
            ("private-encrypted-dm", Access::Encrypted, false),
            ("private-encrypted-cache-dm", Access::Encrypted, true),
            ("presence-room", Access::Presence, false),
            ("presence-cache-room", Access::Presence, true),
            ("#server-to-user-42", Access::ServerToUser, false),
            ("a,b;c=d@e.f_g-h", Access::Public, false),
        ];
        for (name, access, cache) in cases {
            assert_eq!(kind(name), Ok(Kind { access, cache }), "{name}");
        }
        assert!(!kind("news").unwrap().is_signed());
        assert!(kind("private-encrypted-dm").unwrap().is_signed());
    }

    #[test]
    fn a_bad_name_is_refused_with_the_reason() {
        assert_eq!(kind(""), Err(NameError::Empty));
        assert_eq!(kind("a b"), Err(NameError::Character(' ')));
        assert_eq!(kind("news/1"), Err(NameError::Character('/')));
        assert_eq!(kind("#news"), Err(NameError::Character('#')));
        assert_eq!(kind("pusher:x"), Err(NameError::Character(':')));
        assert_eq!(kind("é"), Err(NameError::Character('é')));
        assert_eq!(kind(&"x".repeat(165)), Err(NameError::TooLong(165)));
        assert!(kind(&"x".repeat(164)).is_ok());
    }

    #[test]
    fn every_name_maps_to_its_own_channel_and_back() {
        let names = [
            "news",
            "a,b;c",
            "x==c",
            "=c",
            "presence-room",
            "#server-to-user-7",
        ];
        let mut seen = std::collections::HashSet::new();
        for app in ["1", "2"] {
            for name in names {
                let channel = internal(app, name, kind(name).unwrap()).unwrap();
                assert!(seen.insert(channel.clone()), "{channel} twice");
                assert_eq!(
                    external(&channel),
                    Some((app, name.to_owned())),
                    "{channel}"
                );
            }
        }
        let presence = internal("1", "presence-room", kind("presence-room").unwrap()).unwrap();
        assert_eq!(presence.namespace(), Some(PRESENCE_NAMESPACE));
        assert_eq!(presence.as_str(), "pusher-presence:1/presence-room");
        for foreign in ["news", "chat:lobby", "pusher:1/bad=x", "pusher:noslash"] {
            let channel = ChannelName::parse(foreign).unwrap();
            assert_eq!(external(&channel), None, "{foreign}");
        }
        // 164 commas escape to 328 bytes: past what a Tidings name may hold.
        let commas = ",".repeat(164);
        assert_eq!(internal("1", &commas, kind(&commas).unwrap()), None);
    }
}
