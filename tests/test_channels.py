"""Channels (pub/sub rooms) under load with real clients: Python `websockets` and Node `ws` members
of one 2,000-member room, two publishers interleaved, members joining and leaving while a publisher
publishes. Slow members (closed with 1013 while the room keeps going) are in test_slow_peers.py;
rooms and `deliver_to_sender` with a few clients in test_clients.py."""

import asyncio
import os
import random
import subprocess

from websockets.asyncio.client import connect

from conftest import NODE_MODULES, ROOT, config, require_tool, run

ROOM = '[[route]]\npath = "/ws/chat/{room}"\nkind = "channel"\n'
# A publisher that is not a member receiving its own messages.
QUIET_PUBLISHER = ROOM + "deliver_to_sender = false\n"


def node_members(url, n, count):
    """N Node `ws` members of the room at URL, each expecting COUNT messages; returns once all
    are in."""
    require_tool("node", "Node.js")
    p = subprocess.Popen(
        ["node", str(ROOT / "tests/node/client.js"), "members", url, str(n), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NODE_PATH": NODE_MODULES},
    )
    line = p.stdout.readline().strip()
    if line != b"open":
        p.kill()
        raise AssertionError(f"node members did not open: {line!r} {p.stderr.read()!r}")
    return p


def node_result(p, timeout=60):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    assert p.returncode == 0 and b"members ok" in out, f"node members: {out!r} {err!r}"


def in_order(messages):
    """Whether every publisher's sequence numbers count up from their first one without a gap."""
    last = {}
    for m in messages:
        who, seq = m.split(":")
        seq = int(seq)
        if who in last and seq != last[who] + 1:
            return False
        last[who] = seq
    return True


async def python_members(url, n):
    members = []
    for _ in range(n):
        members.append(await connect(url, max_queue=None))
    return members


async def collect(ws, count):
    got = []
    while len(got) < count:
        got.append(await ws.recv())
    return got


def test_every_member_of_a_2000_member_room_gets_every_message_in_order(wsgate):
    s = wsgate(config(routes=QUIET_PUBLISHER))
    url = s.url + "/ws/chat/big"
    n_node, n_py, count = 1000, 1000, 200
    node = node_members(url, n_node, count)

    async def go():
        members = await python_members(url, n_py)
        async with connect(url) as publisher:
            for i in range(count):
                await publisher.send(f"P:{i}")
            results = await asyncio.wait_for(
                asyncio.gather(*(collect(m, count) for m in members)), 60
            )
        for m in members:
            await m.close()
        return results

    results = run(go(), timeout=120)
    want = [f"P:{i}" for i in range(count)]
    assert all(r == want for r in results), "every Python member got every message, in order"
    node_result(node)
    assert s.metric("wsgate_messages_out_total") >= (n_node + n_py) * count


def test_two_publishers_interleaved_keep_each_ones_order(wsgate):
    s = wsgate(config(routes=QUIET_PUBLISHER))
    url = s.url + "/ws/chat/two"
    per = 300
    node = node_members(url, 20, 2 * per)

    async def publish(ws, who):
        for i in range(per):
            await ws.send(f"{who}:{i}")
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def go():
        members = await python_members(url, 20)
        # The publishers receive each other's messages: an unbounded queue keeps them reading.
        async with connect(url, max_queue=None) as a, connect(url, max_queue=None) as b:
            await asyncio.gather(publish(a, "A"), publish(b, "B"))
            results = await asyncio.wait_for(
                asyncio.gather(*(collect(m, 2 * per) for m in members)), 60
            )
        for m in members:
            await m.close()
        return results

    for got in run(go(), timeout=90):
        assert in_order(got), "each publisher's messages keep their order"
        assert [m for m in got if m.startswith("A:")] == [f"A:{i}" for i in range(per)]
        assert [m for m in got if m.startswith("B:")] == [f"B:{i}" for i in range(per)]
    node_result(node)


def test_members_join_and_leave_under_load(wsgate):
    s = wsgate(config(routes=QUIET_PUBLISHER))
    url = s.url + "/ws/chat/churn"
    rng = random.Random(7)

    async def go():
        stop = asyncio.Event()
        sent = 0

        async def publisher():
            nonlocal sent
            async with connect(url, ping_interval=None) as p:
                while not stop.is_set():
                    await p.send(f"P:{sent}")
                    sent += 1
                    if sent % 5 == 0:
                        await asyncio.sleep(0.002)

        async def visitor(k):
            """Joins, takes a few messages, leaves; what it took must be a run without gaps."""
            runs = []
            for _ in range(4):
                async with connect(url, ping_interval=None) as m:
                    got = await asyncio.wait_for(collect(m, rng.randint(1, 40)), 30)
                runs.append(got)
                await asyncio.sleep(rng.random() / 50)
            return runs

        async with connect(url, ping_interval=None) as steady:
            got = []

            async def follow():
                while True:
                    got.append(await steady.recv())

            follower = asyncio.create_task(follow())
            pub = asyncio.create_task(publisher())
            visits = await asyncio.gather(*(visitor(k) for k in range(20)))
            stop.set()
            await pub
            for _ in range(600):
                if len(got) >= sent:
                    break
                await asyncio.sleep(0.05)
            follower.cancel()
        return visits, got, sent

    visits, steady, sent = run(go(), timeout=120)
    for runs in visits:
        for got in runs:
            assert in_order(got), f"a visitor's messages have a gap: {got[:5]}…"
    assert steady == [f"P:{i}" for i in range(sent)], "the member that stayed got everything"
    # Leaving frees the member at once: nobody is left once every client is gone.
    assert s.wait_metric("wsgate_channel_members", 0, timeout=10)
    assert s.metric("wsgate_channel_rooms") == 0
