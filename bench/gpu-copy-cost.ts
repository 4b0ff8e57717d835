// What the host↔device round trips of one decode step cost (issue 7), measured apart from the model:
// a graph with exactly the decode step's inputs and outputs (names, shapes, dtypes as Model.run
// feeds them) whose nodes only touch each tensor once on the device (Add a scalar, Slice one slot,
// Expand). Its run time is the copies plus the per-tensor transfer setup plus one dispatch: what a
// decode step pays besides arithmetic. Three variants say which part of the IO the time goes to:
//   window  every input: GLA states [B, Hkv, d, d] and the SWA window past_key/value [B, Hkv, P, d]
//   states  the window left out (as if it lived on the device): states, logits, present_* and ids
//   none    neither (both resident): logits [B, 1, V], present_* [B, Hkv, 1, d] and the ids only
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { layersOfKind, type ModelConfig } from '../src/engine/model/config.ts';
import { resolveExecutionProviders, type Device } from '../src/engine/model/device.ts';
import {
  INPUT_IDS,
  LOGITS,
  NUM_LOGITS,
  PAST_POSITIONS,
  POSITIONS,
  pastKey,
  pastValue,
  presentKey,
  presentValue,
  stateIn,
  stateOut,
} from '../src/engine/model/io-names.ts';
import { GraphBuilder, int } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';

export type IoDtype = 'float32' | 'int32' | 'int64';

export interface TensorSpec {
  readonly name: string;
  readonly dtype: IoDtype;
  readonly dims: readonly number[];
}

export interface StepIo {
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
}

const ELEMENT_BYTES: Record<IoDtype, number> = { float32: 4, int32: 4, int64: 8 };

export const specBytes = (s: TensorSpec): number => s.dims.reduce((a, b) => a * b, ELEMENT_BYTES[s.dtype]);
export const totalBytes = (specs: readonly TensorSpec[]): number => specs.reduce((a, s) => a + specBytes(s), 0);

/** The inputs and outputs of one decode step (T = 1, logits of the last position) with P past slots. */
export function decodeStepIo(config: ModelConfig, pastTokens: number, batch = 1): StepIo {
  const { numKvHeads: Hkv, headDim: d, vocabSize: V } = config;
  const B = batch;
  const gla = layersOfKind(config, 'gla');
  const attn = config.layerKinds.flatMap((k, i) => (k === 'gla' ? [] : [i]));
  const f32 = (name: string, dims: number[]): TensorSpec => ({ name, dtype: 'float32', dims });
  return {
    inputs: [
      { name: INPUT_IDS, dtype: 'int32', dims: [B, 1] },
      { name: POSITIONS, dtype: 'int32', dims: [B, 1] },
      { name: PAST_POSITIONS, dtype: 'int32', dims: [B, pastTokens] },
      { name: NUM_LOGITS, dtype: 'int64', dims: [1] },
      ...gla.map((l) => f32(stateIn(l), [B, Hkv, d, d])),
      ...attn.flatMap((l) => [f32(pastKey(l), [B, Hkv, pastTokens, d]), f32(pastValue(l), [B, Hkv, pastTokens, d])]),
    ],
    outputs: [
      f32(LOGITS, [B, 1, V]),
      ...gla.map((l) => f32(stateOut(l), [B, Hkv, d, d])),
      ...attn.flatMap((l) => [f32(presentKey(l), [B, Hkv, 1, d]), f32(presentValue(l), [B, Hkv, 1, d])]),
    ],
  };
}

export type CopyVariant = 'window' | 'states' | 'none';

export interface CopyCost {
  readonly variant: CopyVariant;
  readonly tensorsIn: number;
  readonly tensorsOut: number;
  readonly hostToDeviceBytes: number;
  readonly deviceToHostBytes: number;
  readonly msPerRun: number;
  readonly runs: number;
}

const isState = (s: TensorSpec): boolean => s.name.startsWith('state.');
const isWindow = (s: TensorSpec): boolean => s.name === PAST_POSITIONS || s.name.startsWith('past_');

/** The part of `io` a variant moves between host and device. */
export function variantIo(io: StepIo, variant: CopyVariant): StepIo {
  const keepIn = (s: TensorSpec): boolean => (variant === 'window' || !isWindow(s)) && (variant !== 'none' || !isState(s));
  const keepOut = (s: TensorSpec): boolean => variant !== 'none' || !s.name.startsWith('new_state.');
  return { inputs: io.inputs.filter(keepIn), outputs: io.outputs.filter(keepOut) };
}

/**
 * A graph with `io`'s inputs and outputs that touches every tensor once on the device:
 *   s = float(input_ids)                               (a [B, 1] seed, so nothing is constant-folded)
 *   new_state.l = state.l + s                          (or dropped when the states are not moved)
 *   present_*.l = Slice(past_*.l, slot 0) + s          (or Expand(s) when the window is not moved)
 *   logits = Expand(s + float(positions) + float(past_positions[:, :1]), [B, 1, V])
 */
