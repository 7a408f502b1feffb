//! Rooms for `channel` routes, each a short log of published frames.
//!
//! A publish serialises its message once, into a buffer shared by every member, and appends it to
//! the room's log under the room's own lock (no lock that every publish in the server takes).
//! The messages one connection publishes from one read are appended as one entry, back to back in
//! one buffer, so a member writes a burst with one plain `send`. Members keep a cursor into the
//! log and are woken only when they have caught up and gone to sleep: a member is woken at most
//! once per batch of publishes, however many arrived, and then takes everything past its cursor
//! at once, to write it with one call. Nothing is sent through a per-member channel, and a frame
//! is never copied per member (each member holds a reference only while its write is in flight).
//!
//! The log keeps what some member has not taken yet, and no more than [`MAX_LAG_MESSAGES`]
//! messages or [`MAX_LAG_BYTES`] bytes: a member that falls further behind finds its cursor past
//! the log's start and is closed (1013), so it never holds the room back or makes its memory grow.
//! Once every member has everything, the log is emptied.

use crate::cluster::{Cluster, Command};
use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::gauge::Gauge;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use wsgate_handshake::deflate::{compress_message, MIN_COMPRESS};
use wsgate_handshake::frame::{
    parse_server_frame, write_server_header, OpCode, Parsed, MAX_SERVER_HEADER,
};

/// Messages a member may fall behind the newest before it is closed as too slow.
pub const MAX_LAG_MESSAGES: u64 = 1024;
/// Bytes of frames a member may fall behind the newest before it is closed as too slow.
pub const MAX_LAG_BYTES: u64 = 16 << 20;
/// Past this many entries (or [`TRIM_BYTES`]), a publish drops what every member has taken.
const TRIM_ENTRIES: usize = 32;
/// See [`TRIM_ENTRIES`].
const TRIM_BYTES: u64 = 64 * 1024;
/// Each worker thread serialises what its connections publish into buffers of this size (larger
/// messages get a buffer of their own); a buffer is freed once no entry or write refers to it.
const STAGING_CHUNK: usize = 16 * 1024;
/// The cursor of a free slot.
const FREE: u64 = u64::MAX;

/// Pushes onto a vector that grows by a quarter (at least 4) rather than doubling: a room's
/// member lists are kept for as long as the room lives.
fn push_snug<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(4));
    }
    v.push(item);
}

/// Messages of one publisher, appended to the log together.
struct Entry {
    /// Complete server frames, back to back, written as they are by every member.
    frames: Bytes,
    /// The same messages for members with permessage-deflate (RSV1 frames, the short ones as
    /// they are), compressed once for all of them; present while the room has such members.
    compressed: Option<Bytes>,
    /// The publishing connection, so `deliver_to_sender = false` can skip it.
    from: u64,
    /// Messages in `frames`.
    messages: u64,
    /// Their payload bytes, for the metrics.
    payload_bytes: u64,
    /// Frame bytes published in the room before this entry, for the byte bound.
    offset: u64,
    /// Messages published in the room before this entry, for the message bound.
    message_offset: u64,
}

/// A member's place in the log (24 bytes: an idle member costs little).
struct Slot {
    /// The sequence number of the next entry it takes; [`FREE`] for a free slot.
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
    /// Messages ever published in the room.
    published_messages: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    members: usize,
    /// Members whose cursor is at the head: when all are, the log is emptied.
    caught_up: usize,
    /// Slots whose member sleeps (their `waker` is set).
    waiting: Vec<u32>,
}

impl Log {
    fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn drop_front(&mut self) {
        if self.entries.pop_front().is_some() {
            self.base += 1;
        }
    }

    /// Drops entries every member has taken and, past the bounds, entries some member has not:
    /// that member is then too slow.
    fn trim(&mut self) {
        if self.caught_up == self.members {
            self.base = self.head();
            self.entries.clear();
            return;
        }
        let front_offset = self
            .entries
            .front()
            .map_or(self.published_bytes, |e| e.offset);
        if self.entries.len() > TRIM_ENTRIES || self.published_bytes - front_offset > TRIM_BYTES {
            let head = self.head();
            let min = self
                .slots
                .iter()
                .filter(|s| s.cursor != FREE)
                .map(|s| s.cursor)
                .min()
                .unwrap_or(head);
            while self.base < min && !self.entries.is_empty() {
                self.drop_front();
            }
        }
        while let Some(front) = self.entries.front() {
            let over_count = self.published_messages - front.message_offset > MAX_LAG_MESSAGES;
            let over_bytes = self.published_bytes - front.offset > MAX_LAG_BYTES;
            if !(over_count || over_bytes) {
                break;
            }
            self.drop_front();
        }
    }
}

