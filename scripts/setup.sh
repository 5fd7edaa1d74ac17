#!/usr/bin/env bash
# Create .venv and install DeepSalt with its test tools, at the versions in constraints.txt.
# torch goes first and pinned: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "DeepSalt needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Skip the install when what it installs from has not changed since the last successful one.
stamp=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat .venv/.deepsalt-setup 2>/dev/null)" != "$stamp" ] || ! .venv/bin/python -c 'import deepsalt' 2>/dev/null; then
  # pip byte-compiles what it installs one module at a time: torch and its dependencies took 29.7 s to install here,
  # 9-14 s without that, and compileall on every core 8.9 s more
  .venv/bin/python -m pip install -q --no-compile torch==2.13.0
  # (as pip does, a module this Python cannot compile is passed over: torch ships one for Python >= 3.12 only)
  .venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
  # the rest through uv (pinned in constraints.txt): 33 s against pip's 80 s on this 2-core machine, most of it
  # compiling bytecode, which pip also does; compiled here because a process that may not write .pyc files
  # (PYTHONDONTWRITEBYTECODE) would otherwise compile every module it imports, every time. uv keeps the torch above.
  .venv/bin/python -m pip install -q -c constraints.txt uv
  .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -c constraints.txt -e ".[test]"
  echo "$stamp" > .venv/.deepsalt-setup
fi
# DeepSalt's own modules, which the editable install leaves uncompiled: where processes may not write .pyc files, every
# CLI run and Ray worker compiled the ones it imports anew (0.25-0.35 CPU-s for the CLI's and the trainer's, 2026-12-07);
# only what changed is compiled again
.venv/bin/python -m compileall -q deepsalt > /dev/null
echo "setup: $(.venv/bin/python -c 'import deepsalt, torch, ray, zarr; print(f"deepsalt {deepsalt.__version__}, torch {torch.__version__}, ray {ray.__version__}, zarr {zarr.__version__}")')"
