// W8ASpike, the official quantized, spiking SpikingBrain release, as the official inference code runs
// it (`W8ASpike/` of BICLab/SpikingBrain-7B; DESIGN.md §2, corrected in docs/design-changes.md):
//
//   QuantLinear (q/k/v/gk/o projections, MLP gate and up):
//     weights   w' = round(w / s) · s, s = `<linear>.weight_quantizer.scales` [out, in/128, 1]:
//               one scale per output row and group of 128 inputs (symmetric, no clamp)
//     inputs    spike-coded per token: vth = clamp(mean(|x|)/3, 1e−5, 1e4), x' = round(x/vth) · vth
//   MLP down_proj: stored with scales, but the official forward calls it through a fused SwiGLU helper
//     with the raw weight: no fake quantization, no spike coding. Followed here.
//   SWA layers, after RoPE: queries spike-coded per head (mean over d); keys and values 8-bit
//     fake-quantized per token and kv head: s = clamp(max|x|/127, 1e−5, 1e4), x' = clamp(round(x/s), −128, 127) · s.
//   round = round half to even (torch.round). lm_head, embeddings and norms stay dense.
//
// The weight part is done once, at build time, by the Checkpoint view below (fp32 arithmetic, as the
// official code in fp32); the activation parts are graph ops (./onnx/spike-coding.ts).
import { ModelLoadError } from '../errors.ts';
import type { Checkpoint, Tensor32 } from './checkpoint.ts';
import { modelTensorSpecs, W8ASPIKE_MARKER, type GkLayout } from './tensor-names.ts';

/** Inputs per weight scale of a QuantLinear. */
export const W8ASPIKE_GROUP = 128;
/** Spike coding: vth = mean(|x|) / SPIKE_K. */
export const SPIKE_K = 3;
/** Bounds of vth and of the K/V quantization scale. */
export const SCALE_MIN = 1e-5;
export const SCALE_MAX = 1e4;

/** True for a W8ASpike checkpoint (it stores QuantLinear scales). */
export function isW8ASpike(ckpt: Checkpoint): boolean {
  return ckpt.has(W8ASPIKE_MARKER);
}

/**
 * Checks what the official W8ASpike model has: a full-rank gate and a scales tensor for every
 * projection weight. Throws ModelLoadError naming the first thing missing.
 */
export function checkW8ASpike(ckpt: Checkpoint, gkLayout: GkLayout): void {
  if (gkLayout !== 'full') {
    throw new ModelLoadError('W8ASpike: the GLA gate must be one full-rank gk_proj (the official QuantLinear layout), not gk_proj.0/gk_proj.1');
  }
  for (const spec of modelTensorSpecs(ckpt.config, gkLayout)) {
    if (!spec.name.endsWith('_proj.weight')) continue;
    if (!ckpt.has(scalesName(spec.name))) throw new ModelLoadError(`W8ASpike: tensor "${scalesName(spec.name)}" is missing`);
    const [out, inDim] = spec.shape as [number, number];
    if (inDim % W8ASPIKE_GROUP !== 0) throw new ModelLoadError(`W8ASpike: "${spec.name}" has ${inDim} inputs, not a multiple of ${W8ASPIKE_GROUP}`);
    const want = [out, inDim / W8ASPIKE_GROUP, 1];
    const got = ckpt.tensor(scalesName(spec.name)).shape;
    if (got.length !== 3 || got.some((x, i) => x !== want[i])) {
      throw new ModelLoadError(`W8ASpike: "${scalesName(spec.name)}" has shape [${got.join(', ')}], expected [${want.join(', ')}]`);
    }
  }
}

/** The scales tensor that belongs to a QuantLinear weight `…_proj.weight`. */
export function scalesName(weightName: string): string {
  return weightName.replace(/\.weight$/, '.weight_quantizer.scales');
}

/** Round half to even, as torch.round and ONNX Round. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // half up
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The weights of a QuantLinear, fake-quantized in fp32: round(w/s)·s per [row, group]. */
export function fakeQuantize(name: string, w: Tensor32, scales: Tensor32): Tensor32 {
  const [rows, cols] = w.shape as [number, number];
  const groups = cols / W8ASPIKE_GROUP;
  if (w.shape.length !== 2 || !Number.isInteger(groups) || scales.data.length !== rows * groups) {
    throw new ModelLoadError(
      `W8ASpike: "${scalesName(name)}" has shape [${scales.shape.join(', ')}]; for "${name}" [${w.shape.join(', ')}] it must be [${rows}, ${cols}/${W8ASPIKE_GROUP}, 1]`,
    );
  }
  const out = new Float32Array(w.data.length);
  for (let r = 0; r < rows; r++) {
    for (let gi = 0; gi < groups; gi++) {
      const s = scales.data[r * groups + gi] as number;
      const base = r * cols + gi * W8ASPIKE_GROUP;
      for (let i = base; i < base + W8ASPIKE_GROUP; i++) out[i] = Math.fround(roundHalfEven(Math.fround((w.data[i] as number) / s)) * s);
    }
  }
  return { shape: w.shape, data: out };
}

/**
 * The checkpoint as the graph must read it: every QuantLinear weight that the official forward
 * fake-quantizes comes back as round(w/s)·s; everything else (down_proj included) as stored.
 */
export function fakeQuantizedWeights(ckpt: Checkpoint): Checkpoint {
  return {
    config: ckpt.config,
    hash: ckpt.hash,
    ...(ckpt.sourceFiles !== undefined ? { sourceFiles: ckpt.sourceFiles } : {}),
    numParameters: ckpt.numParameters,
    has: (name) => ckpt.has(name),
    tensor(name, expectShape) {
      const t = ckpt.tensor(name, expectShape);
      if (!name.endsWith('_proj.weight') || name.endsWith('.mlp.down_proj.weight') || !ckpt.has(scalesName(name))) return t;
      return fakeQuantize(name, t, ckpt.tensor(scalesName(name)));
    },
  };
}
