"""Rooms across nodes through a real `redis-server` (started here on a random loopback port): three
wsgate nodes on one Redis deliver every message to every member on every node, in order, exactly
once; Redis killed mid-stream leaves local delivery running and cross-node delivery comes back when
Redis does; `wsgate check` shows the cluster without its password."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import BIN, config, require_tool, run

ROOM = '[[route]]\npath = "/ws/chat/{room}"\nkind = "channel"\ndeliver_to_sender = false\n'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A throwaway redis-server on 127.0.0.1, without persistence."""

    def __init__(self, tmp_path, port=None, password=None, tls=None):
        self.exe = require_tool("redis-server", "Debian's redis-server runs the cluster tests")
        self.port = port or free_port()
        self.dir = tmp_path
        self.password = password
        # (cert, key, ca, auth_clients) to serve TLS only; the readiness probe then waits for the port.
        self.tls = tls
        self.proc = None
        self.start()

    def start(self):
        extra = ["--requirepass", self.password] if self.password else []
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca, auth = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file",
                     str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", auth]
        self.proc = subprocess.Popen(
            [self.exe, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if self.tls:
                        return
                    s.sendall(b"PING\r\n")
                    answer = s.recv(64)
                    if answer.startswith(b"+PONG") or b"NOAUTH" in answer:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    @property
    def url(self):
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    if r.proc.poll() is None:
        r.kill()


def node(wsgate, redis_url, name):
    return wsgate(config(routes=ROOM) + f'\n[cluster]\nredis = "{redis_url}"\nnode_id = "{name}"\n')


def test_three_nodes_deliver_every_message_to_every_member_in_order_exactly_once(wsgate, redis):
    nodes = [node(wsgate, redis.url, n) for n in ("a", "b", "c")]
    for n in nodes:
        assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)
    per = 50

    async def go():
        members = []
        for n in nodes:
            for _ in range(3):
                members.append(await connect(n.url + "/ws/chat/lobby", max_queue=None))
        # Each node subscribes to the room once its first member joined; give Redis a moment.
        await asyncio.sleep(0.5)
        publishers = [await connect(n.url + "/ws/chat/lobby", max_queue=None) for n in nodes]

        async def publish(ws, who):
            for i in range(per):
                await ws.send(f"{who}:{i}")

        await asyncio.gather(*(publish(p, w) for p, w in zip(publishers, "ABC")))
        want = 3 * per

        async def collect(ws):
            got = []
            while len(got) < want:
                got.append(await ws.recv())
            # Nothing more arrives: no duplicates.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            return got

        results = await asyncio.wait_for(asyncio.gather(*(collect(m) for m in members)), 30)
        for ws in members + publishers:
            await ws.close()
        return results

    for got in run(go(), timeout=60):
        for who in "ABC":
            assert [m for m in got if m.startswith(who + ":")] == [f"{who}:{i}" for i in range(per)]
    assert all(n.metric("wsgate_cluster_published_total") >= per for n in nodes)
    # A request id names the node that answered.
    ok = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", nodes[1].url.replace("ws://", "http://") + "/nowhere"],
                        capture_output=True, text=True, timeout=10).stdout.lower()
    assert "x-request-id: b-" in ok, ok
    assert all(n.metric("wsgate_cluster_received_total") >= 2 * per for n in nodes)


