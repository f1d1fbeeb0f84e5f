#!/bin/sh
# Stop and remove the mlxd per-user service; its logs are kept. Arguments go to `mlxd uninstall`.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -f "$root/mlxd/__init__.py" ]; then
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi
exec "${PYTHON:-python3}" -m mlxd uninstall "$@"
