#!/usr/bin/env python3
"""An independent HBONE client (Python's `h2` + `ssl`) for the interop test in interop.rs.

Usage: h2_interop.py HOST PORT CERT KEY CA GOOD_AUTHORITY BAD_AUTHORITY

Speaks HBONE as ztunnel does: TLS 1.3 with a client certificate, ALPN h2, no SNI, then a
classic CONNECT (no :scheme/:path) with baggage, forwarded and traceparent headers. Checks:
  1. CONNECT GOOD_AUTHORITY -> 200, bytes echo back, END_STREAM both ways;
  2. CONNECT BAD_AUTHORITY (IP not the server's) -> 400 and the stream ends;
  3. GET -> 400.
Prints one line per check; exits non-zero on any failure (2 if the h2 package is missing).
"""
import socket
import ssl
import sys

try:
    import h2.config
    import h2.connection
    import h2.events
except ImportError as e:  # the test must fail, not skip, without it
    print(f"python h2 package missing ({e}); install it with 'pip install h2'", file=sys.stderr)
    sys.exit(2)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
PAYLOAD = b"hello from python h2 " * 1000


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


class Client:
    def __init__(self, host, port, cert, key, ca):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # SPIFFE certificates carry a URI SAN and no DNS name: verify the chain only.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, port), timeout=10)
        self.sock = ctx.wrap_socket(raw)  # no server_hostname: no SNI, as ztunnel
        if self.sock.selected_alpn_protocol() != "h2":
            fail(f"ALPN negotiated {self.sock.selected_alpn_protocol()!r}, want 'h2'")
        if self.sock.version() != "TLSv1.3":
            fail(f"negotiated {self.sock.version()}")
        print(f"tls: {self.sock.version()} {self.sock.cipher()[0]} alpn=h2")
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.flush()
        self.events = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self):
        data = self.sock.recv(65536)
        if not data:
            fail("server closed the connection")
        for ev in self.conn.receive_data(data):
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            if sid:
                self.events.setdefault(sid, []).append(ev)
        self.flush()

    def wait(self, sid, kinds):
        while True:
            for ev in self.events.get(sid, []):
                if isinstance(ev, kinds):
                    return ev
            self.pump()

    def status(self, sid):
        ev = self.wait(sid, (h2.events.ResponseReceived, h2.events.StreamReset))
        if isinstance(ev, h2.events.StreamReset):
            fail(f"stream {sid} reset ({ev.error_code}) instead of a response")
        return dict(ev.headers)[":status"]

    def body(self, sid):
        self.wait(sid, (h2.events.StreamEnded, h2.events.StreamReset))
        evs = self.events[sid]
        if any(isinstance(e, h2.events.StreamReset) for e in evs):
            fail(f"stream {sid} was reset")
        return b"".join(e.data for e in evs if isinstance(e, h2.events.DataReceived))


def main():
    host, port, cert, key, ca, good, bad = sys.argv[1:8]
    c = Client(host, int(port), cert, key, ca)

    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [
        (":method", "CONNECT"),
        (":authority", good),
        ("baggage", "k8s.namespace.name=python"),
        ("forwarded", 'for="10.9.8.7:6543"'),
        ("traceparent", TRACEPARENT),
    ])
    c.flush()
    status = c.status(sid)
    if status != "200":
        fail(f"CONNECT {good}: status {status}, want 200")
    # Send in window-sized pieces so flow control is exercised without blocking.
    view = memoryview(PAYLOAD)
    while view:
        window = c.conn.local_flow_control_window(sid)
        if window == 0:
            c.pump()
            continue
        n = min(window, c.conn.max_outbound_frame_size, len(view))
        c.conn.send_data(sid, view[:n].tobytes())
        view = view[n:]
        c.flush()
    c.conn.end_stream(sid)
    c.flush()
    echoed = c.body(sid)
    if echoed != PAYLOAD:
        fail(f"echo mismatch: sent {len(PAYLOAD)} bytes, got {len(echoed)}")
    print(f"connect {good}: 200, echoed {len(echoed)} bytes, END_STREAM both ways")

    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", bad)])
    c.flush()
    status = c.status(sid)
    if status != "400":
        fail(f"CONNECT {bad}: status {status}, want 400")
    c.wait(sid, (h2.events.StreamEnded, h2.events.StreamReset))
    print(f"connect {bad}: 400, stream ended")

    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, [
        (":method", "GET"), (":scheme", "https"), (":authority", good), (":path", "/"),
    ], end_stream=True)
    c.flush()
    status = c.status(sid)
    if status != "400":
        fail(f"GET: status {status}, want 400")
    print("get: 400")

    c.conn.close_connection()
    c.flush()
    c.sock.close()
    print("OK")


if __name__ == "__main__":
    main()
