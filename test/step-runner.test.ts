// The step runner's gather against its definition, through the real EngineCore (scheduler, cache,
// prefix snapshots) and a stand-in model: every run's past must hold, for each row, exactly the
// positions its attention may see (the last W before its first new token, or all of them), each once,
// with the keys and values computed for that position; every other slot −1. The stand-in writes keys
// and values that are a function of (position, token, layer, head, dim), so a stale or missing copy
// shows. Runs mix prefill chunks, decode batches whose members come and go, page boundaries (P = 4),
// a sliding window and prefix-snapshot restores: the incremental gather (step-runner.ts) must give the
// full gather's result at every step, also across a replacement of its (shrunk) scratch buffers.
import { describe, expect, it } from 'vitest';
import { EngineCore } from '../src/engine/engine-core.ts';
import { hasWindowPast, isWindowKind, parseModelConfig, type ModelConfig } from '../src/engine/model/config.ts';
import type { ForwardInput, ForwardOutput } from '../src/engine/model/forward.ts';
import { attentionLayerIndices, stateTensorSpecs } from '../src/engine/model/layer-plan.ts';
import { RequestState } from '../src/engine/request-state.ts';
import type { TokenEvent } from '../src/engine/types.ts';
import { tinyRawConfig } from './helpers/checkpoint-writer.ts';
import { greedy } from './helpers/sampling.ts';

/** The key (kv = 0) or value (kv = 1) the stand-in computes for a token at a position. */
function kvValue(pos: number, token: number, layer: number, kv: number, head: number, dim: number): number {
  return pos * 1000 + token + layer * 0.1 + kv * 0.01 + head * 0.001 + dim * 0.00001;
}

/**
 * The one token stream every request here follows: prompts are its prefixes and the stand-in's logits
 * make greedy sampling continue it, so the token at a position is the same in every sequence.
 */
const streamToken = (pos: number, vocab: number): number => (pos * 7 + 3) % vocab;

/** A model whose outputs are cheap functions of its inputs, checking every past it is given. */
class CheckingModel {
  decodeRuns = 0;
  /** Multi-token runs: the largest 4·H·T·(p0 + T) (one layer's score bytes at the chunk's start p0), and the latest p0. */
  maxScoreBytes = 0;
  latestChunkStart = 0;
  /** Failed checks (a failed check also fails the step, which the engine reports as an error). */
  readonly failures: string[] = [];

  constructor(private readonly config: ModelConfig) {}

  async run(input: ForwardInput): Promise<ForwardOutput> {
    try {
      return this.check(input);
    } catch (err) {
      this.failures.push(err instanceof Error ? err.message : String(err));
      throw err;
    }
  }

  /** Largest window past seen (models with a window and a growing KV group). */
  maxWindowPastTokens = 0;

  private check(input: ForwardInput): ForwardOutput {
    const { batchSize: B, chunkTokens: T } = input;
    const { numKvHeads: Hkv, headDim: d, vocabSize: V } = this.config;
    const layers = attentionLayerIndices(this.config);
    if (T === 1) this.decodeRuns++;
    for (let b = 0; b < B && T > 1; b++) {
      const p0 = input.positions[b * T]!;
      this.maxScoreBytes = Math.max(this.maxScoreBytes, 4 * this.config.numHeads * T * (p0 + T));
      this.latestChunkStart = Math.max(this.latestChunkStart, p0);
    }
    // The pasts of the run: one for every attention layer, or the window layers' own beside the
    // growing layers' (each with the window its positions must keep: null = all of them).
    const split = hasWindowPast(this.config);
    expect(input.windowPast !== undefined, 'a window past exactly when the model has window and growing layers').toBe(split);
    const isWindow = (a: number): boolean => isWindowKind(this.config.layerKinds[layers[a]!]!);
    const pasts = [
      { P: input.pastTokens, positions: input.pastPositions, W: split ? null : this.config.slidingWindow, ordinals: layers.flatMap((_, a) => (split && isWindow(a) ? [] : [a])) },
      ...(input.windowPast === undefined
        ? []
        : [{ P: input.windowPast.pastTokens, positions: input.windowPast.pastPositions, W: this.config.slidingWindow, ordinals: layers.flatMap((_, a) => (isWindow(a) ? [a] : [])) }]),
    ];
    if (input.windowPast !== undefined) this.maxWindowPastTokens = Math.max(this.maxWindowPastTokens, input.windowPast.pastTokens);
    for (const { P, positions, W, ordinals } of pasts) {
      for (const a of ordinals) expect(input.pastKeys[a]!.length, `layer ${layers[a]}: past keys of ${P} slots`).toBe(B * Hkv * P * d);
      for (let b = 0; b < B; b++) {
        const start = input.positions[b * T]!;
        const lo = W === null ? 0 : Math.max(0, start - W);
        const seen = new Set<number>();
        for (let j = 0; j < P; j++) {
          const pos = positions[b * P + j]!;
          if (pos < 0) continue;
          expect(pos, `row ${b} slot ${j}: position outside the window`).toBeGreaterThanOrEqual(lo);
          expect(pos, `row ${b} slot ${j}: a future position`).toBeLessThan(start);
          expect(seen.has(pos), `row ${b}: position ${pos} twice`).toBe(false);
          seen.add(pos);
          const token = streamToken(pos, V);
          for (const a of ordinals) {
            const layer = layers[a]!;
            for (let h = 0; h < Hkv; h++) {
              for (let c = 0; c < d; c += d - 1) {
                const at = ((b * Hkv + h) * P + j) * d + c;
                expect(input.pastKeys[a]![at], `row ${b} position ${pos} key`).toBe(Math.fround(kvValue(pos, token, layer, 0, h, c)));
                expect(input.pastValues[a]![at], `row ${b} position ${pos} value`).toBe(Math.fround(kvValue(pos, token, layer, 1, h, c)));
              }
            }
          }
        }
        expect(seen.size, `row ${b} at ${start}: every position of the window`).toBe(start - lo);
      }
    }
    // Keys/values of the new tokens; logits that make greedy sampling continue the stream.
    const presentKeys = layers.map(() => new Float32Array(B * Hkv * T * d));
    const presentValues = layers.map(() => new Float32Array(B * Hkv * T * d));
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const pos = input.positions[b * T + t]!;
        const token = input.tokenIds[b * T + t]!;
        expect(token, `row ${b} position ${pos}: the token fed`).toBe(streamToken(pos, V));
        layers.forEach((layer, a) => {
          for (let h = 0; h < Hkv; h++) {
            for (let c = 0; c < d; c++) {
              presentKeys[a]![((b * Hkv + h) * T + t) * d + c] = kvValue(pos, token, layer, 0, h, c);
              presentValues[a]![((b * Hkv + h) * T + t) * d + c] = kvValue(pos, token, layer, 1, h, c);
            }
          }
        });
      }
    }
    const rows = input.allLogits ? T : 1;
    const logits = new Float32Array(B * rows * V);
    for (let b = 0; b < B; b++) {
      for (let r = 0; r < rows; r++) logits[(b * rows + r) * V + streamToken(input.positions[b * T + T - rows + r]! + 1, V)] = 1;
    }
    return { logits, states: input.states.map((s) => s.slice()), presentKeys, presentValues };
  }
}