def test_redis_outage_keeps_local_delivery_and_cross_node_delivery_comes_back(wsgate, redis):
    a, b = node(wsgate, redis.url, "a"), node(wsgate, redis.url, "b")
    for n in (a, b):
        assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)

    async def go():
        u = "/ws/chat/outage"
        async with connect(a.url + u) as a_member, connect(b.url + u) as b_member, \
                connect(a.url + u) as pub:
            await asyncio.sleep(0.5)
            await pub.send("before")
            assert await asyncio.wait_for(a_member.recv(), 5) == "before"
            assert await asyncio.wait_for(b_member.recv(), 5) == "before"

            redis.kill()
            assert a.wait_metric("wsgate_cluster_up", 0, timeout=10)
            await pub.send("during")
            assert await asyncio.wait_for(a_member.recv(), 5) == "during", "local delivery goes on"

            redis.start()
            assert a.wait_metric("wsgate_cluster_up", 1, timeout=15)
            assert b.wait_metric("wsgate_cluster_up", 1, timeout=15)
            await asyncio.sleep(0.5)
            await pub.send("after")
            assert await asyncio.wait_for(a_member.recv(), 5) == "after"
            # "during" was published while Redis was down: at most once, so node b never sees it.
            assert await asyncio.wait_for(b_member.recv(), 10) == "after"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b_member.recv(), 0.5)

    run(go(), timeout=60)
    log = a.wait_log("Redis reachable again", timeout=5)
    assert log.count("cluster: Redis unreachable") == 1, "the outage is logged once"
    # Every log line names the node it came from.
    lines = [l for l in log.splitlines() if l.strip()]
    assert lines and all(l.startswith("[a] ") for l in lines), lines
    assert a.metric("wsgate_cluster_reconnects_total") >= 1
    assert a.metric("wsgate_cluster_dropped_total") >= 1


def test_the_handshake_rate_is_shared_by_the_nodes(wsgate, redis):
    limits = "handshake_rate = 0.2\nhandshake_burst = 2\n"
    cluster = f'\n[cluster]\nredis = "{redis.url}"\nnode_id = "%s"\n'
    a = wsgate(config(routes=ROOM, limits=limits) + cluster % "a")
    b = wsgate(config(routes=ROOM, limits=limits) + cluster % "b")
    for n in (a, b):
        assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)

    async def go():
        # One handshake on each node takes the shared burst of 2; the third is refused on either.
        async with connect(a.url + "/ws/chat/r"):
            pass
        async with connect(b.url + "/ws/chat/r"):
            pass
        with pytest.raises(InvalidStatus) as e:
            async with connect(a.url + "/ws/chat/r"):
                pass
        return e.value.response

    r = run(go())
    assert r.status_code == 429 and r.headers["wsgate-reason"] == "limit.rate"
    assert "Retry-After" in r.headers
    assert "across the cluster" in a.wait_log("across the cluster", timeout=5)

    # Without Redis, each node counts on its own again (and says so once, in the outage line).
    redis.kill()
    assert b.wait_metric("wsgate_cluster_up", 0, timeout=10)

    async def alone():
        async with connect(b.url + "/ws/chat/r"):
            pass

    run(alone())


def test_a_ban_on_one_node_refuses_the_address_on_every_node(wsgate, redis):
    ban = '\n[firewall.ban]\nafter = 3\nwindow = "1m"\nduration = "1m"\n'
    cluster = f'\n[cluster]\nredis = "{redis.url}"\nnode_id = "%s"\n'

    def start(name):
        n = wsgate(config(routes=ROOM) + ban + cluster % name)
        assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)
        return n

    a, b = start("a"), start("b")

    async def refused_on(n, path):
        with pytest.raises(InvalidStatus) as e:
            async with connect(n.url + path):
                pass
        return e.value.response

    async def go():
        for _ in range(3):
            assert (await refused_on(a, "/nowhere")).status_code == 404
        assert (await refused_on(a, "/ws/chat/r")).headers["wsgate-reason"] == "firewall.banned"
        # On node b the ban arrives within a second.
        deadline = time.time() + 1.0
        while True:
            try:
                async with connect(b.url + "/ws/chat/r"):
                    pass
            except InvalidStatus as e:
                r = e.response
                break
            assert time.time() < deadline, "node b did not refuse the banned address within 1 s"
            await asyncio.sleep(0.05)
        return r

    r = run(go())
    assert r.status_code == 403 and r.headers["wsgate-reason"] == "firewall.banned"
    # A node that starts after the ban reads it from Redis.
    c = start("c")

    async def late():
        return await refused_on(c, "/ws/chat/r")

    assert run(late()).headers["wsgate-reason"] == "firewall.banned"


