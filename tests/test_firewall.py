"""The firewall and host gates against the real binary: allow/deny lists, trusted proxies and spoofed
forwarding headers, automatic bans, and the Host allowlist."""

import socket
import subprocess
import time

from conftest import BIN, config, handshake, raw


def raw_from(source, port, data):
    """Status and headers of a raw request sent from another loopback source address."""
    r = raw(port, data, source=source)
    return r.status, {k: v[0] for k, v in r.headers.items()}


ROUTES = """
[[route]]
path = "/ws/echo"
kind = "echo"

[[route]]
path = "/ws/internal"
kind = "echo"
firewall = { allow = ["10.0.0.0/8"] }

[[route]]
path = "/ws/no-bad"
kind = "echo"
firewall = { deny = ["203.0.113.0/24"] }

[[route]]
path = "/ws/named"
kind = "echo"
hosts = ["gw.test"]
"""


def test_global_deny_wins(wsgate):
    s = wsgate(config(routes=ROUTES).replace("[[route]]", '[firewall]\ndeny = ["127.0.0.2"]\nallow = ["127.0.0.0/8"]\n\n[[route]]', 1))
    assert raw_from("127.0.0.1", s.port, handshake())[0] == 101
    status, h = raw_from("127.0.0.2", s.port, handshake())
    assert status == 403 and h["wsgate-reason"] == "firewall.ip_denied"
    status, h = raw_from("127.0.0.2", s.port, handshake("/nope"))
    assert status == 403, "the global firewall runs before route lookup: a denied client learns nothing"


def test_route_allow_list(wsgate):
    s = wsgate(config(routes=ROUTES))
    r = raw(s.port, handshake("/ws/internal"))
    assert r.status == 403 and r.header("wsgate-reason") == "firewall.ip_denied"
    assert raw(s.port, handshake("/ws/echo")).status == 101


def trusting(header):
    """The test routes behind a trusted proxy on 127.0.0.1 that sets `header`."""
    return config(routes=ROUTES).replace(
        "[[route]]",
        f'[firewall]\ntrusted_proxies = ["127.0.0.1"]\nclient_address_header = "{header}"\n\n[[route]]',
        1,
    )


def test_forwarded_for_is_believed_only_from_trusted_proxies(wsgate):
    s = wsgate(trusting("x-forwarded-for"))
    # from the trusted proxy, the real client 203.0.113.5 is judged: denied on /ws/no-bad
    status, h = raw_from("127.0.0.1", s.port, handshake("/ws/no-bad", headers=[("X-Forwarded-For", "203.0.113.5")]))
    assert status == 403 and h["wsgate-reason"] == "firewall.ip_denied"
    # a client prepending a fake internal address still is the right-most untrusted hop
    status, _ = raw_from("127.0.0.1", s.port, handshake("/ws/internal", headers=[("X-Forwarded-For", "10.0.0.1, 198.51.100.1")]))
    assert status == 403
    # the same headers from an untrusted peer are ignored: it is judged as itself
    status, _ = raw_from("127.0.0.3", s.port, handshake("/ws/internal", headers=[("X-Forwarded-For", "10.0.0.1")]))
    assert status == 403
    status, _ = raw_from("127.0.0.3", s.port, handshake("/ws/no-bad", headers=[("X-Forwarded-For", "203.0.113.5")]))
    assert status == 101
    assert 'client=203.0.113.5' in s.log()
    assert "X-Forwarded-For from a peer that is not in firewall.trusted_proxies: ignored" in s.log()


def test_only_the_configured_forwarding_header_is_believed(wsgate):
    """Attack: behind nginx, which appends X-Forwarded-For and passes the client's own `Forwarded`
    through, a denied client sends `Forwarded: for=<allowed address>`. Only the header the operator
    named is read."""
    s = wsgate(trusting("x-forwarded-for"))
    spoof = [("Forwarded", "for=10.1.2.3"), ("X-Forwarded-For", "203.0.113.5")]
    status, h = raw_from("127.0.0.1", s.port, handshake("/ws/no-bad", headers=spoof))
    assert status == 403 and h["wsgate-reason"] == "firewall.ip_denied", "X-Forwarded-For decides"
    status, _ = raw_from("127.0.0.1", s.port, handshake("/ws/internal", headers=[("Forwarded", "for=10.1.2.3")]))
    assert status == 403, "a Forwarded header is not believed when the proxies set X-Forwarded-For"
    s = wsgate(trusting("forwarded"))
    status, _ = raw_from("127.0.0.1", s.port, handshake("/ws/internal", headers=[("Forwarded", 'for="10.1.2.3:999"')]))
    assert status == 101
    status, _ = raw_from("127.0.0.1", s.port, handshake("/ws/internal", headers=[("X-Forwarded-For", "10.1.2.3")]))
    assert status == 403, "X-Forwarded-For is not believed when the proxies set Forwarded"