describe('step runner: the past of every run', () => {
  it.each([
    { name: 'sliding window W = 8, pages of 4 tokens', window: 8, mixed: false },
    { name: 'full attention, pages of 4 tokens', window: null, mixed: false },
    { name: 'window (W = 8) and full layers, each with its own past, pages of 4 tokens', window: 8, mixed: true },
  ])('$name: prefills, changing decode batches and snapshot restores see exactly their window', async ({ window, mixed }) => {
    const parsed = parseModelConfig(tinyRawConfig({ numLayers: 4, attnLayers: [1, 3], slidingWindow: window, vocabSize: 64, headDim: 8 }));
    // Two KV groups, as SpikingBrain 2.0 has (its window and MoBA/full layers): layer 1 keeps a window, layer 3 every position.
    const config: ModelConfig = mixed ? { ...parsed, layerKinds: ['gla', 'swa', 'gla', 'full'] } : parsed;
    const model = new CheckingModel(config);
    const events: TokenEvent[] = [];
    // Growing layers: a score bound that cuts chunks of 8 from ~p = 12 on (T·(p + T) ≤ 160 at 4 heads).
    const scoreBytes = 4 * config.numHeads * 160;
    const growing = window === null || mixed;
    const core = new EngineCore(model, config, { pageTokens: 4, prefillChunkTokens: 8, maxBatchedTokens: 16, maxNumSeqs: 6, ...(growing ? { maxAttentionScoreBytes: scoreBytes } : {}) }, (_, e) => events.push(e));
    // Every prompt is a prefix of the one stream, so later requests restore earlier ones' snapshots.
    let submitted = 0;
    const submit = (promptTokens: number, maxTokens: number): void => {
      const prompt = Array.from({ length: promptTokens }, (_, p) => streamToken(p, config.vocabSize));
      core.submit({ requestId: `r${submitted++}`, promptTokenIds: prompt, sampling: greedy(maxTokens), reportProgress: false });
    };
    // Staggered arrivals: the decode batch grows and shrinks, rows move, pages fill and the window slides.
    const plan = [
      [0, 5, 30],
      [2, 13, 9],
      [5, 3, 40],
      [9, 21, 12],
      [14, 30, 20],
      [20, 5, 25],
      [26, 13, 6],
      // then one stream alone for longer than the scratch buffers' shrink check (256 runs): the
      // buffers sized for the batch above are replaced by smaller ones mid-stream.
      [28, 9, 700],
    ] as const;
    for (let step = 0; step < 1500 && (core.hasWork || step <= 28); step++) {
      for (const [at, prompt, max] of plan) if (at === step) submit(prompt, max);
      if (core.hasWork) await core.step();
    }
    expect(model.failures).toEqual([]);
    expect(core.hasWork).toBe(false);
    expect(events.filter((e) => e.type === 'done').length).toBe(plan.length);
    expect(events.filter((e) => e.type === 'done' && e.finishReason !== 'length')).toEqual([]);
    expect(model.decodeRuns).toBeGreaterThan(30);
    expect(events.filter((e) => e.type === 'done' && e.cachedTokens > 0).length).toBeGreaterThan(0);
    expect(stateTensorSpecs(config).length).toBe(2);
    if (growing) {
      // Every prefill chunk of several tokens kept one layer's scores within the bound, also late in a prompt.
      expect(model.maxScoreBytes).toBeLessThanOrEqual(scoreBytes);
      expect(model.latestChunkStart).toBeGreaterThanOrEqual(16);
    }
    // The window layers' past stays about W (the pages that still hold [p0 − W, p0)), while prompts
    // and decodes reach 700+ positions.
    if (mixed) {
      expect(model.maxWindowPastTokens).toBeGreaterThan(0);
      expect(model.maxWindowPastTokens).toBeLessThanOrEqual((Math.ceil(8 / 4) + 1) * 4);
    }
  });
});
