// The inference worker's side of the grammar worker (grammar-worker.ts, protocol in
// grammar-protocol.ts). The worker starts on the first constrained request, so servers that never
// constrain pay nothing. `open` compiles (or finds in the cache) a request's grammar and creates its
// matcher, before the request is queued; a grammar that does not compile rejects with a
// RequestRejectedError naming the request field (a 400 before any streaming).
//
// Per step the step loop only reads shared memory: after the model ran, poll() finds the mask the
// grammar worker computed meanwhile (or waits for it, bounded). While the grammar worker compiles, a
// mask may be late; poll() then answers 'pending' at once and the step runner holds that sequence's
// logits until it is there, so other streams never wait for a compile.
import type { Worker } from 'node:worker_threads';
import { EngineError, RequestRejectedError } from '../errors.ts';
import { spawnTsWorker } from '../ts-worker.ts';
import type { GrammarConstraint } from '../types.ts';
import {
  CONTROL_COMPILING,
  CONTROL_INTS,
  CONTROL_MATCHERS,
  CONTROL_PROGRESS,
  MATCHER_MASK,
  MATCHER_SEQ,
  MATCHER_STATUS,
  matcherInts,
  STATUS_COMPLETE,
  STATUS_READY,
  type FromGrammarWorker,
  type GrammarWorkerInit,
  type ToGrammarWorker,
} from './grammar-protocol.ts';
import type { ConstraintState, TokenConstraint } from './token-constraint.ts';

export interface GrammarClientOptions {
  readonly modelDir: string;
  readonly vocabSize: number;
  readonly eosTokenIds: readonly number[];
  /** Compiled grammars kept by the grammar worker (LRU). */
  readonly cacheEntries: number;
  readonly log: (message: string) => void;
}

/** Atomics.waitAsync (Node ≥ 16; typed from ES2024 on, beyond this project's lib). */
interface AtomicsWaitAsync {
  waitAsync(array: Int32Array, index: number, value: number, timeoutMs: number): { async: false; value: string } | { async: true; value: Promise<string> };
}

interface PendingOpen {
  readonly matcher: RemoteMatcher;
  readonly param: string;
  readonly resolve: (m: RemoteMatcher) => void;
  readonly reject: (err: Error) => void;
}

export class GrammarClient {
  private readonly options: GrammarClientOptions;
  private readonly control = new Int32Array(new SharedArrayBuffer(CONTROL_INTS * 4));
  private worker: Worker | null = null;
  private failure: string | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, PendingOpen>();

  constructor(options: GrammarClientOptions) {
    this.options = options;
  }

  /** Matchers alive in the grammar worker; null before it started. */
  get numMatchers(): number | null {
    return this.worker === null ? null : Atomics.load(this.control, CONTROL_MATCHERS);
  }

  /** Compiles `constraint` (or takes it from the cache) and creates a matcher with the request's stop ids. */
  open(constraint: GrammarConstraint, stopTokenIds: readonly number[]): Promise<RemoteMatcher> {
    if (this.failure !== null) return Promise.reject(new EngineError(this.failure));
    const id = this.nextId++;
    const shared = new SharedArrayBuffer(matcherInts(this.options.vocabSize) * 4);
    const matcher = new RemoteMatcher(this, id, new Int32Array(shared));
    return new Promise<RemoteMatcher>((resolve, reject) => {
      this.pending.set(id, { matcher, param: constraint.param, resolve, reject });
      this.post({ type: 'open', id, constraint, stopTokenIds: [...stopTokenIds], shared });
    });
  }

  /** Resolves when the grammar worker made progress (a mask, a compile started or ended), or after timeoutMs. */
  async whenProgress(timeoutMs: number): Promise<void> {
    const seen = Atomics.load(this.control, CONTROL_PROGRESS);
    const wait = (Atomics as unknown as AtomicsWaitAsync).waitAsync(this.control, CONTROL_PROGRESS, seen, timeoutMs);
    if (wait.async) await wait.value;
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    this.failure ??= 'the grammar worker was stopped';
    this.failPending(this.failure);
    await worker?.terminate();
  }

