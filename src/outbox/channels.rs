//! The channels of one connection and where delivery stands in each: a short list while the
//! connection has few, a hash map past that.
//!
//! Most connections hold one to a handful of channels. A `HashMap` allocates room for three
//! entries and its control bytes on the first insert (about 300 bytes for one channel, on
//! every idle connection), and hashes the channel name for every publication fanned out to
//! the connection; a list of a few entries costs exactly what it holds and is searched with a
//! comparison or two (names of one channel share their `Arc`, so most compare by pointer).

use std::collections::HashMap;

use super::delivery::Delivery;
use crate::protocol::ChannelName;

/// Past this many channels the list becomes a map.
const FEW: usize = 8;

#[derive(Debug)]
pub(super) enum Channels {
    Few(Vec<(ChannelName, Delivery)>),
    Many(HashMap<ChannelName, Delivery>),
}

impl Default for Channels {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Channels {
    pub(super) fn get(&self, channel: &ChannelName) -> Option<&Delivery> {
        match self {
            Self::Few(list) => list.iter().find(|(c, _)| c == channel).map(|(_, d)| d),
            Self::Many(map) => map.get(channel),
        }
    }

    pub(super) fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Delivery> {
        match self {
            Self::Few(list) => list.iter_mut().find(|(c, _)| c == channel).map(|(_, d)| d),
            Self::Many(map) => map.get_mut(channel),
        }
    }

    /// Keeps `channel` as this very name (the same `Arc`) where the list holds an equal one,
    /// so that a lookup with it compares pointers. A map hashes the name anyway.
    pub(super) fn share_name(&mut self, channel: &ChannelName) {
        if let Self::Few(list) = self
            && let Some((name, _)) = list.iter_mut().find(|(c, _)| c == channel)
        {
            name.clone_from(channel);
        }
    }

    pub(super) fn contains_key(&self, channel: &ChannelName) -> bool {
        self.get(channel).is_some()
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::Few(list) => list.len(),
            Self::Many(map) => map.len(),
        }
    }

    pub(super) fn keys(&self) -> Vec<ChannelName> {
        match self {
            Self::Few(list) => list.iter().map(|(c, _)| c.clone()).collect(),
            Self::Many(map) => map.keys().cloned().collect(),
        }
    }

    pub(super) fn values_mut(&mut self) -> Box<dyn Iterator<Item = &mut Delivery> + '_> {
        match self {
            Self::Few(list) => Box::new(list.iter_mut().map(|(_, d)| d)),
            Self::Many(map) => Box::new(map.values_mut()),
        }
    }

    /// Sets the channel's delivery, replacing what it had.
    pub(super) fn insert(&mut self, channel: ChannelName, delivery: Delivery) {
        if let Some(slot) = self.get_mut(&channel) {
            *slot = delivery;
            return;
        }
        match self {
            Self::Few(list) if list.len() < FEW => {
                // Exactly one more: a connection on one channel holds one entry, not four.
                list.reserve_exact(1);
                list.push((channel, delivery));
            }
            Self::Few(list) => {
                let mut map: HashMap<_, _> = std::mem::take(list).into_iter().collect();
                map.insert(channel, delivery);
                *self = Self::Many(map);
            }
            Self::Many(map) => {
                map.insert(channel, delivery);
            }
        }
    }

    pub(super) fn remove(&mut self, channel: &ChannelName) -> Option<Delivery> {
        match self {
            Self::Few(list) => {
                let at = list.iter().position(|(c, _)| c == channel)?;
                let (_, delivery) = list.swap_remove(at);
                list.shrink_to_fit();
                Some(delivery)
            }
            Self::Many(map) => map.remove(channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> ChannelName {
        ChannelName::parse(&format!("c{i}")).unwrap()
    }

    fn live(last: u64) -> Delivery {
        Delivery::Live {
            last,
            epoch: "e".into(),
        }
    }

    fn last(delivery: Option<&Delivery>) -> Option<u64> {
        match delivery {
            Some(Delivery::Live { last, .. }) => Some(*last),
            _ => None,
        }
    }

    #[test]
    fn a_list_then_a_map_answer_the_same() {
        let mut channels = Channels::default();
        for i in 0..20 {
            channels.insert(name(i), live(i as u64));
            // Inserting again replaces.
            channels.insert(name(i), live(i as u64 + 100));
            assert_eq!(channels.len(), i + 1);
            assert_eq!(matches!(channels, Channels::Many(_)), i >= FEW);
            for j in 0..=i {
                assert_eq!(last(channels.get(&name(j))), Some(j as u64 + 100));
            }
            assert!(!channels.contains_key(&name(i + 1)));
        }
        assert_eq!(channels.keys().len(), 20);
        for delivery in channels.values_mut() {
            *delivery = live(7);
        }
        assert_eq!(last(channels.get(&name(3))), Some(7));
        assert_eq!(last(channels.remove(&name(3)).as_ref()), Some(7));
        assert!(channels.remove(&name(3)).is_none());
        assert_eq!(channels.len(), 19);
    }

    #[test]
    fn a_short_list_holds_what_it_has_and_gives_it_back() {
        let mut channels = Channels::default();
        channels.insert(name(1), live(1));
        channels.insert(name(2), live(2));
        let Channels::Few(list) = &channels else {
            panic!("a list")
        };
        assert_eq!(list.capacity(), 2);
        assert_eq!(last(channels.remove(&name(1)).as_ref()), Some(1));
        assert_eq!(last(channels.get(&name(2))), Some(2));
        assert!(channels.remove(&name(2)).is_some());
        let Channels::Few(list) = &channels else {
            panic!("a list")
        };
        assert_eq!((list.len(), list.capacity()), (0, 0));
    }

    #[test]
    fn a_shared_name_is_kept_as_that_very_name() {
        let mut channels = Channels::default();
        channels.insert(name(1), live(1));
        let shared = name(1);
        let ptr = |c: &ChannelName| c.as_str().as_ptr();
        assert_ne!(
            ptr(&channels.keys()[0]),
            ptr(&shared),
            "two parses, two names"
        );
        channels.share_name(&shared);
        channels.share_name(&name(2));
        assert_eq!(ptr(&channels.keys()[0]), ptr(&shared));
        assert_eq!((channels.len(), last(channels.get(&shared))), (1, Some(1)));
    }
}
