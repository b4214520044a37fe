//! What nodes tell each other over rallypoint's pub/sub, and how they read it.
//!
//! Pub/sub is at most once: a message is a hint that something changed in the store,
//! never the data itself. A receiver re-reads the store; a lost message only delays what
//! the next message, a member coming up, the database coming back or the catch-up timer
//! brings anyway.

use serde::{Deserialize, Serialize};

/// Topic of [`Appended`]: sent to every member after each committed append.
pub const TOPIC_APPENDED: &str = "event_store.appended";
/// Topic of [`Control`]: subscriptions created, leases released.
pub const TOPIC_CONTROL: &str = "event_store.control";

/// The largest message accepted, in bytes.
const MAX_MESSAGE: usize = 4096;

/// An append was committed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Appended {
    /// The stream.
    pub stream: String,
    /// The global position of its first event.
    pub first: i64,
    /// The global position of its last event.
    pub last: i64,
    /// The last global position at commit.
    pub global_last: i64,
}

/// A change to the subscriptions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// A subscription was created: read the list again.
    Created(String),
    /// A lease was given up: whoever waits for it may take it now.
    Released(String),
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum BadMessage {
    /// Larger than the limit.
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    /// Not the expected JSON.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Positions that cannot be (`first` > `last`, `last` > `global_last`, below 1).
    #[error("inconsistent positions: first {first}, last {last}, global_last {global_last}")]
    Inconsistent {
        /// First.
        first: i64,
        /// Last.
        last: i64,
        /// Global last.
        global_last: i64,
    },
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Decodes and checks an [`Appended`].
pub fn decode_appended(bytes: &[u8]) -> Result<Appended, BadMessage> {
    if bytes.len() > MAX_MESSAGE {
        return Err(BadMessage::TooLarge(bytes.len()));
    }
    let a: Appended = serde_json::from_slice(bytes)?;
    if a.first < 1 || a.first > a.last || a.last > a.global_last {
        return Err(BadMessage::Inconsistent {
            first: a.first,
            last: a.last,
            global_last: a.global_last,
        });
    }
    Ok(a)
}

/// Decodes a [`Control`].
pub fn decode_control(bytes: &[u8]) -> Result<Control, BadMessage> {
    if bytes.len() > MAX_MESSAGE {
        return Err(BadMessage::TooLarge(bytes.len()));
    }
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = Appended {
            stream: "s".into(),
            first: 3,
            last: 4,
            global_last: 9,
        };
        assert_eq!(decode_appended(&encode(&a)).unwrap(), a);
        let c = Control::Released("sub".into());
        assert_eq!(decode_control(&encode(&c)).unwrap(), c);
    }

    #[test]
    fn bad_messages_are_refused() {
        assert!(matches!(
            decode_appended(b"\xff\x00garbage"),
            Err(BadMessage::Malformed(_))
        ));
        assert!(matches!(
            decode_appended(br#"{"stream":"s","first":5,"last":4,"global_last":9}"#),
            Err(BadMessage::Inconsistent { .. })
        ));
        assert!(matches!(
            decode_appended(br#"{"stream":"s","first":1,"last":1,"global_last":1,"x":1}"#),
            Err(BadMessage::Malformed(_))
        ));
        assert!(matches!(
            decode_appended(&vec![b' '; MAX_MESSAGE + 1]),
            Err(BadMessage::TooLarge(_))
        ));
        assert!(decode_control(br#"{"deleted":"x"}"#).is_err());
    }
}
