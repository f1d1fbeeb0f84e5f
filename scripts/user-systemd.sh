#!/bin/bash
# user-systemd.sh CMD...: run CMD against a real `systemd --user` and a real `systemd-journald` that only
# CMD's private mount namespace sees, as a throwaway uid ($SD_UID, default 4242; SD_UID=0 runs them as root)
# with a fresh HOME and XDG_RUNTIME_DIR. Stops and removes everything on exit, also on SIGTERM/SIGINT/SIGHUP,
# and sweeps what a SIGKILLed earlier run of the same uid left. Exit code: CMD's.
#
#   sudo scripts/user-systemd.sh bash                   # a shell as the throwaway user; try `mlxd install`
#   sudo SD_UID=0 scripts/user-systemd.sh systemctl --user status
#   sudo SD_EXPOSE="/root/.pyenv /root/src/mlxd" scripts/user-systemd.sh ...  # paths under /root it may read
#
# Needs root, Linux, util-linux (unshare, setpriv) and systemd (the `systemd` and `dbus-user-session`
# packages). Why each step: docs in the comments; tests/test_service_systemd.py runs it.
# Once ready it prints `user-systemd: ready pid=PID home=HOME runtime=XDG_RUNTIME_DIR` on stdout:
# `nsenter -t PID -m` then enters the namespace.
set -euo pipefail
if [ "${SD_IN_NAMESPACE:-}" != 1 ]; then  # the mounts below must be seen by no one else: a private namespace
  SD_IN_NAMESPACE=1 exec unshare -m --propagation private "$0" "$@"
fi
U=${SD_UID:-4242}
NAME=$([ "$U" = 0 ] && echo root || echo mlxdtest)
SLICE=user.slice/user-$U.slice
CG=$SLICE/user@$U.service   # journald derives _SYSTEMD_USER_UNIT from this path shape
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then ROOTS=(/sys/fs/cgroup)   # cgroup v2 only
else ROOTS=(/sys/fs/cgroup/systemd); [ -d /sys/fs/cgroup/unified ] && ROOTS+=(/sys/fs/cgroup/unified); fi

sweep() {  # kill every process of this uid's slice, then remove its cgroups
  local root pids
  for _ in 1 2 3; do
    pids=$(for root in "${ROOTS[@]}"; do
      if [ -d "$root/$SLICE" ]; then find "$root/$SLICE" -name cgroup.procs -exec cat {} +; fi; done | sort -u)
    [ -z "$pids" ] && break
    kill -KILL $pids 2>/dev/null || true; sleep 0.3
  done
  for root in "${ROOTS[@]}"; do
    if [ -d "$root/$SLICE" ]; then find "$root/$SLICE" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    rmdir "$root/user.slice" 2>/dev/null || true
  done
  return 0
}

B=$(mktemp -d /tmp/mlxd-sd.XXXXXX); chmod 755 "$B"
export HOME=$B/home XDG_RUNTIME_DIR=$B/run USER=$NAME LOGNAME=$NAME
mkdir "$HOME" && mkdir -m 700 "$XDG_RUNTIME_DIR" && chown "$U:$U" "$HOME" "$XDG_RUNTIME_DIR"
CP='' SP='' JP=''
cleanup() {
  trap '' TERM INT HUP; set +e   # GNU timeout signals the child and then its whole group
  [ -n "$CP" ] && kill -TERM "$CP" 2>/dev/null
  # SIGTERM makes the manager stop its units (mlxd.service gets its own SIGTERM) before it exits.
  [ -n "$SP" ] && kill -TERM "$SP" 2>/dev/null && timeout 30 tail --pid="$SP" -f /dev/null
  [ -n "$JP" ] && kill -TERM "$JP" 2>/dev/null && timeout 10 tail --pid="$JP" -f /dev/null
  sweep
  rm -rf "$B"
}
trap cleanup EXIT; trap 'exit 143' TERM INT HUP
sweep  # a SIGKILLed run cannot clean up after itself: its processes are still in the slice

