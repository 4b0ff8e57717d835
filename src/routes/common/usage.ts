// Checks and bookkeeping every generation endpoint shares: the requested model must be the one
// served, and `usage` adds up prompt, completion and cached tokens across the n choices.
import type { FastifyInstance } from 'fastify';
import { NotFoundError } from '../../server/errors.ts';
import type { GenerationEvent } from '../../server/generation.ts';

/** 404 model_not_found unless `model` is absent or the served model's name. */
export function checkModel(app: FastifyInstance, model: string | undefined): void {
  if (model === undefined || model === app.serverConfig.servedModelName) return;
  throw new NotFoundError(`the model '${model}' does not exist; this server serves '${app.serverConfig.servedModelName}'`, 'model', 'model_not_found');
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export class UsageCounter {
  #prompt: number;
  #completion = 0;
  #cached = 0;

  constructor(promptTokens: number) {
    this.#prompt = promptTokens;
  }

  add(ev: Extract<GenerationEvent, { type: 'finish' }>): void {
    this.#completion += ev.completionTokens;
    if (ev.index === 0) {
      this.#prompt = ev.promptTokens;
      this.#cached = ev.cachedTokens;
    }
  }

  toJSON(): Usage {
    return {
      prompt_tokens: this.#prompt,
      completion_tokens: this.#completion,
      total_tokens: this.#prompt + this.#completion,
      prompt_tokens_details: { cached_tokens: this.#cached },
    };
  }
}

export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}
