// class Model: owns the onnxruntime sessions of one built checkpoint and runs one forward pass
// (../forward.ts) per call. Inputs are wrapped without copying (ort.Tensor views the typed arrays);
// outputs are the fresh arrays onnxruntime returns.
//
// Two sessions when `decodeIntraOpThreads` is set: the step graph (any chunk) on `intraOpThreads`, and
// the decode graph (T = 1, onnx/model-graph.ts) on its own thread count for steps of one token per
// sequence and at most DECODE_MAX_TOKENS sequences. For the decode graph this class computes what the
// step graph derives in nodes: the RoPE tables [B, 1, d/2] (../rope.ts) and the additive attention
// masks [B, 1, 1, P+1], into buffers reused from step to step.
import { readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { EngineError } from '../errors.ts';
import type { Checkpoint } from './checkpoint.ts';
import { isW8ASpike } from './w8aspike.ts';
import { hasWindowPast, isGrowingKind, isWindowKind, kvBytesPerToken, type ModelConfig } from './config.ts';
import { attentionLayerIndices, stateBytesPerSequence, stateTensorSpecs, type StateTensorSpec } from './layer-plan.ts';
import type { ForwardInput, ForwardOutput } from './forward.ts';
import {
  INPUT_IDS,
  LOGITS,
  MOBA_SELECT,
  NUM_LOGITS,
  PAST_POSITIONS,
  PAST_POSITIONS_WINDOW,
  POSITIONS,
  ROPE_COS,
  ROPE_SIN,
  SPIKE_VALUES,
  SPIKE_ZEROS,
  attentionBias,
  pastKey,
  pastValue,
  presentKey,
  presentValue,
} from './io-names.ts';
import { probeDevice, resolveExecutionProviders, type Device } from './device.ts';
import { ensureBuiltModel, ensureDecodeGraph, type BuildProgress } from './onnx/build-cache.ts';
import type { WeightDtype } from './onnx/graph-builder.ts';
import { ropeInverseFrequencies, writeRopeTables } from './rope.ts';
import { f32Scratch, type Scratch } from '../scratch.ts';

export interface ModelLoadOptions {
  /** Built-model cache folder (default `<repo>/.cache/models`). */
  readonly cacheDir?: string;
  /** onnxruntime intra-op threads (default: available cores). */
  readonly intraOpThreads?: number;
  /** Execution device (default cpu); a GPU that is not usable fails here with DeviceUnavailableError. */
  readonly device?: Device;
  /**
   * Storage of weight matrices (default: float32 on cpu, float16 on GPUs; compute is float32). int8:
   * linear layers run as MatMulNBits on 8-bit blocks (see onnx/quantize.ts), a quarter of the bytes.
   * 'auto' (the server's default): see autoWeightDtype.
   */
  readonly weightDtype?: WeightDtype | 'auto';
  /** int8 weights only: also quantize activations per block (default true, the fast kernels). */
  readonly int8Activations?: boolean;
  /**
   * Use onnxruntime's fused ops (LinearAttention, Attention, RotaryEmbedding …): the fast path on the CPU,
   * the default there. On GPUs the default is the plain-op graph: the WebGPU provider runs opset-23
   * Attention on the CPU (measured on an H200: plain prefill 2.8× faster than fused).
   */
  readonly fusedOps?: boolean;
  /** Sub-chunk C of the plain-op chunked GLA (default 16). */
  readonly glaSubChunk?: number;
  /**
   * Intra-op threads of a second onnxruntime session, over the decode graph (same data file), that runs
   * decode steps (T = 1, B ≤ DECODE_MAX_TOKENS). Unset: one session runs everything on the step graph.
   * The second session holds its own copy of the weights (twice the model's weight memory; 13.5 MiB at
   * the reference size in int8); it pays where a step is too small to share between threads: at the
   * reference size a 2-thread pool spends 16–28% more CPU per decode token on waking its second thread
   * for ~40 small parallel ops, and the decode graph runs ~30 fewer nodes (bench/README.md, "Decode").
   * 'auto' (the server's default): see autoDecodeThreads.
   */
  readonly decodeIntraOpThreads?: number | 'auto';
  /**
   * Let idle onnxruntime pool threads spin (default false). Spinning wins a little on a dedicated
   * machine and loses badly when cores are shared (measured: 2 spinning threads decode at half the
   * rate of 1 thread on a loaded 2-core machine).
   */
  readonly allowSpinning?: boolean;
  /**
   * Write onnxruntime profiles (Chrome trace JSON, one event per node run) to `<prefix>_<date>.json`
   * (the step session) and `<prefix>-decode_<date>.json` (the decode session, when there is one);
   * `endProfiling()` finishes the files and returns their paths. For benchmarks: it slows every run.
   */
  readonly profileFilePrefix?: string;
  /** Build progress (only when the model is built, not on a cache hit). */
  readonly onProgress?: (p: BuildProgress) => void;
}

/** Decode steps (T = 1) of at most this many sequences run on the decode session when there is one. */
export const DECODE_MAX_TOKENS = 4;

/**
 * 'auto' weights: int8 on the CPU (decode 2× faster, −0.08% validation NLL and 97.6% the same most
 * likely token on the default model: README, "Quantized weights"), except for W8ASpike checkpoints,
 * whose exact computation is the float32 build (int8 re-quantizes their spike-coded activations);
 * float16 on GPUs.
 */
export function autoWeightDtype(ckpt: Checkpoint, device: Device): WeightDtype {
  if (device !== 'cpu') return 'float16';
  return isW8ASpike(ckpt) ? 'float32' : 'int8';
}

/**
 * 'auto' decode session: models up to this many parameters get a 1-thread decode session on the CPU.
 * At the reference size (9.7 M) one thread decodes 2.6× faster than two with int8 (a 2-thread pool
 * wakes its second thread for ~40 small ops a step) and the second copy of the int8 weights costs
 * 13.5 MiB; larger models have more arithmetic per op to share between threads and a larger copy to
 * hold (bench/README.md, "Issue 18").
 */
export const AUTO_DECODE_SESSION_MAX_PARAMETERS = 64e6;

/** 'auto' decode threads: 1 on the CPU for models of at most AUTO_DECODE_SESSION_MAX_PARAMETERS, else none. */
export function autoDecodeThreads(ckpt: Checkpoint, device: Device): number | undefined {
  return device === 'cpu' && ckpt.numParameters <= AUTO_DECODE_SESSION_MAX_PARAMETERS ? 1 : undefined;
}

/** The additive mask value of a key slot a query must not attend (as the step graph's masks). */
const MASKED = -1e30;

export class Model {
  /** Recurrent state tensors (GLA states …), in the order of ForwardInput.states. */
  readonly stateSpecs: readonly StateTensorSpec[];
  /** Layer indices of attention (SWA or full) layers, in order. */
  readonly attentionLayers: readonly number[];
  /** Bytes of recurrent state per sequence (fp32, every state tensor); independent of its length. */
  readonly stateBytesPerSequence: number;
  /** Bytes of keys + values per kept token (fp32, all attention layers). */
  readonly kvBytesPerToken: number;
  /** W: past tokens an SWA layer needs; null when some attention layer keeps every position (full, MoBA). */
  readonly windowTokens: number | null;
  /** The model has MoBA layers: ForwardInput.mobaSelect is required. */
  readonly hasMoba: boolean;
  /** Window layers read a past of their own (config.ts hasWindowPast): ForwardInput.windowPast is required. */
  readonly hasWindowPast: boolean;
  /** Per attention layer (as attentionLayers): whether it is a window layer (SWA, the hybrid's window branch). */
  readonly windowLayers: readonly boolean[];
  readonly numParameters: number;
  /** What the weights were built as, and the decode session's threads (null: none). */
  readonly weightDtype: WeightDtype;
  readonly decodeThreads: number | null;
  /** Attention kinds of the model: one decode-graph mask input each. */
  private readonly attentionKinds: readonly ('swa' | 'full')[];
  private readonly ropeInvFreq: Float64Array;
  /** Decode-graph inputs computed here, reused from step to step. */
  private readonly ropeCos = f32Scratch();
  private readonly ropeSin = f32Scratch();
  private readonly masks = new Map<'swa' | 'full', Scratch<Float32Array>>();
  /** A run is in flight (its inputs may still be read): the scratch buffers are not reentrant. */
  private running = false;

  private constructor(
    readonly config: ModelConfig,
    private readonly session: ort.InferenceSession,
    /** Runs decode steps (T = 1, B ≤ DECODE_MAX_TOKENS) on the decode graph when set (`decodeIntraOpThreads`). */
    private readonly decodeSession: ort.InferenceSession | null,
    readonly modelPath: string,
    private readonly profileFilePrefix: string | undefined,
    built: { readonly weightDtype: WeightDtype; readonly decodeThreads: number | null; readonly numParameters: number },
  ) {
    this.numParameters = built.numParameters;
    this.weightDtype = built.weightDtype;
    this.decodeThreads = built.decodeThreads;
    this.stateSpecs = stateTensorSpecs(config);
    this.attentionLayers = attentionLayerIndices(config);
    this.stateBytesPerSequence = stateBytesPerSequence(config);
    this.kvBytesPerToken = kvBytesPerToken(config);
    this.windowTokens = config.layerKinds.some(isGrowingKind) ? null : config.slidingWindow;
    this.hasMoba = config.layerKinds.includes('moba');
    this.hasWindowPast = hasWindowPast(config);
    this.windowLayers = this.attentionLayers.map((layer) => isWindowKind(config.layerKinds[layer] ?? 'full'));
    // Decode-graph masks: one per mask kind (the hybrid window branch masks as 'swa', MoBA as 'full').
    this.attentionKinds = [
      ...(config.layerKinds.some(isWindowKind) ? ['swa' as const] : []),
      ...(config.layerKinds.some(isGrowingKind) ? ['full' as const] : []),
    ];
    for (const kind of this.attentionKinds) this.masks.set(kind, f32Scratch());
    this.ropeInvFreq = ropeInverseFrequencies(config.ropeTheta, config.attention.rotaryDim);
  }

  /** Whether decode steps run on a second session over the decode graph. */
  get hasDecodeSession(): boolean {
    return this.decodeSession !== null;
  }

  /** One line for the log: weights and sessions. */
  get summary(): string {
    const params = `${(this.numParameters / 1e6).toFixed(1)}M parameters`;
    const decode = this.decodeThreads === null ? 'one session' : `decode session of ${this.decodeThreads} thread${this.decodeThreads === 1 ? '' : 's'} on the decode graph`;
    return `model: ${params}, weights ${this.weightDtype}, ${decode}`;
  }

  static async load(ckpt: Checkpoint, options: ModelLoadOptions = {}): Promise<Model> {
    const device = options.device ?? 'cpu';
    await probeDevice(device); // before a build that may take minutes
    const graphOptions = {
      fusedOps: options.fusedOps ?? device === 'cpu',
      glaSubChunk: options.glaSubChunk ?? 16,
      weightDtype: options.weightDtype === 'auto' ? autoWeightDtype(ckpt, device) : (options.weightDtype ?? (device === 'cpu' ? 'float32' : 'float16')),
      ...(options.int8Activations !== undefined ? { int8Activations: options.int8Activations } : {}),
    } as const;
    const modelPath = ensureBuiltModel(ckpt, graphOptions, {
      ...(options.cacheDir !== undefined ? { cacheDir: options.cacheDir } : {}),
      ...(options.onProgress !== undefined ? { onProgress: options.onProgress } : {}),
    });
    const intraOpThreads = options.intraOpThreads ?? availableParallelism();
    const create = (path: string, threads: number, profilePrefix: string | undefined): Promise<ort.InferenceSession> =>
      ort.InferenceSession.create(path, {
        executionProviders: resolveExecutionProviders(device),
        graphOptimizationLevel: 'all',
        intraOpNumThreads: threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        enableCpuMemArena: true,
        // Memory patterns plan one block per set of input shapes; with a different (T, P) almost every
        // prefill chunk the arena only grows. Off: 12 MiB less resident after a 2,400-token prompt,
        // prefill and decode CPU unchanged (bench/README.md, "Memory").
        enableMemPattern: false,
        extra: { session: { intra_op: { allow_spinning: options.allowSpinning === true ? '1' : '0' } } },
        ...(profilePrefix !== undefined ? { enableProfiling: true, profileFilePrefix: profilePrefix } : {}),
      });
    const prefix = options.profileFilePrefix;
    const session = await create(modelPath, intraOpThreads, prefix);
    const decodeThreads = options.decodeIntraOpThreads === 'auto' ? autoDecodeThreads(ckpt, device) : options.decodeIntraOpThreads;
    const decodeSession =
      decodeThreads === undefined
        ? null
        : await create(ensureDecodeGraph(ckpt, graphOptions, modelPath), decodeThreads, prefix === undefined ? undefined : `${prefix}-decode`);
    return new Model(ckpt.config, session, decodeSession, modelPath, prefix, { weightDtype: graphOptions.weightDtype, decodeThreads: decodeThreads ?? null, numParameters: ckpt.numParameters });
  }

  /**
   * One forward pass over B sequences × T new tokens. Not reentrant: the next call waits for this
   * one's promise (the engine runs one step at a time).
   */
  async run(input: ForwardInput): Promise<ForwardOutput> {
    const { batchSize: B, chunkTokens: T, pastTokens: P } = input;
    const { numKvHeads: Hkv, headDim: d, vocabSize: V } = this.config;
    const check = (what: string, got: number, want: number): void => {
      if (got !== want) throw new EngineError(`Model.run: ${what} has ${got} elements, expected ${want}`);
    };
    if (this.running) throw new EngineError('Model.run: a run is already in flight');
    if (B < 1 || T < 1 || P < 0) throw new EngineError(`Model.run: need B ≥ 1, T ≥ 1, P ≥ 0; got B=${B}, T=${T}, P=${P}`);
    check('tokenIds', input.tokenIds.length, B * T);
    check('positions', input.positions.length, B * T);
    check('pastPositions', input.pastPositions.length, B * P);
    check('states (count)', input.states.length, this.stateSpecs.length);
    check('pastKeys (count)', input.pastKeys.length, this.attentionLayers.length);
    check('pastValues (count)', input.pastValues.length, this.attentionLayers.length);
    const windowPast = input.windowPast;
    if (this.hasWindowPast) {
      if (windowPast === undefined) throw new EngineError('Model.run: a model with window and growing attention layers needs windowPast');
      if (windowPast.pastTokens < 0) throw new EngineError(`Model.run: windowPast.pastTokens ${windowPast.pastTokens} < 0`);
      check('windowPast.pastPositions', windowPast.pastPositions.length, B * windowPast.pastTokens);
    }
    const moba = input.mobaSelect;
    if (this.hasMoba) {
      if (moba === undefined) throw new EngineError('Model.run: a model with MoBA layers needs mobaSelect');
      check('mobaSelect', moba.length, B * T);
    }

    // The decode graph's MoBA layers attend densely: a MoBA-selected token runs on the step graph.
    const decode = this.decodeSession !== null && T === 1 && B <= DECODE_MAX_TOKENS && (moba === undefined || !this.hasMoba || moba.every((x) => x === 0));
    const feeds: Record<string, ort.Tensor> = decode ? this.decodeFeeds(input) : this.stepFeeds(input);
    this.stateSpecs.forEach((spec, i) => {
      const s = input.states[i] ?? new Float32Array(0);
      check(`states[${i}] (${spec.inputName})`, s.length, B * spec.floats);
      feeds[spec.inputName] = new ort.Tensor('float32', s, [B, ...spec.dims]);
    });
    this.attentionLayers.forEach((layer, i) => {
      const k = input.pastKeys[i] ?? new Float32Array(0);
      const v = input.pastValues[i] ?? new Float32Array(0);
      const slots = windowPast !== undefined && this.hasWindowPast && this.windowLayers[i] === true ? windowPast.pastTokens : P;
      check(`pastKeys[${i}]`, k.length, B * Hkv * slots * d);
      check(`pastValues[${i}]`, v.length, B * Hkv * slots * d);
      feeds[pastKey(layer)] = new ort.Tensor('float32', k, [B, Hkv, slots, d]);
      feeds[pastValue(layer)] = new ort.Tensor('float32', v, [B, Hkv, slots, d]);
    });

    const session = decode && this.decodeSession !== null ? this.decodeSession : this.session;
    this.running = true;
    let out: ort.InferenceSession.ReturnType;
    try {
      out = await session.run(feeds);
    } finally {
      this.running = false;
    }
    const f32 = (name: string): Float32Array => {
      const t = out[name];
      if (t === undefined || !(t.data instanceof Float32Array)) throw new EngineError(`Model.run: output ${name} missing`);
      return t.data;
    };
    const logits = f32(LOGITS);
    check('logits', logits.length, B * (input.allLogits ? T : 1) * V);
    const count = (name: string): number | null => {
      const t = out[name];
      return t !== undefined && t.data instanceof BigInt64Array ? Number(t.data[0] ?? 0n) : null;
    };
    const zeros = count(SPIKE_ZEROS);
    const values = count(SPIKE_VALUES);
    return {
      logits,
      states: this.stateSpecs.map((spec) => f32(spec.outputName)),
      presentKeys: this.attentionLayers.map((l) => f32(presentKey(l))),
      presentValues: this.attentionLayers.map((l) => f32(presentValue(l))),
      ...(zeros !== null && values !== null ? { spikes: { zeros, values } } : {}),
    };
  }

  /** Inputs of the step graph other than states and past keys/values. */
  private stepFeeds(input: ForwardInput): Record<string, ort.Tensor> {
    const { batchSize: B, chunkTokens: T, pastTokens: P } = input;
    return {
      [INPUT_IDS]: new ort.Tensor('int32', input.tokenIds, [B, T]),
      [POSITIONS]: new ort.Tensor('int32', input.positions, [B, T]),
      [PAST_POSITIONS]: new ort.Tensor('int32', input.pastPositions, [B, P]),
      [NUM_LOGITS]: new ort.Tensor('int64', BigInt64Array.of(BigInt(input.allLogits ? T : 1)), [1]),
      ...(this.hasMoba && input.mobaSelect !== undefined ? { [MOBA_SELECT]: new ort.Tensor('bool', input.mobaSelect, [B, T]) } : {}),
      ...(this.hasWindowPast && input.windowPast !== undefined
        ? { [PAST_POSITIONS_WINDOW]: new ort.Tensor('int32', input.windowPast.pastPositions, [B, input.windowPast.pastTokens]) }
        : {}),
    };
  }

  /**
   * Inputs of the decode graph (T = 1) other than states and past keys/values: the RoPE tables of each
   * row's position and, per attention kind, the additive mask over its P past slots then itself. A past
   * slot at position kp is attended by the query at qp iff kp ≥ 0, kp ≤ qp and (full, or kp ≥ qp − W);
   * the new token always attends itself. Same rule and values as the step graph's masks. With a window
   * past, the 'swa' mask spans the window layers' own slots.
   */
  private decodeFeeds(input: ForwardInput): Record<string, ort.Tensor> {
    const { batchSize: B, positions } = input;
    const feeds: Record<string, ort.Tensor> = { [INPUT_IDS]: new ort.Tensor('int32', input.tokenIds, [B, 1]) };
    if (this.attentionKinds.length === 0) return feeds;
    const half = this.config.attention.rotaryDim / 2;
    const cos = this.ropeCos.view(B * half);
    const sin = this.ropeSin.view(B * half);
    writeRopeTables(positions, B, this.ropeInvFreq, cos, sin);
    feeds[ROPE_COS] = new ort.Tensor('float32', cos, [B, 1, half]);
    feeds[ROPE_SIN] = new ort.Tensor('float32', sin, [B, 1, half]);
    const W = this.config.slidingWindow ?? 0;
    for (const [kind, scratch] of this.masks) {
      const own = kind === 'swa' && this.hasWindowPast ? input.windowPast : undefined;
      const P = own?.pastTokens ?? input.pastTokens;
      const pastPositions = own?.pastPositions ?? input.pastPositions;
      const mask = scratch.view(B * (P + 1));
      for (let b = 0; b < B; b++) {
        const qp = positions[b] as number;
        const lo = kind === 'swa' ? Math.max(0, qp - W) : 0;
        const row = b * (P + 1);
        for (let j = 0; j < P; j++) {
          const kp = pastPositions[b * P + j] as number;
          mask[row + j] = kp >= lo && kp <= qp ? 0 : MASKED;
        }
        mask[row + P] = 0;
      }
      feeds[attentionBias(kind)] = new ort.Tensor('float32', mask, [B, 1, 1, P + 1]);
    }
    return feeds;
  }

  /**
   * Ends the profiles started by `profileFilePrefix` and returns their files (onnxruntime-node does not
   * return the names: each is the newest `<prefix>_*.json`, `<prefix>-decode_*.json`).
   */
  endProfiling(): { step: string; decode: string | null } {
    const prefix = this.profileFilePrefix;
    if (prefix === undefined) throw new EngineError('Model.endProfiling: the model was loaded without profileFilePrefix');
    const newest = (stem: string): string => {
      const files = readdirSync(dirname(prefix)).filter((f) => f.startsWith(`${stem}_`) && f.endsWith('.json')).sort();
      const last = files[files.length - 1];
      if (last === undefined) throw new EngineError(`Model.endProfiling: no profile ${join(dirname(prefix), stem)}_*.json was written`);
      return join(dirname(prefix), last);
    };
    this.session.endProfiling();
    this.decodeSession?.endProfiling();
    return { step: newest(basename(prefix)), decode: this.decodeSession === null ? null : newest(`${basename(prefix)}-decode`) };
  }

  async close(): Promise<void> {
    await this.session.release();
    await this.decodeSession?.release();
  }
}
