"""Reading an untrusted tar stream under caps: its long-name and pax headers, and the bytes it decompresses to.

``tarfile`` reads a GNU long-name or pax header into memory whole, whatever size it claims, and skipping a member
of a compressed stream decompresses it; :class:`CappedTarInfo` and :func:`check_end` bound both before they cost.
"""

from __future__ import annotations

import tarfile

#: Largest long-name or pax header read (tarfile reads them into memory whole).
MAX_TAR_HEADER_BYTES = 1 << 20


class HeaderTooLarge(Exception):
    """A long-name or pax header over :data:`MAX_TAR_HEADER_BYTES`."""


class StreamTooLarge(Exception):
    """A member that ends past the bytes the stream may decompress to."""


class CappedTarInfo(tarfile.TarInfo):
    """A tar header that refuses long-name and pax headers over :data:`MAX_TAR_HEADER_BYTES` (``tarinfo=``)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > MAX_TAR_HEADER_BYTES:
            raise HeaderTooLarge(f"a {self.size}-byte tar header exceeds the limit of {MAX_TAR_HEADER_BYTES} bytes")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def check_end(info: tarfile.TarInfo, max_bytes: int) -> None:
    """StreamTooLarge if member ``info`` ends more than ``max_bytes`` into the decompressed stream; call it before
    the member is read or skipped, so a compression bomb costs at most ``max_bytes`` of decompression."""
    end = info.offset_data + max(info.size, 0)
    if end > max_bytes:
        raise StreamTooLarge(f"member {info.name[:200]} ends {end:,} bytes into the decompressed tar, over the "
                             f"limit of {max_bytes:,} bytes")
