#!/usr/bin/env bash
# Export ComfyUI's comfy/ package (Python files only, about 3 MB) from a Comfy-Org/ComfyUI git dir (the fetch tool
# prints it) into .comfyui/ for bench/dit_step.py. .comfyui/ is ignored by git and never committed; carry it to the
# GPU machine with the run (carry=[".comfyui"]).
#   bash bench/export_comfyui.sh /work/.mirror/Comfy-Org+ComfyUI/repo [REF]
# ComfyUI >= 0.1x's comfy/ also imports comfy-kitchen and comfy-aimdo: install its requirements there
# (bench/host_e2e_wheels.sh).
set -eu
git_dir=$1
ref=${2:-HEAD}
rm -rf .comfyui && mkdir -p .comfyui
git --git-dir="$git_dir" ls-tree -r "$ref" comfy comfyui_version.py | while read -r _ _ sha path; do
  case "$path" in
    *.py) mkdir -p ".comfyui/$(dirname "$path")"; git --git-dir="$git_dir" cat-file blob "$sha" > ".comfyui/$path" ;;
  esac
done
exclude=$(git rev-parse --git-path info/exclude)
grep -qx /.comfyui/ "$exclude" 2>/dev/null || echo /.comfyui/ >> "$exclude"
du -sh .comfyui
