// A small ONNX graph builder: nodes with scoped names (`/model/layers.0/attn/q_proj/MatMul`), inline
// constants, and weights as EXTERNAL initializers whose bytes are produced lazily, one tensor at a
// time, when the data file is written (so a model is never held in memory twice).
import { closeSync, openSync, writeSync } from 'node:fs';
import {
  DataType,
  type AttributeValue,
  type DataTypeCode,
  type ExternalTensor,
  type GraphProto,
  type InlineTensor,
  type ModelProto,
  type NodeProto,
  type ValueInfoProto,
} from './proto.ts';
import { ModelLoadError } from '../../errors.ts';
import { weightToFloat16 } from './precision.ts';
import { QUANT_BLOCK, blockBytes, quantize, type QuantBits, type QuantizedBlocks } from './quantize.ts';

/**
 * How weight matrices are stored (vectors always stay float32):
 * - float32, float16: every matrix in that type; compute is float32 (fp16 matrices are Cast).
 * - int8, int4: linear-layer weights (projections, MLP, lm_head) as 8- or 4-bit blocks run by
 *   MatMulNBits (./quantize.ts); the embedding table stays float32 (a Gather reads only B·T rows).
 */
export type WeightDtype = 'float32' | 'float16' | 'int8' | 'int4';

/** Bits per code of a quantized WeightDtype; null for float types. */
export function quantBits(dtype: WeightDtype | undefined): QuantBits | null {
  return dtype === 'int8' ? 8 : dtype === 'int4' ? 4 : null;
}

/** The two initializers of a quantized weight for MatMulNBits. */
export interface QuantizedWeightNames {
  readonly bits: QuantBits;
  /** [N, ⌈K/QUANT_BLOCK⌉, QUANT_BLOCK·bits/8] uint8. */
  readonly codes: string;
  /** [N·⌈K/QUANT_BLOCK⌉] float32. */
  readonly scales: string;
}

/** External data offsets are multiples of this (a page, so onnxruntime may map them). */
export const EXTERNAL_ALIGN_BYTES = 4096;

export const int = (value: number): AttributeValue => ({ kind: 'int', value });
export const float = (value: number): AttributeValue => ({ kind: 'float', value });
export const ints = (value: readonly number[]): AttributeValue => ({ kind: 'ints', value });
export const str = (value: string): AttributeValue => ({ kind: 'string', value });

export interface OpOptions {
  readonly domain?: string;
  /** Number of outputs (default 1). */
  readonly outputs?: number;
  /** Last part of the node name (default: the op type). */
  readonly name?: string;
}

