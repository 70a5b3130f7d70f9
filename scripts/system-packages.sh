#!/usr/bin/env bash
# The Debian packages the test suite drives for real: Chromium (the console and the browser SDK, through
# Playwright, with no browser download), a PostgreSQL server (SQL sources) and Node.js with npm (the official
# JavaScript SDKs, installed from the npm registry at test setup). `make test` runs this first; it installs only
# what is missing, and only where it can (root with apt-get); elsewhere it says what to install.
set -euo pipefail
missing=()
# The browser the console tests launch (tests/test_console*.py); a variable so that its absence can be tested.
chromium="${PORTRAIT_TEST_CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "installing Debian packages the tests need: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Offline, or a mirror that does not answer: say what is missing rather than end on apt-get's last line.
  if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "could not install ${missing[*]} with apt-get (see its messages above): the tests need them;" \
         "install them and run make test again" >&2
    exit 1
  fi
else
  echo "the tests need these packages, which are not installed: ${missing[*]}" >&2
  echo "install them (Debian: sudo apt-get install ${missing[*]}) and run make test again" >&2
  exit 1
fi
