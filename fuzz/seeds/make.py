"""Writes the seed corpus (fuzz/seeds/TARGET/) from the shapes the test suite uses: run it after
changing a test's inputs. The seeds are committed; what fuzzing finds goes to a cache, not here."""

import base64
import hashlib
import hmac
import json
import pathlib
import struct
import zlib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KEY = base64.b64encode(b"0123456789abcdef").decode()


def write(target, name, data):
    d = HERE / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def handshake(path="/ws/echo", host="127.0.0.1", extra=(), method="GET"):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13", *[f"{k}: {v}" for k, v in extra]]
    return "\r\n".join(lines) + "\r\n\r\n"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256(claims, header=None, secret=b"a-shared-secret-of-at-least-32-bytes!"):
    h = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


CLAIMS = {"sub": "alice", "iss": "https://issuer.test", "aud": "wsgate", "exp": 4102444800, "rooms": ["chat:lobby"]}

# handshake
write("handshake", "echo", handshake())
write("handshake", "origin", handshake(extra=[("Origin", "https://a.example.org")]))
write("handshake", "chat-bearer", handshake("/ws/chat/lobby", extra=[("Authorization", "Bearer " + hs256(CLAIMS))]))
write("handshake", "chat-subprotocol", handshake("/ws/chat/lobby", extra=[("Sec-WebSocket-Protocol", "chat.v1, token.k, token.k")]))
write("handshake", "chat-query-cookie", handshake("/ws/chat/lobby?access_token=a%2Db", extra=[("Cookie", "a=b; wsgate_token=c")]))
write("handshake", "absolute-form", handshake("http://other.host/ws/echo"))
write("handshake", "smuggling", handshake(extra=[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]) + "0\r\n\r\n")
write("handshake", "bad-version", handshake(extra=[("Sec-WebSocket-Version", "8")]).replace("Version: 13\r\n", "", 1))

# client_frames: masked frames as the tests send them


def frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    head = bytes([b0, 0x80 | n]) if n < 126 else bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def deflated(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def rsv1(f):
    return bytes([f[0] | 0x40]) + f[1:]


# The first byte picks permessage-deflate: 0 none, 1 stateless, 2 contextual.
write("client_frames", "text", b"\x00" + frame(1, b"hello"))
write("client_frames", "fragments-ping", b"\x00" + frame(1, b"he", fin=False) + frame(9, b"p") + frame(0, b"llo"))
write("client_frames", "binary-200", b"\x00" + frame(2, bytes(range(200))))
write("client_frames", "close", b"\x00" + frame(8, struct.pack("!H", 1000) + b"bye"))
write("client_frames", "bad-utf8", b"\x00" + frame(1, b"\xce\xbb\xff"))
write("client_frames", "split-utf8", b"\x00" + frame(1, b"\xce", fin=False) + frame(0, b"\xbb"))
write("client_frames", "deflate-text", b"\x01" + rsv1(frame(1, deflated(b'{"text":"hello hello hello"}' * 4))))
packed = deflated(b"abcdefgh" * 40)
write("client_frames", "deflate-fragments", b"\x02" + rsv1(frame(2, packed[:5], fin=False)) + frame(0, packed[5:]))
write("client_frames", "deflate-bomb", b"\x01" + rsv1(frame(2, deflated(bytes(100000)))))

# proxy_protocol
write("proxy_protocol", "v1", b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n")
write("proxy_protocol", "v1-unknown", b"PROXY UNKNOWN\r\n")
src = bytes.fromhex("20010db80bad00000000000000000001")
body = src + bytes(15) + b"\x01" + struct.pack("!HH", 4444, 80)
write("proxy_protocol", "v2-tcp6", b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body)
body4 = bytes([198, 51, 100, 9, 127, 0, 0, 1]) + struct.pack("!HH", 4444, 80)
write("proxy_protocol", "v2-tcp4", b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body4)) + body4)

# forwarded: first byte even = Forwarded, odd = X-Forwarded-For
write("forwarded", "xff", b"\x0110.0.0.1, 198.51.100.7, 10.1.2.3")
write("forwarded", "forwarded", b'\x00for=10.0.0.1, for="[2001:db8::7]:4711";proto=https')
write("forwarded", "both", b"\x00for=unknown\n\x01198.51.100.7:5555")

# origin_host: origin, host, entries
write("origin_host", "exact", "https://app.example.com\napp.example.com\nhttps://app.example.com\nsame-origin")
write("origin_host", "wildcard", "https://a.b.example.org\ngw.test:8443\nhttps://*.example.org\nhttp://localhost:3000\nnull")
write("origin_host", "lookalike", "https://example.org.evil.net\n127.0.0.1\nhttps://*.example.org\ngw.test")

# jwt
write("jwt", "hs256", hs256(CLAIMS, {"alg": "HS256", "kid": "k1"}))
write("jwt", "none", b64(b'{"alg":"none"}') + "." + b64(json.dumps(CLAIMS).encode()) + ".")
write("jwt", "crit", hs256(CLAIMS, {"alg": "HS256", "kid": "k1", "crit": ["x"], "x": 1}))
write("jwt", "jwks", json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
                                             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                                             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}))

# config: the embedded default and the README's full example
write("config", "default", (ROOT / "crates/wsgate-server/src/default.toml").read_text())
readme = (ROOT / "README.md").read_text()
start = readme.index("```toml\n[[listener]]") + len("```toml\n")
write("config", "readme-all-keys", readme[start:readme.index("```", start)])

# doctor_answer
write("doctor_answer", "101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
write("doctor_answer", "nginx-403", "HTTP/1.1 403 Forbidden\r\nServer: nginx/1.22.1\r\nContent-Length: 153\r\n\r\n")
write("doctor_answer", "wsgate-401", "HTTP/1.1 401 Unauthorized\r\nwsgate-reason: auth.missing\r\nx-request-id: abc\r\n"
      "WWW-Authenticate: Bearer realm=\"wsgate\"\r\n\r\n")
write("doctor_answer", "frames", bytes([0x89, 0x02]) + b"hi" + bytes([0x88, 0x05]) + struct.pack("!H", 1008) + b"bad")
write("doctor_answer", "huge-length", bytes([0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF7, 1, 2]))

# doctor_answer: a real certificate (DER), as a TLS server would present it
import subprocess
import tempfile

with tempfile.TemporaryDirectory() as d:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{d}/k.pem", "-out", f"{d}/c.der", "-outform", "DER", "-days", "30",
                    "-subj", "/CN=example.test", "-addext", "subjectAltName=DNS:example.test,IP:127.0.0.1"],
                   check=True, capture_output=True)
    write("doctor_answer", "certificate.der", pathlib.Path(f"{d}/c.der").read_bytes())

# extensions: Sec-WebSocket-Extensions as browsers, libraries and upstreams write it
write("extensions", "browser", "permessage-deflate; client_max_window_bits")
write("extensions", "two", 'permessage-deflate; server_no_context_takeover; server_max_window_bits="10", permessage-deflate')
write("extensions", "mixed", "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover; client_max_window_bits=9")
