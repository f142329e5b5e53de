"""Checks neptun-local with clients nobody here wrote.

1. the spec's cURL command, as written;
2. the spec's Python httpx function, as written (must return True, and
   raise_for_status must raise on 404 and 401);
3. the spec's fetch example in headless Chromium, from an allowed origin
   (must resolve to true and delete the chat), from another origin (must
   delete nothing), from a Vite dev server's page (its origin not allowed)
   through Vite's proxy, set up in the two usual ways (both must work with
   no flag), and from the other origin through that proxy (must delete
   nothing); then the same from a Nuxt app's page, through its route
   rule's proxy and Nitro's dev proxy, and the same app built for
   production, through its route rule;
4. schemathesis against the served OpenAPI document, every check on;
5. the curl line that `--demo` prints, pasted as it is into sh, bash and
   zsh, with the server on IPv4 and on IPv6 loopback;
6. ApacheBench with keep-alive (`ab -k`, HTTP/1.0 keep-alive), one delete
   and then 2,000 requests from 8 connections;
7. Python's own `http.client`, three requests that say `Connection: close`
   on one `HTTPConnection`.

Usage: python run.py PATH/TO/neptun-local
Needs: curl, zsh, ab (apache2-utils), node (with `npm ci` done in this folder), /usr/bin/chromium,
and httpx, pydantic and schemathesis importable. Exits non-zero on any
failure; prints "N passed, N failed" last.
"""

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
USER = "demo"
results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_exists(db: Path, chat_id: int) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT 1 FROM chats WHERE id = ?", (chat_id,)).fetchone() is not None


def seed(binary: str, db: Path, chats: int) -> tuple[str, list[int]]:
    """A user with chats (each with messages), and a session token for it."""
    subprocess.run([binary, "--db", str(db), "user", "add", USER], check=True, capture_output=True)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        ids = []
        for i in range(chats):
            cur = conn.execute("INSERT INTO chats (user_id, name, model) VALUES (?, ?, 'm')", (USER, f"chat {i}"))
            ids.append(cur.lastrowid)
            conn.execute("INSERT INTO messages (chat_id, actor, message) VALUES (?, 'user', 'hello')", (cur.lastrowid,))
    token = subprocess.run(
        [binary, "--db", str(db), "session", "new", USER], check=True, capture_output=True, text=True
    ).stdout.strip()
    return token, ids


