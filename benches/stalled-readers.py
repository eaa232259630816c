"""Clients that stop reading their sockets and keep writing to them, for stalled-readers.sh.

Connects N MQTT 3.1.1 clients that subscribe to `flood/#` with tiny receive buffers, then
floods that topic until the broker's writes to them wait on full sockets, and from then on
sends a PINGREQ from each of them every second, which the broker, waiting to write, does not
read. Prints `stalled` once the flood is sent; runs until killed or HOLD seconds pass.

    python3 benches/stalled-readers.py PORT N HOLD
"""

import socket
import struct
import sys
import time


def remaining_length(n):
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def string(s):
    return struct.pack(">H", len(s)) + s


def connect(port, client_id):
    sock = socket.create_connection(("127.0.0.1", port))
    header = string(b"MQTT") + bytes([4, 2]) + struct.pack(">H", 600)
    payload = string(client_id.encode())
    body = header + payload
    sock.sendall(bytes([0x10]) + remaining_length(len(body)) + body)
    if sock.recv(4)[:1] != b"\x20":
        sys.exit("no CONNACK")
    return sock


def main():
    port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    readers = []
    for i in range(n):
        sock = connect(port, f"stalled-{i}")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = struct.pack(">H", 1) + string(b"flood/#") + b"\x00"
        sock.sendall(bytes([0x82]) + remaining_length(len(body)) + body)
        if sock.recv(5)[:1] != b"\x90":
            sys.exit("no SUBACK")
        readers.append(sock)
    flooder = connect(port, "flooder")
    topic = string(b"flood/x")
    payload = b"x" * 65536
    publish = bytes([0x30]) + remaining_length(len(topic) + len(payload)) + topic + payload
    # 32 MiB for each reader: far more than its socket buffers on both sides hold.
    for _ in range(512):
        flooder.sendall(publish)
    print("stalled", flush=True)
    end = time.time() + hold
    while time.time() < end:
        for sock in readers:
            sock.sendall(b"\xc0\x00")
        time.sleep(1)


if __name__ == "__main__":
    main()
