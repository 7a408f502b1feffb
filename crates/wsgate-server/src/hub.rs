//! Rooms for `channel` routes, each a short log of published frames.
//!
//! A publish serialises its message once into a shared frame and appends it to the room's log
//! under the room's own lock (no lock that every publish in the server takes). Members keep a
//! cursor into the log and are woken only when they have caught up and gone to sleep: a member
//! is woken at most once per batch of publishes, however many arrived, and then takes everything
//! past its cursor at once, to write it with one (vectored) call. Nothing is sent through a
//! per-member channel, and a frame is never copied per member (each member holds a reference
//! only while its write is in flight).
//!
//! The log keeps what the slowest member has not taken yet, and no more than
//! [`MAX_LAG_MESSAGES`] messages or [`MAX_LAG_BYTES`] bytes: a member that falls further behind
//! finds its cursor past the log's start and is closed (1013), so it never holds the room back
//! or makes its memory grow.

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use wsgate_handshake::frame::OpCode;

/// Messages a member may fall behind the newest before it is closed as too slow.
pub const MAX_LAG_MESSAGES: u64 = 1024;
/// Bytes of frames a member may fall behind the newest before it is closed as too slow.
pub const MAX_LAG_BYTES: u64 = 16 << 20;
/// Past this many entries (or [`TRIM_BYTES`]), a publish drops what every member has taken.
const TRIM_ENTRIES: usize = 32;
/// See [`TRIM_ENTRIES`].
const TRIM_BYTES: u64 = 64 * 1024;

/// One published message in the log.
struct Entry {
    /// The complete server frame, written as is by every member.
    frame: Bytes,
    /// The publishing connection, so `deliver_to_sender = false` can skip it.
    from: u64,
    /// Payload bytes, for the metrics.
    payload_len: usize,
    /// Frame bytes published in the room before this entry, for the byte bound.
    offset: u64,
}

/// A member's place in the log.
struct Slot {
    /// The connection, or 0 for a free slot.
    id: u64,
    /// The sequence number of the next entry it takes.
    cursor: u64,
    /// Set while the member sleeps, caught up; taken (and woken) by the next publish.
    waker: Option<Waker>,
}

/// A room's state, behind its lock.
#[derive(Default)]
struct Log {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    /// Frame bytes ever published in the room (the next entry's offset).
    published_bytes: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    members: usize,
    /// Slots whose member sleeps (their `waker` is set).
    waiting: Vec<usize>,
}

impl Log {
    fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn offset_of(&self, seq: u64) -> u64 {
        match self.entries.get((seq - self.base) as usize) {
            Some(e) => e.offset,
            None => self.published_bytes,
        }
    }

    /// Drops entries every member has taken and, past the bounds, entries some member has not:
    /// that member is then too slow.
    fn trim(&mut self) {
        let front_offset = self
            .entries
            .front()
            .map_or(self.published_bytes, |e| e.offset);
        if self.entries.len() > TRIM_ENTRIES || self.published_bytes - front_offset > TRIM_BYTES {
            let head = self.head();
            let min = self
                .slots
                .iter()
                .filter(|s| s.id != 0)
                .map(|s| s.cursor)
                .min()
                .unwrap_or(head);
            while self.base < min && !self.entries.is_empty() {
                self.entries.pop_front();
                self.base += 1;
            }
        }
        while let Some(front) = self.entries.front() {
            let over_count = self.entries.len() as u64 > MAX_LAG_MESSAGES;
            let over_bytes = self.published_bytes - front.offset > MAX_LAG_BYTES;
            if !(over_count || over_bytes) {
                break;
            }
            self.entries.pop_front();
            self.base += 1;
        }
    }
}

/// A room: the log of one channel path.
#[derive(Default)]
struct Room {
    log: Mutex<Log>,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All rooms of all channel routes; a room exists while it has members. Its lock is taken to
/// join and leave, never to publish.
#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// `wsgate_channel_rooms` and `wsgate_channel_members`, moved on join and leave only.
    room_gauge: Gauge,
    member_gauge: Gauge,
}

/// A connection's place in a room; leaving happens on drop.
pub struct Membership {
    hub: Arc<Hub>,
    key: String,
    room: Arc<Room>,
    slot: usize,
    id: u64,
}