def admin_post(n, path, body):
    """An admin-page action, with the anti-forgery token the page would send."""
    with urllib.request.urlopen(n.admin + "/api/state", timeout=5) as r:
        csrf = json.loads(r.read())["csrf"]
    req = urllib.request.Request(n.admin + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"x-wsgate-csrf": csrf, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_an_operators_ban_and_its_lift_reach_every_node_without_a_ban_policy(wsgate, redis):
    cluster = f'\n[cluster]\nredis = "{redis.url}"\nnode_id = "%s"\n'
    a, b = (wsgate(config(routes=ROOM) + cluster % name) for name in ("a", "b"))
    for n in (a, b):
        assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)

    async def code_on(n):
        try:
            async with connect(n.url + "/ws/chat/r"):
                return "admitted"
        except InvalidStatus as e:
            return e.response.headers.get("wsgate-reason")

    async def until(n, want, why):
        deadline = time.time() + 2.0
        while (got := await code_on(n)) != want:
            assert time.time() < deadline, f"{why}: still {got}"
            await asyncio.sleep(0.05)

    # The admin page shows the cluster link.
    with urllib.request.urlopen(a.admin + "/api/state", timeout=5) as r:
        cluster = json.loads(r.read())["figures"]["cluster"]
    assert cluster["node"] == "a" and cluster["up"] is True, cluster
    assert admin_post(a, "/api/ban", {"address": "127.0.0.1", "seconds": 60})["banned"] == "127.0.0.1"
    run(until(a, "firewall.banned", "node a"))
    run(until(b, "firewall.banned", "the ban did not reach node b"))
    assert admin_post(a, "/api/unban", {"address": "127.0.0.1"})["lifted"] is True
    run(until(b, "admitted", "the lift did not reach node b"))
    run(until(a, "admitted", "node a"))


KEY = "table-key-0123"  # printf %s KEY | sha256sum below
IDENTITY_ROUTE = ROOM + """
[route.auth]
sources = ["bearer"]
api_keys = [{ name = "ci", sha256 = "6a2ea6b7682939cdf265e33233e715552583f041a692825385c7906ef3faf5dd" }]
"""


def test_an_identitys_connections_are_counted_across_nodes_and_a_dead_nodes_leases_expire(wsgate, redis):
    cluster = f'\n[cluster]\nredis = "{redis.url}"\nnode_id = "%s"\nlease_ttl = "1s"\n'
    limits = "max_connections_per_identity = 1\n"
    a = wsgate(config(routes=IDENTITY_ROUTE, limits=limits) + cluster % "a")
    b = wsgate(config(routes=IDENTITY_ROUTE, limits=limits) + cluster % "b")
    for n in (a, b):
        assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)
    auth = {"Authorization": f"Bearer {KEY}"}

    async def admitted_within(n, seconds):
        """Connects (retrying while refused for the identity) and returns the open connection."""
        deadline = time.time() + seconds
        while True:
            try:
                return await connect(n.url + "/ws/chat/r", additional_headers=auth)
            except InvalidStatus as e:
                assert e.response.headers["wsgate-reason"] == "limit.client_connections"
                assert time.time() < deadline, "still refused"
                await asyncio.sleep(0.1)

    async def go():
        held = await connect(a.url + "/ws/chat/r", additional_headers=auth)
        with pytest.raises(InvalidStatus) as e:
            await connect(b.url + "/ws/chat/r", additional_headers=auth)
        assert e.value.response.status_code == 429
        await held.close()
        # The lease goes when the connection does.
        return await admitted_within(b, 3)

    on_b = run(go())
    assert "across the cluster" in b.wait_log("across the cluster", timeout=5)
    # Node b dies holding the identity's one place: it counts until its lease expires (1 s).
    b.stop(signal.SIGKILL)

    async def after():
        ws = await admitted_within(a, 6)
        await ws.close()

    run(after())
    del on_b


def test_a_node_told_to_refuse_without_redis_answers_503_until_redis_is_back(wsgate, redis):
    n = wsgate(config(routes=ROOM) + f'\n[cluster]\nredis = "{redis.url}"\non_redis_down = "refuse"\n')
    assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)

    async def attempt():
        try:
            async with connect(n.url + "/ws/chat/r"):
                return None
        except InvalidStatus as e:
            return e.response

    assert run(attempt()) is None
    redis.kill()
    assert n.wait_metric("wsgate_cluster_up", 0, timeout=10)
    r = run(attempt())
    assert r.status_code == 503 and r.headers["wsgate-reason"] == "cluster.unavailable"
    assert "Retry-After" in r.headers
    redis.start()
    assert n.wait_metric("wsgate_cluster_up", 1, timeout=15)
    assert run(attempt()) is None