interface PendingWeight {
  readonly tensor: ExternalTensor;
  readonly produce: () => Float32Array | Uint16Array | Uint8Array;
}

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly aliases: [string, string][] = [];
  private readonly inlines: InlineTensor[] = [];
  private readonly weights: PendingWeight[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly usedNames: Set<string>;
  private readonly constCache = new Map<string, string>();
  private scopeStack: string[] = [];
  private dataBytes = 0;

  constructor(
    readonly dataLocation: string,
    readonly weightDtype: WeightDtype = 'float32',
    /** Names already taken (a subgraph shares its parent's: ONNX forbids shadowing outer values). */
    usedNames: Set<string> = new Set(),
  ) {
    this.usedNames = usedNames;
  }

  /**
   * A subgraph (the body of a Scan or Loop) built by `build` on a child builder that shares this one's
   * names and scope; it may read values of this graph by name. Weights are not allowed inside.
   */
  subgraph(name: string, build: (body: GraphBuilder) => void): GraphProto {
    const body = new GraphBuilder(this.dataLocation, this.weightDtype, this.usedNames);
    body.scopeStack = [...this.scopeStack, name];
    build(body);
    if (body.weights.length > 0) throw new Error(`subgraph ${name}: weights must live in the outer graph`);
    return body.toGraph(this.unique(`/${body.scopeStack.join('/')}`));
  }

  private toGraph(graphName: string): GraphProto {
    return {
      name: graphName,
      nodes: this.resolvedNodes(),
      initializers: [...this.inlines, ...this.weights.map((w) => w.tensor)],
      inputs: this.inputs,
      outputs: this.outputs,
    };
  }

  /** Runs `body` with node names prefixed by `/name`. */
  scope<R>(name: string, body: () => R): R {
    this.scopeStack.push(name);
    try {
      return body();
    } finally {
      this.scopeStack.pop();
    }
  }

  /** A value name not used anywhere in this graph or its parents (for subgraph inputs). */
  freshName(base: string): string {
    return this.unique(base);
  }

  private unique(base: string): string {
    let name = base;
    for (let i = 1; this.usedNames.has(name); i++) name = `${base}_${i}`;
    this.usedNames.add(name);
    return name;
  }

  input(name: string, dataType: DataTypeCode, dims: readonly (number | string)[]): string {
    this.usedNames.add(name);
    this.inputs.push({ name, dataType, dims });
    return name;
  }

  /**
   * Declares `value` as a graph output named `name`. When the graph is finished the producing node's
   * output is renamed (its consumers follow), so no Identity node runs; an Identity remains only for
   * graph inputs, constants and values exported under two names.
   */
  output(name: string, value: string, dataType: DataTypeCode, dims: readonly (number | string)[]): void {
    this.usedNames.add(name);
    this.outputs.push({ name, dataType, dims });
    if (value !== name) this.aliases.push([value, name]);
  }

  private resolvedNodes(): NodeProto[] {
    let nodes = this.nodes;
    const renames = new Map<string, string>();
    for (const [value, name] of this.aliases) {
      const produced = nodes.some((n) => n.outputs.includes(value));
      if (produced && !renames.has(value)) renames.set(value, name);
      else nodes = [...nodes, { opType: 'Identity', name: this.unique(`/outputs/${name}`), inputs: [renames.get(value) ?? value], outputs: [name], domain: '', attributes: new Map() }];
    }
    return renameValues(nodes, renames);
  }

  /** Adds a node; returns its output value names. An input '' is an omitted optional input. */
  opN(opType: string, inputs: readonly string[], attrs: Record<string, AttributeValue> = {}, options: OpOptions = {}): string[] {
    const nodeName = this.unique(`/${[...this.scopeStack, options.name ?? opType].join('/')}`);
    const count = options.outputs ?? 1;
    const outs = Array.from({ length: count }, (_, i) => this.unique(`${nodeName}_output_${i}`));
    this.nodes.push({
      opType,
      name: nodeName,
      inputs,
      outputs: outs,
      domain: options.domain ?? '',
      attributes: new Map(Object.entries(attrs)),
    });
    return outs;
  }

  op(opType: string, inputs: readonly string[], attrs: Record<string, AttributeValue> = {}, options: OpOptions = {}): string {
    const out = this.opN(opType, inputs, attrs, { ...options, outputs: 1 })[0];
    if (out === undefined) throw new Error('unreachable');
    return out;
  }

  private inline(dataType: DataTypeCode, dims: readonly number[], raw: Uint8Array, hint: string): string {
    const key = `${dataType}|${dims.join(',')}|${Buffer.from(raw).toString('base64')}`;
    const cached = this.constCache.get(key);
    if (cached !== undefined) return cached;
    const name = this.unique(`/const/${hint}`);
    this.inlines.push({ kind: 'inline', name, dataType, dims, raw });
    this.constCache.set(key, name);
    return name;
  }

  /** An int64 constant; `dims` defaults to [values.length] (pass [] for a scalar). */
  i64(values: readonly number[], dims: readonly number[] = [values.length]): string {
    const a = BigInt64Array.from(values, (v) => BigInt(v));
    return this.inline(DataType.INT64, dims, new Uint8Array(a.buffer), `i64_${values.slice(0, 4).join('_')}`);
  }

  /** An int32 constant; `dims` defaults to [values.length]. */
  i32(values: readonly number[], dims: readonly number[] = [values.length]): string {
    const a = Int32Array.from(values);
    return this.inline(DataType.INT32, dims, new Uint8Array(a.buffer), `i32_${values.slice(0, 4).join('_')}`);
  }

  /** A float32 constant; `dims` defaults to [values.length]. */
  f32(values: ArrayLike<number>, dims: readonly number[] = [values.length]): string {
    const a = Float32Array.from(values);
    return this.inline(DataType.FLOAT, dims, new Uint8Array(a.buffer), 'f32');
  }

  /** A float64 constant; `dims` defaults to [values.length]. */
  f64(values: ArrayLike<number>, dims: readonly number[] = [values.length]): string {
    const a = Float64Array.from(values);
    return this.inline(DataType.DOUBLE, dims, new Uint8Array(a.buffer), 'f64');
  }

  /**
   * A float32 weight stored externally; `produce` is called once, when the data file is written.
   * With weightDtype 'float16', a matrix (rank ≥ 2) is stored as fp16 and a Cast makes the float32
   * value returned here (see ./precision.ts).
   */
  weight(name: string, dims: readonly number[], produce: () => Float32Array): string {
    const half = this.weightDtype === 'float16' && dims.length >= 2;
    const length = dims.reduce((a, b) => a * b, 1) * (half ? 2 : 4);
    if (!half) return this.external(name, DataType.FLOAT, dims, length, produce);
    this.external(name, DataType.FLOAT16, dims, length, () => weightToFloat16(name, produce()));
    return this.op('Cast', [name], { to: int(DataType.FLOAT) }, { name: `Cast_${name}` });
  }

  /**
   * A linear layer's weight W [N, K] (out × in) stored as n-bit blocks for MatMulNBits. `produce`
   * (W row-major) is called once, when the codes are written; the scales are kept from that call.
   */
  quantizedWeight(name: string, N: number, K: number, bits: QuantBits, produce: () => Float32Array): QuantizedWeightNames {
    let blocks: QuantizedBlocks | null = null;
    const quantized = (): QuantizedBlocks => {
      if (blocks !== null) return blocks;
      const w = produce();
      for (let i = 0; i < w.length; i++) {
        if (!Number.isFinite(w[i] as number)) throw new ModelLoadError(`weight "${name}" holds ${w[i]}: it cannot be quantized to int${bits}`);
      }
      blocks = quantize(w, N, K, bits);
      return blocks;
    };
    const nb = Math.ceil(K / QUANT_BLOCK);
    const codes = this.external(`${name}.codes`, DataType.UINT8, [N, nb, blockBytes(bits)], N * nb * blockBytes(bits), () => quantized().codes);
    const scales = this.external(`${name}.scales`, DataType.FLOAT, [N * nb], N * nb * 4, () => {
      const s = quantized().scales;
      blocks = null; // written after the codes: nothing else reads them
      return s;
    });
    return { bits, codes, scales };
  }

  private external(name: string, dataType: DataTypeCode, dims: readonly number[], length: number, produce: PendingWeight['produce']): string {
    if (this.usedNames.has(name)) throw new Error(`duplicate weight name ${name}`);
    this.usedNames.add(name);
    const offset = Math.ceil(this.dataBytes / EXTERNAL_ALIGN_BYTES) * EXTERNAL_ALIGN_BYTES;
    this.dataBytes = offset + length;
    this.weights.push({ tensor: { kind: 'external', name, dataType, dims, location: this.dataLocation, offset, length }, produce });
    return name;
  }

  get numWeights(): number {
    return this.weights.length;
  }

  /** The external tensors (name, type, shape, offset, length) in the order they are written. */
  get externalTensors(): readonly ExternalTensor[] {
    return this.weights.map((w) => w.tensor);
  }

  get externalBytes(): number {
    return this.dataBytes;
  }

  toModel(graphName: string, opsets: ReadonlyMap<string, number>, irVersion = 8): ModelProto {
    return {
      irVersion,
      producerName: 'spikeserve',
      producerVersion: '0.1.0',
      opsets,
      graph: this.toGraph(graphName),
    };
  }

  /**
   * Streams every weight to `path` at its offset, one tensor in memory at a time.
   * `onWeight(done, total, bytesDone)` is called after each tensor.
   */
  writeExternalData(path: string, onWeight?: (done: number, total: number, bytesDone: number) => void): void {
    const fd = openSync(path, 'w');
    try {
      let done = 0;
      for (const { tensor, produce } of this.weights) {
        const data = produce();
        if (data.byteLength !== tensor.length) {
          throw new Error(`weight ${tensor.name}: produced ${data.byteLength} bytes, expected ${tensor.length}`);
        }
        let written = 0;
        const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        while (written < bytes.length) {
          // one write takes at most 2 GiB − 1 bytes (a 7B embedding in fp32 is 2.2 GB)
          written += writeSync(fd, bytes, written, Math.min(bytes.length - written, 1 << 30), tensor.offset + written);
        }
        done++;
        onWeight?.(done, this.weights.length, tensor.offset + tensor.length);
      }
    } finally {
      closeSync(fd);
    }
  }
}

/**
 * Nodes with values renamed (a graph output takes over the name of the value it is): their inputs and
 * outputs, and the outer values their subgraphs (If, Scan bodies) read by name.
 */
function renameValues(nodes: readonly NodeProto[], renames: ReadonlyMap<string, string>): NodeProto[] {
  if (renames.size === 0) return [...nodes];
  const rename = (xs: readonly string[]): string[] => xs.map((x) => renames.get(x) ?? x);
  return nodes.map((n) => {
    const hasGraph = [...n.attributes.values()].some((a) => a.kind === 'graph');
    const attributes = !hasGraph
      ? n.attributes
      : new Map([...n.attributes].map(([key, a]): [string, AttributeValue] => [key, a.kind === 'graph' ? { kind: 'graph', value: { ...a.value, nodes: renameValues(a.value.nodes, renames) } } : a]));
    return { ...n, inputs: rename(n.inputs), outputs: rename(n.outputs), attributes };
  });
}
