#!/bin/sh
# Called by `make install`: the system tools the tests need that pip cannot install. Today: a real systemd
# and util-linux for tests/test_service_systemd.py (`systemd --user` + journald in a private namespace), and
# Debian's chromium for the page's tests (playwright drives it; it never downloads a browser of its own);
# espeak-ng and flite, the system speech engines: the CPU default speaks with espeak-ng (Kokoro takes its
# phonemes from it too), and the voice tests make their spoken questions with flite.
# Installs them with apt-get only where they are missing and we are root on Linux; elsewhere those tests
# skip with the reason, and this only says what is missing.
set -eu
if ! { [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }; then
    command -v chromium >/dev/null || echo "make install: the browser tests need chromium (apt-get install chromium)"
    command -v espeak-ng >/dev/null || echo "make install: spoken answers on the CPU need espeak-ng" \
        "(apt-get install espeak-ng, brew install espeak-ng)"
    command -v flite >/dev/null || echo "make install: the voice tests need flite (apt-get install flite)"
    exit 0
fi
missing=
[ -x /usr/lib/systemd/systemd ] && [ -x /lib/systemd/systemd-journald ] || missing="systemd dbus-user-session"
for tool in unshare setpriv nsenter; do command -v "$tool" >/dev/null || missing="$missing util-linux"; done
command -v chromium >/dev/null || missing="$missing chromium"
for tool in espeak-ng flite; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
[ -n "$missing" ] || exit 0
echo "installing system packages for the tests:$missing"
apt-get update -qq
# shellcheck disable=SC2086  # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