def test_check_shows_the_cluster_without_its_password(tmp_path, redis):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config(routes=ROOM) + '\n[cluster]\nredis = "redis://:s3cret-pass@127.0.0.1:1/0"\nnode_id = "n1"\n')
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "cluster node_id=n1 redis=redis://:***@127.0.0.1:1/0" in out.stdout
    assert "WARNING cluster: cannot connect" in out.stdout and "nothing listens there" in out.stdout, out.stdout
    assert "s3cret-pass" not in out.stdout + out.stderr
    cfg.write_text(config(routes=ROOM) + f'\n[cluster]\nredis = "{redis.url}"\n')
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "(Redis answered PING)" in out.stdout, out.stdout
    cfg.write_text(config(routes=ROOM) + '\n[cluster]\nredis = "http://127.0.0.1:6379"\n')
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "`cluster.redis`" in out.stderr and "redis://" in out.stderr


def test_the_redis_password_comes_from_a_file_or_the_environment_and_is_never_shown(wsgate, tmp_path):
    r = Redis(tmp_path, password="pa55-word")
    try:
        secret = tmp_path / "redis.pass"
        secret.write_text("pa55-word\n")
        n = wsgate(config(routes=ROOM) + f'\n[cluster]\nredis = "{r.url}"\npassword_file = "{secret}"\n')
        assert n.wait_metric("wsgate_cluster_up", 1, timeout=10)
        cfg = tmp_path / "wrong.toml"
        cfg.write_text(config(routes=ROOM) + f'\n[cluster]\nredis = "{r.url}"\npassword_env = "WSGATE_TEST_REDIS_PASS"\n')
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "WSGATE_TEST_REDIS_PASS": "not-it"})
        assert out.returncode == 0 and "Redis refused the password" in out.stdout, out.stdout
        assert "not-it" not in out.stdout + out.stderr
        # serve says the same in its outage line, and keeps serving on its own.
        wrong = tmp_path / "wrong.pass"
        wrong.write_text("not-it\n")
        m = wsgate(config(routes=ROOM) + f'\n[cluster]\nredis = "{r.url}"\npassword_file = "{wrong}"\n')
        log = m.wait_log("Redis refused the password", timeout=10)
        assert "cluster.password_file" in log and "not-it" not in log, log
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30,
                             env={k: v for k, v in os.environ.items() if k != "WSGATE_TEST_REDIS_PASS"})
        assert "WSGATE_TEST_REDIS_PASS is not set" in out.stdout, out.stdout
        assert "pa55-word" not in n.log()
    finally:
        r.kill()



def test_every_json_log_line_names_the_node(wsgate):
    # Redis unreachable (port 1): the outage warning is a log line like any other.
    n = wsgate(config(routes=ROOM, logging='format = "json"\n')
               + '\n[cluster]\nredis = "redis://127.0.0.1:1/0"\nnode_id = "gw-7"\n')
    n.wait_log("Redis unreachable", timeout=10)
    n.stop()
    lines = [json.loads(l) for l in n.log_path.read_text().splitlines() if l.strip()]
    assert lines and all(l["node"] == "gw-7" for l in lines), lines


