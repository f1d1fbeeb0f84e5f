#!/bin/sh
# Called by `make install`: the system tools the tests need that pip cannot install. Today: a real systemd
# and util-linux for tests/test_service_systemd.py (`systemd --user` + journald in a private namespace).
# Installs them with apt-get only where they are missing and we are root on Linux; elsewhere those tests
# skip with the reason, and this does nothing.
set -eu
[ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 0
missing=
[ -x /usr/lib/systemd/systemd ] && [ -x /lib/systemd/systemd-journald ] || missing="systemd dbus-user-session"
for tool in unshare setpriv nsenter; do command -v "$tool" >/dev/null || missing="$missing util-linux"; done
[ -n "$missing" ] || exit 0
echo "installing system packages for the tests:$missing"
apt-get update -qq
# shellcheck disable=SC2086  # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
