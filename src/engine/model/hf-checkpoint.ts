// A Hugging Face checkpoint directory as a Checkpoint: config.json + safetensors (single or sharded),
// stored names mapped onto the canonical gla_swa names (official SpikingBrain names pass through,
// qwen2 and Qwen3.5 names are renamed; the multimodal Qwen3.5's `model.language_model.*` is its text
// model, its vision tower `model.visual.*` and the multi-token-prediction head `mtp.*` are skipped),
// tied embeddings answered for `lm_head.weight`, a fast content hash, and validateCheckpoint(), which
// checks every tensor the model needs against tensor-names.ts.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ModelLoadError } from '../errors.ts';
import type { Checkpoint, Tensor32 } from './checkpoint.ts';
import { loadModelConfig, type ModelConfig } from './config.ts';
import { openSafetensorsDir, readSafetensorsEntry, type SafetensorsEntry, type SafetensorsStore } from './safetensors.ts';
import { detectGkLayout, EMBEDDINGS, LM_HEAD, modelTensorSpecs, numElements, type GkLayout } from './tensor-names.ts';
import { checkW8ASpike, isW8ASpike } from './w8aspike.ts';

/** A checkpoint that can tell a tensor's shape without reading its data. */
export interface ShapedCheckpoint extends Checkpoint {
  /** Shape of a tensor, or undefined when absent. */
  shapeOf(name: string): readonly number[] | undefined;
  /** Gate layout of the GLA layers. */
  readonly gkLayout: GkLayout;
}

/** An opened checkpoint directory. */
export interface HfCheckpoint extends ShapedCheckpoint {
  readonly dir: string;
  /** Stored element type of each canonical tensor name ('F32', 'BF16', …). */
  dtypeOf(name: string): string | undefined;
  /** Canonical names of the stored tensors (lm_head included only when stored). */
  readonly names: readonly string[];
  /** Paths of the weight files. */
  readonly files: readonly string[];
  readonly fileBytes: number;
  /** Stored tensors that are not part of the served text model, by part (`visual`, `mtp`) → count. */
  readonly skipped: Readonly<Record<string, number>>;
}

/** The part of a multimodal / MTP checkpoint a stored tensor belongs to when it is not served, else null. */
export function skippedPart(stored: string): string | null {
  if (stored.startsWith('model.visual.') || stored.startsWith('visual.')) return 'visual';
  if (stored.startsWith('mtp.') || stored.startsWith('model.mtp.')) return 'mtp';
  return null;
}

/** One line naming what was skipped (for the log), or null when nothing was. */
export function skippedSummary(skipped: Readonly<Record<string, number>>): string | null {
  const parts = Object.entries(skipped).filter(([, n]) => n > 0);
  if (parts.length === 0) return null;
  const what: Record<string, string> = { visual: 'vision tower', mtp: 'multi-token-prediction head' };
  return `checkpoint: serving the text model; skipped ${parts.map(([k, n]) => `the ${what[k] ?? k} (${n} tensors)`).join(' and ')}`;
}

/** Maps one stored (HF) tensor name onto the canonical gla_swa name; canonical names pass through. */
export function canonicalTensorName(storedName: string): string {
  // Qwen3_5ForConditionalGeneration keeps its text model under model.language_model.
  const stored = storedName.startsWith('model.language_model.') ? `model.${storedName.slice('model.language_model.'.length)}` : storedName;
  if (stored === 'model.embed_tokens.weight') return EMBEDDINGS;
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(stored);
  if (m === null) return stored;
  const [, i, rest] = m as unknown as [string, string, string];
  let r = rest;
  if (r.startsWith('self_attn.')) r = `attn.${r.slice('self_attn.'.length)}`;
  else if (r === 'input_layernorm.weight') r = 'attn_norm.weight';
  else if (r === 'post_attention_layernorm.weight') r = 'mlp_norm.weight';
  return `model.layers.${i}.${r}`;
}

/**
 * sha256 over config.json and, per weight file, its name, size and safetensors header: a quick
 * fingerprint of the layout (for `inspect`), not of the weights. What names a built model and its
 * prefix snapshots is the whole content (`sourceFiles`, weights-identity.ts).
 */
