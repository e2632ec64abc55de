#!/usr/bin/env bash
# Puts strace at DEST/bin/strace (default .tools) for the test that records the server's
# network calls: the machine's own when it has one, else Debian's package, downloaded and
# unpacked without root (apt-get download + dpkg -x).
set -euo pipefail
DEST=${1:-.tools}
mkdir -p "$DEST/bin"
if [[ -x $DEST/bin/strace ]]; then exit 0; fi
if command -v strace >/dev/null; then
  ln -sf "$(command -v strace)" "$DEST/bin/strace"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download strace >/dev/null 2>&1)
dpkg -x "$work"/strace_*.deb "$DEST/strace"
ln -sf "$(cd "$DEST" && pwd)/strace/usr/bin/strace" "$DEST/bin/strace"
"$DEST/bin/strace" -V | head -1
