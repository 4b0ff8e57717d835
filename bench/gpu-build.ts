// Builds a random-weight model into the built-model cache with several processes (issue 7: the
// SpikingBrain-7B shape in fp16 is 15.2 GB of external data; ensureBuiltModel writes it from one
// thread, 231 s on the 2-core dev machine, most of it fp32 → fp16 conversion and the [out, in] →
// [in, out] transpose). Every process builds the same graph (cheap: weights are lazy), then produces
// and writes its share of the weights at their offsets in one preallocated data file; the parent
// writes model.onnx and renames the folder into place, as ensureBuiltModel would. Model.load then
// finds the cache entry. The data file is byte for byte the serial build's (same graph, same offsets).
//
// Two things this reaches that src does not export, both checked at run time:
//   - the cache folder name `<checkpoint hash>-<builder version>-<variant>`: the suffix is taken from
//     ensureBuiltModel itself, by building a tiny model first (cacheFolderSuffix);
//   - GraphBuilder's pending weights (private): `builder['weights']`, offsets and byte lengths checked
//     against the parent's list in every child. If src grows `writeExternalData` for a subset of
//     weights and a `builtModelDir()`, this file shrinks to the process fan-out.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseModelConfig } from '../src/engine/model/config.ts';
import type { GraphOptions } from '../src/engine/model/onnx/context.ts';
import { MODEL_FILE, ensureBuiltModel } from '../src/engine/model/onnx/build-cache.ts';
import type { GraphBuilder } from '../src/engine/model/onnx/graph-builder.ts';
import { EXTERNAL_DATA_FILE, buildModelGraph } from '../src/engine/model/onnx/model-graph.ts';
import { encodeModel } from '../src/engine/model/onnx/proto.ts';
import type { ShapedCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';

/** The flag that makes the bench script run as one build process. */
export const BUILD_PART_FLAG = 'build-part';
const PART_PREFIX = '@@build-part ';

/** What identifies the model: a config.json with random weights (seed 1, as the bench loads it). */
export interface BuildSpec {
  readonly config: Record<string, unknown>;
  readonly graphOptions: GraphOptions;
}

interface PartArgs extends BuildSpec {
  readonly dataPath: string;
  /** [weight index, byte offset, byte length] of the weights this process writes. */
  readonly weights: readonly (readonly [number, number, number])[];
}

export interface BuildReport {
  readonly modelPath: string;
  readonly seconds: number;
  readonly bytes: number;
  readonly processes: number;
  /** True when the cache already held the model (nothing was built). */
  readonly cached: boolean;
}

export const checkpointOf = (spec: BuildSpec): ShapedCheckpoint => randomCheckpoint(parseModelConfig(spec.config), { seed: 1, gkLayout: 'lowrank' });

function pendingWeights(builder: GraphBuilder): readonly { readonly offset: number; readonly length: number; produce(): Float32Array | Uint16Array | Uint8Array }[] {
  // Private in GraphBuilder (see the top of this file); the element access keeps its type checked.
  return builder['weights'].map((w) => ({ offset: w.tensor.offset, length: w.tensor.length, produce: w.produce }));
}

const TINY_CONFIG = {
  model_type: 'gla_swa',
  vocab_size: 64,
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  intermediate_size: 64,
  sliding_window: 8,
};

/** `<builder version>-<variant>` of ensureBuiltModel's folder name for these options, read off a tiny build. */
export function cacheFolderSuffix(graphOptions: GraphOptions): string {
  const tiny = randomCheckpoint(parseModelConfig(TINY_CONFIG), { seed: 0, gkLayout: 'lowrank' });
  const dir = mkdtempSync(join(tmpdir(), 'spikeserve-name-'));
  try {
    const folder = basename(dirname(ensureBuiltModel(tiny, graphOptions, { cacheDir: dir })));
    if (!folder.startsWith(`${tiny.hash}-`)) throw new Error(`built-model cache folder "${folder}" does not start with the checkpoint hash`);
    return folder.slice(tiny.hash.length + 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Splits weights into `n` parts of about equal bytes (largest first, each to the lightest part). */
function balance(weights: readonly { readonly offset: number; readonly length: number }[], n: number): [number, number, number][][] {
  const parts = Array.from({ length: n }, () => ({ bytes: 0, weights: [] as [number, number, number][] }));
  const order = weights.map((w, i) => [i, w.offset, w.length] as [number, number, number]).sort((a, b) => b[2] - a[2]);
  for (const w of order) {
    const lightest = parts.reduce((a, b) => (b.bytes < a.bytes ? b : a));
    lightest.weights.push(w);
    lightest.bytes += w[2];
  }
  return parts.filter((p) => p.weights.length > 0).map((p) => p.weights.sort((a, b) => a[1] - b[1]));
}

function runPart(args: PartArgs, onBytes: (bytes: number) => void): Promise<void> {
  const script = process.argv[1];
  if (script === undefined) return Promise.reject(new Error('parallel build: no script path in process.argv'));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, script, `--${BUILD_PART_FLAG}`, JSON.stringify(args)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let pending = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      pending += s;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const l of lines) if (l.startsWith(PART_PREFIX)) onBytes(Number(l.slice(PART_PREFIX.length)));
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr = (stderr + s).slice(-4000);
    });
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`build process ended with ${signal ?? `exit code ${code}`}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`));
    });
  });
}