  /** @internal the state of one matcher's shared area (see RemoteMatcher.poll). */
  poll(shared: Int32Array, expectedSeq: number, waitMs: number): ConstraintState {
    const deadline = performance.now() + waitMs;
    for (;;) {
      if (this.failure !== null) return 'failed';
      const seen = Atomics.load(this.control, CONTROL_PROGRESS);
      if (Atomics.load(shared, MATCHER_SEQ) >= expectedSeq) {
        const status = shared[MATCHER_STATUS];
        return status === STATUS_READY ? 'ready' : status === STATUS_COMPLETE ? 'complete' : 'failed';
      }
      const left = deadline - performance.now();
      if (Atomics.load(this.control, CONTROL_COMPILING) > 0 || left <= 0) return 'pending';
      Atomics.wait(this.control, CONTROL_PROGRESS, seen, left);
    }
  }

  /** @internal */
  post(msg: ToGrammarWorker): void {
    if (this.failure !== null) return;
    this.start().postMessage(msg);
  }

  private start(): Worker {
    if (this.worker !== null) return this.worker;
    const init: GrammarWorkerInit = {
      modelDir: this.options.modelDir,
      vocabSize: this.options.vocabSize,
      eosTokenIds: this.options.eosTokenIds,
      cacheEntries: this.options.cacheEntries,
      control: this.control.buffer as SharedArrayBuffer,
    };
    const worker = spawnTsWorker(new URL('./grammar-worker.ts', import.meta.url), { workerData: init });
    worker.on('message', (msg: FromGrammarWorker) => this.onMessage(msg));
    worker.on('error', (err) => this.fail(`the grammar worker failed: ${err.message}`));
    worker.on('exit', (code) => this.fail(`the grammar worker exited (code ${code})`));
    this.worker = worker;
    return worker;
  }

  private onMessage(msg: FromGrammarWorker): void {
    switch (msg.type) {
      case 'opened': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.resolve(p.matcher);
        if (p !== undefined) this.options.log(`grammar ready in ${msg.compileMs.toFixed(1)} ms${msg.cached ? ' (cached)' : ''}`);
        return;
      }
      case 'open_failed': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.reject(new RequestRejectedError(`'${p.param}' cannot be compiled to a grammar: ${msg.message}`, p.param));
        return;
      }
      case 'init_failed':
        this.fail(msg.message);
        return;
      case 'log':
        this.options.log(msg.message);
        return;
    }
  }

  private fail(message: string): void {
    if (this.failure !== null) return;
    this.failure = message;
    this.options.log(message);
    this.failPending(message);
    Atomics.add(this.control, CONTROL_PROGRESS, 1);
    Atomics.notify(this.control, CONTROL_PROGRESS); // wake a step loop waiting for a mask
  }

  private failPending(message: string): void {
    for (const p of this.pending.values()) p.reject(new EngineError(message));
    this.pending.clear();
  }
}

/** One request's matcher, seen from the inference worker. */
export class RemoteMatcher implements TokenConstraint {
  private readonly client: GrammarClient;
  private readonly id: number;
  private readonly shared: Int32Array;
  /** Tokens accepted so far = the SEQ of the mask the next token needs. */
  private numAccepted = 0;
  private closed = false;

  constructor(client: GrammarClient, id: number, shared: Int32Array) {
    this.client = client;
    this.id = id;
    this.shared = shared;
  }

  poll(waitMs: number): ConstraintState {
    return this.client.poll(this.shared, this.numAccepted, waitMs);
  }

  /** logits[t] = −∞ where bit t of the mask is 0; whole words of allowed tokens are skipped. */
  applyMask(logits: Float32Array): void {
    const vocabSize = logits.length;
    const mask = this.shared;
    for (let w = 0; w * 32 < vocabSize; w++) {
      const word = mask[MATCHER_MASK + w] as number;
      if (word === -1) continue;
      const base = w * 32;
      const end = Math.min(32, vocabSize - base);
      for (let b = 0; b < end; b++) if (((word >>> b) & 1) === 0) logits[base + b] = -Infinity;
    }
  }

  accept(tokenId: number): void {
    this.numAccepted++;
    this.client.post({ type: 'accept', id: this.id, tokenId });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client.post({ type: 'close', id: this.id });
  }
}
