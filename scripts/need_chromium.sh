#!/bin/sh
# make test's browser: tests/test_serve_page.py drives Debian's chromium. Found: nothing to do. Missing: installed
# with apt-get when we are root and have it (as CI does); else one line saying what is needed and why we cannot
# install it, and a non-zero exit, before any test runs.
command -v chromium >/dev/null 2>&1 && exit 0
need="make test needs chromium (tests/test_serve_page.py drives a real browser)"
if [ "$(id -u)" != 0 ]; then
    echo "$need and cannot install it: not root; run: sudo apt-get install chromium (or your system's package)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$need and cannot install it: no apt-get here; install chromium with this system's package manager" >&2
    exit 1
fi
echo "installing chromium with apt-get (tests/test_serve_page.py drives a real browser)"
if DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
        && command -v chromium >/dev/null 2>&1; then
    exit 0
fi
echo "$need and apt-get could not install it (its message is above); install chromium and rerun make test" >&2
exit 1