def start(binary: str, db: Path, allowed_origins: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [binary, "--db", str(db), "--addr", "127.0.0.1:0"]
        + [arg for origin in allowed_origins for arg in ("--allow-origin", origin)],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on http://"):
        raise SystemExit(f"server did not start: {line!r}\n{log.read_text()}")
    return proc, int(line.rsplit(":", 1)[1])


def run_curl(port: int, token: str, chat: int, db: Path) -> None:
    # The spec's command, with the base URL and ids changed.
    out = subprocess.run(
        ["curl", "-X", "DELETE",
         "-H", f"Cookie: neptun-session={token}",
         f"http://127.0.0.1:{port}/api/users/{USER}/chats/{chat}"],
        capture_output=True, text=True, timeout=30,
    )
    check("curl: prints true", out.returncode == 0 and out.stdout == "true", repr(out.stdout))
    check("curl: the chat is gone", not chat_exists(db, chat))


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def run_demo_line(binary: str, workdir: Path) -> None:
    """The curl line that `--demo` prints, pasted as it is into sh, bash and
    zsh (macOS's shell, which takes an unquoted `[::1]` for a pattern), for a
    server on IPv4 and on IPv6 loopback. Each paste gets a new database, so
    that it deletes a chat that is there."""
    addrs = ["127.0.0.1:0"] + (["[::1]:0"] if ipv6_loopback() else [])
    check("demo line: IPv6 loopback to try it on", len(addrs) == 2)
    for n, addr in enumerate(addrs):
        for shell in ("sh", "bash", "zsh"):
            name = f"demo line: pasted into {shell}, server on {addr}"
            db = workdir / f"demo-{n}-{shell}.db"
            log = workdir / f"demo-{n}-{shell}.log"
            with log.open("w") as stderr:
                proc = subprocess.Popen([binary, "--db", str(db), "--addr", addr, "--demo"],
                                        stdout=subprocess.PIPE, stderr=stderr, text=True)
            try:
                proc.stdout.readline()  # "listening on", printed after the demo's lines
                lines = [l.strip() for l in log.read_text().splitlines() if l.strip().startswith("curl ")]
                if len(lines) != 1:
                    check(name, False, log.read_text())
                    continue
                line = lines[0]
                chat = int(line.rstrip('"').rsplit("/", 1)[1])
                # Text mode: the answer's CRLFs arrive as LFs.
                out = subprocess.run([shell, "-c", line], capture_output=True, text=True, timeout=30)
                answered = out.returncode == 0 and out.stdout.startswith("HTTP/1.1 200 ") \
                    and out.stdout.endswith("\n\ntrue")
                check(name, answered and not chat_exists(db, chat),
                      f"{line}\n-> {out.returncode} {out.stdout!r} {out.stderr!r}")
            finally:
                proc.terminate()
                proc.wait(timeout=30)


def run_ab(port: int, token: str, chat: int, db: Path) -> None:
    """ApacheBench's keep-alive mode speaks HTTP/1.0 keep-alive: it waits
    for the server to close a connection whose answer does not say
    `Connection: keep-alive`, and gives up its whole run after `-s`
    seconds. Every answer of the second run is the same 404 (a chat that
    was never made), so that ab, which counts an answer of another length
    than the first as failed, has nothing to count."""
    def ab(chat_id: int, requests: int, connections: int) -> dict[str, str]:
        out = subprocess.run(
            ["ab", "-k", "-s", "10", "-n", str(requests), "-c", str(connections), "-m", "DELETE",
             "-C", f"neptun-session={token}",
             f"http://127.0.0.1:{port}/api/users/{USER}/chats/{chat_id}"],
            capture_output=True, text=True, timeout=120,
        )
        fields = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
        fields = {name.strip(): value.strip() for name, value in fields.items()}
        fields["exit"] = str(out.returncode)
        fields["stderr"] = out.stderr.strip()[-300:]
        return fields

    one = ab(chat, 1, 1)
    check("ab -k: deletes a chat (one 2xx answer, kept alive)",
          (one["exit"], one.get("Complete requests"), one.get("Non-2xx responses"),
           one.get("Keep-Alive requests")) == ("0", "1", None, "1"), str(one))
    check("ab -k: ...and the chat is gone", not chat_exists(db, chat))
    many = ab(2**62, 2000, 8)
    check("ab -k: 2,000 requests from 8 connections, all answered 404 and kept alive",
          (many["exit"], many.get("Complete requests"), many.get("Failed requests"),
           many.get("Non-2xx responses"), many.get("Keep-Alive requests"))
          == ("0", "2000", "0", "2000", "2000"), str(many))


def run_http_client(port: int, token: str, chats: list[int], db: Path) -> None:
    """Python's standard `http.client` keeps a connection unless the answer
    says `Connection: close`, whatever its own request said, and reopens
    one only when told. Told nothing, it sent the second request on the
    connection the server had closed and raised `RemoteDisconnected`."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = []
    for chat in [chats[0], chats[1], chats[1]]:
        try:
            connection.request("DELETE", f"/api/users/{USER}/chats/{chat}",
                               headers={"Cookie": f"neptun-session={token}", "Connection": "close"})
            answer = connection.getresponse()
            answers.append((answer.status, answer.read().decode()[:40]))
        except (OSError, http.client.HTTPException) as e:
            answers.append((type(e).__name__, str(e)))
    connection.close()
    check("http.client: Connection: close three times on one HTTPConnection, all answered",
          [status for status, _ in answers] == [200, 200, 404], str(answers))
    check("http.client: ...and both chats are gone",
          not chat_exists(db, chats[0]) and not chat_exists(db, chats[1]))


def run_httpx(port: int, token: str, chat: int, db: Path) -> None:
    import httpx

    os.environ["NEPTUN_BASE_URL"] = f"http://127.0.0.1:{port}"
    sys.path.insert(0, str(HERE))
    from spec_httpx import delete_chat

    result = asyncio.run(delete_chat(USER, chat, token))
    check("httpx: returns True", result is True, repr(result))
    check("httpx: the chat is gone", not chat_exists(db, chat))
    for case, cookie, status in [("404 (deleted)", token, 404), ("401 (bad cookie)", "0" * 64, 401)]:
        try:
            asyncio.run(delete_chat(USER, chat, cookie))
            check(f"httpx: raise_for_status raises on {case}", False, "no exception")
        except httpx.HTTPStatusError as e:
            check(f"httpx: raise_for_status raises on {case}", e.response.status_code == status,
                  str(e.response.status_code))


def run_browser(port: int, token: str, chats: list[int], db: Path, pages: tuple[int, ...],
                log: Path) -> None:
    import json

    env = dict(os.environ,
               NEPTUN_BASE_URL=f"http://localhost:{port}", NEPTUN_TOKEN=token, NEPTUN_USER=USER,
               ALLOWED_PORT=str(pages[0]), OTHER_PORT=str(pages[1]), VITE_PORT=str(pages[2]),
               NUXT_PORT=str(pages[3]), NUXT_BUILT_PORT=str(pages[4]),
               CHAT_ALLOWED=str(chats[0]), CHAT_OTHER=str(chats[1]),
               CHAT_VITE=str(chats[2]), CHAT_VITE_PASS_HOST=str(chats[3]), CHAT_VIA_PROXY=str(chats[4]),
               CHAT_NUXT=str(chats[5]), CHAT_NUXT_DEV_PROXY=str(chats[6]), CHAT_VIA_NUXT=str(chats[7]),
               CHAT_NUXT_BUILT=str(chats[8]))
    # Nuxt builds its app twice (seconds here, more on a cold disk).
    out = subprocess.run(["node", str(HERE / "browser.mjs")], capture_output=True, text=True, env=env, timeout=420)
    if out.returncode != 0:
        check("browser: ran", False, out.stderr[-2000:])
        return
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    check("browser: fetch from the allowed origin resolves to true", seen["allowed"] == {"resolved": True}, str(seen))
    check("browser: the chat is gone", not chat_exists(db, chats[0]))
    check("browser: deleting it again throws (404)", "status: 404" in seen["allowedAgain"].get("rejected", ""), str(seen))
    # The other calls, each made once: one that must resolve to true and
    # delete its chat, or one that must be refused and delete nothing.
    calls = [
        ("other", "fetch from another origin", chats[1], False),
        ("viteProxy", "fetch through Vite's proxy ('/api': target), with no flag,", chats[2], True),
        ("viteProxyPassingHost", "fetch through Vite's proxy passing Host on, with no flag,", chats[3], True),
        ("otherViaProxy", "fetch from another origin through the proxy", chats[4], False),
        ("nuxtRouteRule", "fetch from a Nuxt page through its route rule's proxy, with no flag,", chats[5], True),
        ("nuxtDevProxy", "fetch from a Nuxt page through Nitro's dev proxy, with no flag,", chats[6], True),
        ("otherViaNuxt", "fetch from another origin through the Nuxt app's proxy", chats[7], False),
        ("nuxtBuiltRouteRule", "fetch from the Nuxt app built for production, through its route rule's proxy,",
         chats[8], True),
    ]
    for key, call, chat, allowed in calls:
        if allowed:
            check(f"browser: {call} resolves to true", seen[key] == {"resolved": True}, str(seen))
            check("browser: ...and the chat is gone", not chat_exists(db, chat))
        else:
            check(f"browser: {call} is blocked", "rejected" in seen[key], str(seen))
            check("browser: ...and deletes nothing", chat_exists(db, chat))
    check("browser: fetch from the allowed origin without credentials: 'include' is 401",
          seen["withoutCredentials"] == {"status": 401}, str(seen))
    check("browser: ...and deletes nothing", chat_exists(db, chats[1]))
    hint = "fetch sends cookies only with credentials: 'include'"
    hinted = lambda: any(f"/chats/{chats[1]} 401 " in l and hint in l for l in log.read_text().splitlines())
    deadline = time.monotonic() + 2  # the log has a thread of its own
    while not hinted() and time.monotonic() < deadline:
        time.sleep(0.05)
    check("browser: ...and the server's log line says why", hinted(), log.read_text()[-2000:])


def run_schemathesis(port: int, token: str, workdir: Path) -> None:
    env = dict(os.environ, NEPTUN_TOKEN=token)
    st = Path(sys.executable).with_name("st")
    out = subprocess.run(
        [str(st), "--config-file", str(HERE / "schemathesis.toml"), "run",
         f"http://127.0.0.1:{port}/openapi.yaml",
         "--checks", "all", "--mode", "all", "--seed", "20261125", "--max-examples", "100",
         "--no-color"],
        capture_output=True, text=True, env=env, timeout=600, cwd=workdir,  # its cache stays out of the repo
    )
    summary = [line for line in out.stdout.splitlines() if "generated" in line or "failure" in line]
    print(out.stdout[-3000:] if out.returncode else "\n".join(summary))
    check("schemathesis: zero failures", out.returncode == 0, " / ".join(summary))


def main() -> int:
    if len(sys.argv) != 2 or not os.access(sys.argv[1], os.X_OK):
        sys.exit("usage: python clients/run.py PATH/TO/neptun-local (an executable: "
                 "`cargo build` writes target/debug/neptun-local)")
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "clients.db"
        token, chats = seed(binary, db, 40)
        pages = tuple(free_port() for _ in range(5))
        allowed = [f"http://localhost:{pages[0]}"]
        server, port = start(binary, db, allowed, Path(tmp) / "server.log")
        try:
            run_curl(port, token, chats[0], db)
            run_httpx(port, token, chats[1], db)
            run_browser(port, token, chats[2:11], db, pages, Path(tmp) / "server.log")
            run_schemathesis(port, token, Path(tmp))
            run_demo_line(binary, Path(tmp))
            run_ab(port, token, chats[11], db)
            run_http_client(port, token, chats[12:14], db)
            log = (Path(tmp) / "server.log").read_text()
            server_errors = [l for l in log.splitlines() if " 500 " in l or "panicked" in l]
            check("server: no 500 and no panic in the log", not server_errors, "\n".join(server_errors[:5]))
            check("server: the token never reached the log", token not in log)
        finally:
            server.terminate()
            code = server.wait(timeout=30)
        check("server: exits 0 on SIGTERM", code == 0, str(code))
        doctor = subprocess.run([binary, "--db", str(db), "doctor"], capture_output=True, text=True)
        check("doctor: the database is healthy afterwards", doctor.returncode == 0, doctor.stdout)
    passed = sum(ok for _, ok, _ in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