/// What [`Membership::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Frames were added (possibly none, when all were the member's own and skipped): call
    /// again for more.
    Frames {
        /// Messages taken.
        messages: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// Caught up; the waker will be woken by the next publish.
    Idle,
    /// The log dropped messages this member had not taken: close it with 1013.
    TooSlow,
}

thread_local! {
    /// Wakers collected under a room's lock and woken after it is released; the capacity stays
    /// with the thread, so waking allocates nothing.
    static TO_WAKE: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

impl Hub {
    /// A hub that keeps the metrics' room and member gauges.
    pub fn counted(metrics: &crate::metrics::Metrics) -> Hub {
        Hub {
            rooms: Mutex::default(),
            room_gauge: metrics.channel_rooms.clone(),
            member_gauge: metrics.channel_members.clone(),
        }
    }

    /// Joins (creating if needed) the room `key` as connection `id` (not 0). A member receives
    /// what is published after it joined.
    pub fn join(self: &Arc<Hub>, key: String, id: u64) -> Membership {
        // Joining under the hub lock means a room cannot be removed between lookup and joining.
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms
            .entry(key.clone())
            .or_insert_with(|| {
                self.room_gauge.inc();
                Arc::default()
            })
            .clone();
        self.member_gauge.inc();
        let slot = {
            let mut log = room.lock();
            let cursor = log.head();
            let slot = Slot {
                id,
                cursor,
                waker: None,
            };
            log.members += 1;
            match log.free.pop() {
                Some(i) => {
                    log.slots[i] = slot;
                    i
                }
                None => {
                    log.slots.push(slot);
                    log.slots.len() - 1
                }
            }
        };
        drop(rooms);
        Membership {
            hub: self.clone(),
            key,
            room,
            slot,
            id,
        }
    }

    /// Number of rooms with members (for tests and metrics).
    pub fn room_count(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Membership {
    /// Appends a message to the room's log and wakes the members that were asleep.
    pub fn publish(&self, opcode: OpCode, payload: &[u8]) {
        let frame = crate::out::frame_bytes(opcode, payload);
        TO_WAKE.with(|to_wake| {
            let mut spare = Vec::new();
            let mut to_wake = to_wake.try_borrow_mut();
            let to_wake = match &mut to_wake {
                Ok(v) => &mut **v,
                Err(_) => &mut spare,
            };
            {
                let mut log = self.room.lock();
                let offset = log.published_bytes;
                log.published_bytes += frame.len() as u64;
                log.entries.push_back(Entry {
                    frame,
                    from: self.id,
                    payload_len: payload.len(),
                    offset,
                });
                log.trim();
                let mut waiting = std::mem::take(&mut log.waiting);
                for i in waiting.drain(..) {
                    if let Some(w) = log.slots.get_mut(i).and_then(|s| s.waker.take()) {
                        to_wake.push(w);
                    }
                }
                log.waiting = waiting;
            }
            for w in to_wake.drain(..) {
                w.wake();
            }
        });
    }

    /// Moves up to `max` frames this member has not had into `out` (skipping its own unless
    /// `own`), or registers `waker` for the next publish when there are none.
    pub fn take(&self, waker: &Waker, out: &mut Vec<Bytes>, max: usize, own: bool) -> Take {
        let mut log = self.room.lock();
        let (base, head) = (log.base, log.head());
        let Some(cursor) = log.slots.get(self.slot).map(|s| s.cursor) else {
            return Take::TooSlow;
        };
        if cursor < base {
            return Take::TooSlow;
        }
        if cursor == head {
            let Log { slots, waiting, .. } = &mut *log;
            if let Some(s) = slots.get_mut(self.slot) {
                if s.waker.is_none() {
                    s.waker = Some(waker.clone());
                    waiting.push(self.slot);
                }
            }
            return Take::Idle;
        }
        let end = head.min(cursor + max as u64);
        let (mut messages, mut bytes) = (0, 0);
        for e in log
            .entries
            .range((cursor - base) as usize..(end - base) as usize)
        {
            if own || e.from != self.id {
                out.push(e.frame.clone());
                messages += 1;
                bytes += e.payload_len as u64;
            }
        }
        if let Some(s) = log.slots.get_mut(self.slot) {
            s.cursor = end;
        }
        Take::Frames { messages, bytes }
    }

    /// Bytes of frames published in the room that this member has not taken yet.
    pub fn lag_bytes(&self) -> u64 {
        let log = self.room.lock();
        let cursor = log.slots.get(self.slot).map_or(log.base, |s| s.cursor);
        log.published_bytes - log.offset_of(cursor.max(log.base))
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = self.hub.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let empty = {
            let mut log = self.room.lock();
            if let Some(s) = log.slots.get_mut(self.slot) {
                s.id = 0;
                s.waker = None;
            }
            log.free.push(self.slot);
            log.members -= 1;
            log.members == 0
        };
        self.hub.member_gauge.dec();
        if empty {
            rooms.remove(&self.key);
            self.hub.room_gauge.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter::default());
        (c.clone(), Waker::from(c))
    }

    fn take_all(m: &Membership, w: &Waker, own: bool) -> Result<Vec<Bytes>, Take> {
        let mut out = Vec::new();
        loop {
            match m.take(w, &mut out, 64, own) {
                Take::Frames { .. } => {}
                Take::Idle => return Ok(out),
                other => return Err(other),
            }
        }
    }

    #[test]
    fn rooms_are_separate_and_frames_are_shared_not_copied() {
        let hub = Arc::new(Hub::default());
        let a = hub.join("lobby".into(), 1);
        let b = hub.join("lobby".into(), 2);
        let c = hub.join("other".into(), 3);
        let (_, w) = waker();
        a.publish(OpCode::Text, b"hi");
        let x = take_all(&a, &w, true).unwrap();
        let y = take_all(&b, &w, true).unwrap();
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].as_ptr(), y[0].as_ptr(), "one frame for all members");
        assert_eq!(&y[0][..], b"\x81\x02hi");
        assert!(take_all(&c, &w, true).unwrap().is_empty());
        assert_eq!(take_all(&a, &w, false).unwrap().len(), 0);
        assert_eq!(hub.room_count(), 2);
    }

    #[test]
    fn a_sleeping_member_is_woken_once_per_batch_and_takes_it_whole() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.join("r".into(), 1);
        let member = hub.join("r".into(), 2);
        let (count, w) = waker();
        assert_eq!(take_all(&member, &w, true).unwrap().len(), 0, "asleep");
        for i in 0..16u8 {
            publisher.publish(OpCode::Binary, &[i]);
        }
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "one wake-up for 16 publishes"
        );
        let got = take_all(&member, &w, true).unwrap();
        let payloads: Vec<u8> = got.iter().map(|f| f[2]).collect();
        assert_eq!(payloads, (0..16).collect::<Vec<u8>>(), "in publish order");
        assert_eq!(member.lag_bytes(), 0);
    }

    #[test]
    fn joining_mid_stream_sees_only_later_messages_and_own_messages_can_be_skipped() {
        let hub = Arc::new(Hub::default());
        let a = hub.join("r".into(), 1);
        a.publish(OpCode::Text, b"before");
        let b = hub.join("r".into(), 2);
        a.publish(OpCode::Text, b"after");
        b.publish(OpCode::Text, b"mine");
        let (_, w) = waker();
        let got = take_all(&b, &w, false).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0][2..], b"after");
    }

    #[test]
    fn a_member_too_far_behind_is_too_slow_and_the_log_stays_bounded() {
        let hub = Arc::new(Hub::default());
        let fast = hub.join("r".into(), 1);
        let slow = hub.join("r".into(), 2);
        let (_, w) = waker();
        for _ in 0..MAX_LAG_MESSAGES + 10 {
            fast.publish(OpCode::Binary, b"x");
            take_all(&fast, &w, true).unwrap();
        }
        assert!(fast.room.lock().entries.len() as u64 <= MAX_LAG_MESSAGES);
        assert_eq!(take_all(&slow, &w, true).unwrap_err(), Take::TooSlow);
        drop(slow);
        // With only caught-up members left, the log is trimmed to a few entries.
        for _ in 0..TRIM_ENTRIES + 1 {
            fast.publish(OpCode::Binary, b"x");
            take_all(&fast, &w, true).unwrap();
        }
        assert!(fast.room.lock().entries.len() <= TRIM_ENTRIES + 1);
    }

    #[test]
    fn empty_rooms_vanish_and_slots_are_reused() {
        let hub = Arc::new(Hub::default());
        let a = hub.join("r".into(), 1);
        let b = hub.join("r".into(), 2);
        drop(b);
        let c = hub.join("r".into(), 3);
        assert_eq!(c.slot, 1, "the free slot is reused");
        drop(a);
        drop(c);
        assert_eq!(hub.room_count(), 0);
    }
}
