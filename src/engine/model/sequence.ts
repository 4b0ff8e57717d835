// A simple, non-paged per-sequence cache over Model.run, for tests, benchmarks and single-user use:
// a Sequence holds its recurrent states and, per attention layer, the keys/values it still needs — the last
// W positions for sliding-window layers (older ones are dropped after every step), all of them for
// full attention (a model with both keeps the two apart: ForwardInput.windowPast). With B = 1 the
// arrays are handed to onnxruntime as they are and updated in place (no per-step copy of the window).
// The serving path uses the paged pools in src/cache instead.
import type { ForwardInput } from './forward.ts';
import type { Model } from './model.ts';

export class Sequence {
  /** Tokens processed so far; the next token's position. */
  numTokens = 0;
  /** Per recurrent state tensor (Model.stateSpecs): one sequence's state (GLA: [Hkv, d, d]). */
  states: Float32Array[];
  /** Per attention layer: [Hkv, kept, d] post-RoPE keys and values of the kept positions. */
  keys: Float32Array[];
  values: Float32Array[];
  /**
   * [kept] absolute position held by each slot (position p lives in slot p mod W: a ring, not sorted)
   * of the attention layers' past; of the growing layers' when the model has a window past.
   */
  keptPositions: Int32Array = new Int32Array(0);
  /** Models with a window past (Model.hasWindowPast): the window layers' slots, a ring of ≤ W. */
  windowKeptPositions: Int32Array = new Int32Array(0);

  constructor(readonly model: Model) {
    this.states = model.stateSpecs.map((spec) => new Float32Array(spec.floats));
    this.keys = model.attentionLayers.map(() => new Float32Array(0));
    this.values = model.attentionLayers.map(() => new Float32Array(0));
  }

  get keptTokens(): number {
    return this.keptPositions.length;
  }

  /** Bytes of recurrent state: constant in the sequence's length. */
  get stateBytes(): number {
    return this.states.reduce((a, s) => a + s.byteLength, 0);
  }

  /** Slots the window layers keep (≤ W) when the model has a window past, else keptTokens. */
  get windowKeptTokens(): number {
    return this.model.hasWindowPast ? this.windowKeptPositions.length : this.keptTokens;
  }

  /** Bytes of kept keys and values: ≤ W tokens' worth for sliding-window models. */
  get kvBytes(): number {
    return this.keys.reduce((a, k) => a + k.byteLength, 0) + this.values.reduce((a, v) => a + v.byteLength, 0);
  }
}

export function newSequence(model: Model): Sequence {
  return new Sequence(model);
}

/**
 * Writes the chunk's keys or values into the slot array. Slot of position p: p mod W (a ring once the
 * window is full; p itself before that and for full attention). `kept` [Hkv, oldCap, d] grows to
 * [Hkv, newCap, d] (same slot indices) while the sequence is shorter than the window.
 */
function writeSlots(kept: Float32Array, oldCap: number, newCap: number, fresh: Float32Array, freshOffset: number, T: number, firstPos: number, slotOf: (p: number) => number, Hkv: number, d: number): Float32Array {
  let out = kept;
  if (newCap !== oldCap) {
    out = new Float32Array(Hkv * newCap * d);
    for (let h = 0; h < Hkv; h++) out.set(kept.subarray(h * oldCap * d, (h + 1) * oldCap * d), h * newCap * d);
  }
  for (let t = Math.max(0, T - newCap); t < T; t++) {
    const slot = slotOf(firstPos + t);
    for (let h = 0; h < Hkv; h++) {
      const src = freshOffset + (h * T + t) * d;
      out.set(fresh.subarray(src, src + d), (h * newCap + slot) * d);
    }
  }
  return out;
}

/**
 * Runs one step for B sequences with T new tokens each (`tokenIds[b]`, all of length T) and advances
 * them. Returns the logits: [B, V] (last position) or [B, T, V] when `allLogits`. `generated`: the tokens
 * are ones the model generated (MoBA layers attend densely), not prompt tokens (MoBA selection; default).
 */