def redis_pki(d):
    """A CA, Redis's certificate for 127.0.0.1 and a client certificate, as PEM files in `d`."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(cn, issuer, sign_key, key, ca=False, san=None):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    def write(name, c, k):
        (d / f"{name}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        return d / f"{name}.pem", d / f"{name}.key"

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Redis test CA")])
    ca = cert("Redis test CA", ca_name, ca_key, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {"ca": write("ca", ca, ca_key)[0]}
    files["server"] = write("server", cert("redis", ca_name, ca_key, server_key,
                                           san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), server_key)
    files["client"] = write("client", cert("gw", ca_name, ca_key, client_key), client_key)
    return files


def test_tls_to_redis_with_a_private_ca_and_a_client_certificate(wsgate, tmp_path):
    pki = redis_pki(tmp_path)
    (server_cert, server_key), ca = pki["server"], pki["ca"]
    r = Redis(tmp_path, tls=(server_cert, server_key, ca, "yes"))
    try:
        client_cert, client_key = pki["client"]
        tls = f'ca_file = "{ca}"\ncert_file = "{client_cert}"\nkey_file = "{client_key}"\n'
        a = wsgate(config(routes=ROOM) + f'\n[cluster]\nredis = "{r.url}"\nnode_id = "a"\n' + tls)
        b = wsgate(config(routes=ROOM) + f'\n[cluster]\nredis = "{r.url}"\nnode_id = "b"\n' + tls)
        for n in (a, b):
            assert n.wait_metric("wsgate_cluster_up", 1, timeout=10), n.log()

        async def across():
            async with connect(b.url + "/ws/chat/tls") as member, connect(a.url + "/ws/chat/tls") as pub:
                await asyncio.sleep(0.5)
                await pub.send("over tls")
                assert await asyncio.wait_for(member.recv(), 5) == "over tls"

        run(across())

        cfg = tmp_path / "c.toml"

        def check(extra):
            cfg.write_text(config(routes=ROOM) + f'\n[cluster]\nredis = "{r.url}"\n' + extra)
            return subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)

        out = check(tls)
        assert out.returncode == 0 and "(Redis answered PING)" in out.stdout, out.stdout
        assert f"ca_file={ca}" in out.stdout
        # Redis's certificate is signed by a CA the system does not trust: said, not guessed.
        out = check("")
        assert out.returncode == 0 and "WARNING cluster:" in out.stdout, out.stdout
        assert "set cluster.ca_file" in out.stdout, out.stdout
        # Redis asks for a client certificate (tls-auth-clients yes) and gets none.
        out = check(f'ca_file = "{ca}"\n')
        assert out.returncode == 0 and "set cluster.cert_file and cluster.key_file" in out.stdout, out.stdout
        # Mistakes in the file are errors that name the key.
        out = check(f'ca_file = "{tmp_path / "missing.pem"}"\n')
        assert out.returncode != 0 and "`cluster.ca_file`" in out.stderr and "missing.pem" in out.stderr, out.stderr
        out = check(f'ca_file = "{client_key}"\n')
        assert out.returncode != 0 and "no PEM certificate" in out.stderr, out.stderr
        out = check(f'cert_file = "{client_cert}"\n')
        assert out.returncode != 0 and "`cluster.key_file`" in out.stderr, out.stderr
        cfg.write_text(config(routes=ROOM) + f'\n[cluster]\nredis = "redis://127.0.0.1:1/0"\nca_file = "{ca}"\n')
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "`cluster.ca_file`" in out.stderr and "rediss://" in out.stderr, out.stderr
    finally:
        r.kill()


def cluster_port():
    """A free port whose cluster bus port (itself + 10000, Redis's rule) is free and valid too."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        return p
    raise AssertionError("no free port pair for a Redis Cluster node")


class RedisCluster:
    """A throwaway Redis Cluster on 127.0.0.1: three redis-server primaries, the slots split by
    `redis-cli --cluster create`."""

    def __init__(self, tmp_path):
        exe = require_tool("redis-server", "Debian's redis-server runs the cluster tests")
        self.cli = require_tool("redis-cli", "Debian's redis-tools creates the Redis Cluster")
        self.ports = [cluster_port() for _ in range(3)]
        self.procs = []
        for p in self.ports:
            d = tmp_path / f"shard-{p}"
            d.mkdir()
            self.procs.append(subprocess.Popen(
                [exe, "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d),
                 "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf")],
                stdout=open(d / "redis.log", "wb"), stderr=subprocess.STDOUT))
        for p in self.ports:
            self.wait(lambda: self.ask(p, "PING") == "PONG", "a shard did not start")
        out = subprocess.run([self.cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                              "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        for p in self.ports:
            self.wait(lambda: "cluster_state:ok" in self.ask(p, "CLUSTER", "INFO"), "the cluster did not form")

    def ask(self, port, *args):
        out = subprocess.run([self.cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    @staticmethod
    def wait(ready, why):
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.1)
        raise AssertionError(why)

    def url(self, i):
        return f"redis://127.0.0.1:{self.ports[i]}/0"

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait(5)


def test_sharded_pub_sub_on_a_redis_cluster_carries_rooms_limits_and_bans(wsgate, tmp_path):
    rc = RedisCluster(tmp_path)
    try:
        ban = '\n[firewall.ban]\nafter = 3\nwindow = "1m"\nduration = "1m"\n'
        limits = "handshake_rate = 0.05\nhandshake_burst = 40\n"

        def start(name, seed):
            n = wsgate(config(routes=ROOM, limits=limits) + ban
                       + f'\n[cluster]\nredis = "{rc.url(seed)}"\nnode_id = "{name}"\nsharded = true\n')
            assert n.wait_metric("wsgate_cluster_up", 1, timeout=15), n.log()
            return n

        a, b = start("a", 0), start("b", 1)
        rooms = [f"room{i}" for i in range(8)]

        async def across():
            members = [await connect(b.url + f"/ws/chat/{r}") for r in rooms]
            pubs = [await connect(a.url + f"/ws/chat/{r}") for r in rooms]
            await asyncio.sleep(0.5)
            for i in range(5):
                for r, p in zip(rooms, pubs):
                    await p.send(f"{r}-{i}")
            for r, m in zip(rooms, members):
                got = [await asyncio.wait_for(m.recv(), 5) for _ in range(5)]
                assert got == [f"{r}-{i}" for i in range(5)], got
            # Each room's channel lives on one shard (sharded pub/sub), and the rooms spread.
            owners = {}
            for p in rc.ports:
                for ch in rc.ask(p, "PUBSUB", "SHARDCHANNELS").split():
                    owners.setdefault(ch, []).append(p)
            room_channels = {ch: ps for ch, ps in owners.items() if ":room:" in ch}
            assert len(room_channels) == len(rooms), owners
            assert all(len(ps) == 1 for ps in room_channels.values()), owners
            assert len({ps[0] for ps in room_channels.values()}) > 1, owners
            assert rc.ask(rc.ports[0], "PUBSUB", "CHANNELS") == "", "no classic (broadcast) channels"
            for w in members + pubs:
                await w.close()

        run(across(), timeout=60)

        async def refused_on(n, path):
            with pytest.raises(InvalidStatus) as e:
                async with connect(n.url + path):
                    pass
            return e.value.response

        async def banned():
            for _ in range(3):
                assert (await refused_on(a, "/nowhere")).status_code == 404
            deadline = time.time() + 1.0
            while True:
                try:
                    async with connect(b.url + "/ws/chat/r"):
                        pass
                except InvalidStatus as e:
                    return e.response
                assert time.time() < deadline, "node b did not refuse the banned address within 1 s"
                await asyncio.sleep(0.05)

        assert run(banned()).headers["wsgate-reason"] == "firewall.banned"
        c = start("c", 2)
        assert run(refused_on(c, "/ws/chat/r")).headers["wsgate-reason"] == "firewall.banned"
        # The shared rate counted every handshake above on both nodes, in one bucket.
        key = "wsgate:rate:127.0.0.1"
        assert any(rc.ask(p, "-c", "HGET", key, "tokens") for p in rc.ports)
        # wsgate check finds the cluster; without sharded it says how to fix the mistake.
        cfg = tmp_path / "c.toml"
        cfg.write_text(config(routes=ROOM) + f'\n[cluster]\nredis = "{rc.url(0)}"\nsharded = true\n')
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "sharded=true" in out.stdout and "(Redis answered PING)" in out.stdout, out.stdout
        cfg.write_text(config(routes=ROOM) + f'\n[cluster]\nredis = "{rc.url(0)}"\n')
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert "set cluster.sharded = true" in out.stdout, out.stdout
    finally:
        rc.stop()


def test_sharded_against_a_single_redis_says_it_needs_a_redis_cluster(wsgate, tmp_path, redis):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config(routes=ROOM) + f'\n[cluster]\nredis = "{redis.url}"\nsharded = true\n')
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "needs a Redis Cluster" in out.stdout, out.stdout
    n = wsgate(config(routes=ROOM) + f'\n[cluster]\nredis = "{redis.url}"\nsharded = true\n')
    assert "needs a Redis Cluster" in n.wait_log("needs a Redis Cluster", timeout=10)
    assert n.metric("wsgate_cluster_up") == 0
