// PromptWorker: the HTTP thread's handle of the prompt worker (./prompt-worker.ts), the thread that
// does a request's bulk work so the HTTP thread never holds a large body or renders a long prompt:
//
//   large bodies (json-body.ts hands them over as they arrive): every chunk is copied into a ring in
//   shared memory (./body-ring.ts; a copy of its own when the ring is full) and posted as it comes; the
//   worker decodes it from there, then joins and parses the body, validates it,
//   makes the prompt (./body-pipelines.ts) and answers with a lean body plus the prompt's ids in a
//   SharedArrayBuffer, which reaches the engine's worker without another copy;
//   heavy small bodies (a chat of many messages or tools): the parsed body is cloned in and the prompt
//   comes back the same way.
//
// A chat prompt made there asks this thread for the remembered replies among its assistant messages
// (../chat-completions/reply-ids.ts): the worker sends their content keys (sha256), this thread answers
// with the entries it holds (content and ids, bounded by the cache), and the worker compares contents.
//
// Started on first use; it keeps the process alive only while a job is in flight. A crashed worker
// fails its jobs (a 500) and the next job starts a fresh one.
import type { Worker } from 'node:worker_threads';
import { spawnTsWorker } from '../../engine/ts-worker.ts';
import type { ServerConfig } from '../../server/config.ts';
import { InternalError, InvalidRequestError, validationError } from '../../server/errors.ts';
import type { ChatAssets, LargeBodyParser, LargeBodySession, ParsedLargeBody } from '../../server/ports.ts';
import type { RememberedReply, ReplyIdsCache } from '../chat-completions/reply-ids.ts';
import type { ChatCompletionRequest } from '../chat-completions/schema.ts';
import { BODY_ROUTES, type BodyRoute, type PipelineResult } from './body-pipelines.ts';
import { BodyRing, type RingRegion } from './body-ring.ts';
import { fromWireApiError, type Derived, type PreparedPrompt, type WireApiError } from './prompt-context.ts';

/** What the worker needs to start: the checkpoint's tokenizer and chat template, the server's limits. */
export interface PromptWorkerInit {
  readonly modelDir: string;
  readonly chatAssets: ChatAssets;
  readonly serverConfig: ServerConfig;
}

/** What the worker is started with: the init and the ring large bodies' bytes come through. */
export interface PromptWorkerData extends PromptWorkerInit {
  readonly bodyRing: SharedArrayBuffer;
}

export type ToPromptWorker =
  | { readonly type: 'open'; readonly job: number; readonly route: BodyRoute }
  /** The next bytes of a body: in the ring (give the regions back once read), or a copy of their own. */
  | { readonly type: 'chunk'; readonly job: number; readonly regions: readonly RingRegion[] }
  | { readonly type: 'chunk'; readonly job: number; readonly bytes: Uint8Array }
  | { readonly type: 'end'; readonly job: number; readonly modelVocabSize: number | null }
  | { readonly type: 'abort'; readonly job: number }
  | { readonly type: 'derive'; readonly job: number; readonly route: BodyRoute; readonly body: unknown; readonly modelVocabSize: number | null }
  | { readonly type: 'replies'; readonly job: number; readonly lookup: number; readonly entries: readonly (RememberedReply | null)[] };

export type PromptWorkerAnswer =
  | { readonly job: number; readonly kind: 'parsed'; readonly result: PipelineResult }
  | { readonly job: number; readonly kind: 'bad-body'; readonly error: WireApiError }
  | { readonly job: number; readonly kind: 'derived'; readonly derived: Derived }
  | { readonly job: number; readonly kind: 'fault'; readonly message: string }
  /** Not an answer: the job's chat prompt asks for the remembered replies with these content keys. */
  | { readonly job: number; readonly kind: 'replies'; readonly lookup: number; readonly keys: readonly string[] };

declare module 'fastify' {
  interface FastifyInstance {
    /** Set by the composition root (src/main/app.ts). */
    readonly promptWorker: PromptWorker;
  }
}

interface Pending {
  readonly resolve: (answer: PromptWorkerAnswer) => void;
  readonly reject: (err: Error) => void;
}

export class PromptWorker implements LargeBodyParser {
  private worker: Worker | null = null;
  /** The current worker's ring (a new worker gets a new one). */
  private ring: BodyRing | null = null;
  private nextJob = 0;
  private readonly pending = new Map<number, Pending>();
  /** Large bodies handed over so far, by route (for tests and logs). */
  readonly bodiesByRoute = new Map<BodyRoute, number>();

  constructor(
    private readonly init: PromptWorkerInit,
    /** The model's vocabulary size once the engine is loaded (token-id prompts are checked against it). */
    private readonly modelVocabSize: () => number | null,
    private readonly log: (err: Error, message: string) => void = () => undefined,
    /** Remembered replies, for the chat prompts made in the worker; null: none are spliced there. */
    private readonly replies: ReplyIdsCache | null = null,
  ) {}

