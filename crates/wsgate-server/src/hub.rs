//! Rooms for `channel` routes: one publish is serialised once into a shared frame, handed to
//! every member by reference count, never copied per subscriber.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;
use wsgate_handshake::frame::OpCode;

/// A published message, shared by every member that receives it.
pub struct Broadcast {
    /// The publishing connection, so `deliver_to_sender = false` can skip it.
    pub from: u64,
    /// The complete server frame (header and payload), written as is by every member.
    pub frame: Bytes,
    /// Payload bytes, for the metrics.
    pub payload_len: usize,
}

impl Broadcast {
    /// Serialises a message once, for all members.
    pub fn new(from: u64, opcode: OpCode, payload: &[u8]) -> Broadcast {
        Broadcast {
            from,
            frame: crate::out::frame_bytes(opcode, payload),
            payload_len: payload.len(),
        }
    }
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Arc<Broadcast>>,
}

#[derive(Default)]
struct Room {
    members: RwLock<Vec<Member>>,
}

/// All rooms of all channel routes; a room exists while it has members.
#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
}

/// A connection's place in a room; leaving happens on drop.
pub struct Membership {
    hub: Arc<Hub>,
    key: String,
    room: Arc<Room>,
    id: u64,
}

impl Hub {
    /// Joins (creating if needed) the room `key`; `depth` bounds the member's undelivered queue.
    pub fn join(
        self: &Arc<Hub>,
        key: String,
        id: u64,
        depth: usize,
    ) -> (Membership, mpsc::Receiver<Arc<Broadcast>>) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        // Joining under the hub lock means a room cannot be removed between lookup and joining.
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(key.clone()).or_default().clone();
        room.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Member { id, tx });
        drop(rooms);
        (
            Membership {
                hub: self.clone(),
                key,
                room,
                id,
            },
            rx,
        )
    }

    /// Number of rooms with members (for tests and metrics).
    pub fn room_count(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Membership {
    /// Hands `msg` to every member's queue; members whose queue is full are dropped from the
    /// room (their connection then closes with 1013) instead of making everyone wait.
    pub fn publish(&self, msg: Broadcast) {
        let msg = Arc::new(msg);
        let mut slow = Vec::new();
        {
            let members = self.room.members.read().unwrap_or_else(|p| p.into_inner());
            for m in members.iter() {
                if let Err(mpsc::error::TrySendError::Full(_)) = m.tx.try_send(msg.clone()) {
                    slow.push(m.id);
                }
            }
        }
        if !slow.is_empty() {
            let mut members = self.room.members.write().unwrap_or_else(|p| p.into_inner());
            members.retain(|m| !slow.contains(&m.id));
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = self.hub.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let empty = {
            let mut members = self.room.members.write().unwrap_or_else(|p| p.into_inner());
            members.retain(|m| m.id != self.id);
            members.is_empty()
        };
        if empty {
            rooms.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: u64, text: &'static str) -> Broadcast {
        Broadcast::new(from, OpCode::Text, text.as_bytes())
    }

    #[tokio::test]
    async fn rooms_are_separate_and_shared_payloads_are_not_copied() {
        let hub = Arc::new(Hub::default());
        let (a, mut ra) = hub.join("lobby".into(), 1, 8);
        let (_b, mut rb) = hub.join("lobby".into(), 2, 8);
        let (_c, mut rc) = hub.join("other".into(), 3, 8);
        a.publish(msg(1, "hi"));
        let (x, y) = (ra.recv().await.unwrap(), rb.recv().await.unwrap());
        assert!(Arc::ptr_eq(&x, &y), "one allocation for all members");
        assert_eq!(&y.frame[..], b"\x81\x02hi");
        assert!(rc.try_recv().is_err());
        assert_eq!(hub.room_count(), 2);
    }

    #[tokio::test]
    async fn empty_rooms_vanish_and_slow_members_are_dropped() {
        let hub = Arc::new(Hub::default());
        let (a, _ra) = hub.join("r".into(), 1, 8);
        let (slow, mut rs) = hub.join("r".into(), 2, 1);
        a.publish(msg(1, "1"));
        a.publish(msg(1, "2"));
        assert!(rs.recv().await.is_some());
        assert!(
            rs.recv().await.is_none(),
            "slow member was dropped from the room"
        );
        drop(slow);
        drop(a);
        assert_eq!(hub.room_count(), 0);
    }
}
