// class Model: owns the onnxruntime session of one built checkpoint and runs one forward pass
// (../forward.ts) per call. Inputs are wrapped without copying (ort.Tensor views the typed arrays);
// outputs are the fresh arrays onnxruntime returns.
import { readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { EngineError } from '../errors.ts';
import type { Checkpoint } from './checkpoint.ts';
import { kvBytesPerToken, type ModelConfig } from './config.ts';
import { attentionLayerIndices, stateBytesPerSequence, stateTensorSpecs, type StateTensorSpec } from './layer-plan.ts';
import type { ForwardInput, ForwardOutput } from './forward.ts';
import {
  INPUT_IDS,
  LOGITS,
  NUM_LOGITS,
  PAST_POSITIONS,
  POSITIONS,
  SPIKE_VALUES,
  SPIKE_ZEROS,
  pastKey,
  pastValue,
  presentKey,
  presentValue,
} from './io-names.ts';
import { probeDevice, resolveExecutionProviders, type Device } from './device.ts';
import { ensureBuiltModel, type BuildProgress } from './onnx/build-cache.ts';
import type { WeightDtype } from './onnx/graph-builder.ts';

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
   */
  readonly weightDtype?: WeightDtype;
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
   * Intra-op threads of a second onnxruntime session over the same model file that runs the small
   * steps (B·T ≤ DECODE_MAX_TOKENS: decode). Unset: one session runs everything. The second session
   * holds its own copy of the weights (twice the model's memory); it pays where a step is too small to
   * share between threads: at the reference size a 2-thread pool spends 16–28% more CPU per decode
   * token on waking its second thread for ~40 small parallel ops (bench/README.md, "Decode").
   */
  readonly decodeIntraOpThreads?: number;
  /**
   * Let idle onnxruntime pool threads spin (default false). Spinning wins a little on a dedicated
   * machine and loses badly when cores are shared (measured: 2 spinning threads decode at half the
   * rate of 1 thread on a loaded 2-core machine).
   */
  readonly allowSpinning?: boolean;
  /**
   * Write an onnxruntime profile (Chrome trace JSON, one event per node run) of the main session to
   * `<prefix>_<date>.json`; `endProfiling()` finishes the file and returns its path. For benchmarks:
   * it slows every run. Without `decodeIntraOpThreads` the main session runs every step.
   */
  readonly profileFilePrefix?: string;
  /** Build progress (only when the model is built, not on a cache hit). */
  readonly onProgress?: (p: BuildProgress) => void;
}

/** Steps of at most this many tokens (B·T) run on the decode session when there is one. */
export const DECODE_MAX_TOKENS = 4;

export class Model {
  /** Recurrent state tensors (GLA states …), in the order of ForwardInput.states. */
  readonly stateSpecs: readonly StateTensorSpec[];
  /** Layer indices of attention (SWA or full) layers, in order. */
  readonly attentionLayers: readonly number[];
  /** Bytes of recurrent state per sequence (fp32, every state tensor); independent of its length. */
  readonly stateBytesPerSequence: number;
  /** Bytes of keys + values per kept token (fp32, all attention layers). */
  readonly kvBytesPerToken: number;
  /** W: past tokens an SWA layer needs; null when attention layers are full (keep everything). */
  readonly windowTokens: number | null;

  private constructor(
    readonly config: ModelConfig,
    private readonly session: ort.InferenceSession,
    /** Runs steps of at most DECODE_MAX_TOKENS tokens when set (`decodeIntraOpThreads`). */
    private readonly decodeSession: ort.InferenceSession | null,
    readonly modelPath: string,
    private readonly profileFilePrefix: string | undefined,
  ) {
    this.stateSpecs = stateTensorSpecs(config);
    this.attentionLayers = attentionLayerIndices(config);
    this.stateBytesPerSequence = stateBytesPerSequence(config);
    this.kvBytesPerToken = kvBytesPerToken(config);
    this.windowTokens = config.layerKinds.includes('full') ? null : config.slidingWindow;
  }

  static async load(ckpt: Checkpoint, options: ModelLoadOptions = {}): Promise<Model> {
    const device = options.device ?? 'cpu';
    await probeDevice(device); // before a build that may take minutes
    const modelPath = ensureBuiltModel(
      ckpt,
      {
        fusedOps: options.fusedOps ?? device === 'cpu',
        glaSubChunk: options.glaSubChunk ?? 16,
        weightDtype: options.weightDtype ?? (device === 'cpu' ? 'float32' : 'float16'),
        ...(options.int8Activations !== undefined ? { int8Activations: options.int8Activations } : {}),
      },
      { ...(options.cacheDir !== undefined ? { cacheDir: options.cacheDir } : {}), ...(options.onProgress !== undefined ? { onProgress: options.onProgress } : {}) },
    );
    const intraOpThreads = options.intraOpThreads ?? availableParallelism();
    // Only the main session is profiled (both would write to the same file name).
    const create = (threads: number, profile: boolean): Promise<ort.InferenceSession> =>
      ort.InferenceSession.create(modelPath, {
        executionProviders: resolveExecutionProviders(device),
        graphOptimizationLevel: 'all',
        intraOpNumThreads: threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        enableCpuMemArena: true,
        enableMemPattern: true,
        extra: { session: { intra_op: { allow_spinning: options.allowSpinning === true ? '1' : '0' } } },
        ...(profile && options.profileFilePrefix !== undefined ? { enableProfiling: true, profileFilePrefix: options.profileFilePrefix } : {}),
      });
    const session = await create(intraOpThreads, true);
    const decodeThreads = options.decodeIntraOpThreads;
    const decodeSession = decodeThreads !== undefined && decodeThreads !== intraOpThreads ? await create(decodeThreads, false) : null;
    return new Model(ckpt.config, session, decodeSession, modelPath, options.profileFilePrefix);
  }

  /** One forward pass over B sequences × T new tokens. */
  async run(input: ForwardInput): Promise<ForwardOutput> {
    const { batchSize: B, chunkTokens: T, pastTokens: P } = input;
    const { numKvHeads: Hkv, headDim: d, vocabSize: V } = this.config;
    const check = (what: string, got: number, want: number): void => {
      if (got !== want) throw new EngineError(`Model.run: ${what} has ${got} elements, expected ${want}`);
    };
    if (B < 1 || T < 1 || P < 0) throw new EngineError(`Model.run: need B ≥ 1, T ≥ 1, P ≥ 0; got B=${B}, T=${T}, P=${P}`);
    check('tokenIds', input.tokenIds.length, B * T);
    check('positions', input.positions.length, B * T);
    check('pastPositions', input.pastPositions.length, B * P);
    check('states (count)', input.states.length, this.stateSpecs.length);
    check('pastKeys (count)', input.pastKeys.length, this.attentionLayers.length);
    check('pastValues (count)', input.pastValues.length, this.attentionLayers.length);

    const feeds: Record<string, ort.Tensor> = {
      [INPUT_IDS]: new ort.Tensor('int32', input.tokenIds, [B, T]),
      [POSITIONS]: new ort.Tensor('int32', input.positions, [B, T]),
      [PAST_POSITIONS]: new ort.Tensor('int32', input.pastPositions, [B, P]),
      [NUM_LOGITS]: new ort.Tensor('int64', BigInt64Array.of(BigInt(input.allLogits ? T : 1)), [1]),
    };
    this.stateSpecs.forEach((spec, i) => {
      const s = input.states[i] ?? new Float32Array(0);
      check(`states[${i}] (${spec.inputName})`, s.length, B * spec.floats);
      feeds[spec.inputName] = new ort.Tensor('float32', s, [B, ...spec.dims]);
    });
    this.attentionLayers.forEach((layer, i) => {
      const k = input.pastKeys[i] ?? new Float32Array(0);
      const v = input.pastValues[i] ?? new Float32Array(0);
      check(`pastKeys[${i}]`, k.length, B * Hkv * P * d);
      check(`pastValues[${i}]`, v.length, B * Hkv * P * d);
      feeds[pastKey(layer)] = new ort.Tensor('float32', k, [B, Hkv, P, d]);
      feeds[pastValue(layer)] = new ort.Tensor('float32', v, [B, Hkv, P, d]);
    });

    const session = this.decodeSession !== null && B * T <= DECODE_MAX_TOKENS ? this.decodeSession : this.session;
    const out = await session.run(feeds);
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

  /**
   * Ends the profile started by `profileFilePrefix` and returns its file (onnxruntime-node does not
   * return the name: it is the newest `<prefix>_*.json`).
   */
  endProfiling(): string {
    const prefix = this.profileFilePrefix;
    if (prefix === undefined) throw new EngineError('Model.endProfiling: the model was loaded without profileFilePrefix');
    this.session.endProfiling();
    const dir = dirname(prefix);
    const stem = basename(prefix);
    const files = readdirSync(dir).filter((f) => f.startsWith(`${stem}_`) && f.endsWith('.json')).sort();
    const newest = files[files.length - 1];
    if (newest === undefined) throw new EngineError(`Model.endProfiling: no profile ${prefix}_*.json was written`);
    return join(dir, newest);
  }

  async close(): Promise<void> {
    await this.session.release();
    await this.decodeSession?.release();
  }
}