  /** A session for a large body of the route at `routeUrl`, or null when that route has no pipeline. */
  begin(routeUrl: string): LargeBodySession | null {
    const route = BODY_ROUTES[routeUrl];
    if (route === undefined) return null;
    this.bodiesByRoute.set(route, (this.bodiesByRoute.get(route) ?? 0) + 1);
    const job = this.nextJob++;
    const answer = this.track(job);
    this.post({ type: 'open', job, route });
    let open = true;
    return {
      push: (chunk: Buffer) => {
        if (!open) return;
        // Copied either way: a socket's chunk may be a view into a buffer it reuses.
        const regions = this.ring?.write(chunk) ?? null;
        if (regions !== null) {
          this.post({ type: 'chunk', job, regions });
          return;
        }
        const bytes = new Uint8Array(chunk);
        this.post({ type: 'chunk', job, bytes }, [bytes.buffer]);
      },
      end: async (): Promise<ParsedLargeBody> => {
        open = false;
        this.post({ type: 'end', job, modelVocabSize: this.modelVocabSize() });
        const a = await answer;
        if (a.kind === 'bad-body') throw new InvalidRequestError(a.error.message, a.error.param, a.error.code);
        if (a.kind !== 'parsed') throw this.fault(a);
        if (a.result.kind === 'invalid') throw validationError(a.result.issues);
        return { body: a.result.body, derived: a.result.derived };
      },
      abort: () => {
        if (!open) return;
        open = false;
        this.post({ type: 'abort', job });
        this.settle(job, new Error('aborted'));
      },
    };
  }

  /** The prompt of a valid chat body, made in the worker. Throws the 4xx the prompt work raised. */
  async prepareChat(body: ChatCompletionRequest): Promise<PreparedPrompt> {
    const derived = await this.derive('chat', body);
    if ('error' in derived) throw fromWireApiError(derived.error);
    if (!('prompt' in derived)) throw new InternalError();
    return derived.prompt;
  }

  /** Stops the worker; jobs in flight fail. */
  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    this.ring = null;
    this.failAll(new Error('the prompt worker was closed'));
    await worker?.terminate();
  }

  private async derive(route: BodyRoute, body: unknown): Promise<Derived> {
    const job = this.nextJob++;
    const answer = this.track(job);
    this.post({ type: 'derive', job, route, body, modelVocabSize: this.modelVocabSize() });
    const a = await answer;
    if (a.kind !== 'derived') throw this.fault(a);
    return a.derived;
  }

  private fault(a: PromptWorkerAnswer): InternalError {
    this.log(new Error(a.kind === 'fault' ? a.message : `unexpected answer ${a.kind}`), 'prompt worker job failed');
    return new InternalError();
  }

  private track(job: number): Promise<PromptWorkerAnswer> {
    const worker = this.worker ?? this.start();
    if (this.pending.size === 0) worker.ref();
    return new Promise<PromptWorkerAnswer>((resolve, reject) => this.pending.set(job, { resolve, reject }));
  }

  private settle(job: number, outcome: PromptWorkerAnswer | Error): void {
    const p = this.pending.get(job);
    if (p === undefined) return;
    this.pending.delete(job);
    if (this.pending.size === 0) this.worker?.unref();
    if (outcome instanceof Error) p.reject(outcome);
    else p.resolve(outcome);
  }

  private post(msg: ToPromptWorker, transfer: ArrayBuffer[] = []): void {
    this.worker?.postMessage(msg, transfer);
  }

  private start(): Worker {
    const ring = new BodyRing();
    const workerData: PromptWorkerData = { ...this.init, bodyRing: ring.buffer };
    const worker = spawnTsWorker(new URL('./prompt-worker.ts', import.meta.url), { workerData });
    worker.unref();
    worker.on('message', (answer: PromptWorkerAnswer) => {
      if (answer.kind !== 'replies') this.settle(answer.job, answer);
      else this.post({ type: 'replies', job: answer.job, lookup: answer.lookup, entries: this.replies?.byKeys(answer.keys) ?? answer.keys.map(() => null) });
    });
    const lost = (why: string): void => {
      if (this.worker !== worker) return;
      this.worker = null; // the next job starts a fresh one
      this.ring = null;
      this.log(new Error(why), 'prompt worker lost');
      this.failAll(new InternalError());
    };
    worker.on('error', (err) => lost(`prompt worker crashed: ${err.message}`));
    worker.on('exit', (code) => lost(`prompt worker exited (code ${code})`));
    this.worker = worker;
    this.ring = ring;
    return worker;
  }

  private failAll(err: Error): void {
    for (const job of [...this.pending.keys()]) this.settle(job, err);
  }
}
