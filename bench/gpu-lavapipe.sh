#!/usr/bin/env bash
# WebGPU without a GPU, for dry runs of `bench/gpu.ts --device webgpu` (the gpu-buffer io probe
# included): Mesa's lavapipe, a Vulkan driver that runs on the CPU. Timings mean nothing there;
# what runs, what crashes and the numerics do (parity on lavapipe: 3.05e-3, the H200's 3.0e-3).
# Debian 12's own lavapipe (Mesa 22.3) lacks shaderUniform*ArrayDynamicIndexing, which Dawn requires
# ("No supported adapters"); bookworm-backports' Mesa 25 works. This fetches that one package into
# .device-lvp/ (git-ignored) without touching the system's apt sources, and prints the line to use it:
#   apt-get install libvulkan1 mesa-vulkan-drivers    # once: the loader and the libraries lavapipe links
#   eval "$(bench/gpu-lavapipe.sh)"                   # exports VK_DRIVER_FILES
#   node --import tsx bench/gpu.ts --device webgpu --mm 256 --mm-chain 2 --ref-tokens 2048
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
d="$root/.device-lvp"
icd="$d/lvp_icd.json"
if [ ! -f "$icd" ]; then
  mkdir -p "$d/apt/lists/partial"
  grep -qx '/.device-lvp/' "$root/.git/info/exclude" 2>/dev/null || echo '/.device-lvp/' >> "$root/.git/info/exclude"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$d/apt/sources.list"
  o=(-o "Dir::Etc::SourceList=$d/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$d/apt/lists")
  apt-get "${o[@]}" update >&2
  (cd "$d" && apt-get "${o[@]}" download mesa-vulkan-drivers/bookworm-backports >&2)
  dpkg -x "$d"/mesa-vulkan-drivers_*.deb "$d/root"
  lib=$(find "$d/root" -name libvulkan_lvp.so | head -1)
  printf '{ "file_format_version": "1.0.0", "ICD": { "library_path": "%s", "api_version": "1.3.0" } }\n' "$lib" > "$icd"
fi
echo "export VK_DRIVER_FILES=$icd"