/// A room: the log of one channel path.
pub(crate) struct Room {
    /// Its key in the hub, kept once here rather than by every member.
    key: String,
    log: Mutex<Log>,
    /// Where local publishes also go, on a clustered node.
    cluster: Option<Cluster>,
    /// Members that take compressed frames: while there are any, publishes compress once.
    deflate_members: AtomicUsize,
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
    /// The other nodes, on a clustered node.
    cluster: Option<Cluster>,
}

/// A connection's place in a room; leaving happens on drop.
pub struct Membership {
    hub: Arc<Hub>,
    room: Arc<Room>,
    slot: usize,
    id: u64,
    /// Takes the compressed frames (permessage-deflate, stateless, 15-bit window).
    deflate: bool,
}

/// What [`Membership::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Frames were added (possibly none, when all were the member's own and skipped).
    Frames {
        /// Messages taken.
        messages: u64,
        /// Their payload bytes.
        bytes: u64,
        /// The member has everything: its waker is registered for the next publish. Otherwise
        /// more are waiting: call again once these are written.
        caught_up: bool,
    },
    /// The log dropped messages this member had not taken: close it with 1013.
    TooSlow,
}

/// Messages a connection has published during one read, not yet appended to its room.
#[derive(Default)]
struct Staged {
    /// The room and publisher they belong to.
    to: Option<(Arc<Room>, u64)>,
    /// This thread's serialisation buffer: staged frames at its start, spare room after.
    buf: BytesMut,
    /// Whether this batch is also compressed (its room had deflate members when it started).
    compress: bool,
    /// The batch's compressed frames.
    zbuf: BytesMut,
    messages: u64,
    payload_bytes: u64,
}