def test_trusted_proxies_without_a_named_header_is_a_config_error(tmp_path):
    p = tmp_path / "wsgate.toml"
    p.write_text(config(routes=ROUTES).replace("[[route]]", '[firewall]\ntrusted_proxies = ["127.0.0.1"]\n\n[[route]]', 1))
    r = subprocess.run([BIN, "check", "--config", str(p)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "firewall.client_address_header" in r.stderr and "x-forwarded-for" in r.stderr


def test_repeated_refusals_ban_the_address(wsgate):
    text = config(routes=ROUTES).replace(
        "[[route]]", '[firewall.ban]\nafter = 3\nwindow = "1m"\nduration = "10m"\n\n[[route]]', 1
    )
    s = wsgate(text)
    for _ in range(3):
        assert raw_from("127.0.0.4", s.port, handshake("/probe"))[0] == 404
    status, h = raw_from("127.0.0.4", s.port, handshake())
    assert status == 403 and h["wsgate-reason"] == "firewall.banned"
    assert raw_from("127.0.0.5", s.port, handshake())[0] == 101, "other addresses are not affected"
    assert "client banned after repeated refused handshakes" in s.log()
    assert s.metric("wsgate_handshakes_refused_total", code="firewall.banned") == 1


def test_host_allowlist(wsgate):
    s = wsgate(config(routes=ROUTES))
    r = raw(s.port, handshake("/ws/named", host=f"127.0.0.1:{s.port}"))
    assert r.status == 403 and r.header("wsgate-reason") == "host.not_allowed"
    assert raw(s.port, handshake("/ws/named", host=f"gw.test:{s.port}")).status == 101
    assert raw(s.port, handshake("/ws/named", host="GW.TEST")).status == 101
    assert raw(s.port, handshake("/ws/named", host="gw.test.evil.net")).status == 403


def test_handshake_rate_per_address_gives_429_with_retry_after(wsgate):
    s = wsgate(config(limits="handshake_rate = 1\nhandshake_burst = 2\n"))
    assert raw_from("127.0.0.6", s.port, handshake())[0] == 101
    assert raw_from("127.0.0.6", s.port, handshake())[0] == 101
    status, h = raw_from("127.0.0.6", s.port, handshake())
    assert status == 429 and h["wsgate-reason"] == "limit.rate"
    assert h["retry-after"] == "1"
    assert raw_from("127.0.0.7", s.port, handshake())[0] == 101, "another address has its own bucket"
    time.sleep(1.1)
    assert raw_from("127.0.0.6", s.port, handshake())[0] == 101, "the bucket refills"


def test_connection_caps_per_address_and_identity(wsgate):
    import hashlib

    sha = hashlib.sha256(b"key-one").hexdigest()
    routes = f"""
    [[route]]
    path = "/ws/echo"
    kind = "echo"
    [[route]]
    path = "/ws/private"
    kind = "echo"
    [route.auth]
    api_keys = [{{ name = "one", sha256 = "{sha}" }}]
    """
    s = wsgate(config(routes=routes, limits="max_connections_per_client = 2\nmax_connections_per_identity = 1\n"))
    a1 = raw(s.port, handshake(), keep_open=True)
    a2 = raw(s.port, handshake(), keep_open=True)
    assert a1.status == a2.status == 101
    r = raw(s.port, handshake())
    assert r.status == 429 and r.header("wsgate-reason") == "limit.client_connections"
    assert raw_from("127.0.0.8", s.port, handshake())[0] == 101, "other addresses are not limited"
    a2.sock.close()
    auth = [("Authorization", "Bearer key-one")]
    k1 = raw(s.port, handshake("/ws/private", headers=auth), keep_open=True)
    deadline = time.time() + 5
    while k1.status != 101 and time.time() < deadline:  # the closed connection's slot comes back
        time.sleep(0.05)
        k1 = raw(s.port, handshake("/ws/private", headers=auth), keep_open=True)
    assert k1.status == 101
    status, h = raw_from("127.0.0.10", s.port, handshake("/ws/private", headers=auth))
    assert status == 429 and h["wsgate-reason"] == "limit.client_connections", "one connection per identity"


PP_ROUTES = """
[firewall]
trusted_proxies = ["127.0.0.1"]
client_address_header = "none"

[[route]]
path = "/ws/no-bad"
kind = "echo"
firewall = { deny = ["203.0.113.0/24", "2001:db8:bad::/48"] }
"""


def pp_config():
    return config(routes=PP_ROUTES, listener_extra="proxy_protocol = true\n")


def test_proxy_protocol_v1_and_v2_from_a_trusted_load_balancer(wsgate):
    import struct

    s = wsgate(pp_config())
    v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n"
    status, h = raw_from("127.0.0.1", s.port, v1 + handshake("/ws/no-bad"))
    assert status == 403 and h["wsgate-reason"] == "firewall.ip_denied"
    ok = b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 80\r\n"
    assert raw_from("127.0.0.1", s.port, ok + handshake("/ws/no-bad"))[0] == 101
    src = socket.inet_pton(socket.AF_INET6, "2001:db8:bad::1")
    dst = socket.inet_pton(socket.AF_INET6, "::1")
    body = src + dst + struct.pack("!HH", 4444, 80)
    v2 = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body
    status, _ = raw_from("127.0.0.1", s.port, v2 + handshake("/ws/no-bad"))
    assert status == 403
    assert "client=2001:db8:bad::1" in s.log()


def test_proxy_protocol_from_an_untrusted_peer_is_ignored_and_a_missing_header_closes(wsgate):
    s = wsgate(pp_config())
    spoof = b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 80\r\n"
    assert raw_from("127.0.0.2", s.port, spoof + handshake("/ws/no-bad"))[0] == 101
    assert "PROXY header from a peer not in firewall.trusted_proxies: ignored" in s.log()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    sock.sendall(handshake("/ws/no-bad"))  # no PROXY header
    try:
        assert sock.recv(100) == b"", "closed without an answer"
    except ConnectionResetError:
        pass  # closed with our unread request pending: the kernel resets
    assert "no valid PROXY header" in s.log()
