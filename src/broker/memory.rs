//! MemoryBroker: offsets and delivery inside one process, the default when no Redis is
//! configured.
//!
//! Each channel has a stream (last offset, epoch) behind its own lock; a publish takes that
//! lock, assigns the next offset and delivers while holding it, which is what keeps a
//! channel's deliveries in offset order without a global lock. Limits: nothing survives a
//! restart (a restarted process starts new epochs), and one small stream entry stays per
//! channel ever used.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde_json::value::RawValue;

use super::{Broker, BrokerError, Deliver, new_epoch};
use crate::protocol::{ChannelName, ClientInfo, Publication, StreamPosition};

/// The in-process broker.
pub struct MemoryBroker {
    streams: Mutex<HashMap<ChannelName, Arc<Mutex<Stream>>>>,
    deliver: Arc<dyn Deliver>,
}

#[derive(Debug)]
struct Stream {
    offset: u64,
    epoch: Arc<str>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new(deliver: Arc<dyn Deliver>) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            deliver,
        }
    }

    fn stream(&self, channel: &ChannelName) -> Arc<Mutex<Stream>> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Stream {
                    offset: 0,
                    epoch: new_epoch(),
                }))
            })
            .clone()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        channel: &ChannelName,
        data: Arc<RawValue>,
        info: ClientInfo,
    ) -> Result<StreamPosition, BrokerError> {
        let stream = self.stream(channel);
        let mut stream = stream.lock().unwrap_or_else(PoisonError::into_inner);
        stream.offset += 1;
        let publication = Publication {
            channel: channel.clone(),
            offset: stream.offset,
            epoch: stream.epoch.clone(),
            data,
            info,
        };
        self.deliver.deliver(&publication);
        Ok(StreamPosition {
            offset: stream.offset,
            epoch: stream.epoch.clone(),
        })
    }

    async fn subscribe(&self, _channel: &ChannelName) -> Result<(), BrokerError> {
        // Every publication is delivered locally anyway.
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &ChannelName) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn position(&self, channel: &ChannelName) -> Result<StreamPosition, BrokerError> {
        let stream = self.stream(channel);
        let stream = stream.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(StreamPosition {
            offset: stream.offset,
            epoch: stream.epoch.clone(),
        })
    }
}