function checkpointHash(dir: string, store: SafetensorsStore): string {
  const h = createHash('sha256');
  h.update(readFileSync(join(dir, 'config.json')));
  for (const f of store.files) {
    h.update(`\0${basename(f.path)}\0${f.fileBytes}\0`);
    h.update(f.headerBytes);
  }
  return h.digest('hex');
}

/** Opens a checkpoint directory (headers only; tensors are read on demand by `tensor()`). */
export function openCheckpoint(dir: string): HfCheckpoint {
  const config: ModelConfig = loadModelConfig(dir);
  const store = openSafetensorsDir(dir);
  const byName = new Map<string, SafetensorsEntry>();
  const skipped: Record<string, number> = {};
  for (const [stored, entry] of store.entries) {
    const part = skippedPart(stored);
    if (part !== null) {
      skipped[part] = (skipped[part] ?? 0) + 1;
      continue;
    }
    const name = canonicalTensorName(stored);
    const prev = byName.get(name);
    if (prev !== undefined) {
      throw new ModelLoadError(`tensors "${prev.name}" and "${stored}" both map to "${name}"`);
    }
    byName.set(name, entry);
  }
  const names = [...byName.keys()];
  let numParameters = 0;
  for (const e of byName.values()) numParameters += numElements(e.shape);
  // Tied: lm_head is the embedding matrix (HF ties it even when a copy of lm_head was saved).
  const tied = config.tieWordEmbeddings || !byName.has(LM_HEAD);
  const resolve = (name: string): SafetensorsEntry | undefined =>
    name === LM_HEAD && tied ? byName.get(EMBEDDINGS) : byName.get(name);
  const has = (name: string): boolean => resolve(name) !== undefined;
  const gkLayout = detectGkLayout(config, has);
  return {
    config,
    dir,
    hash: checkpointHash(dir, store),
    sourceFiles: { configPath: join(dir, 'config.json'), weightFiles: store.files.map((f) => f.path) },
    numParameters,
    names,
    gkLayout,
    files: store.files.map((f) => f.path),
    fileBytes: store.files.reduce((a, f) => a + f.fileBytes, 0),
    skipped,
    has,
    shapeOf: (name) => resolve(name)?.shape,
    dtypeOf: (name) => resolve(name)?.dtype,
    tensor(name: string, expectShape?: readonly number[]): Tensor32 {
      const entry = resolve(name);
      if (entry === undefined) throw new ModelLoadError(`checkpoint ${dir}: tensor "${name}" is missing`);
      if (expectShape !== undefined) checkShape(name, entry.shape, expectShape);
      return readSafetensorsEntry(entry);
    },
  };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function checkShape(name: string, actual: readonly number[], expected: readonly number[]): void {
  if (!sameShape(actual, expected)) {
    throw new ModelLoadError(`tensor "${name}" has shape [${actual.join(', ')}], expected [${expected.join(', ')}]`);
  }
}

/**
 * Checks that every tensor the model needs is present with the right shape. Uses `shapeOf` when the
 * checkpoint has it (no data read), else reads each tensor. Throws ModelLoadError naming the first
 * missing or misshaped tensor (for W8ASpike also its scales).
 */
export function validateCheckpoint(ckpt: Checkpoint): void {
  const shaped = 'shapeOf' in ckpt ? (ckpt as ShapedCheckpoint) : null;
  const layout = shaped?.gkLayout ?? detectGkLayout(ckpt.config, (n) => ckpt.has(n));
  if (isW8ASpike(ckpt)) checkW8ASpike(ckpt, layout);
  for (const spec of modelTensorSpecs(ckpt.config, layout)) {
    if (!ckpt.has(spec.name)) {
      throw new ModelLoadError(`checkpoint is missing tensor "${spec.name}" (expected shape [${spec.shape.join(', ')}])`);
    }
    const actual = shaped !== null ? shaped.shapeOf(spec.name) : ckpt.tensor(spec.name).shape;
    if (actual === undefined) throw new ModelLoadError(`checkpoint is missing tensor "${spec.name}"`);
    checkShape(spec.name, actual, spec.shape);
    const dtype = 'dtypeOf' in ckpt ? (ckpt as HfCheckpoint).dtypeOf(spec.name) : undefined;
    if (dtype !== undefined && dtype !== 'F32' && dtype !== 'BF16' && dtype !== 'F16') {
      throw new ModelLoadError(`tensor "${spec.name}" has dtype ${dtype}; supported: F32, BF16, F16`);
    }
  }
}
