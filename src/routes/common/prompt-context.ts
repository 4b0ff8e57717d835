// What turning a request's prompt into token ids needs, and what it gives, wherever it runs: on the
// HTTP thread (the app is a PromptContext) or in the prompt worker (./prompt-worker.ts builds one from
// its own tokenizer). The prompt code of every route takes a PromptContext, never the app, so both
// places run the same code and give the same ids and the same errors.
import type { ServerConfig } from '../../server/config.ts';
import type { ReasoningMode } from '../chat-completions/reasoning.ts';
import type { RememberedReplies } from '../chat-completions/reply-ids.ts';
import { ApiError } from '../../server/errors.ts';
import type { ChatAssets, TokenizerPort } from '../../server/ports.ts';

export interface PromptContext {
  readonly tokenizer: TokenizerPort;
  readonly chatAssets: ChatAssets;
  readonly serverConfig: ServerConfig;
  /** Recent chat replies and their generated ids (conversation reuse); unset: chat prompts are encoded as text only. */
  readonly replies?: RememberedReplies;
}

/** A request's prompt, ready for the engine. */
export interface PreparedPrompt {
  /** Prompt token ids (backed by a SharedArrayBuffer when made by the prompt worker: no copy to the engine). */
  readonly ids: Int32Array;
  /** Chat: leading tokens later prompts are likely to share (GenerateRequest.sharedPrefixTokens). */
  readonly sharedPrefixTokens?: number;
  /** Chat: how the reply starts (inside a <think> block the prompt opened, or not); null when the template writes none. */
  readonly reasoning?: ReasoningMode | null;
  /** Chat: prompt tokens that are remembered replies' own ids (./chat-completions/reply-splice.ts). */
  readonly splicedTokens?: number;
  /** Completions with `echo`: the prompt's text. */
  readonly text?: string;
}

/** An ApiError as plain data, to cross from the prompt worker. */
export interface WireApiError {
  readonly status: number;
  readonly type: string;
  readonly message: string;
  readonly param: string | null;
  readonly code: string | null;
}

/** Only client errors cross (a 4xx the request caused); anything else is rethrown as a fault. */
export function toWireApiError(err: unknown): WireApiError | null {
  if (!(err instanceof ApiError) || err.status >= 500) return null;
  return { status: err.status, type: err.type, message: err.message, param: err.param, code: err.code };
}

export function fromWireApiError(e: WireApiError): ApiError {
  return new ApiError(e.status, e.type, e.message, e.param, e.code);
}

/** What the prompt worker derived from a large body: the prompt (or /detokenize's text), or the 4xx its work raised. */
export type DerivedPrompt = { readonly prompt: PreparedPrompt } | { readonly error: WireApiError };
export type DerivedText = { readonly text: string } | { readonly error: WireApiError };
export type Derived = DerivedPrompt | DerivedText;

/** /detokenize's text: the one the prompt worker derived (or its error), or `compute()`'s. */
export function textOf(derived: DerivedText | null, compute: () => string): string {
  if (derived === null) return compute();
  if ('error' in derived) throw fromWireApiError(derived.error);
  return derived.text;
}

/**
 * The request's prompt: the one the prompt worker derived (its error is thrown here, where the route
 * would have raised it, after the route's own earlier checks), or `compute()`'s.
 */
export async function promptOf(derived: DerivedPrompt | null, compute: () => Promise<PreparedPrompt>): Promise<PreparedPrompt> {
  if (derived === null) return compute();
  if ('error' in derived) throw fromWireApiError(derived.error);
  return derived.prompt;
}
