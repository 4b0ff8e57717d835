// Admission of generation requests, checked before any expensive work. The engine bounds its waiting
// queue (--max-queue, QueueFullError at submit), but by the time a request reaches it the server has
// already read its body, rendered its template and tokenized its prompt: a flood of large requests
// would cost all of that before the first 429. So the server counts, next to what the engine reports
// waiting (EngineStats.numWaiting / waitingPromptTokens), the requests it is still preparing, and
// answers 429 (Retry-After) as soon as one would not fit:
//
//   request headers ── admit(estimate from Content-Length) ──▶ 429 before the body is read
//   tokenized ── update(n choices, n × prompt tokens) ──▶ 400 if it can never fit, 429 if not now
//   submitted to the engine ── release() ──▶ from here the engine's stats count it
//
// Budgets: requests waiting + preparing ≤ --max-queue, their prompt tokens ≤ --max-waiting-tokens.
// The engine's figures arrive with each step, so they lag by up to one step; the engine's own queue
// bound still holds exactly.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { EngineStats } from '../engine/types.ts';
import { InvalidRequestError, RateLimitError } from './errors.ts';

export interface AdmissionLimits {
  readonly maxQueue: number;
  readonly maxWaitingTokens: number;
}

/**
 * Request-body bytes per prompt token assumed before the body is parsed: below the real ratio of
 * common text as JSON (~4-5 bytes a token for English or CJK, ~6 for a token-id list), so the early
 * check refuses only what the exact check would refuse too.
 */
const ESTIMATED_BODY_BYTES_PER_TOKEN = 8;

const RETRY_AFTER_SECONDS = 1;

/** One request's claim on the budgets while it is prepared. Release it exactly once (idempotent). */
export class AdmissionTicket {
  numRequests: number;
  numTokens: number;
  #released = false;

  constructor(
    private readonly admission: Admission,
    numRequests: number,
    numTokens: number,
  ) {
    this.numRequests = numRequests;
    this.numTokens = numTokens;
  }

  get released(): boolean {
    return this.#released;
  }

  /**
   * The request's real size once its prompt is tokenized (n choices of numPromptTokens each). Throws
   * InvalidRequestError when it exceeds the token budget on its own, RateLimitError when it does not
   * fit next to what waits now (the ticket is released then).
   */
  update(numChoices: number, numPromptTokens: number, promptParam: string): void {
    if (this.#released) return;
    this.admission.resize(this, numChoices, numChoices * numPromptTokens, promptParam);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.admission.drop(this);
  }
}

export class Admission {
  #numRequests = 0;
  #numTokens = 0;

  constructor(
    private readonly limits: AdmissionLimits,
    /** The engine's latest counters, or null before it is loaded. */
    private readonly engineStats: () => EngineStats | null,
  ) {}

  /** Requests admitted and not yet submitted to the engine. */
  get numPreparing(): number {
    return this.#numRequests;
  }

  /** Prompt tokens (estimated until tokenized) of those requests. */
  get numPreparingTokens(): number {
    return this.#numTokens;
  }

  /**
   * Before the body is read: one request of about `bodyBytes / 8` prompt tokens. Throws RateLimitError,
   * or InvalidRequestError naming `promptParam` when even that estimate exceeds the token budget.
   */
  admit(bodyBytes: number, promptParam: string): AdmissionTicket {
    const numTokens = Math.floor(bodyBytes / ESTIMATED_BODY_BYTES_PER_TOKEN);
    this.check(0, 0, 1, numTokens, promptParam, 'estimated from the size of the body');
    const ticket = new AdmissionTicket(this, 1, numTokens);
    this.#numRequests += 1;
    this.#numTokens += numTokens;
    return ticket;
  }

  /** @internal AdmissionTicket.update */
  resize(ticket: AdmissionTicket, numRequests: number, numTokens: number, promptParam: string): void {
    try {
      this.check(ticket.numRequests, ticket.numTokens, numRequests, numTokens, promptParam, 'all choices together');
    } catch (err) {
      ticket.release();
      throw err;
    }
    this.#numRequests += numRequests - ticket.numRequests;
    this.#numTokens += numTokens - ticket.numTokens;
    ticket.numRequests = numRequests;
    ticket.numTokens = numTokens;
  }

  /** @internal AdmissionTicket.release */
  drop(ticket: AdmissionTicket): void {
    this.#numRequests -= ticket.numRequests;
    this.#numTokens -= ticket.numTokens;
  }

  /** Would a request of (numRequests, numTokens) fit, next to everything else (its own old claim excluded)? */
  private check(ownRequests: number, ownTokens: number, numRequests: number, numTokens: number, promptParam: string, counted: string): void {
    const { maxQueue, maxWaitingTokens } = this.limits;
    if (numTokens > maxWaitingTokens) {
      throw new InvalidRequestError(
        `the prompt has ${numTokens} tokens (${counted}); this server queues at most ${maxWaitingTokens} prompt tokens (--max-waiting-tokens)`,
        promptParam,
        'context_length_exceeded',
      );
    }
    const stats = this.engineStats();
    const waitingRequests = (stats?.numWaiting ?? 0) + this.#numRequests - ownRequests;
    if (waitingRequests + numRequests > maxQueue) {
      throw new RateLimitError(`the server is busy: ${waitingRequests} requests are waiting (at most ${maxQueue}); retry later`, RETRY_AFTER_SECONDS);
    }
    const waitingTokens = (stats?.waitingPromptTokens ?? 0) + this.#numTokens - ownTokens;
    if (waitingTokens + numTokens > maxWaitingTokens) {
      throw new RateLimitError(
        `the server is busy: ${waitingTokens} prompt tokens are waiting (at most ${maxWaitingTokens}); retry later`,
        RETRY_AFTER_SECONDS,
        'waiting_tokens_full',
      );
    }
  }
}

/**
 * Decorates the app with its Admission and every request with its ticket: routes whose config names
 * their prompt field as `admission` (the generation endpoints) get one in onRequest, before their body
 * is read; the response or the client going away releases it if the route did not.
 */
export default fp(
  async function admissionPlugin(app: FastifyInstance, limits: AdmissionLimits) {
    const admission = new Admission(limits, () => app.serving.loadedEngine?.stats() ?? null);
    app.decorate('admission', admission);
    app.decorateRequest('admissionTicket', null);
    app.addHook('onRequest', async (request) => {
      const promptParam = request.routeOptions.config.admission;
      if (promptParam === undefined) return;
      const bytes = Number(request.headers['content-length'] ?? 0);
      request.admissionTicket = admission.admit(Number.isFinite(bytes) && bytes > 0 ? bytes : 0, promptParam);
    });
    const release = async (request: FastifyRequest): Promise<void> => request.admissionTicket?.release();
    app.addHook('onResponse', release);
    app.addHook('onRequestAbort', release);
  },
  { name: 'spikeserve-admission' },
);
