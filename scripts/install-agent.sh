#!/bin/sh
# Install mlxd as a per-user service (launchd agent on macOS, systemd user unit on Linux).
# The service runs the interpreter that runs this: set PYTHON to choose one (default: python3 on PATH).
# All arguments go to `mlxd install`, e.g.: scripts/install-agent.sh --model mlx-community/... --dry-run
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -f "$root/mlxd/__init__.py" ]; then
    # From a source checkout: use its mlxd (the installer then records this path for the service).
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi
exec "${PYTHON:-python3}" -m mlxd install "$@"
