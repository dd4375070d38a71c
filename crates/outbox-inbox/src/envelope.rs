//! What the inbox needs to know about a message, read from the headers
//! outboxd writes, whatever the transport.

use outbox_core::{header, Lsn, Position};

use crate::error::HeaderError;

/// The identity of one delivered message: its event id (the dedupe key) and,
/// for outboxd's events, the aggregate and position the aggregate guard
/// compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The event id: outboxd's `id` header (the outbox row's id).
    pub id: String,
    /// The aggregate: outboxd's record key (the outbox row's aggregate id).
    pub aggregate_id: Option<String>,
    /// Commit LSN and index in the transaction (`outboxd.lsn`, `outboxd.index`).
    pub position: Option<Position>,
}

impl Envelope {
    /// A message known by its id only (no aggregate guard applies).
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            aggregate_id: None,
            position: None,
        }
    }

    /// With its aggregate.
    pub fn with_aggregate(mut self, aggregate_id: impl Into<String>) -> Self {
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    /// With its position.
    pub fn with_position(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// Reads the headers outboxd writes: `id` (required), `outboxd.lsn` and
    /// `outboxd.index` (together, or neither: messages from other producers
    /// have no position). `key` is the record key (Kafka) or routing key,
    /// which outboxd sets to the aggregate id; an empty or non-UTF-8 key
    /// means no aggregate. The first header of a name wins.
    pub fn from_headers<'h, I>(headers: I, key: Option<&[u8]>) -> Result<Self, HeaderError>
    where
        I: IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    {
        let (mut id, mut lsn, mut index) = (None, None, None);
        for (name, value) in headers {
            let slot = match name {
                header::ID => &mut id,
                header::LSN => &mut lsn,
                header::INDEX => &mut index,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.unwrap_or_default());
            }
        }
        let text = |name: &'static str, bytes: &'h [u8]| {
            std::str::from_utf8(bytes).map_err(|_| HeaderError::NotUtf8 { name })
        };
        let id = text(header::ID, id.ok_or(HeaderError::MissingId)?)?;
        if id.is_empty() {
            return Err(HeaderError::EmptyId);
        }
        let position = match (lsn, index) {
            (None, None) => None,
            (Some(lsn), Some(index)) => {
                let lsn = text(header::LSN, lsn)?;
                let index = text(header::INDEX, index)?;
                let commit_lsn: Lsn = lsn.parse().map_err(|_| HeaderError::InvalidLsn {
                    value: lsn.to_owned(),
                })?;
                let index: u64 = index.parse().map_err(|_| HeaderError::InvalidIndex {
                    value: index.to_owned(),
                })?;
                Some(Position { commit_lsn, index })
            }
            _ => return Err(HeaderError::HalfPosition),
        };
        let aggregate_id = key
            .filter(|k| !k.is_empty())
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned);
        Ok(Self {
            id: id.to_owned(),
            aggregate_id,
            position,
        })
    }
}
