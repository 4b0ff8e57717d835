// OffThreadEncoder: the main-thread client of the tokenizer worker (tokenizer-worker.ts).
//
// Encoding a multi-megabyte prompt on the HTTP thread stalls it: the binding turns its ids into a
// JS array on the calling thread (~0.4 s in one block for 3.5 M ids, bench/tokenize.ts). Here the
// worker holds its own TextTokenizer (same checkpoint, same options), encodes on its own thread and
// sends the ids back as an Int32Array<ArrayBuffer> whose buffer is transferred, so the HTTP thread only pays for
// cloning the text in (a memcpy) and nothing for the ids. Requests carry an id; several may be in
// flight at once (each answer names its request, so results never mix).
import type { Worker } from 'node:worker_threads';
import { EngineError } from './errors.ts';
import type { EncodeOptions, TokenizerLoadOptions } from './tokenizer.ts';
import { spawnTsWorker } from './ts-worker.ts';

export interface TokenizerWorkerInit {
  readonly dir: string;
  readonly options: TokenizerLoadOptions;
}

export interface EncodeJob {
  readonly id: number;
  readonly text: string;
  readonly addSpecialTokens: boolean;
  readonly specialTokensAsText: boolean;
}

export type EncodeAnswer =
  | { readonly id: number; readonly ids: Int32Array<ArrayBuffer> }
  | { readonly id: number; readonly error: string };

interface Pending {
  readonly resolve: (ids: Int32Array<ArrayBuffer>) => void;
  readonly reject: (err: Error) => void;
}

/**
 * A worker idle this long is stopped: it holds a V8 isolate and its own tokenizer (~10–40 MiB,
 * bench/README.md, "Memory") for prompts of ≥ 64 K chars, which most servers see rarely; the next
 * such prompt starts a fresh one (a fraction of the time its encode takes).
 */
const IDLE_STOP_MS = 30_000;

/** Main-thread handle of one tokenizer worker, started on first use; it keeps the process alive only while
 * an encode is in flight, and is stopped after `idleStopMs` without one. */
export class OffThreadEncoder {
  private worker: Worker | null = null;
  private nextId = 0;
  private readonly pending = new Map<number, Pending>();
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly init: TokenizerWorkerInit,
    private readonly idleStopMs = IDLE_STOP_MS,
  ) {}

  /** Whether a worker is running now. */
  get running(): boolean {
    return this.worker !== null;
  }

  encode(text: string, options: EncodeOptions = {}): Promise<Int32Array<ArrayBuffer>> {
    const worker = this.worker ?? this.start();
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    const job: EncodeJob = { id: this.nextId++, text, addSpecialTokens: options.addSpecialTokens ?? true, specialTokensAsText: options.specialTokensAsText ?? false };
    return new Promise<Int32Array<ArrayBuffer>>((resolve, reject) => {
      if (this.pending.size === 0) worker.ref();
      this.pending.set(job.id, { resolve, reject });
      worker.postMessage(job);
    });
  }

  /** After the last answer: stop the worker if nothing else comes within idleStopMs. */
  private stopWhenIdle(worker: Worker): void {
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.worker !== worker || this.pending.size > 0) return;
      this.worker = null; // before terminate: its exit is not a loss
      void worker.terminate();
    }, this.idleStopMs);
    this.idleTimer.unref();
  }

  /** Stops the worker; encodes still in flight reject. */
  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    this.failAll(new EngineError('the tokenizer worker was closed'));
    await worker?.terminate();
  }

  private start(): Worker {
    const worker = spawnTsWorker(new URL('./tokenizer-worker.ts', import.meta.url), { workerData: this.init });
    worker.unref();
    worker.on('message', (answer: EncodeAnswer) => {
      const p = this.pending.get(answer.id);
      this.pending.delete(answer.id);
      if (this.pending.size === 0) {
        worker.unref();
        this.stopWhenIdle(worker);
      }
      if ('ids' in answer) p?.resolve(answer.ids);
      else p?.reject(new EngineError(`tokenizer worker: ${answer.error}`));
    });
    const lost = (why: string): void => {
      if (this.worker !== worker) return;
      this.worker = null; // the next encode starts a fresh one
      this.failAll(new EngineError(why));
    };
    worker.on('error', (err) => lost(`tokenizer worker crashed: ${err.message}`));
    worker.on('exit', (code) => lost(`tokenizer worker exited (code ${code})`));
    this.worker = worker;
    return worker;
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
