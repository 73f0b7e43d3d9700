"""One careful HTTP download: streamed to a temporary file beside the target with progress, resumed with an HTTP
Range request after a cut connection, bounded by a read timeout, a number of attempts and a total time, and
checked against its checksum before the rename that makes it the target. Nothing unchecked is left behind.

``$RESNETS_OFFLINE=1`` refuses before any connection; ``$RESNETS_WEIGHTS_MIRROR=http://host:port`` replaces the
scheme and host of every URL, keeping its path. Every failure is one :class:`DownloadError` line naming the URL,
the target and how to place the file by hand.
"""

from __future__ import annotations

import errno
import http.client
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .cache import file_digest

OFFLINE_ENV = "RESNETS_OFFLINE"
MIRROR_ENV = "RESNETS_WEIGHTS_MIRROR"
CHUNK = 1 << 16


class DownloadError(UserError):
    """A download that did not end in a checked file (one line: what, the URL, the target, the way by hand)."""


@dataclass(frozen=True)
class Limits:
    """``timeout``: seconds a connection or one read may wait; ``attempts``: connections tried (a cut one resumes
    where it stopped); ``total``: seconds for the whole download; ``backoff``: seconds before the 2nd attempt,
    doubled each time."""

    timeout: float = 30.0
    attempts: int = 4
    total: float = 3600.0
    backoff: float = 1.0


def offline() -> bool:
    """Whether ``$RESNETS_OFFLINE`` (or ``$HF_HUB_OFFLINE``) says never to touch the network."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


def mirrored(url: str) -> str:
    """``url`` with the scheme and host of ``$RESNETS_WEIGHTS_MIRROR`` (its path and query kept), if set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    m = urllib.parse.urlsplit(mirror)
    if m.scheme not in ("http", "https") or not m.netloc:
        raise UserError(f"${MIRROR_ENV}={mirror!r} is not an http(s)://host[:port] address")
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((m.scheme, m.netloc, m.path.rstrip("/") + u.path, u.query, ""))


def by_hand(url: str, target: Path, checksum: str) -> str:
    what = f" (its {checksum.split(':')[0]} must start {checksum.split(':')[1]})" if checksum else ""
    return f"to place it by hand, fetch {url} elsewhere and copy it to {target}{what}"


def download(url: str, target: Path, checksum: str, *, size: int = 0, limits: Limits | None = None,
             progress: Callable[[int, int | None], object] | None = None, label: str = "") -> Path:
    """Fetch ``url`` (mirrored, see :func:`mirrored`) to ``target``, checked against ``checksum``
    (``"sha256:HEX"``/``"md5:HEX"``, HEX possibly a prefix) and ``size`` (bytes, if not 0).

    ``progress(done, total)`` is called as bytes arrive (``total`` None when the server does not say). The bytes
    go to ``target.partial`` first; the file becomes ``target`` only once checked; on any failure the partial file
    is removed and :class:`DownloadError` raised.
    """
    url = mirrored(url)
    limits = limits or Limits()
    label = label or target.name
    if offline():
        raise DownloadError(f"{label} is not in the cache ({target}) and ${OFFLINE_ENV}/HF_HUB_OFFLINE forbid the "
                            f"network; {by_hand(url, target, checksum)}")
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _fetch(url, partial, limits, progress, size)
        got = partial.stat().st_size
        if size and got != size:
            raise DownloadError(f"{label} from {url}: {got:,} bytes, not the table's {size:,}; nothing kept; "
                                f"{by_hand(url, target, checksum)}")
        if checksum:
            algorithm, digest = checksum.split(":", 1)
            actual = file_digest(partial, algorithm)
            if not actual.startswith(digest):
                raise DownloadError(f"{label} from {url} has {algorithm} {actual[:16]}..., not {digest}...: the "
                                    f"file is damaged or was replaced; nothing kept in {target.parent}; "
                                    f"{by_hand(url, target, checksum)}")
        os.replace(partial, target)
    except DownloadError:
        partial.unlink(missing_ok=True)
        raise
    except OSError as exc:
        partial.unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise DownloadError(f"could not write {label} to {target} ({reason}); nothing kept; "
                            f"{by_hand(url, target, checksum)}") from None
    return target


def _fetch(url: str, partial: Path, limits: Limits, progress: Callable[[int, int | None], object] | None,
           size: int) -> None:
    """Stream ``url`` into ``partial`` (appending with a Range request after a cut), within ``limits``."""
    partial.unlink(missing_ok=True)
    deadline = time.monotonic() + limits.total
    wait = limits.backoff
    last = "no attempt made"
    target = partial.with_name(partial.name[: -len(".partial")])
    for attempt in range(1, max(limits.attempts, 1) + 1):
        have = partial.stat().st_size if partial.exists() else 0
        try:
            if _attempt(url, partial, have, limits, deadline, progress, size):
                return
            last = "the connection was cut"
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the range starts at the end: restart from scratch
                partial.unlink(missing_ok=True)
                last = "the server refused to resume"
            elif exc.code in (408, 429, 500, 502, 503, 504):
                last = f"HTTP {exc.code} {exc.reason}"
            else:
                hint = " (a proxy may need $https_proxy)" if exc.code == 407 else ""
                raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}{hint}; nothing kept "
                                    f"in {target.parent}; {by_hand(url, target, '')}") from None
        except ssl.SSLError as exc:
            raise DownloadError(f"could not download {url}: TLS failed ({exc.reason or exc}); nothing kept; "
                                f"{by_hand(url, target, '')}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise DownloadError(f"could not download {url}: TLS failed ({reason.reason or reason}); nothing "
                                    f"kept; {by_hand(url, target, '')}") from None
            last = f"no connection ({reason})"
        except TimeoutError:
            last = f"no data for {limits.timeout:g} s"
        except (ConnectionError, http.client.HTTPException) as exc:
            last = f"the connection failed ({type(exc).__name__})"
        if time.monotonic() + wait > deadline or attempt == limits.attempts:
            break
        time.sleep(wait)
        wait *= 2
    raise DownloadError(f"could not download {url} after {attempt} attempt(s): {last}; nothing kept in "
                        f"{target.parent}; {by_hand(url, target, '')}")


def _attempt(url: str, partial: Path, have: int, limits: Limits, deadline: float,
             progress: Callable[[int, int | None], object] | None, size: int) -> bool:
    """One connection; True when the whole body arrived (its length as the server said), False when cut."""
    request = urllib.request.Request(url, headers={"User-Agent": "resnets", "Accept-Encoding": "identity",
                                                   **({"Range": f"bytes={have}-"} if have else {})})
    with urllib.request.urlopen(request, timeout=limits.timeout) as response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server sends the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else (size or None)
        done = have
        with open(partial, "ab" if resumed else "wb") as fh:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        return total is None or done >= total
