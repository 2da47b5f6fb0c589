#!/usr/bin/env bash
# Prepare ComfyUI and the packages it needs beyond the GPU image (torch, transformers, safetensors, numpy are
# there) for the GPU machine, which has no network and a 64 MiB carry limit per call. Run in the repo root; writes
# .hostwheels_a/ and .hostwheels_b/ (ignored through .git/info/exclude), each under the limit:
#   a: ComfyUI's source (COMFYUI_GIT at COMFYUI_REF: by default the fetched Comfy-Org/ComfyUI snapshot, v0.3.64;
#      files whose blobs the snapshot lacks skipped: none that Wan needs) as comfyui.tar.xz, and half of the wheels;
#   b: the other half and install.sh.
# Then two calls in a row (the second within the machine's warm window):
#   run(carry=[".hostwheels_a"], command="mkdir -p /tmp/hostwheels && cp .hostwheels_a/* /tmp/hostwheels/")
#   run(carry=[".hostwheels_b"], command="bash .hostwheels_b/install.sh && PYTHONPATH=/tmp/hostsite python3 ...")
# install.sh unpacks ComfyUI to /tmp/ComfyUI and installs, into /tmp/hostsite, each wheel whose distribution the
# image does not have already (so nothing of the image is shadowed).
set -eu
COMFYUI_GIT=${COMFYUI_GIT:-/work/.mirror/Comfy-Org+ComfyUI/repo}
COMFYUI_REF=${COMFYUI_REF:-HEAD}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# The ComfyUI ref's own requirements.txt minus torch/torchvision/torchaudio, numpy, transformers, tokenizers,
# safetensors (in the image), comfyui-workflow-templates (84 MB, optional: the benchmark rebuilds the template) and
# kornia / spandrel (optional nodes); plus websocket-client for the harness's client.
requirements=$(git --git-dir="$COMFYUI_GIT" show "$COMFYUI_REF:requirements.txt" | sed 's/#.*//; s/[[:space:]]//g' \
  | grep -v '^$' | grep -viE '^(torch|torchvision|torchaudio|numpy|transformers|tokenizers|safetensors|comfyui-workflow-templates|kornia|spandrel)([<>=!~;].*)?$')
# shellcheck disable=SC2086  # one argument per requirement
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp/all" $requirements websocket-client
# torchsde pulls in torch and its CUDA libraries: the image has them, and the other packages below (its package list in
# the device tool's KINDS.md).
rm -f "$tmp"/all/{torch,torchvision,triton,numpy,sympy,mpmath,networkx,jinja2,filelock,fsspec,setuptools}-*.whl \
  "$tmp"/all/nvidia_*.whl
# comfy-kitchen (ComfyUI >= 0.12's fp8/fp4 layouts, without which native fp8 files do not load there) is one 68 MB
# wheel, over what one call carries; nearly all of it is its compiled CUDA and ROCm kernels. Repacked without them it
# is 0.2 MB and runs its PyTorch ("eager") backend.
for wheel in "$tmp"/all/comfy_kitchen-*.whl; do
  [ -e "$wheel" ] || continue
  python3 - "$wheel" <<'PY'
import os, sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as source, zipfile.ZipFile(path + ".new", "w", zipfile.ZIP_DEFLATED) as target:
    for info in source.infolist():
        if info.filename.endswith(".so"):
            continue
        data = source.read(info)
        if info.filename.endswith(".dist-info/RECORD"):  # the list of files pip checks: the kernels' lines go too
            data = b"".join(line for line in data.splitlines(keepends=True) if b".so," not in line)
        target.writestr(info, data, zipfile.ZIP_DEFLATED)
os.replace(path + ".new", path)
PY
done
for image_has in scipy pillow aiohttp aiosignal aiohappyeyeballs attrs certifi charset_normalizer frozenlist idna \
  multidict propcache psutil pyyaml requests sentencepiece tqdm typing_extensions urllib3 yarl einops markupsafe; do
  rm -f "$tmp"/all/"$image_has"-*.whl
done
mkdir -p "$tmp/a" "$tmp/b"
git --git-dir="$COMFYUI_GIT" ls-tree -r --name-only "$COMFYUI_REF" | while read -r f; do
  git --git-dir="$COMFYUI_GIT" cat-file -e "$COMFYUI_REF:$f" 2>/dev/null || { echo "skipped (not in snapshot): $f" >&2; continue; }
  mkdir -p "$tmp/src/$(dirname "$f")"; git --git-dir="$COMFYUI_GIT" show "$COMFYUI_REF:$f" > "$tmp/src/$f"
done 2> "$tmp/skipped.txt"
git --git-dir="$COMFYUI_GIT" rev-parse "$COMFYUI_REF" > "$tmp/src/.comfyui_commit"
tar cf - -C "$tmp/src" . | xz -T0 -6 > "$tmp/a/comfyui.tar.xz"
# Wheels largest first, each into the lighter part.
size_a=$(stat -c %s "$tmp/a/comfyui.tar.xz"); size_b=0
for w in $(ls -S "$tmp"/all/*.whl); do
  s=$(stat -c %s "$w")
  if [ "$size_a" -le "$size_b" ]; then mv "$w" "$tmp/a/"; size_a=$((size_a + s)); else mv "$w" "$tmp/b/"; size_b=$((size_b + s)); fi
done
cat > "$tmp/b/install.sh" <<'SH'
set -e
here=$(dirname "$0"); mkdir -p /tmp/hostwheels /tmp/hostsite /tmp/ComfyUI
cp "$here"/*.whl /tmp/hostwheels/
[ -f /tmp/ComfyUI/main.py ] || xz -dc /tmp/hostwheels/comfyui.tar.xz | tar x -C /tmp/ComfyUI
python3 -c 'import sys; assert sys.version_info[:2] == (3, 12), f"wheels are for Python 3.12, not {sys.version}"'
missing=$(python3 - /tmp/hostwheels/*.whl <<'PY'
import importlib.metadata as md, re, sys
for wheel in sys.argv[1:]:
    name = re.sub(r"[-_.]+", "-", wheel.rsplit("/", 1)[-1].split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
PY
)
[ -z "$missing" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/hostsite $missing
echo "ComfyUI $(cat /tmp/ComfyUI/.comfyui_commit) in /tmp/ComfyUI; installed into /tmp/hostsite:" $(ls /tmp/hostsite | grep -c dist-info) "packages"
SH
rm -rf .hostwheels_a .hostwheels_b; mv "$tmp/a" .hostwheels_a; mv "$tmp/b" .hostwheels_b
exclude="$(git rev-parse --git-path info/exclude)"; mkdir -p "$(dirname "$exclude")"
for d in /.hostwheels_a/ /.hostwheels_b/; do grep -qx "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
echo "skipped ComfyUI files (blobs not in the snapshot): $(wc -l < "$tmp/skipped.txt")"
du -sh .hostwheels_a .hostwheels_b