/** Smaller models are built by ensureBuiltModel itself: starting processes would take longer. */
const PARALLEL_MIN_BYTES = 256 * 2 ** 20;

/**
 * Builds the model into `cacheDir` with `processes` processes (1: ensureBuiltModel itself) unless
 * the cache already has it. Returns where model.onnx is.
 */
export async function buildModel(spec: BuildSpec, cacheDir: string, processes: number, log: (msg: string) => void): Promise<BuildReport> {
  const t0 = performance.now();
  const ckpt = checkpointOf(spec);
  const seconds = (): number => (performance.now() - t0) / 1000;
  const { builder, model } = buildModelGraph(ckpt, spec.graphOptions);
  if (processes <= 1 || builder.externalBytes < PARALLEL_MIN_BYTES) {
    let built = false;
    let bytes = 0;
    let lastLogged = 0;
    const modelPath = ensureBuiltModel(ckpt, spec.graphOptions, {
      cacheDir,
      onProgress: (p) => {
        built = true;
        bytes = p.bytesTotal;
        if (performance.now() - lastLogged > 10000) {
          lastLogged = performance.now();
          log(`  building (1 process): ${(p.bytesDone / 2 ** 30).toFixed(2)}/${(p.bytesTotal / 2 ** 30).toFixed(2)} GiB`);
        }
      },
    });
    return { modelPath, seconds: seconds(), bytes, processes: 1, cached: !built };
  }
  const dir = join(cacheDir, `${ckpt.hash}-${cacheFolderSuffix(spec.graphOptions)}`);
  const modelPath = join(dir, MODEL_FILE);
  if (existsSync(modelPath) && existsSync(join(dir, EXTERNAL_DATA_FILE))) return { modelPath, seconds: seconds(), bytes: 0, processes: 0, cached: true };

  const weights = pendingWeights(builder);
  const bytesTotal = builder.externalBytes;
  mkdirSync(cacheDir, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-parallel`;
  mkdirSync(tmp, { recursive: true });
  try {
    const dataPath = join(tmp, EXTERNAL_DATA_FILE);
    const fd = openSync(dataPath, 'w');
    ftruncateSync(fd, bytesTotal);
    closeSync(fd);
    const parts = balance(weights, processes);
    let bytesDone = 0;
    let lastLogged = performance.now();
    await Promise.all(
      parts.map((part) =>
        runPart({ ...spec, dataPath, weights: part }, (b) => {
          bytesDone += b;
          if (performance.now() - lastLogged > 10000) {
            lastLogged = performance.now();
            log(`  building (${parts.length} processes): ${(bytesDone / 2 ** 30).toFixed(2)}/${(bytesTotal / 2 ** 30).toFixed(2)} GiB`);
          }
        }),
      ),
    );
    writeFileSync(join(tmp, MODEL_FILE), encodeModel(model));
    renameSync(tmp, dir);
    return { modelPath, seconds: seconds(), bytes: bytesTotal, processes: parts.length, cached: false };
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** One build process: produces its weights and writes them at their offsets; a line per weight on stdout. */
export function buildPartChild(argsJson: string): void {
  const args = JSON.parse(argsJson) as PartArgs;
  const { builder } = buildModelGraph(checkpointOf(args), args.graphOptions);
  const weights = pendingWeights(builder);
  const fd = openSync(args.dataPath, 'r+');
  try {
    for (const [index, offset, length] of args.weights) {
      const w = weights[index];
      if (w === undefined || w.offset !== offset || w.length !== length) {
        throw new Error(`build process: weight ${index} is not at offset ${offset} with ${length} bytes in this process's graph`);
      }
      const data = w.produce();
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      if (bytes.length !== length) throw new Error(`build process: weight ${index} produced ${bytes.length} bytes, expected ${length}`);
      let written = 0;
      while (written < bytes.length) written += writeSync(fd, bytes, written, Math.min(bytes.length - written, 1 << 30), offset + written);
      process.stdout.write(`${PART_PREFIX}${length}\n`);
    }
  } finally {
    closeSync(fd);
  }
}
