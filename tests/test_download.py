"""Download hardening (issue 11 §2): every attack is played by a loopback server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from darkcfg import DarkcfgError
from darkcfg.download import check_url, confirmation_url, download, redirect_allowed
from darkcfg.zoo import check_name, fetch, load_index
from loopback import LoopbackServer, flood, redirect, send, serve_bytes, trickle

BODY = bytes(range(256)) * 64  # 16 KiB
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture()
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    try:
        yield s
    finally:
        s.close()


def _no_parts(folder: Path) -> bool:
    return not list(folder.glob("*.part"))


def test_good_download_is_0644_and_hashed(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/f.bin"] = serve_bytes(BODY)
    old = os.umask(0o022)
    try:
        digests = download(f"{server.url}/f.bin", tmp_path / "f.bin", size=len(BODY),
                           hashes={"sha256": SHA, "sha1": hashlib.sha1(BODY).hexdigest(),
                                   "sha512": hashlib.sha512(BODY).hexdigest()})
    finally:
        os.umask(old)
    assert digests["sha256"] == SHA and (tmp_path / "f.bin").read_bytes() == BODY
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o644
    with pytest.raises(DarkcfgError, match="sha1 .* does not match"):
        download(f"{server.url}/f.bin", tmp_path / "g.bin", size=len(BODY), hashes={"sha1": "0" * 40})
    assert not (tmp_path / "g.bin").exists() and _no_parts(tmp_path)


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "file: scheme is refused"),
    ("data:application/octet-stream;base64,AAAA", "not an absolute URL|data: scheme"),
    ("example.com/yolov4.weights", "not an absolute URL"),
    ("ftp://example.com/x.weights", "ftp: scheme is refused"),
    ("http://example.com/x.weights", "plain http is refused"),
    ("", "invalid download URL"),
])
def test_refused_urls(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DarkcfgError, match=message):
        download(url, tmp_path / "x", size=10)
    assert list(tmp_path.iterdir()) == []


def test_url_rules() -> None:
    assert check_url("https://github.com/a/b").hostname == "github.com"
    assert check_url("http://127.0.0.1:8/x").hostname == "127.0.0.1"
    assert check_url("http://[::1]:8/x").hostname == "::1"
    assert redirect_allowed("github.com", "objects.githubusercontent.com")
    assert redirect_allowed("drive.google.com", "doc-0s-4c-docs.googleusercontent.com")
    assert not redirect_allowed("github.com", "evil.example")
    assert not redirect_allowed("raw.githubusercontent.com", "github.com")


def test_bad_names_never_escape_the_store(tmp_path: Path) -> None:
    for bad in ("../../x", "/abs/x", "a/b", "..", ".", "", "a\\b", "x\x00"):
        with pytest.raises(DarkcfgError, match="invalid model name"):
            check_name(bad)
        with pytest.raises(DarkcfgError, match="invalid model name"):
            fetch(bad, store=tmp_path / "store")
    assert check_name("yolov4.conv.137") == "yolov4.conv.137"
    index = tmp_path / "zoo.json"
    index.write_text('{"models": [{"name": "../evil", "files": {"cfg": {"url": "https://h/x.cfg", "bytes": 1},'
                     ' "weights": {"url": "https://h/x.weights", "bytes": 1}}}]}')
    with pytest.raises(DarkcfgError, match="invalid model name"):
        load_index(index)
    index.write_text('{"models": [{"name": "ok", "files": {"cfg": {"url": "https://h/x.cfg", "bytes": 1, '
                     '"file": "../../x.cfg"}, "weights": {"url": "https://h/x.weights", "bytes": 1}}}]}')
    with pytest.raises(DarkcfgError, match="invalid cfg file name"):
        load_index(index)
    index.write_text('{"models": [{"name": "ok", "files": {"cfg": {"url": "file:///etc/passwd", "bytes": 1},'
                     ' "weights": {"url": "https://h/x.weights", "bytes": 1}}}]}')
    with pytest.raises(DarkcfgError, match="'ok'.*file: scheme"):
        load_index(index)
    assert not (tmp_path / "store").exists()


def test_redirects_same_host_only(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/f.bin"] = serve_bytes(BODY)
    server.routes["/moved"] = redirect("/f.bin")
    download(f"{server.url}/moved", tmp_path / "a", size=len(BODY), hashes={"sha256": SHA})
    assert (tmp_path / "a").read_bytes() == BODY
    server.routes["/away"] = redirect(f"http://localhost:{server.port}/f.bin")  # another host name
    n = len(server.requests)
    with pytest.raises(DarkcfgError, match="redirected to another host \\(localhost\\)"):
        download(f"{server.url}/away", tmp_path / "b", size=len(BODY))
    assert len(server.requests) == n + 1 and not (tmp_path / "b").exists()  # never requested
    server.routes["/scheme"] = redirect("file:///etc/passwd")
    with pytest.raises(DarkcfgError, match="file:.*(refused|not allowed)"):
        download(f"{server.url}/scheme", tmp_path / "c", size=len(BODY))
    server.routes["/loop"] = redirect("/loop")
    with pytest.raises(DarkcfgError, match="download failed"):
        download(f"{server.url}/loop", tmp_path / "d", size=len(BODY))
    assert _no_parts(tmp_path)


def test_reading_stops_at_declared_size(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/announced"] = lambda h: send(h, b"x" * 10, length=200_000_000)  # lies in Content-Length
    with pytest.raises(DarkcfgError, match="announces 200,000,000 bytes"):
        download(f"{server.url}/announced", tmp_path / "a", size=len(BODY))
    server.routes["/flood"] = flood(b"z" * 65536, 64 << 20)  # 64 MiB, no Content-Length
    t0 = time.monotonic()
    with pytest.raises(DarkcfgError, match="more than the 16,384 bytes"):
        download(f"{server.url}/flood", tmp_path / "b", size=len(BODY))
    assert time.monotonic() - t0 < 5
    server.routes["/short"] = serve_bytes(BODY[:100])
    with pytest.raises(DarkcfgError, match="got 100 bytes"):
        download(f"{server.url}/short", tmp_path / "c", size=len(BODY))
    server.routes["/404"] = lambda h: send(h, b"gone", "text/plain", status=404)
    with pytest.raises(DarkcfgError, match="HTTP 404"):
        download(f"{server.url}/404", tmp_path / "d", size=len(BODY))
    assert list(tmp_path.iterdir()) == []


def test_trickling_server_is_cut_off(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/slow"] = trickle(BODY[:50], 0.2, server.stop)  # 5 bytes/s: would take 10 s
    t0 = time.monotonic()
    with pytest.raises(DarkcfgError, match="longer than the 1 s deadline"):
        download(f"{server.url}/slow", tmp_path / "a", size=50, deadline=1.0)
    assert time.monotonic() - t0 < 3
    server.routes["/silent"] = trickle(BODY[:50], 30, server.stop)  # headers, then nothing
    t0 = time.monotonic()
    with pytest.raises(DarkcfgError, match="timed out"):
        download(f"{server.url}/silent", tmp_path / "b", size=50, timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert list(tmp_path.iterdir()) == []


def test_deadline_from_environment(server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.routes["/slow"] = trickle(BODY[:50], 0.2, server.stop)
    monkeypatch.setenv("DARKCFG_DOWNLOAD_DEADLINE", "0.5")
    with pytest.raises(DarkcfgError, match="0.5 s deadline"):
        download(f"{server.url}/slow", tmp_path / "a", size=50)
    monkeypatch.setenv("DARKCFG_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(DarkcfgError, match="not a number"):
        download(f"{server.url}/slow", tmp_path / "a", size=50)


def test_google_drive_confirmation_page(server: LoopbackServer, tmp_path: Path) -> None:
    """Drive answers a large file with an HTML form; the real bytes come after submitting it."""
    page = textwrap.dedent(f"""\
        <!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
        <p>Google Drive can't scan this file for viruses.</p>
        <form id="download-form" action="{server.url}/download" method="get">
          <input type="submit" value="Download anyway"/>
          <input type="hidden" name="id" value="FILEID"><input type="hidden" name="export" value="download">
          <input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1">
        </form></body></html>""").encode()
    server.routes["/uc"] = serve_bytes(page, "text/html; charset=utf-8")

    def file_or_page(h: object) -> None:
        ok = "confirm=t" in h.path and "id=FILEID" in h.path  # type: ignore[attr-defined]
        send(h, BODY if ok else page, "application/octet-stream" if ok else "text/html")  # type: ignore[arg-type]

    server.routes["/download"] = file_or_page
    download(f"{server.url}/uc?export=download&id=FILEID", tmp_path / "w", size=len(BODY), hashes={"sha256": SHA})
    assert (tmp_path / "w").read_bytes() == BODY
    assert any(r.startswith("/download?") and "confirm=t" in r for r in server.requests)
    # the older page: a link carrying confirm=
    server.routes["/old"] = serve_bytes(b'<html><a href="/download?id=FILEID&amp;confirm=t">Download anyway</a>'
                                        b"</html>", "text/html")
    download(f"{server.url}/old", tmp_path / "v", size=len(BODY), hashes={"sha256": SHA})
    # a quota page (no form) and a page pointing at another host are errors, with nothing kept
    server.routes["/quota"] = serve_bytes(b"<html>Too many users have viewed or downloaded this file</html>",
                                          "text/html")
    with pytest.raises(DarkcfgError, match="HTML page instead of the file"):
        download(f"{server.url}/quota", tmp_path / "q", size=len(BODY))
    server.routes["/elsewhere"] = serve_bytes(page.replace(b"127.0.0.1", b"localhost"), "text/html")
    with pytest.raises(DarkcfgError, match="another host"):
        download(f"{server.url}/elsewhere", tmp_path / "e", size=len(BODY))
    assert not (tmp_path / "q").exists() and not (tmp_path / "e").exists() and _no_parts(tmp_path)
    assert confirmation_url("<html>nothing</html>", "https://drive.google.com/uc?id=1") is None


def test_sigterm_removes_the_part_file(server: LoopbackServer, tmp_path: Path) -> None:
    server.routes["/slow"] = trickle(BODY[:200], 0.1, server.stop)  # 20 s if never interrupted
    dest = tmp_path / "out" / "w.bin"
    package = Path(__file__).resolve().parents[1] / "darkcfg"
    code = (f"import sys, types\n"  # the package without its __init__ (which imports torch: slow)
            f"pkg = types.ModuleType('darkcfg'); pkg.__path__ = [{str(package)!r}]; sys.modules['darkcfg'] = pkg\n"
            f"from darkcfg.download import download\n"
            f"download({server.url + '/slow'!r}, {str(dest)!r}, size=200, deadline=30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # wait (at most 30 s) for the .part file to appear
            if (dest.parent.is_dir() and list(dest.parent.glob("*.part"))) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert list(dest.parent.glob("*.part")), f"the download never started: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else b""
    assert rc == 128 + signal.SIGTERM, (rc, err)
    assert list(dest.parent.iterdir()) == [], err


def test_cli_reports_bad_urls_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from darkcfg.cli import main

    index = tmp_path / "zoo.json"
    index.write_text('{"models": [{"name": "m", "files": {"cfg": {"url": "example.com/m.cfg", "bytes": 1},'
                     ' "weights": {"url": "https://example.com/m.weights", "bytes": 1}}}]}')
    assert main(["zoo", "fetch", "m", "--index", str(index), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "not an absolute URL" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["zoo", "fetch", "../../etc", "--index", str(index), "--store", str(tmp_path / "s")]) == 2
    assert "invalid model name" in capsys.readouterr().err and not (tmp_path / "s").exists()
