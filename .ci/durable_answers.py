#!/usr/bin/env python3
"""Checks, with strace, that the server answers a delete only after the WAL
that holds its commit is synced to disk (README, "Storage").

One client deletes chats one after another on a keep-alive connection, so
each answer belongs to the commit made since the answer before it, and a
delete that commits alone commits on the thread that answers it. Under
`strace -f -y` every `200` must be sent by a thread that finished an fsync
of the WAL file since the previous `200`. (The server's upkeep also syncs
the WAL when it checkpoints, on a thread of its own: its syncs do not
count.) With `--synchronous normal`, which does not sync commits, the same
check must find answers with no sync before them: that shows it can fail.

Linux only; needs strace (CI installs it). Usage: durable_answers.py BINARY
"""

import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

DELETES = 40

# A strace line: the thread id, then the call. With -y a descriptor shows
# its path (`5</tmp/x/neptun.db-wal>`); a call interrupted by another
# thread's is split into `<unfinished ...>` and `<... NAME resumed>`.
LINE = re.compile(r"^(\d+) +(.*)$")
WAL_SYNC = re.compile(r"^f(?:data)?sync\(\d+<[^>]*-wal>")
RESUMED_SYNC = re.compile(r"^<\.\.\. f(?:data)?sync resumed>.* = 0$")
ANSWER_200 = re.compile(r'^(?:sendto|write)\(\d+<(?:socket|TCP)[^>]*>, "HTTP/1\.1 200 ')


def run(binary: str, synchronous: str, work: Path) -> list[str]:
    """Deletes DELETES chats one by one under strace; returns the trace."""
    db = work / f"{synchronous}.db"
    cli = [binary, "--db", str(db), "--log-level", "warn"]
    subprocess.run([*cli, "user", "add", "alice"], check=True, capture_output=True)
    token = subprocess.run(
        [*cli, "session", "new", "alice"], check=True, capture_output=True, text=True
    ).stdout.strip()
    chats = [
        subprocess.run(
            [*cli, "chat", "add", "alice", f"chat {n}", "--messages", "4"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for n in range(DELETES)
    ]
    trace = work / f"{synchronous}.trace"
    server = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-s", "32", "-o", str(trace),
         "-e", "trace=fsync,fdatasync,sendto,write",
         *cli, "--addr", "127.0.0.1:0", "--synchronous", synchronous],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        listening = server.stdout.readline()
        address = re.fullmatch(r"listening on http://(\S+)\n", listening)
        assert address, f"no listening line: {listening!r}"
        host, port = address.group(1).rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for chat in chats:
            connection.request(
                "DELETE",
                f"/api/users/alice/chats/{chat}",
                headers={"Cookie": f"neptun-session={token}"},
            )
            response = connection.getresponse()
            body = response.read()
            assert (response.status, body) == (200, b"true"), (response.status, body)
        connection.close()
    finally:
        # Stop the server, not strace, which then ends with it.
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text()
        for pid in children.split():
            os.kill(int(pid), signal.SIGTERM)
        server.wait(timeout=30)
    return trace.read_text().splitlines()


def answers_without_a_sync_before(trace: list[str]) -> tuple[int, int]:
    """How many `200` answers, and how many of them were sent by a thread
    that finished no WAL sync since the answer before."""
    in_sync = set()  # threads inside an fsync of the WAL
    synced = set()  # threads that finished one since the last answer
    answers = unsynced = 0
    for line in trace:
        match = LINE.match(line)
        if not match:
            continue
        thread, call = match.groups()
        if WAL_SYNC.match(call):
            if call.endswith("<unfinished ...>"):
                in_sync.add(thread)
            elif call.endswith(" = 0"):
                synced.add(thread)
        elif thread in in_sync and RESUMED_SYNC.match(call):
            in_sync.discard(thread)
            synced.add(thread)
        elif ANSWER_200.match(call):
            answers += 1
            if thread not in synced:
                unsynced += 1
            synced.clear()
    return answers, unsynced


def main() -> None:
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as work:
        full = answers_without_a_sync_before(run(binary, "full", Path(work)))
        normal = answers_without_a_sync_before(run(binary, "normal", Path(work)))
    print(f"synchronous=full:   {full[0]} answers, {full[1]} with no WAL sync before")
    print(f"synchronous=normal: {normal[0]} answers, {normal[1]} with no WAL sync before")
    assert full == (DELETES, 0), "an answer was sent before its commit was on disk"
    # Not all: under normal too, the first commit after the upkeep cut the
    # WAL syncs the WAL's new header, on the thread that answers.
    assert normal[0] == DELETES and normal[1] > DELETES // 4, (
        "the check did not see normal's unsynced commits: it cannot fail"
    )


if __name__ == "__main__":
    main()
