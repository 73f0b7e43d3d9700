"""A table entry to a checked file on disk: the cache first (its file checked; a damaged one fetched again, or
refused offline), else a download (``download.download`` for plain URLs, ``huggingface_hub`` for Hub entries)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .cache import cache_path, file_digest, matches
from .download import DownloadError, Limits, by_hand, download, mirrored, offline
from .table import Entry


def fetch(entry: Entry, *, limits: Limits | None = None, progress: bool = True,
          on_progress: Callable[[int, int | None], object] | None = None,
          say: Callable[[str], object] | None = None) -> Path:
    """The checked local file of ``entry``, downloaded into its cache if missing or damaged.

    ``progress``: a bar (a terminal) or a few lines on stderr while downloading; ``on_progress(done, total)``
    is called as bytes arrive; ``say`` gets the one-line notes (a damaged cached file replaced).
    """
    say = say or (lambda line: print(line, file=sys.stderr))
    if entry.cache == "hf":
        return _fetch_hub(entry, say)
    target = cache_path(entry)
    if target.is_file():
        if matches(target, entry.checksum):
            return target
        if offline():
            raise UserError(f"the cached {entry.name} ({target}) does not match its {entry.algorithm} "
                            f"{entry.digest}: damaged; offline, so not fetched again; "
                            f"{by_hand(mirrored(entry.url), target, entry.checksum)}")
        say(f"the cached {target} does not match its {entry.algorithm} {entry.digest} (damaged): fetching it again")
        target.unlink()
    from ..progress import Progress

    with Progress(None, f"downloading {entry.name}", unit="bytes", enabled=progress) as bar:
        def report(done: int, total: int | None) -> None:
            if bar.total is None and total:
                bar.total = total
                if getattr(bar, "_bar", None) is not None:  # the tqdm bar learns the size with the first bytes
                    bar._bar.total = total
            bar.to(done)
            if on_progress is not None:
                on_progress(done, total)

        return download(entry.url, target, entry.checksum, size=entry.size, limits=limits, progress=report,
                        label=entry.name)


def _fetch_hub(entry: Entry, say: Callable[[str], object]) -> Path:
    """``entry``'s file through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``$RESNETS_WEIGHTS_MIRROR`` as
    the endpoint), checked: the Hub's cache names a large file's blob by its SHA-256, which must match."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise UserError(f"{entry.name} comes from the Hugging Face Hub: pip install huggingface_hub") from None
    where = f"{entry.hf_repo}/{entry.hf_file}"
    mirror = os.environ.get("RESNETS_WEIGHTS_MIRROR", "").strip().rstrip("/") or None
    hand = (f"to place it by hand, download {where} elsewhere and put it in the Hugging Face cache "
            f"({cache_path(entry)}; `hf download {entry.hf_repo} {entry.hf_file}` on a machine with a network, "
            "then copy the cache)")
    for again in (False, True):
        try:
            path = Path(hf_hub_download(entry.hf_repo, entry.hf_file, endpoint=mirror,
                                        local_files_only=offline(), force_download=again))
        except LocalEntryNotFoundError:
            raise UserError(f"{entry.name} ({where}) is not in the Hugging Face cache and RESNETS_OFFLINE/"
                            f"HF_HUB_OFFLINE forbid the network; {hand}") from None
        except Exception as exc:  # noqa: BLE001 - the Hub client raises many types; the user needs one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise DownloadError(f"could not download {where} from {mirror or 'the Hugging Face Hub'} "
                                f"({first}); {hand}") from None
        blob = path.resolve()
        if len(blob.name) != 64 or file_digest(blob, "sha256") == blob.name:
            return path
        if offline():
            raise UserError(f"the cached {where} ({blob}) does not match the SHA-256 it is named by: damaged; "
                            f"offline, so not fetched again; {hand}")
        if again:
            break
        say(f"the cached {where} ({blob}) is damaged (its SHA-256 is not its name): fetching it again")
        blob.unlink()
    raise DownloadError(f"{where} from {mirror or 'the Hugging Face Hub'} does not match its SHA-256; nothing "
                        f"loaded; {hand}")
