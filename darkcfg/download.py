"""Hardened HTTP(S) downloads for the zoo: bounded, hashed, atomic.

A zoo entry names a URL, a byte size and (usually) a published hash.  Everything a hostile or
broken server could do is bounded here, because the index is only as good as the bytes that
reach the disk:

* **Schemes**: only ``https``; ``http`` only to a loopback host (the tests' local server).
  ``file:``, ``data:``, ``ftp:`` and scheme-less URLs are refused with a :class:`DarkcfgError`.
* **Redirects** are followed (at most :data:`MAX_REDIRECTS`) only to the same host, or to the
  content hosts its operator is known to redirect to (:data:`REDIRECT_HOSTS`: GitHub release
  assets, Google Drive's download host); any other target is refused, never followed silently.
* **Size**: a ``Content-Length`` above the declared size is refused before reading, and reading
  stops at the declared size + 1 byte, so a server cannot fill the disk or waste the bandwidth.
* **Time**: every socket read has a timeout and the whole transfer an overall deadline (both
  configurable, also through ``$DARKCFG_DOWNLOAD_TIMEOUT`` / ``$DARKCFG_DOWNLOAD_DEADLINE``), so a
  server trickling one byte per second is cut off.
* **Atomicity**: bytes go to a ``*.part`` file beside the destination, which is removed on any
  exit (error, Ctrl-C, SIGTERM); only a file whose size and hashes match is renamed into place,
  with mode 0644 minus the umask (not ``mkstemp``'s 0600).
* **Google Drive**: large files are answered with an HTML "can't scan for viruses" page holding a
  confirmation form; :func:`download` submits that form once (same host rules) and goes on.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import ipaddress
import os
import re
import secrets
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from .errors import DarkcfgError

HASHES = ("sha256", "sha1", "sha512")  # the algorithms a zoo entry may publish
MAX_REDIRECTS = 5
MAX_HTML_PAGE = 1 << 20  # a confirmation page larger than this is not one
DEFAULT_TIMEOUT = 30.0   # seconds without a byte before giving up
DEFAULT_DEADLINE = 3600.0  # seconds for one whole file

# Hosts a download may be redirected to, by the host the URL names.  GitHub serves release
# assets and raw files from its CDN; Google Drive hands the bytes out from its content hosts.
REDIRECT_HOSTS: dict[str, tuple[str, ...]] = {
    "github.com": ("objects.githubusercontent.com", "release-assets.githubusercontent.com",
                   "raw.githubusercontent.com", "codeload.github.com"),
    "drive.google.com": ("drive.usercontent.google.com", "docs.google.com", ".googleusercontent.com"),
    "docs.google.com": ("drive.usercontent.google.com", "drive.google.com", ".googleusercontent.com"),
}

Report = Callable[[int, int], None]


class DownloadInterrupted(SystemExit):
    """SIGTERM arrived during a download: unwinds like Ctrl-C so the ``*.part`` file is removed."""


def env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise DarkcfgError(f"${name}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise DarkcfgError(f"${name}={value!r} must be a positive number of seconds")
    return seconds


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> urllib.parse.SplitResult:
    """The parsed URL if darkcfg may fetch it (https, or http to loopback); else a clear error."""
    if not isinstance(url, str) or not url:
        raise DarkcfgError(f"invalid download URL {url!r}")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise DarkcfgError(f"{url}: not an absolute URL (a download URL needs https://host/...)")
    if scheme not in ("https", "http"):
        raise DarkcfgError(f"{url}: the {scheme}: scheme is refused (only https downloads)")
    if not parts.hostname:
        raise DarkcfgError(f"{url}: not an absolute URL (a download URL needs https://host/...)")
    if scheme == "https":
        return parts
    if is_loopback(parts.hostname):
        return parts
    raise DarkcfgError(f"{url}: plain http is refused (only https, or http to this machine's loopback)")


def redirect_allowed(origin: str, target: str) -> bool:
    """May a download that started at host ``origin`` be redirected to host ``target``?"""
    origin, target = origin.lower(), target.lower()
    if origin == target:
        return True
    for allowed in REDIRECT_HOSTS.get(origin, ()):
        if target == allowed or (allowed.startswith(".") and target.endswith(allowed)):
            return True
    return False


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only when :func:`redirect_allowed` says so, and only to an allowed scheme."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, origin: str):
        super().__init__()
        self.origin = origin

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Optional[urllib.request.Request]:
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        parts = check_url(newurl)
        host = parts.hostname or ""
        if not redirect_allowed(self.origin, host):
            raise DarkcfgError(f"{req.full_url}: redirected to another host ({host}), which darkcfg does not "
                               f"follow; download it yourself and pass the file, or fix the zoo entry's URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _FormFinder(HTMLParser):
    """Google Drive's confirmation page: the download form's action and hidden fields, or a
    ``confirm=`` link (the older page)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: Optional[str] = None
        self.fields: dict[str, str] = {}
        self.link: Optional[str] = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None and "download" in (a.get("action", "") + a.get("id", "")):
            self.action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("type", "").lower() == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "a" and self.link is None and "confirm=" in a.get("href", ""):
            self.link = a["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def confirmation_url(page: str, base: str) -> Optional[str]:
    """The URL a Google-Drive-style "download anyway" page points at, or None if it has none."""
    finder = _FormFinder()
    finder.feed(page)
    if finder.action is not None and finder.fields.get("confirm") is not None:
        query = urllib.parse.urlencode(finder.fields)
        return urllib.parse.urljoin(base, finder.action) + "?" + query
    if finder.link is not None:
        return urllib.parse.urljoin(base, finder.link.replace("&amp;", "&"))
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match:
        sep = "&" if "?" in base else "?"
        return base + sep + "confirm=" + match.group(1)
    return None


class _SigtermGuard:
    """While active (main thread only), SIGTERM raises :class:`DownloadInterrupted` so that
    ``finally`` blocks run and no ``*.part`` file is left behind."""

    def __enter__(self) -> "_SigtermGuard":
        self.previous: Any = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum: int, frame: Any) -> None:
                raise DownloadInterrupted(128 + signum)

            self.previous = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _file_mode() -> int:
    """0666 minus the umask, as ``open()`` would create a file (read without changing it for long)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _open(url: str, timeout: float, opener: urllib.request.OpenerDirector) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "darkcfg", "Accept-Encoding": "identity"})
    try:
        return opener.open(request, timeout=timeout)
    except DarkcfgError:  # a refused redirect
        raise
    except urllib.error.HTTPError as exc:
        raise DarkcfgError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, DarkcfgError):
            raise reason from None
        raise DarkcfgError(f"{url}: download failed: {reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, refused connections, malformed responses
        raise DarkcfgError(f"{url}: download failed: {exc}") from None


def _chunks(resp: Any, url: str, limit: int, deadline_at: float, deadline: float) -> Iterator[bytes]:
    """The response body in chunks as they arrive (``read1``: no waiting for a full buffer, so a
    trickling server meets the deadline), never more than ``limit`` bytes in total."""
    got = 0
    while True:
        if time.monotonic() > deadline_at:
            raise DarkcfgError(f"{url}: download took longer than the {deadline:g} s deadline "
                               "(set $DARKCFG_DOWNLOAD_DEADLINE to allow more)")
        try:
            chunk = resp.read1(min(1 << 16, limit - got))
        except (OSError, ValueError) as exc:  # socket timeout, reset, broken chunked encoding
            raise DarkcfgError(f"{url}: download failed: {exc or type(exc).__name__}") from None
        if not chunk:
            return
        got += len(chunk)
        yield chunk
        if got >= limit:
            return


def download(url: str, dest: "str | os.PathLike", *, size: int, hashes: Optional[Mapping[str, str]] = None,
             timeout: Optional[float] = None, deadline: Optional[float] = None,
             report: Optional[Report] = None) -> dict[str, str]:
    """Fetch ``url`` into ``dest`` (exactly ``size`` bytes; every hash in ``hashes`` must match).

    Returns the hex digests computed (sha256 always, plus the algorithms in ``hashes``).  On any
    failure ``dest`` is untouched and no temporary file remains.
    """
    dest = Path(dest)
    expected = {k.lower(): v.lower() for k, v in (hashes or {}).items()}
    unknown = set(expected) - set(HASHES)
    if unknown:
        raise DarkcfgError(f"{url}: unsupported hash algorithm(s) {sorted(unknown)} (supported: {', '.join(HASHES)})")
    if size < 0:
        raise DarkcfgError(f"{url}: invalid declared size {size}")
    timeout = timeout if timeout is not None else env_seconds("DARKCFG_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT)
    deadline = deadline if deadline is not None else env_seconds("DARKCFG_DOWNLOAD_DEADLINE", DEFAULT_DEADLINE)
    parts = check_url(url)
    opener = urllib.request.build_opener(_Redirects(parts.hostname or ""),
                                         urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    deadline_at = time.monotonic() + deadline
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp: Optional[str] = None
    with _SigtermGuard():
        try:
            # The name is bound before the file exists, so a signal at any point leaves nothing behind.
            tmp = str(dest.parent / f"{dest.name}.{secrets.token_hex(6)}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
            with os.fdopen(fd, "wb") as out:
                digests = _transfer(url, opener, out, size, expected, timeout, deadline, deadline_at, report)
            os.chmod(tmp, _file_mode())
            os.replace(tmp, dest)
            tmp = None
            return digests
        except OSError as exc:  # the local side: disk full, permissions
            raise DarkcfgError(f"{dest}: cannot write the download: {exc}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _transfer(url: str, opener: urllib.request.OpenerDirector, out: Any, size: int, expected: dict[str, str],
              timeout: float, deadline: float, deadline_at: float, report: Optional[Report]) -> dict[str, str]:
    current = url
    for _ in range(2):  # the file itself, or a confirmation page and then the file
        resp = _open(current, timeout, opener)
        with resp:
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > size:
                raise DarkcfgError(f"{url}: the server announces {int(declared):,} bytes, the zoo index "
                                   f"{size:,}; not downloaded")
            if resp.headers.get_content_type() == "text/html":
                page = b"".join(_chunks(resp, url, MAX_HTML_PAGE, deadline_at, deadline))
                nxt = confirmation_url(page.decode("utf-8", "replace"), resp.geturl())
                if nxt is None or current != url:
                    raise DarkcfgError(f"{url}: the server sent an HTML page instead of the file (a quota, "
                                       "sign-in or removed-file page?); not downloaded")
                if not redirect_allowed(urllib.parse.urlsplit(url).hostname or "",
                                        check_url(nxt).hostname or ""):
                    raise DarkcfgError(f"{url}: the confirmation page points at another host; not followed")
                current = nxt
                continue
            return _stream(resp, url, out, size, expected, deadline_at, deadline, report)
    raise DarkcfgError(f"{url}: no file after the confirmation page")  # pragma: no cover - loop exits above


def _stream(resp: Any, url: str, out: Any, size: int, expected: dict[str, str], deadline_at: float,
            deadline: float, report: Optional[Report]) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in {"sha256", *expected}}
    got = 0
    for chunk in _chunks(resp, url, size + 1, deadline_at, deadline):
        got += len(chunk)
        if got > size:
            raise DarkcfgError(f"{url}: the server sent more than the {size:,} bytes the zoo index declares; "
                               "stopped reading, nothing kept")
        out.write(chunk)
        for h in hashers.values():
            h.update(chunk)
        if report:
            report(got, size)
    digests = {name: h.hexdigest() for name, h in hashers.items()}
    if got != size:
        raise DarkcfgError(f"{url}: got {got:,} bytes, the zoo index declares {size:,}; nothing kept")
    for name, want in expected.items():
        if digests[name] != want:
            raise DarkcfgError(f"{url}: {name} {digests[name]} does not match the expected {want} (published, "
                               "or recorded at the first download); the file was discarded")
    return digests


def file_digests(path: "str | os.PathLike", algorithms: "tuple[str, ...] | set[str]" = ("sha256",)) -> dict[str, str]:
    """Hex digests of a local file (streamed)."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}
