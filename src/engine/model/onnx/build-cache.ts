// The on-disk cache of built models: `<cacheDir>/<model identity>-<BUILDER_VERSION>-<variant>/model.onnx`
// (the step graph), `decode.onnx` (the decode graph) and the `model.onnx.data` both read. A build
// writes into a private temporary folder and renames it into place, so concurrent processes never see
// half-written files; a finished folder is reused as it is.
// The model identity of a checkpoint on disk is the sha256 of its whole weight files
// (../weights-identity.ts, remembered in `<cacheDir>/weights-identity.json`); the folder name also
// names the prefix snapshots of the model (engine-core.ts), so neither is ever reused by a fine-tune.
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { packageRoot } from '../../package-root.ts';
import type { Checkpoint } from '../checkpoint.ts';
import { weightsIdentity } from '../weights-identity.ts';
import type { GraphOptions } from './context.ts';
import type { GraphBuilder } from './graph-builder.ts';
import { EXTERNAL_DATA_FILE, buildModelGraph } from './model-graph.ts';
import { encodeModel } from './proto.ts';

/**
 * Bump whenever the graph a checkpoint builds to changes. g8: the decode graph, MatMulNBits adds the
 * biases, ONNX RotaryEmbedding (opset 23) on per-row tables (with the Gated DeltaNet layers of g7). g9:
 * models with window and growing attention layers give the window layers a past of their own. g10:
 * MoBA's selection runs in an If branch, only when a prompt query can leave chunks out. g11: growing
 * layers attend over the past and the chunk apart in the fused graph (no copy of the past per run).
 */
export const BUILDER_VERSION = 'g11';

export const MODEL_FILE = 'model.onnx';
export const DECODE_MODEL_FILE = 'decode.onnx';

export const DEFAULT_CACHE_DIR = join(packageRoot(import.meta.url), '.cache', 'models');

export interface BuildProgress {
  readonly tensorsDone: number;
  readonly tensorsTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

export interface BuildCacheOptions {
  readonly cacheDir?: string;
  /** Called after each weight is written (a build only; not called when the cache is hit). */
  readonly onProgress?: (p: BuildProgress) => void;
}

/** Folder name part that tells graph variants of one checkpoint apart. */
function variantName(options: GraphOptions): string {
  const graph = options.fusedOps ? 'fused' : `plain-c${options.glaSubChunk}`;
  switch (options.weightDtype ?? 'float32') {
    case 'float32':
      return graph;
    case 'float16':
      return `${graph}-fp16`;
    case 'int8':
    case 'int4':
      return `${graph}-${options.weightDtype}${options.int8Activations === false ? '-a32' : ''}`;
  }
}

/** Models at least this large draw a progress bar on a TTY stderr. */
const PROGRESS_BAR_MIN_BYTES = 64 * 1024 * 1024;

function progressBar(p: BuildProgress): string {
  const width = 30;
  const frac = p.bytesTotal === 0 ? 1 : p.bytesDone / p.bytesTotal;
  const filled = Math.round(frac * width);
  const mib = (b: number): string => (b / 2 ** 20).toFixed(0);
  return `\rbuilding ONNX model [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(0)}% ${mib(p.bytesDone)}/${mib(p.bytesTotal)} MiB`;
}

/**
 * What names a checkpoint's builds: the content identity of its files (hashed once, then remembered
 * by path, size and mtime in `cacheDir`), or `hash` for a checkpoint that is not on disk.
 */
export function checkpointIdentity(ckpt: Checkpoint, cacheDir: string = DEFAULT_CACHE_DIR): string {
  if (ckpt.sourceFiles === undefined) return ckpt.hash;
  return weightsIdentity(ckpt.sourceFiles.configPath, ckpt.sourceFiles.weightFiles, { cacheDir });
}

/** Returns the path of the built `model.onnx` for this checkpoint and variant, building it when absent. */
export function ensureBuiltModel(ckpt: Checkpoint, graphOptions: GraphOptions, options: BuildCacheOptions = {}): string {
  const root = options.cacheDir ?? DEFAULT_CACHE_DIR;
  const dir = join(root, `${checkpointIdentity(ckpt, root)}-${BUILDER_VERSION}-${variantName(graphOptions)}`);
  const modelPath = join(dir, MODEL_FILE);
  if (existsSync(modelPath) && existsSync(join(dir, EXTERNAL_DATA_FILE))) return modelPath;

  mkdirSync(root, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  mkdirSync(tmp);
  try {
    const { builder, model } = buildModelGraph(ckpt, graphOptions);
    const bytesTotal = builder.externalBytes;
    const drawBar = process.stderr.isTTY === true && bytesTotal >= PROGRESS_BAR_MIN_BYTES;
    builder.writeExternalData(join(tmp, EXTERNAL_DATA_FILE), (tensorsDone, tensorsTotal, bytesDone) => {
      const p: BuildProgress = { tensorsDone, tensorsTotal, bytesDone, bytesTotal };
      options.onProgress?.(p);
      if (drawBar) process.stderr.write(progressBar(p) + (tensorsDone === tensorsTotal ? '\n' : ''));
    });
    writeFileSync(join(tmp, MODEL_FILE), encodeModel(model));
    writeFileSync(join(tmp, DECODE_MODEL_FILE), decodeGraphBytes(ckpt, graphOptions, builder));
    try {
      renameSync(tmp, dir);
    } catch (err) {
      // Another process finished the same build first: use theirs.
      if (!existsSync(modelPath)) throw err;
      rmSync(tmp, { recursive: true, force: true });
    }
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  return modelPath;
}

/**
 * The decode graph (model-graph.ts) of a built model, encoded. It reads the step graph's data file, so
 * every external tensor it declares must be the step graph's (same name, type, shape, offset and
 * length): both declare the same weights in the same order, and this checks it rather than trusting it.
 */
function decodeGraphBytes(ckpt: Checkpoint, graphOptions: GraphOptions, step: GraphBuilder): Uint8Array {
  const decode = buildModelGraph(ckpt, graphOptions, 'decode');
  const stepTensors = new Map(step.externalTensors.map((t) => [t.name, t]));
  for (const t of decode.builder.externalTensors) {
    const s = stepTensors.get(t.name);
    if (s === undefined || s.offset !== t.offset || s.length !== t.length || s.dataType !== t.dataType || s.dims.join() !== t.dims.join()) {
      throw new Error(`decode graph: weight ${t.name} does not match the step graph's data file`);
    }
  }
  return encodeModel(decode.model);
}

/**
 * Path of the decode graph of the built model at `modelPath` (ensureBuiltModel's result). Folders
 * written before it existed, or by a tool that writes only model.onnx, get it now: it holds no weights,
 * so this is quick. Written to a temporary name and renamed, like a build.
 */
export function ensureDecodeGraph(ckpt: Checkpoint, graphOptions: GraphOptions, modelPath: string): string {
  const path = join(dirname(modelPath), DECODE_MODEL_FILE);
  if (existsSync(path)) return path;
  const bytes = decodeGraphBytes(ckpt, graphOptions, buildModelGraph(ckpt, graphOptions, 'step').builder);
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    writeFileSync(tmp, bytes);
    renameSync(tmp, path);
  } finally {
    rmSync(tmp, { force: true });
  }
  return path;
}
