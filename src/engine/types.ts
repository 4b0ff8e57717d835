// Plain typed data that crosses the engine boundary: what the server submits and what it gets back.
// No JSON wire shapes and no Fastify here (see ../../README.md, "Architecture").

/** Sampling controls, already validated and defaulted by the HTTP layer. */
export interface SamplingParams {
  /** 0 means greedy (argmax). */
  readonly temperature: number;
  readonly topP: number; // 1 = off
  readonly topK: number; // 0 or -1 = off
  readonly minP: number; // 0 = off
  /** Seed of this request's private PRNG; null = nondeterministic. */
  readonly seed: number | null;
  readonly presencePenalty: number; // 0 = off
  readonly frequencyPenalty: number; // 0 = off
  readonly repetitionPenalty: number; // 1 = off
  /** token id → bias added to its logit. */
  readonly logitBias: ReadonlyMap<number, number>;
  /** Number of top alternatives to return with each sampled token; null = no logprobs at all. */
  readonly logprobs: number | null;
  /** Logprobs of every prompt token (with this many alternatives); null = none. */
  readonly promptLogprobs: number | null;
  readonly maxTokens: number;
  readonly minTokens: number;
  /** Generation ends when one of these is sampled (after minTokens); eos ids are added unless ignoreEos. */
  readonly stopTokenIds: readonly number[];
  readonly ignoreEos: boolean;
}

export interface GenerateRequest {
  /** Unique per engine; the server derives it from the HTTP request id (plus choice index for n > 1). */
  readonly requestId: string;
  readonly promptTokenIds: readonly number[];
  readonly sampling: SamplingParams;
  /** Send `progress` events while the prompt is prefilled. */
  readonly reportProgress: boolean;
  /**
   * The first this-many prompt tokens are likely to start later prompts too (in a chat: everything
   * before the last message, e.g. a long document in the system message). With prefix caching the
   * state is also snapshotted at the last page boundary within them, not only at the prompt's last one.
   */
  readonly sharedPrefixTokens?: number;
}

/**
 * Prompt ids as the server hands them to Engine.generate. The tokenizer gives an Int32Array: it
 * crosses threads as one memcpy or transfer, where a number[] is cloned element by element on the
 * HTTP thread.
 */
export type PromptTokenIds = Int32Array | readonly number[];

/** What Engine.generate takes; the worker turns the ids into the GenerateRequest the core holds. */
export interface SubmitRequest extends Omit<GenerateRequest, 'promptTokenIds'> {
  readonly promptTokenIds: PromptTokenIds;
}

export interface TopLogprob {
  readonly tokenId: number;
  readonly logprob: number;
}

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

export type TokenEvent =
  /** Prefill advanced; sent at most every few hundred ms when reportProgress is set. */
  | { readonly type: 'progress'; readonly processedTokens: number; readonly totalTokens: number; readonly cachedTokens: number }
  /** Logprobs of the prompt tokens (index 0 has none: null), sent once before the first token when asked. */
  | { readonly type: 'prompt_logprobs'; readonly entries: readonly (PromptLogprobEntry | null)[] }
  /** One generated token. `logprob`/`top` are present when sampling.logprobs is not null. */
  | {
      readonly type: 'token';
      readonly tokenId: number;
      readonly logprob?: number;
      readonly top?: readonly TopLogprob[];
    }
  /** Last event of every stream. */
  | {
      readonly type: 'done';
      readonly finishReason: FinishReason;
      /** For 'stop' on a token: the stop/eos token id that ended it (not emitted as a token). */
      readonly stopTokenId: number | null;
      readonly promptTokens: number;
      readonly completionTokens: number;
      readonly cachedTokens: number;
      /** Set when finishReason is 'error'. */
      readonly errorMessage?: string;
      readonly timing: RequestTiming;
    };

export interface PromptLogprobEntry {
  readonly tokenId: number;
  readonly logprob: number;
  readonly top: readonly TopLogprob[];
}

/** Seconds, measured in the engine, for metrics. */
export interface RequestTiming {
  readonly queueSeconds: number;
  readonly prefillSeconds: number;
  readonly decodeSeconds: number;
}

/** Counters of what the engine holds right now; every count returns to zero when idle. */
export interface EngineStats {
  readonly numRunning: number;
  readonly numWaiting: number;
  /** Prompt tokens of the waiting requests (the server bounds it: --max-waiting-tokens). */
  readonly waitingPromptTokens: number;
  readonly kvPagesUsed: number;
  readonly kvPagesTotal: number;
  readonly stateSlotsUsed: number;
  readonly stateSlotsTotal: number;
  readonly stateBytesInUse: number;
  readonly prefixCacheBytes: number;
  /** W8ASpike models: zero spikes and all spikes of the spike-coded linear inputs computed so far (0 otherwise). */
  readonly spikeZeros: number;
  readonly spikeValues: number;
}
