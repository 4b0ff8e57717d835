// The on-disk cache of built models: `<cacheDir>/<model identity>-<BUILDER_VERSION>-<variant>/model.onnx`
// (+ `model.onnx.data`). A build writes into a private temporary folder and renames it into place,
// so concurrent processes never see half-written files; a finished folder is reused as it is.
// The model identity of a checkpoint on disk is the sha256 of its whole weight files
// (../weights-identity.ts, remembered in `<cacheDir>/weights-identity.json`); the folder name also
// names the prefix snapshots of the model (engine-core.ts), so neither is ever reused by a fine-tune.
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Checkpoint } from '../checkpoint.ts';
import { weightsIdentity } from '../weights-identity.ts';
import type { GraphOptions } from './context.ts';
import { EXTERNAL_DATA_FILE, buildModelGraph } from './model-graph.ts';
import { encodeModel } from './proto.ts';

/** Bump whenever the graph a checkpoint builds to changes. */
export const BUILDER_VERSION = 'g7';

export const MODEL_FILE = 'model.onnx';

export const DEFAULT_CACHE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../../../../.cache/models');

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