# systemd refuses `--user` unless sd_booted(): /run/systemd/system must exist. Only in this namespace.
mount -t tmpfs -o mode=755 tmpfs /run/systemd && mkdir /run/systemd/system
mount -t tmpfs -o mode=755 tmpfs /run/log                                   # private runtime journal
mkdir -p /var/log/journal  # a persistent journal: only there does journald keep a user-UID.journal
mount -t tmpfs -o mode=2755,gid=systemd-journal tmpfs /var/log/journal
if [ "$U" != 0 ]; then  # dbus-daemon (systemd-run --user, ...) needs a passwd entry for the uid
  cp /etc/passwd /etc/group "$B/"
  echo "$NAME:x:$U:$U::$HOME:/bin/sh" >> "$B/passwd"; echo "$NAME:x:$U:" >> "$B/group"
  mount --bind "$B/passwd" /etc/passwd && mount --bind "$B/group" /etc/group
fi
# /root is mode 700: a venv made from pyenv's python, or a checkout under /root, is out of the uid's reach.
# Hide /root behind a tmpfs and bring back only those paths ($SD_EXPOSE, space-separated; default ~/.pyenv).
EXPOSE=()
for path in ${SD_EXPOSE:-/root/.pyenv}; do case $path in /root/?*) [ -e "$path" ] && EXPOSE+=("$path");; esac; done
if [ "$U" != 0 ] && [ ${#EXPOSE[@]} -gt 0 ]; then
  for i in "${!EXPOSE[@]}"; do mkdir "$B/expose$i" && mount --bind "${EXPOSE[$i]}" "$B/expose$i"; done
  mount -t tmpfs -o mode=755 tmpfs /root
  for i in "${!EXPOSE[@]}"; do mkdir -p "${EXPOSE[$i]}" && mount --move "$B/expose$i" "${EXPOSE[$i]}"; done
fi

spawn_in() {  # spawn_in CGROUP CMD... &: exec CMD in CGROUP (under every hierarchy); only in the background
  local cg=$1; shift
  exec sh -c 'cg=$1; shift; for r in '"${ROOTS[*]}"'; do echo $$ > "$r/$cg/cgroup.procs"; done; exec "$@"' \
    sh "$cg" "$@"
}
# journald and CMD live in the slice too, so that the sweep after a SIGKILLed run ends them (and with them
# this namespace and its mounts).
for root in "${ROOTS[@]}"; do mkdir -p "$root/$CG" "$root/$SLICE/harness-journald" "$root/$SLICE/harness-cmd"; done
spawn_in "$SLICE/harness-journald" /lib/systemd/systemd-journald & JP=$!
for _ in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.1; done
[ -S /run/systemd/journal/stdout ] || { echo "user-systemd: systemd-journald did not come up" >&2; exit 1; }
journalctl --flush

for root in "${ROOTS[@]}"; do chown -R "$U:$U" "$root/$CG"; done
AS_USER=(setpriv --reuid="$U" --regid="$U" --clear-groups)
spawn_in "$CG" "${AS_USER[@]}" /usr/lib/systemd/systemd --user --log-target=journal & SP=$!
s=''
for _ in $(seq 150); do
  s=$("${AS_USER[@]}" systemctl --user is-system-running 2>/dev/null) || true
  case $s in running|degraded) break;; esac
  kill -0 "$SP" 2>/dev/null || break
  sleep 0.1
done
case $s in running|degraded) ;; *) echo "user-systemd: systemd --user did not come up: '$s'" >&2; exit 1;; esac
echo "user-systemd: ready pid=$$ home=$HOME runtime=$XDG_RUNTIME_DIR"
spawn_in "$SLICE/harness-cmd" "${AS_USER[@]}" "$@" & CP=$!
wait "$CP"
