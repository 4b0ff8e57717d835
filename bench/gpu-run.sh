#!/usr/bin/env bash
# bench/gpu.ts on a GPU machine that has no Node.js and no network (docs/gpu.md).
#   here:        bench/gpu-run.sh pack         bundle bench/gpu.ts to plain JS (esbuild), pack node +
#                                              onnxruntime-node + the Vulkan loader (../shared/gpu/pack.sh)
#   GPU machine: bench/gpu-run.sh node         unpack the node binary only (stage 1 of 2, see below)
#                bench/gpu-run.sh bench [FLAGS]  unpack the rest and run the bench; FLAGS go to gpu.ts
#                bench/gpu-run.sh next         `bench` with the flags planned for the next H200 run
#                                              (docs/gpu.md, "The next GPU run"; ~7–8 min, --deadline 480)
# Carried folders (git-ignored): .device-carry/ (onnxruntime-node, libvulkan1 + GLVND .debs, gpu.mjs, the
# SpikingBrain-7B config.json) and .device-node/ (the stripped node binary, xz -9e, ~22 MB). They are
# separate because the working tree (with models/spikingbrain-tiny, ~39 MB) plus both would pass the
# device tool's 64 MiB transfer limit: carry .device-node in a first short call (`node`), then
# .device-carry in a second call made at once, while the machine is still warm (`bench`).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-bench}
shift || true

case "$mode" in
pack)
  set -e
  [ -f .device-carry/node_modules.tar.xz ] || ../shared/gpu/pack.sh
  # NVIDIA's Vulkan ICD (libGLX_nvidia.so.0) needs GLVND: without it "vkCreateInstance: Found no drivers!"
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  ls .device-carry/debs/libglvnd0_*.deb >/dev/null 2>&1 || (cd .device-carry/debs && apt-get $o download libglvnd0 libglx0 libegl1 libgl1 >/dev/null 2>&1)
  mkdir -p .device-node
  grep -qx '/.device-node/' .git/info/exclude 2>/dev/null || echo '/.device-node/' >> .git/info/exclude
  if [ ! -f .device-node/node.tar.xz ]; then
    t=$(mktemp -d); mkdir -p "$t/bin"; cp "$(readlink -f "$(command -v node)")" "$t/bin/node"; strip "$t/bin/node"
    tar cf - -C "$t" bin/node | xz -T2 -9e > .device-node/node.tar.xz; rm -rf "$t"
  fi
  rm -f .device-carry/node.tar.xz
  node_modules/esbuild/bin/esbuild bench/gpu.ts --bundle --platform=node --format=esm --target=node20 \
    --external:onnxruntime-node --outfile=.device-carry/gpu.mjs --log-level=warning \
    --banner:js="import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"
  cp test/fixtures/spikingbrain-7b/config.json .device-carry/spikingbrain-7b.config.json
  du -sh .device-carry .device-node
  ;;
next)
  # One call: reference size + io probe + the full SpikingBrain-7B shape (28 layers, random fp16
  # weights, built by one process per core) at 4K/32K/128K, each length within its budget, the
  # prefill stopping early to keep 45 s before --deadline (seconds after node starts; unpacking takes
  # a few seconds before that). Plain-op graph (the engine's GPU default: ONNX Attention runs on the
  # CPU in the fused one), chunk 2048 (plain attention scores are [Hkv, G·T, P+T] fp32: 1.4 GB a
  # layer at T = 2048, P = 4096; 3.8 GB at T = 4096).
  exec bash "$root/bench/gpu-run.sh" bench --plain --chunk 2048 --ref-tokens 8192 --io-probe ref --io-probe-steps 16 \
    --config .device-carry/spikingbrain-7b.config.json --random-weights \
    --lengths 4096,32768,131072 --max-seconds-per-length 60,120,150 --deadline 480 "$@"
  ;;
next-int8)
  # An optional third call, right after `next` while the machine is warm: the same 7B shape with int8
  # weights (MatMulNBits, ~8 GB instead of ~30 GB on the device) at 4K and 32K, no reference size or
  # probe (those were in `next`).
  exec bash "$root/bench/gpu-run.sh" bench --plain --chunk 2048 --skip-ref --skip-parity --io-probe off --weight-dtype int8 \
    --config .device-carry/spikingbrain-7b.config.json --random-weights \
    --lengths 4096,32768 --max-seconds-per-length 90,150 --deadline 420 "$@"
  ;;
node)
  mkdir -p /tmp/rt && tar xJf .device-node/node.tar.xz -C /tmp/rt && /tmp/rt/bin/node --version
  ;;
bench)
  if [ ! -x /tmp/rt/bin/node ]; then
    f=.device-node/node.tar.xz; [ -f "$f" ] || f=.device-carry/node.tar.xz
    mkdir -p /tmp/rt && tar xJf "$f" -C /tmp/rt || { echo "no node binary: run 'bench/gpu-run.sh node' first" >&2; exit 1; }
  fi
  for f in .device-carry/debs/*.deb; do dpkg -x "$f" /; done; ldconfig
  tar xJf .device-carry/node_modules.tar.xz -C /tmp/rt
  export PATH=/tmp/rt/bin:$PATH VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
  # ESM imports do not read NODE_PATH: put the packages where the bundle looks for them.
  [ -e node_modules ] || ln -s /tmp/rt/node_modules node_modules
  out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  node .device-carry/gpu.mjs --json "$out/gpu-bench.json" "$@" 2>&1 | tee "$out/gpu-bench.log"
  rc=${PIPESTATUS[0]}
  # Which provider each node of the model graph went to (with --placement).
  grep -A60 'Node placements' "$out/gpu-bench.log" | grep -v 'SaveMLValueNameIndexMapping\|OrtValue mappings' | sed 's/^.*VerifyEachNodeIsAssignedToAnEp\] //' > "$out/placement.txt" || true
  head -c 3000 "$out/placement.txt"
  exit $rc
  ;;
*)
  echo "usage: bench/gpu-run.sh pack | node | bench [gpu.ts flags] | next [more flags] | next-int8 [more flags]" >&2; exit 2
  ;;
esac
