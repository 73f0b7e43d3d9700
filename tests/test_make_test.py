"""``make test`` does its own set-up: it installs chromium (for tests/test_serve_page.py) when missing, or says in
one line why it cannot, before any test runs. apt-get and id are stubs here, so nothing is ever installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def make_browser(tmp_path: Path, *, uid: int, apt: str | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``make browser`` (the check ``make test`` starts with) with a PATH holding only stubs: no chromium, ``id -u``
    saying ``uid``, and an apt-get (unless ``apt`` is None) that logs its arguments and then runs ``apt``."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    stub(bin_dir, "id", f"echo {uid}")
    if apt is not None:
        stub(bin_dir, "apt-get", f'echo "$*" >> {log}\n{apt}')
    proc = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "browser"], capture_output=True,
                          text=True, timeout=60, env={"PATH": str(bin_dir)})
    return proc, log


def script_lines(stderr: str) -> list[str]:
    """stderr without make's own ``make: *** [...] Error 1`` trailer."""
    return [line for line in stderr.splitlines() if not line.startswith("make: ***")]


def test_make_test_checks_the_browser_before_the_venv_and_any_test() -> None:
    lines = subprocess.run([MAKE, "--no-print-directory", "-n", "-C", str(ROOT), "test"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "scripts/need_chromium.sh" in line)
    assert first == 0
    assert any("ruff check" in line for line in lines[first:]) and any("pytest" in line for line in lines[first:])


def test_missing_chromium_is_installed_with_apt_get_as_root(tmp_path: Path) -> None:
    # the stub "installs" a chromium into the stub folder, as apt-get would put one on PATH
    fake = tmp_path / "bin" / "chromium"
    proc, log = make_browser(tmp_path, uid=0, apt=f'[ "$1" = install ] && printf "#!/bin/sh\\n" > {fake} '
                                                 f"&& /bin/chmod +x {fake}; exit 0")
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == ["update -q", "install -y -q chromium"]
    assert "installing chromium with apt-get" in proc.stdout


def test_chromium_present_means_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    stub(tmp_path / "bin", "chromium", "exit 0")
    proc = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "browser"], capture_output=True,
                          text=True, timeout=60, env={"PATH": str(tmp_path / "bin")})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.parametrize("uid, apt, why", [
    (1000, "exit 0", "not root; run: sudo apt-get install chromium"),
    (0, None, "no apt-get here; install chromium with this system's package manager"),
])
def test_one_line_says_why_chromium_cannot_be_installed(tmp_path: Path, uid: int, apt: str | None,
                                                         why: str) -> None:
    proc, log = make_browser(tmp_path, uid=uid, apt=apt)
    assert proc.returncode != 0
    assert script_lines(proc.stderr) == [f"make test needs chromium (tests/test_serve_page.py drives a real browser) "
                                         f"and cannot install it: {why}"
                                         + (" (or your system's package)" if uid else "")]
    assert proc.stdout == "" and not log.exists()  # apt-get never ran


def test_a_failed_install_is_one_line_and_a_failure(tmp_path: Path) -> None:
    proc, log = make_browser(tmp_path, uid=0, apt='echo "E: Unable to locate package chromium" >&2; exit 100')
    assert proc.returncode != 0
    assert log.read_text().splitlines() == ["update -q"]  # install is not tried after a failed update
    assert script_lines(proc.stderr)[-1] == ("make test needs chromium (tests/test_serve_page.py drives a real "
                                             "browser) and apt-get could not install it (its message is above); "
                                             "install chromium and rerun make test")