export async function stepSequences(model: Model, seqs: readonly Sequence[], tokenIds: readonly (readonly number[])[], allLogits: boolean, generated = false): Promise<Float32Array> {
  const B = seqs.length;
  const T = tokenIds[0]?.length ?? 0;
  const { numKvHeads: Hkv, headDim: d } = model.config;
  if (B === 0 || tokenIds.length !== B || tokenIds.some((t) => t.length !== T) || T === 0) {
    throw new RangeError('stepSequences: need B ≥ 1 sequences with the same number T ≥ 1 of new tokens each');
  }
  // Per past (the main one, and the window layers' own when the model has one): slots and positions.
  const pastOf = (kept: (s: Sequence) => Int32Array): { P: number; positions: Int32Array } => {
    const P = Math.max(...seqs.map((s) => kept(s).length));
    const positions = new Int32Array(B * P).fill(-1);
    seqs.forEach((s, b) => positions.set(kept(s), b * P));
    return { P, positions };
  };
  const main = pastOf((s) => s.keptPositions);
  const win = model.hasWindowPast ? pastOf((s) => s.windowKeptPositions) : main;
  const ids = new Int32Array(B * T);
  const positions = new Int32Array(B * T);
  seqs.forEach((s, b) => {
    for (let t = 0; t < T; t++) {
      ids[b * T + t] = tokenIds[b]?.[t] ?? 0;
      positions[b * T + t] = s.numTokens + t;
    }
  });
  const isWindow = (i: number): boolean => model.hasWindowPast && model.windowLayers[i] === true;
  // B = 1: hand the sequence's own arrays over (no copy). Otherwise pad each to P slots.
  const gather = (pick: (s: Sequence) => Float32Array, perHead: number): Float32Array => {
    const only = seqs[0];
    if (B === 1 && only !== undefined) return pick(only);
    const out = new Float32Array(B * Hkv * perHead * d);
    seqs.forEach((s, b) => {
      const src = pick(s);
      const n = src.length / (Hkv * d);
      for (let h = 0; h < Hkv; h++) out.set(src.subarray(h * n * d, (h + 1) * n * d), (b * Hkv + h) * perHead * d);
    });
    return out;
  };
  const input: ForwardInput = {
    batchSize: B,
    chunkTokens: T,
    tokenIds: ids,
    positions,
    states: model.stateSpecs.map((spec, i) => {
      const only = seqs[0];
      if (B === 1 && only !== undefined) return only.states[i] ?? new Float32Array(0);
      const out = new Float32Array(B * spec.floats);
      seqs.forEach((s, b) => out.set(s.states[i] ?? new Float32Array(0), b * spec.floats));
      return out;
    }),
    pastTokens: main.P,
    pastPositions: main.positions,
    ...(model.hasWindowPast ? { windowPast: { pastTokens: win.P, pastPositions: win.positions } } : {}),
    pastKeys: model.attentionLayers.map((_, i) => gather((s) => s.keys[i] ?? new Float32Array(0), isWindow(i) ? win.P : main.P)),
    pastValues: model.attentionLayers.map((_, i) => gather((s) => s.values[i] ?? new Float32Array(0), isWindow(i) ? win.P : main.P)),
    allLogits,
    ...(model.hasMoba ? { mobaSelect: new Uint8Array(B * T).fill(generated ? 0 : 1) } : {}),
  };
  const out = await model.run(input);

  // The main past keeps min(W, tokens so far) slots (every token when W is null); the window layers'
  // own past, min(W, tokens): the past a later step needs is the last W positions.
  const mainW = model.windowTokens;
  const windowW = model.config.slidingWindow;
  const ring = (W: number | null) => (W === null ? (p: number): number => p : (p: number): number => p % W);
  seqs.forEach((s, b) => {
    s.states = out.states.map((st, i) => {
      const floats = model.stateSpecs[i]?.floats ?? 0;
      return B === 1 ? st : st.slice(b * floats, (b + 1) * floats);
    });
    const newEnd = s.numTokens + T;
    const freshOffset = b * Hkv * T * d;
    const advance = (kept: Int32Array, W: number | null, layers: (i: number) => boolean): Int32Array => {
      const oldCap = kept.length;
      const newCap = W === null ? newEnd : Math.min(W, newEnd);
      const slotOf = ring(W);
      out.presentKeys.forEach((k, i) => {
        if (layers(i)) s.keys[i] = writeSlots(s.keys[i] ?? new Float32Array(0), oldCap, newCap, k, freshOffset, T, s.numTokens, slotOf, Hkv, d);
      });
      out.presentValues.forEach((v, i) => {
        if (layers(i)) s.values[i] = writeSlots(s.values[i] ?? new Float32Array(0), oldCap, newCap, v, freshOffset, T, s.numTokens, slotOf, Hkv, d);
      });
      let next = kept;
      if (newCap !== oldCap) {
        next = new Int32Array(newCap).fill(-1);
        next.set(kept);
      }
      for (let t = Math.max(0, T - newCap); t < T; t++) next[slotOf(s.numTokens + t)] = s.numTokens + t;
      return next;
    };
    s.keptPositions = advance(s.keptPositions, mainW, (i) => !isWindow(i));
    if (model.hasWindowPast) s.windowKeptPositions = advance(s.windowKeptPositions, windowW, isWindow);
    s.numTokens = newEnd;
  });
  return out.logits;
}

export interface PrefillOptions {
  /** Tokens per forward pass (chunked prefill); default: all at once. */
  readonly chunkTokens?: number;
  /** Return logits of every prompt position [n, V] instead of the last one [V]. */
  readonly allLogits?: boolean;
}

/** Feeds `tokenIds` to `seq` in chunks; returns the last position's logits [V] or all of them [n, V]. */
export async function prefill(model: Model, seq: Sequence, tokenIds: readonly number[], options: PrefillOptions = {}): Promise<Float32Array> {
  const n = tokenIds.length;
  if (n === 0) throw new RangeError('prefill: no tokens');
  const chunk = Math.max(1, options.chunkTokens ?? n);
  const V = model.config.vocabSize;
  const all = options.allLogits === true ? new Float32Array(n * V) : null;
  let last: Float32Array = new Float32Array(0);
  for (let start = 0; start < n; start += chunk) {
    const part = tokenIds.slice(start, start + chunk);
    last = await stepSequences(model, [seq], [part], all !== null);
    if (all !== null) all.set(last, start * V);
  }
  return all ?? last;
}

/** One decode step for B sequences (of any lengths), one generated token each; returns logits [V] per sequence. */
export async function decodeBatch(model: Model, seqs: readonly Sequence[], tokenIds: readonly number[]): Promise<Float32Array[]> {
  const V = model.config.vocabSize;
  const logits = await stepSequences(model, seqs, tokenIds.map((t) => [t]), false, true);
  return seqs.map((_, b) => logits.slice(b * V, (b + 1) * V));
}
