#!/usr/bin/env python3
"""Redis CPU per chat message for the append script alone, without engines.

Starts its own redis-server, loads the append script as the engine does
(trim_bytes.lua + tell_nodes.lua + append.lua), makes ROOMS rooms of two members
on two nodes (one subscriber stands for the other node) and sends MSGS appends
with a raw RESP client, PER_RTT of them per round trip. Prints Redis CPU per
message (used_cpu_user + used_cpu_sys of INFO cpu, over the sending only).

    scripts/redis-append-bench.py                    # per round trip 1, 4 and 16
    scripts/redis-append-bench.py --per-rtt 16 --no-client-msg-id
    scripts/redis-append-bench.py --noop             # the same call, script `return 1`
    scripts/redis-append-bench.py --dir /tmp/variant # a changed copy of the scripts

REDIS_WRAP (environment) is a command to start redis-server under, e.g.
`valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p`: its instruction
count at two --msgs values, differenced, is the script's cost per message
independent of what else runs on the machine.

It answers "what does one change to the script cost Redis" in a few seconds,
where scripts/redis-cpu-per-msg.sh answers "what does a message cost end to end".
The text is 64 bytes; every append carries a client_msg_id unless told not to.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "actors", "src", "bridge", "redis", "scripts")
SETTINGS = "local STREAM_CAP, BYTE_CAP, KEY_TTL, WINDOW, MAX = '10000', 65536, '90000', 600000, 1000\n"


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")

    def read(self):
        line = self.f.readline()
        kind = line[:1]
        if kind in (b"+", b"-", b":"):
            return line
        if kind == b"$":
            n = int(line[1:])
            return None if n < 0 else self.f.read(n + 2)
        if kind == b"*":
            return [self.read() for _ in range(max(int(line[1:]), 0))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def cmd(self, *args):
        self.s.sendall(enc(*args))
        return self.read()


def drain(s):
    try:
        while s.recv(1 << 16):
            pass
    except OSError:
        pass


def cpu(c):
    info = c.cmd("INFO", "cpu").decode()
    v = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
    return float(v["used_cpu_user"]) + float(v["used_cpu_sys"])


def append_args(sha, i, rooms, with_id):
    r = i % rooms
    sender, mid = f"u{r}a", f"m{i}"
    cid = f"c{i}" if with_id else ""
    key = lambda name: f"rdv:room:{{r{r}}}:{name}"
    ev = json.dumps(
        {"type": "room", "room": f"r{r}", "origin": "n0",
         "ev": {"type": "message", "seq": 0, "msg_id": mid, "sender": sender,
                "text": "x" * 64, "ts": 1796321086987}},
        separators=(",", ":"))
    # As the node sends them (append_payloads): the event up to its seq, and the
    # stored JSON cut from the event's rest.
    prefix, rest = ev.split('"seq":0', 1)
    stored = "{" + rest[1:-1]
    field = f"{len(sender)}:{sender}:{cid}" if with_id else ""
    # A node renews a room's records once per half window: here on its first send.
    if with_id and i < rooms:
        field = "+" + field
    return ["EVALSHA", sha, 6, key("seq"), key("log"), key("members"), key("meta"),
            key("sent"), key("sentids"),
            prefix + '"seq":', stored, sender, "n0", field,
            f"{int(time.time() * 1000)} {mid}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=6498)
    ap.add_argument("--rooms", type=int, default=500)
    ap.add_argument("--msgs", type=int, default=30000)
    ap.add_argument("--per-rtt", type=int, action="append")
    ap.add_argument("--no-client-msg-id", action="store_true")
    ap.add_argument("--noop", action="store_true", help="the same call to a script that only returns")
    ap.add_argument("--dir", default=SCRIPTS, help="where trim_bytes.lua, tell_nodes.lua and append.lua are")
    a = ap.parse_args()
    if a.noop:
        source = "return 1"
    else:
        # The settings line the engine puts first (mod.rs, append_constants): a
        # 10,000-message and 64 KiB stream, 90 s keys, a 10 min window, 1,000 ids.
        source = SETTINGS + "".join(open(os.path.join(a.dir, f)).read()
                                    for f in ("trim_bytes.lua", "tell_nodes.lua", "append.lua"))
    wrap = os.environ.get("REDIS_WRAP", "").split()
    server = subprocess.Popen(wrap + ["redis-server", "--port", str(a.port), "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(400):  # 20 s: under valgrind it starts slowly
            try:
                c = Conn(a.port)
                break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit(f"redis-server did not start on port {a.port}")
        sub = Conn(a.port)
        sub.s.sendall(enc("SUBSCRIBE", "rdv:node:n1"))
        # Read what is published, as a node would: an undrained subscriber would
        # let Redis's writes to it fail or pile up instead of costing what they do.
        threading.Thread(target=lambda: drain(sub.s), daemon=True).start()
        for per in a.per_rtt or [1, 4, 16]:
            c.cmd("FLUSHALL")
            sha = c.cmd("SCRIPT", "LOAD", source).strip().decode()
            for r in range(a.rooms):
                c.cmd("HSET", f"rdv:room:{{r{r}}}:members", f"u{r}a", "n0", f"u{r}b", "n1")
            calls = [enc(*append_args(sha, i, a.rooms, not a.no_client_msg_id)) for i in range(a.msgs)]
            before = cpu(c)
            for start in range(0, a.msgs, per):
                batch = calls[start:start + per]
                c.s.sendall(b"".join(batch))
                for _ in batch:
                    reply = c.read()
                    if isinstance(reply, bytes) and reply.startswith(b"-"):
                        sys.exit(f"redis error: {reply!r}")
            used = cpu(c) - before
            print(f"{'noop' if a.noop else 'append'}: {per} per round trip: "
                  f"{used * 1e6 / a.msgs:.1f} us of Redis CPU per message")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
