#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/corpus/.

    fuzz/make_seeds.py [MESHD]   # MESHD: a meshd binary, for the identity seeds (`meshd ca`)

HTTP/2 frames come from Python's h2 (the independent client the HBONE interop test uses), in
ztunnel's CONNECT shape; the run prepends the connection preface, so seeds start after it.
Identity seeds are DER certificates made by `meshd ca`, each after a control byte (see
bodies/src/identity_x509.rs); the roots go to bodies/fixtures/, and FIXTURE_TIME there must
then be moved to just after the new certificates' notBefore.
"""
import base64, pathlib, re, subprocess, sys, tempfile

import h2.config
import h2.connection

FUZZ = pathlib.Path(__file__).resolve().parent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def write(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def h2_frames(requests, method="CONNECT"):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    for authority, headers, body in requests:
        sid = c.get_next_available_stream_id()
        if method == "CONNECT":
            h = [(":method", "CONNECT"), (":authority", authority)]
        else:
            h = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", "/")]
        c.send_headers(sid, h + headers, end_stream=body is None)
        if body is not None:
            c.send_data(sid, body, end_stream=True)
    data = c.data_to_send()
    assert data.startswith(PREFACE)
    return data[len(PREFACE):]


def hbone():
    zt = [("baggage", "k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web"),
          ("forwarded", 'for="10.0.0.1:40000";host=db.shop.svc.cluster.local'),
          ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")]
    v6 = [("forwarded", 'for="[2001:db8::1]:443"')]
    # The fuzz service answers by port: %4 == 0 denied, 1 another status, else accepted (echo).
    seeds = {
        "connect-accepted": h2_frames([("127.0.0.1:8082", zt, b"hello")]),
        "connect-denied": h2_frames([("127.0.0.1:8080", zt, None)]),
        "connect-status": h2_frames([("127.0.0.1:8081", v6, b"x")]),
        "connect-ip-mismatch": h2_frames([("10.9.9.9:8082", zt, None)]),
        "get-not-connect": h2_frames([("127.0.0.1:8082", [], None)], "GET"),
        "connect-three-streams": h2_frames([("127.0.0.1:8082", zt, b"one"),
                                            ("127.0.0.1:8083", v6, None),
                                            ("[::1]:8082", [], b"three")]),
    }
    for name, data in seeds.items():
        write("hbone_server", name, data)


def socks5():
    seeds = {
        "connect-ipv4": bytes([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]),
        "connect-ipv6": bytes([5, 1, 0, 5, 1, 0, 4] + [0] * 15 + [1] + [0, 80]),
        # RFC 1929: the user name names the local workload (meshd prefers it when offered).
        "user-name": b"\x05\x02\x00\x02\x01\x08shop/web\x01x\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        "user-name-not-utf8": b"\x05\x01\x02\x01\x02\xff\xfe\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        "connect-domain": b"\x05\x01\x00\x05\x01\x00\x03\x0freviews.default\x23\x82",
        "no-acceptable-method": bytes([5, 1, 1]),
        "socks4": bytes([4, 1, 0, 80, 127, 0, 0, 1, 0]),
        "udp-associate": bytes([5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]),
        "bad-address-type": bytes([5, 1, 0, 5, 1, 0, 9, 1, 2, 3]),
        "connect-then-data": b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50GET / HTTP/1.1\r\n\r\n",
    }
    for name, data in seeds.items():
        write("socks5", name, data)


def der(path):
    text = path.read_text()
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return [base64.b64decode("".join(b.split())) for b in blocks]


def identity(meshd):
    with tempfile.TemporaryDirectory() as tmp:
        t = pathlib.Path(tmp)
        run = lambda *a: subprocess.run([meshd, "ca", *a], check=True, capture_output=True)
        run("init", "--trust-domain", "cluster.local", "--out", str(t / "ca"))
        run("init", "--trust-domain", "partner.example", "--out", str(t / "pca"))
        run("init", "--trust-domain", "cluster.local", "--out", str(t / "ca2"))
        for ca, ns, sa, ttl, out in [("ca", "shop", "web", "3000d", "web"), ("pca", "shop", "api", "3000d", "api"),
                                     ("ca", "shop", "short", "1s", "short"), ("ca2", "shop", "web", "3000d", "stranger")]:
            run("issue", "--ca", str(t / ca), "--namespace", ns, "--service-account", sa, "--ttl", ttl, "--out", str(t / out))
        leaf = lambda d: der(t / d / "svid.pem")[0]
        root, proot = der(t / "ca" / "ca-cert.pem")[0], der(t / "pca" / "ca-cert.pem")[0]
        (FUZZ / "bodies" / "fixtures" / "cluster.local-ca.pem").write_bytes((t / "ca" / "ca-cert.pem").read_bytes())
        (FUZZ / "bodies" / "fixtures" / "partner.example-ca.pem").write_bytes((t / "pca" / "ca-cert.pem").read_bytes())
        web = leaf("web")
        seeds = {
            "web-client": b"\x00" + web, "web-server": b"\x01" + web, "web-with-root": b"\x00" + web + root,
            "web-before-epoch": b"\x02" + web, "web-far-future": b"\x05" + web,
            "partner-client": b"\x00" + leaf("api"), "expired-short": b"\x00" + leaf("short"),
            "unknown-issuer": b"\x00" + leaf("stranger"), "root-as-leaf": b"\x00" + root,
            "partner-root-then-leaf": b"\x01" + proot + leaf("api"),
        }
        for name, data in seeds.items():
            write("identity_x509", name, data)


if __name__ == "__main__":
    hbone()
    socks5()
    if len(sys.argv) > 1:
        identity(sys.argv[1])
