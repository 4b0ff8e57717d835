// SamplingParams for engine-level tests: every knob neutral (no penalties, bias, logprobs or stop
// ids), greedy, 16 tokens; a test overrides what it exercises.
import type { SamplingParams } from '../../src/engine/types.ts';

export function samplingParams(overrides: Partial<SamplingParams> = {}): SamplingParams {
  return {
    temperature: 0,
    topP: 1,
    topK: 0,
    minP: 0,
    seed: null,
    presencePenalty: 0,
    frequencyPenalty: 0,
    repetitionPenalty: 1,
    logitBias: new Map(),
    logprobs: null,
    promptLogprobs: null,
    maxTokens: 16,
    minTokens: 0,
    stopTokenIds: [],
    ignoreEos: false,
    ...overrides,
  };
}

/** Greedy for exactly maxTokens tokens (EOS does not stop it), so runs compare token by token. */
export function greedy(maxTokens: number, extra: Partial<SamplingParams> = {}): SamplingParams {
  return samplingParams({ maxTokens, ignoreEos: true, ...extra });
}