function copyGraph(config: ModelConfig, io: StepIo, batch: number): Uint8Array {
  const { numKvHeads: Hkv, headDim: d, vocabSize: V } = config;
  const g = new GraphBuilder('copy.onnx.data');
  const code = { float32: DataType.FLOAT, int32: DataType.INT32, int64: DataType.INT64 } as const;
  const names = new Map<string, string>();
  for (const s of io.inputs) names.set(s.name, g.input(s.name, code[s.dtype], s.dims));
  const input = (name: string): string | undefined => names.get(name);
  const toFloat = (x: string): string => g.op('Cast', [x], { to: int(DataType.FLOAT) });
  const ids = input(INPUT_IDS);
  const positions = input(POSITIONS);
  if (ids === undefined || positions === undefined) throw new Error('copy graph: the ids and positions are always moved');
  const seed = toFloat(ids); // [B, 1]
  const seed4 = g.op('Reshape', [seed, g.i64([batch, 1, 1, 1])]);
  let logitSeed = g.op('Add', [seed, toFloat(positions)]);
  const pastPositions = input(PAST_POSITIONS);
  if (pastPositions !== undefined) {
    const first = g.op('Slice', [pastPositions, g.i64([0]), g.i64([1]), g.i64([1])]);
    logitSeed = g.op('Add', [logitSeed, toFloat(first)]);
  }
  const numLogits = input(NUM_LOGITS);
  if (numLogits !== undefined) logitSeed = g.op('Add', [logitSeed, toFloat(numLogits)]);
  for (const s of io.outputs) {
    let value: string;
    if (s.name === LOGITS) {
      value = g.op('Expand', [g.op('Reshape', [logitSeed, g.i64([batch, 1, 1])]), g.i64([batch, 1, V])]);
    } else if (s.name.startsWith('new_state.')) {
      const from = input(s.name.replace('new_state.', 'state.'));
      if (from === undefined) throw new Error(`copy graph: ${s.name} without its state input`);
      value = g.op('Add', [from, seed4]);
    } else {
      const from = input(s.name.replace('present_', 'past_'));
      value = from === undefined
        ? g.op('Expand', [seed4, g.i64([batch, Hkv, 1, d])])
        : g.op('Add', [g.op('Slice', [from, g.i64([0]), g.i64([1]), g.i64([2])]), seed4]);
    }
    g.output(s.name, value, code[s.dtype], s.dims);
  }
  return encodeModel(g.toModel('decode-io', new Map([['', 17]])));
}

function feedOf(s: TensorSpec): ort.Tensor {
  const n = s.dims.reduce((a, b) => a * b, 1);
  switch (s.dtype) {
    case 'float32':
      return new ort.Tensor('float32', new Float32Array(n).fill(0.5), s.dims);
    case 'int32':
      return new ort.Tensor('int32', new Int32Array(n).fill(1), s.dims);
    case 'int64':
      return new ort.Tensor('int64', new BigInt64Array(n).fill(1n), s.dims);
  }
}

export interface CopyCostOptions {
  readonly device: Device;
  readonly threads: number;
  /** Time each variant for at least this long (after 3 warm-up runs). */
  readonly minSeconds: number;
  /** A folder for the (tiny, weight-free) graph files. */
  readonly dir: string;
}

/** Runs the three variants of the decode step's IO at `pastTokens` past slots; ms per run each. */
export async function measureCopyCost(config: ModelConfig, pastTokens: number, options: CopyCostOptions): Promise<CopyCost[]> {
  const batch = 1;
  const io = decodeStepIo(config, pastTokens, batch);
  const out: CopyCost[] = [];
  for (const variant of ['window', 'states', 'none'] as const) {
    const part = variantIo(io, variant);
    const path = join(options.dir, `copy-${variant}.onnx`);
    writeFileSync(path, copyGraph(config, part, batch));
    const session = await ort.InferenceSession.create(path, {
      executionProviders: resolveExecutionProviders(options.device),
      graphOptimizationLevel: 'all',
      intraOpNumThreads: options.threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
    });
    try {
      const feeds: Record<string, ort.Tensor> = {};
      for (const s of part.inputs) feeds[s.name] = feedOf(s);
      for (let i = 0; i < 3; i++) await session.run(feeds);
      let runs = 0;
      const t0 = performance.now();
      while (runs < 5 || (performance.now() - t0 < options.minSeconds * 1000 && runs < 200)) {
        await session.run(feeds);
        runs++;
      }
      out.push({
        variant,
        tensorsIn: part.inputs.length,
        tensorsOut: part.outputs.length,
        hostToDeviceBytes: totalBytes(part.inputs),
        deviceToHostBytes: totalBytes(part.outputs),
        msPerRun: (performance.now() - t0) / runs,
        runs,
      });
    } finally {
      await session.release();
    }
  }
  return out;
}
