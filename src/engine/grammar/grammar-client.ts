// The inference worker's side of the grammar worker (grammar-worker.ts, protocol in
// grammar-protocol.ts). The worker starts on the first constrained request, so servers that never
// constrain pay nothing. `open` compiles (or finds in the cache) a request's grammar and creates its
// matcher, before the request is queued; a grammar that does not compile rejects with a
// RequestRejectedError naming the request field (a 400 before any streaming).
//
// A grammar worker that dies (it should not) fails the matchers it held; the next open starts another.
// Without a tokenizer in the model folder every open is refused (a 400: structured outputs unavailable).
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

/**
 * One grammar worker and its shared control words. A session that failed (the worker crashed) fails
 * its matchers; the next open starts a new session.
 */
class Session {
  readonly control = new Int32Array(new SharedArrayBuffer(CONTROL_INTS * 4));
  readonly worker: Worker;
  failure: string | null = null;
  /** Tokens accepted since the last message, as pairs (matcher id, token id): a step's go out in one message. */
  private outbox: number[] = [];

  constructor(init: Omit<GrammarWorkerInit, 'control'>) {
    this.worker = spawnTsWorker(new URL('./grammar-worker.ts', import.meta.url), { workerData: { ...init, control: this.control.buffer as SharedArrayBuffer } });
  }

  /** The state of one matcher's shared area (see RemoteMatcher.poll). */
  poll(shared: Int32Array, expectedSeq: number, waitMs: number): ConstraintState {
    this.flush(); // never wait for a mask whose token is still in the outbox
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

  post(msg: ToGrammarWorker): void {
    this.flush(); // keep the order: accepts before a later close
    if (this.failure === null) this.worker.postMessage(msg);
  }

  /** Queues an accepted token; the queue is sent once the sampling code running now yields. */
  accept(id: number, tokenId: number): void {
    if (this.outbox.length === 0) queueMicrotask(() => this.flush());
    this.outbox.push(id, tokenId);
  }

  private flush(): void {
    if (this.outbox.length === 0) return;
    const accepted = Int32Array.from(this.outbox);
    this.outbox = [];
    if (this.failure === null) this.worker.postMessage({ type: 'accept', accepted } satisfies ToGrammarWorker);
  }
}

export class GrammarClient {
  private readonly options: GrammarClientOptions;
  private session: Session | null = null;
  /** Set when structured outputs cannot work at all here (no tokenizer), or after close(). */
  private unavailable: string | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, PendingOpen>();
  private numOpen = 0;

  constructor(options: GrammarClientOptions) {
    this.options = options;
  }

  /** Matchers opened and not yet closed (what the engine holds); null before the first open. */
  get numMatchers(): number | null {
    return this.session === null ? null : this.numOpen;
  }

  /** Matchers the grammar worker holds right now (it frees a closed one shortly after); null before it started. */
  get numWorkerMatchers(): number | null {
    return this.session === null ? null : Atomics.load(this.session.control, CONTROL_MATCHERS);
  }

  /** Compiles `constraint` (or takes it from the cache) and creates a matcher with the request's stop ids. */
  open(constraint: GrammarConstraint, stopTokenIds: readonly number[]): Promise<RemoteMatcher> {
    if (this.unavailable !== null) {
      return Promise.reject(new RequestRejectedError(`structured outputs are not available: ${this.unavailable}`, constraint.param));
    }
    const session = this.currentSession();
    const id = this.nextId++;
    const shared = new SharedArrayBuffer(matcherInts(this.options.vocabSize) * 4);
    const matcher = new RemoteMatcher(session, id, new Int32Array(shared), () => this.numOpen--);
    return new Promise<RemoteMatcher>((resolve, reject) => {
      this.pending.set(id, { matcher, param: constraint.param, resolve, reject });
      session.post({ type: 'open', id, constraint, stopTokenIds: [...stopTokenIds], shared });
    });
  }

  /** Resolves when the grammar worker made progress (a mask, a compile started or ended), or after timeoutMs. */
  async whenProgress(timeoutMs: number): Promise<void> {
    if (this.session === null) return;
    const control = this.session.control;
    const seen = Atomics.load(control, CONTROL_PROGRESS);
    const wait = (Atomics as unknown as AtomicsWaitAsync).waitAsync(control, CONTROL_PROGRESS, seen, timeoutMs);
    if (wait.async) await wait.value;
  }

  async close(): Promise<void> {
    this.unavailable = 'the engine is shutting down';
    const session = this.session;
    this.session = null;
    if (session !== null) this.fail(session, this.unavailable);
    await session?.worker.terminate();
  }

  private currentSession(): Session {
    if (this.session !== null && this.session.failure === null) return this.session;
    const session = new Session({
      modelDir: this.options.modelDir,
      vocabSize: this.options.vocabSize,
      eosTokenIds: this.options.eosTokenIds,
      cacheEntries: this.options.cacheEntries,
    });
    session.worker.on('message', (msg: FromGrammarWorker) => this.onMessage(session, msg));
    session.worker.on('error', (err) => this.fail(session, `the grammar worker failed: ${err.message}`));
    session.worker.on('exit', (code) => this.fail(session, `the grammar worker exited (code ${code})`));
    this.session = session;
    return session;
  }

  private onMessage(session: Session, msg: FromGrammarWorker): void {
    switch (msg.type) {
      case 'opened': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (p !== undefined) this.numOpen++;
        p?.resolve(p.matcher);
        if (p !== undefined && !msg.cached) this.options.log(`grammar for '${p.param}' compiled in ${msg.compileMs.toFixed(0)} ms`);
        return;
      }
      case 'open_failed': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.reject(new RequestRejectedError(`'${p.param}' cannot be compiled to a grammar: ${msg.message}`, p.param));
        return;
      }
      case 'init_failed':
        // The vocabulary cannot be read (e.g. a checkpoint without a tokenizer): no point in retrying.
        this.unavailable = msg.message;
        this.fail(session, msg.message);
        return;
      case 'log':
        this.options.log(msg.message);
        return;
    }
  }

  /** The session's worker is gone: its pending opens and its matchers fail (a new open starts a new one). */
  private fail(session: Session, message: string): void {
    if (session.failure !== null) return;
    session.failure = message;
    this.options.log(message);
    for (const [id, p] of this.pending) {
      if (p.matcher.session !== session) continue;
      this.pending.delete(id);
      p.reject(this.unavailable !== null ? new RequestRejectedError(`structured outputs are not available: ${message}`, p.param) : new EngineError(message));
    }
    Atomics.add(session.control, CONTROL_PROGRESS, 1);
    Atomics.notify(session.control, CONTROL_PROGRESS); // wake a step loop waiting for a mask
  }
}

/** One request's matcher, seen from the inference worker. */
export class RemoteMatcher implements TokenConstraint {
  /** @internal the grammar worker holding it */
  readonly session: Session;
  private readonly id: number;
  private readonly shared: Int32Array;
  /** Tokens accepted so far = the SEQ of the mask the next token needs. */
  private numAccepted = 0;
  private closed = false;
  private readonly onClose: () => void;

  constructor(session: Session, id: number, shared: Int32Array, onClose: () => void) {
    this.session = session;
    this.id = id;
    this.shared = shared;
    this.onClose = onClose;
  }

  poll(waitMs: number): ConstraintState {
    return this.session.poll(this.shared, this.numAccepted, waitMs);
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
    this.session.accept(this.id, tokenId);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
    this.session.post({ type: 'close', id: this.id });
  }
}