thread_local! {
    /// Wakers collected under a room's lock and woken after it is released; the capacity stays
    /// with the thread, so waking allocates nothing.
    static TO_WAKE: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// What this thread's connection is publishing, appended to the room at the end of its read.
    static STAGED: RefCell<Staged> = RefCell::new(Staged::default());
    /// One message compressed, before its frame is written into the batch.
    static PACKED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes `payload` as a frame into `out`: compressed (RSV1) when it is long enough.
fn put_compressed(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    if payload.len() < MIN_COMPRESS {
        let n = write_server_header(&mut header, opcode, payload.len());
        out.extend_from_slice(&header[..n]);
        out.extend_from_slice(payload);
        return;
    }
    PACKED.with(|p| {
        let mut spare = Vec::new();
        let mut p = p.try_borrow_mut();
        let packed = match &mut p {
            Ok(v) => &mut **v,
            Err(_) => &mut spare,
        };
        packed.clear();
        compress_message(payload, 15, packed);
        let n = write_server_header(&mut header, opcode, packed.len());
        header[0] |= 0x40;
        out.extend_from_slice(&header[..n]);
        out.extend_from_slice(packed);
        if packed.capacity() > 1 << 20 {
            *packed = Vec::new();
        }
    });
}

/// The compressed form of serialised frames (another node's publish): each frame's payload
/// compressed once for the room's deflate members.
fn compress_frames(frames: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(frames.len() / 2 + 64);
    let mut pos = 0;
    while let Parsed::Header(h) = parse_server_frame(&frames[pos..], usize::MAX) {
        let Some(payload) = frames.get(pos + h.header_len..pos + h.frame_len()) else {
            break;
        };
        put_compressed(&mut out, h.opcode, payload);
        pos += h.frame_len();
    }
    out.freeze()
}

impl Hub {
    /// A hub that keeps the metrics' room and member gauges and, on a clustered node, shares
    /// its rooms with the other nodes.
    pub fn counted(metrics: &crate::metrics::Metrics, cluster: Option<Cluster>) -> Hub {
        Hub {
            rooms: Mutex::default(),
            room_gauge: metrics.channel_rooms.clone(),
            member_gauge: metrics.channel_members.clone(),
            cluster,
        }
    }

    /// Joins (creating if needed) the room `key` as connection `id` (not 0). A member receives
    /// what is published after it joined.
    pub fn join(self: &Arc<Hub>, key: String, id: u64) -> Membership {
        self.join_with(key, id, false)
    }

    /// [`Hub::join`] for a member that takes compressed frames (`deflate`).
    pub fn join_with(self: &Arc<Hub>, key: String, id: u64, deflate: bool) -> Membership {
        // Joining under the hub lock means a room cannot be removed between lookup and joining.
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = match rooms.get(&key) {
            Some(r) => r.clone(),
            None => {
                self.room_gauge.inc();
                let r = Arc::new(Room {
                    key: key.clone(),
                    log: Mutex::default(),
                    cluster: self.cluster.clone(),
                    deflate_members: AtomicUsize::new(0),
                });
                if let Some(c) = &self.cluster {
                    c.send(Command::Subscribe(key.clone(), Arc::downgrade(&r)));
                }
                rooms.insert(key, r.clone());
                r
            }
        };
        self.member_gauge.inc();
        if deflate {
            room.deflate_members.fetch_add(1, Ordering::Relaxed);
        }
        let slot = {
            let mut log = room.lock();
            let cursor = log.head();
            let slot = Slot {
                cursor,
                waker: None,
            };
            log.members += 1;
            log.caught_up += 1;
            match log.free.pop() {
                Some(i) => {
                    log.slots[i] = slot;
                    i
                }
                None => {
                    push_snug(&mut log.slots, slot);
                    log.slots.len() - 1
                }
            }
        };
        drop(rooms);
        Membership {
            hub: self.clone(),
            room,
            slot,
            id,
            deflate,
        }
    }

    /// Number of rooms with members (for tests and metrics).
    pub fn room_count(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// Appends what another node published to the local room (`from` 0 is no local connection).
pub(crate) fn append_remote(room: &Room, frames: Bytes, messages: u64, payload_bytes: u64) {
    let compressed =
        (room.deflate_members.load(Ordering::Relaxed) > 0).then(|| compress_frames(&frames));
    append(room, 0, frames, compressed, messages, payload_bytes);
}

/// Appends staged messages to their room and wakes the members that were asleep.
fn append(
    room: &Room,
    from: u64,
    frames: Bytes,
    compressed: Option<Bytes>,
    messages: u64,
    payload_bytes: u64,
) {
    TO_WAKE.with(|to_wake| {
        let mut spare = Vec::new();
        let mut to_wake = to_wake.try_borrow_mut();
        let to_wake = match &mut to_wake {
            Ok(v) => &mut **v,
            Err(_) => &mut spare,
        };
        {
            let mut log = room.lock();
            let offset = log.published_bytes;
            let message_offset = log.published_messages;
            log.published_bytes += frames.len() as u64;
            log.published_messages += messages;
            log.entries.push_back(Entry {
                frames,
                compressed,
                from,
                messages,
                payload_bytes,
                offset,
                message_offset,
            });
            // Nobody has the new entry yet.
            log.caught_up = 0;
            log.trim();
            let mut waiting = std::mem::take(&mut log.waiting);
            for i in waiting.drain(..) {
                if let Some(w) = log.slots.get_mut(i as usize).and_then(|s| s.waker.take()) {
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

impl Staged {
    /// Appends what is staged to its room.
    fn publish(&mut self) {
        if let Some((room, from)) = self.to.take() {
            let frames = self.buf.split().freeze();
            let compressed = std::mem::take(&mut self.compress).then(|| self.zbuf.split().freeze());
            let (messages, bytes) = (self.messages, self.payload_bytes);
            self.messages = 0;
            self.payload_bytes = 0;
            if let Some(c) = &room.cluster {
                let envelope = c.envelope(&frames, messages, bytes);
                c.send(Command::Publish(room.key.clone(), envelope, messages));
            }
            append(&room, from, frames, compressed, messages, bytes);
        }
    }
}

impl Membership {
    /// Serialises a message for the room; it is appended with the others of this read by
    /// [`Membership::flush`] (or at once, should another connection stage first).
    pub fn stage(&self, opcode: OpCode, payload: &[u8]) {
        let mut header = [0u8; MAX_SERVER_HEADER];
        let n = write_server_header(&mut header, opcode, payload.len());
        STAGED.with(|staged| {
            let Ok(mut st) = staged.try_borrow_mut() else {
                // Not reachable (nothing re-enters here); publish on its own rather than lose it.
                let frame = crate::out::frame_bytes(opcode, payload);
                let compressed =
                    (self.room.deflate_members.load(Ordering::Relaxed) > 0).then(|| {
                        let mut z = BytesMut::new();
                        put_compressed(&mut z, opcode, payload);
                        z.freeze()
                    });
                append(
                    &self.room,
                    self.id,
                    frame,
                    compressed,
                    1,
                    payload.len() as u64,
                );
                return;
            };
            let mine =
                matches!(&st.to, Some((r, id)) if Arc::ptr_eq(r, &self.room) && *id == self.id);
            if !mine {
                st.publish();
                st.to = Some((self.room.clone(), self.id));
                st.compress = self.room.deflate_members.load(Ordering::Relaxed) > 0;
            }
            let len = n + payload.len();
            if st.buf.capacity() - st.buf.len() < len {
                if !st.buf.is_empty() {
                    // The chunk is full: what it holds goes out first.
                    st.publish();
                    st.to = Some((self.room.clone(), self.id));
                    st.compress = self.room.deflate_members.load(Ordering::Relaxed) > 0;
                }
                st.buf = BytesMut::with_capacity(len.max(STAGING_CHUNK));
            }
            st.buf.extend_from_slice(&header[..n]);
            st.buf.extend_from_slice(payload);
            if st.compress {
                // Reserved, never replaced: the batch's earlier frames are in it.
                st.zbuf.reserve(len.max(STAGING_CHUNK) + 64);
                put_compressed(&mut st.zbuf, opcode, payload);
            }
            st.messages += 1;
            st.payload_bytes += payload.len() as u64;
        });
    }

    /// Appends what this connection staged to the room and wakes the members that sleep.
    pub fn flush(&self) {
        STAGED.with(|staged| {
            if let Ok(mut st) = staged.try_borrow_mut() {
                st.publish();
            }
        });
    }

    /// Publishes one message at once (stage and flush).
    pub fn publish(&self, opcode: OpCode, payload: &[u8]) {
        self.stage(opcode, payload);
        self.flush();
    }

    /// Moves up to `max` entries this member has not had into `out` (skipping its own unless
    /// `own`). When that leaves the member caught up, `waker` is registered for the next publish
    /// in the same step, so a member takes the room's lock once per wake-up.
    pub fn take(&self, waker: &Waker, out: &mut Vec<Bytes>, max: usize, own: bool) -> Take {
        let mut log = self.room.lock();
        let (base, head) = (log.base, log.head());
        let Some(cursor) = log.slots.get(self.slot).map(|s| s.cursor) else {
            return Take::TooSlow;
        };
        if cursor < base {
            return Take::TooSlow;
        }
        let end = head.min(cursor + max as u64);
        let (mut messages, mut bytes) = (0, 0);
        for e in log
            .entries
            .range((cursor - base) as usize..(end - base) as usize)
        {
            if own || e.from != self.id {
                let frames = match (&e.compressed, self.deflate) {
                    (Some(z), true) => z,
                    _ => &e.frames,
                };
                out.push(frames.clone());
                messages += e.messages;
                bytes += e.payload_bytes;
            }
        }
        let Log {
            slots,
            waiting,
            caught_up,
            members,
            ..
        } = &mut *log;
        let Some(s) = slots.get_mut(self.slot) else {
            return Take::TooSlow;
        };
        s.cursor = end;
        if end < head {
            return Take::Frames {
                messages,
                bytes,
                caught_up: false,
            };
        }
        if cursor < head {
            *caught_up += 1;
        }
        if s.waker.is_none() {
            s.waker = Some(waker.clone());
            push_snug(waiting, self.slot as u32);
        }
        if *caught_up == *members {
            // Everyone has everything: the log's buffers can go.
            log.trim();
        }
        Take::Frames {
            messages,
            bytes,
            caught_up: true,
        }
    }

    /// Bytes of frames published in the room that this member has not taken yet.
    #[cfg(test)]
    fn lag_bytes(&self) -> u64 {
        let log = self.room.lock();
        let cursor = log.slots.get(self.slot).map_or(log.base, |s| s.cursor);
        let from = match log.entries.get(cursor.saturating_sub(log.base) as usize) {
            Some(e) => e.offset,
            None => log.published_bytes,
        };
        log.published_bytes - from
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // What this connection staged but had not appended yet still goes out.
        self.flush();
        if self.deflate {
            self.room.deflate_members.fetch_sub(1, Ordering::Relaxed);
        }
        let mut rooms = self.hub.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let empty = {
            let mut log = self.room.lock();
            let head = log.head();
            if let Some(s) = log.slots.get_mut(self.slot) {
                let was_caught_up = s.cursor == head;
                s.cursor = FREE;
                s.waker = None;
                if was_caught_up {
                    log.caught_up = log.caught_up.saturating_sub(1);
                }
            }
            log.free.push(self.slot);
            log.members -= 1;
            log.trim();
            log.members == 0
        };
        self.hub.member_gauge.dec();
        if empty {
            rooms.remove(&self.room.key);
            self.hub.room_gauge.dec();
            if let Some(c) = &self.hub.cluster {
                c.send(Command::Unsubscribe(self.room.key.clone()));
            }
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
                Take::Frames {
                    caught_up: false, ..
                } => {}
                Take::Frames { .. } => return Ok(out),
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
    fn deflate_members_share_one_compressed_frame_and_the_others_get_plain_ones() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.join("r".into(), 1);
        let (z1, z2) = (
            hub.join_with("r".into(), 2, true),
            hub.join_with("r".into(), 3, true),
        );
        let plain = hub.join("r".into(), 4);
        let (_, w) = waker();
        let long = br#"{"text":"hello hello hello hello hello hello hello hello hello"}"#.repeat(4);
        publisher.stage(OpCode::Text, &long);
        publisher.stage(OpCode::Text, b"short");
        publisher.flush();
        let (a, b) = (
            take_all(&z1, &w, true).unwrap(),
            take_all(&z2, &w, true).unwrap(),
        );
        assert_eq!(a[0].as_ptr(), b[0].as_ptr(), "compressed once for both");
        assert_eq!(a[0][0], 0xC1, "RSV1 on the long message");
        let short_at = a[0].len() - 7;
        assert_eq!(
            &a[0][short_at..],
            b"\x81\x05short",
            "the short one as it is"
        );
        assert!(a[0].len() < long.len() / 2);
        let p = take_all(&plain, &w, true).unwrap();
        assert_eq!(p[0][0], 0x81);
        assert_eq!(p[0].len(), 4 + long.len() + 7);
        // Without deflate members, nothing is compressed.
        drop((z1, z2));
        publisher.publish(OpCode::Text, &long);
        let mut out = Vec::new();
        let _ = plain.take(&w, &mut out, 64, true);
        assert_eq!(out[0][0], 0x81);
        let log = publisher.room.lock();
        assert!(log.entries.back().is_some_and(|e| e.compressed.is_none()));
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
    fn one_reads_messages_go_out_as_one_buffer_and_the_log_empties_once_everyone_has_them() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.join("r".into(), 1);
        let member = hub.join("r".into(), 2);
        let other = hub.join("elsewhere".into(), 3);
        for i in 0..3u8 {
            publisher.stage(OpCode::Binary, &[i]);
        }
        // Another connection staging on this thread first sends what is staged.
        other.stage(OpCode::Binary, b"x");
        other.flush();
        let (_, w) = waker();
        let mut out = Vec::new();
        let Take::Frames {
            messages,
            bytes,
            caught_up: true,
        } = member.take(&w, &mut out, 64, true)
        else {
            panic!("caught up in one take");
        };
        assert_eq!(
            (messages, bytes, out.len()),
            (3, 3, 1),
            "three messages, one buffer"
        );
        assert_eq!(&out[0][..], b"\x82\x01\x00\x82\x01\x01\x82\x01\x02");
        assert_eq!(
            publisher.room.lock().entries.len(),
            1,
            "the publisher has not taken it"
        );
        take_all(&publisher, &w, true).unwrap();
        assert_eq!(
            publisher.room.lock().entries.len(),
            0,
            "everyone has it: the log is empty"
        );
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
