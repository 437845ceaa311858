//! Frame: encoded bytes that many connections share.
//!
//! A publication is encoded once on a node, and every subscriber's queue holds the same
//! [`Frame`]: cloning one is a reference-count increment, never a copy or a re-encode. A frame
//! that may go out compressed also carries a slot for its compressed form, made by the first
//! connection that needs it and shared by every other: one compression per publication on a
//! node, however many subscribers.
//!
//! Frames are always UTF-8 text (they are built from strings), so a message transport may send
//! one as a text message without checking it again. This module is a leaf: it names no other
//! module of the crate, and no transport library's types.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Encoded UTF-8 text, shared.
#[derive(Clone, Debug)]
pub struct Frame {
    text: Bytes,
    deflated: Option<Arc<OnceLock<Option<Bytes>>>>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Frame {}

impl Frame {
    pub const fn from_static(text: &'static str) -> Self {
        Self {
            text: Bytes::from_static(text.as_bytes()),
            deflated: None,
        }
    }

    /// A frame that may go out compressed (a publication, on a channel that compresses).
    pub fn compressible(text: String) -> Self {
        Self {
            text: Bytes::from(text),
            deflated: Some(Arc::default()),
        }
    }

    /// The text. Frames are built from strings only, so this never fails in practice; the
    /// check keeps it honest without `unsafe`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// Payload length in bytes: what a queued frame costs.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The compressed form, made with `deflate` by the first caller; `None` if this frame is
    /// not to be compressed, or compressing did not make it smaller.
    pub fn deflated(&self, deflate: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<Bytes> {
        let slot = self.deflated.as_ref()?;
        slot.get_or_init(|| deflate(&self.text)).clone()
    }

    /// The shared bytes, for the transport (UTF-8 text), borrowed: copied, or cloned where
    /// they are kept.
    pub fn shared(&self) -> &Bytes {
        &self.text
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self {
            text: Bytes::from(text),
            deflated: None,
        }
    }
}

/// The whole messages a codec made of one item, for a message transport (a WebSocket): one
/// almost always, so the first lives inline and a single message allocates nothing.
#[derive(Debug, Default)]
pub struct Messages {
    first: Option<Frame>,
    rest: Vec<Frame>,
}

impl Messages {
    pub fn push(&mut self, frame: Frame) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(frame);
        } else {
            self.rest.push(frame);
        }
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IntoIterator for Messages {
    type Item = Frame;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Frame>, std::vec::IntoIter<Frame>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_bytes_and_the_compressed_form() {
        let frame = Frame::compressible("x".repeat(100));
        let other = frame.clone();
        assert_eq!(frame.as_bytes().as_ptr(), other.as_bytes().as_ptr());
        let mut calls = 0;
        let first = frame.deflated(|_| {
            calls += 1;
            Some(Bytes::from_static(b"z"))
        });
        let second = other.deflated(|_| {
            calls += 1;
            None
        });
        assert_eq!(
            (first, second, calls),
            (Some("z".into()), Some("z".into()), 1)
        );
        assert_eq!(Frame::from("a".to_owned()).deflated(|_| None), None);
    }

    #[test]
    fn messages_keep_their_order() {
        let mut messages = Messages::default();
        for text in ["a", "b", "c"] {
            messages.push(Frame::from(text.to_owned()));
        }
        assert_eq!(messages.len(), 3);
        let texts: Vec<String> = messages
            .into_iter()
            .map(|f| f.as_str().to_owned())
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);
    }
}
