#!/usr/bin/env bash
# Create .venv and install DeepSalt with its test tools, at the versions in constraints.txt.
# torch pinned (constraints.txt) to the CPU build: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "DeepSalt needs Python >= 3.11")'
# Skip the install when what it installs from has not changed since the last successful one.
stamp=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat .venv/.deepsalt-setup 2>/dev/null)" != "$stamp" ] || ! .venv/bin/python -c 'import deepsalt' 2>/dev/null; then
  # Everything through uv (pinned in constraints.txt; pip puts it in the venv): the whole set-up took 20 s with uv's
  # cache warm and 41 s with it empty, against 76-77 s through pip (bench/results/setup.json, 2026-12-07). A venv
  # without pip of its own is made in 0.2 s, ensurepip's took 6.3 s (uv adds pip below). pip older than 22.3 cannot
  # install into another environment: then the venv's own pip does.
  [ -x .venv/bin/python ] || "$PY" -m venv --without-pip .venv
  uv_pin=$(grep '^uv==' constraints.txt)
  "$PY" -m pip --python .venv/bin/python install -q --no-compile "$uv_pin" 2>/dev/null \
    || { .venv/bin/python -m ensurepip -q && .venv/bin/python -m pip install -q --no-compile "$uv_pin"; }
  # torch==2.13.0 (constraints.txt) must be the CPU build: pip finds it where its configuration points (find-links:
  # this machine's wheel), and uv, which reads no pip configuration, is pointed there too (elsewhere: PyPI's, with CUDA)
  links=()
  for l in ${PIP_FIND_LINKS:-$("$PY" -m pip config get global.find-links 2>/dev/null || true)}; do links+=(--find-links "$l"); done
  .venv/bin/uv pip install -q --python .venv/bin/python ${links[@]+"${links[@]}"} -c constraints.txt -e ".[test]" pip
  # Byte-code for what DeepSalt's processes import, written by importing it: where processes may not write .pyc files
  # (PYTHONDONTWRITEBYTECODE), every CLI run and Ray worker would otherwise compile each module it imports, every
  # time. Importing compiles only what is used: compiling all of site-packages (compileall for torch, uv's
  # --compile-bytecode for the rest) took about 43 s of the 75 s set-up here, 32 s without tests and RLlib (2026-12-07);
  # scripts/test.sh and scripts/demo.sh let their processes write what this leaves out (2,580 modules in a suite
  # run, 8.3 CPU-s to compile).
  # Two processes, one per core: Ray's side and DeepSalt's (torch and the raster and storage stacks).
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c 'import ray.data, ray.train.torch, ray.util.state, ray._private.workers.default_worker' &
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c '
import importlib, pkgutil, deepsalt, torch.distributed
for m in pkgutil.walk_packages(deepsalt.__path__, "deepsalt."):
    importlib.import_module(m.name)'
  wait $!
  echo "$stamp" > .venv/.deepsalt-setup
fi
# DeepSalt's own modules, which the editable install leaves uncompiled: where processes may not write .pyc files, every
# CLI run and Ray worker compiled the ones it imports anew (0.25-0.35 CPU-s for the CLI's and the trainer's, 2026-12-07);
# only what changed is compiled again
.venv/bin/python -m compileall -q deepsalt > /dev/null
echo "setup: $(.venv/bin/python -c 'from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("deepsalt", "torch", "ray", "zarr")))')"
