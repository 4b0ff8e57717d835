// SnapshotReads: disk reads of prefix snapshots for requests that wait for admission. One read per
// key, shared by every request that waits for it (a burst of questions about one document reads its
// snapshot once), and bounded: the bytes of the reads in flight and of the snapshots read but not
// yet restored count against `budgetBytes`, and at most MAX_READS_IN_FLIGHT reads run at once; a
// read that does not fit is not started (the request prefills instead). A read's bytes are let go when every request holding it has been admitted or
// aborted and the read itself has ended (a timed-out read keeps its bytes until the disk answers).
//
//   prefetch(keys) ─▶ longest key on disk (one directory listing) ─▶ join or start its read ─▶ handle
//   handle.snapshot: the data, or null (no file, over budget, damaged, timed out: a miss)
//   handle.release(): this request no longer needs it (after admission, or on abort)
import { expectedFileBytes, type SnapshotData } from './snapshot-file.ts';
import type { SnapshotStore } from './snapshot-store.ts';

/** A disk snapshot read for one waiting request. */
export interface PrefetchedSnapshot {
  readonly key: string;
  /** null: the read failed or timed out (a miss). */
  readonly snapshot: SnapshotData | null;
  /** Idempotent. */
  release(): void;
}

/**
 * Reads whose disk work has not ended, at most. Each may hold a libuv thread while a stuck volume
 * does not answer (the request gets a miss at the timeout, the thread stays): the thread pool must
 * keep threads for everything else.
 */
const MAX_READS_IN_FLIGHT = 2;

interface SharedRead {
  readonly key: string;
  readonly bytes: number;
  readonly result: Promise<SnapshotData | null>;
  holders: number;
  ended: boolean;
}

export class SnapshotReads {
  private readonly store: SnapshotStore;
  private readonly budgetBytes: number;
  private readonly reads = new Map<string, SharedRead>();
  private heldBytes = 0;
  private readsInFlight = 0;
  /** Reads not started because they did not fit in the budget (bytes, or reads in flight). */
  skippedForBudget = 0;

  constructor(store: SnapshotStore, budgetBytes: number) {
    this.store = store;
    this.budgetBytes = budgetBytes;
  }

  /** Bytes of reads in flight or held for waiting requests. */
  get bytes(): number {
    return this.heldBytes;
  }

  /**
   * The longest prefix among `keys` (keys[i] ↔ (i+1)·P tokens) stored on disk beyond index `above`,
   * read (or joined) for one request; null when there is none or it does not fit in the budget.
   * Never rejects.
   */
  async prefetch(keys: readonly string[], above: number): Promise<PrefetchedSnapshot | null> {
    const index = await this.store.findLongest(keys, above).catch(() => -1);
    if (index < 0) return null;
    const key = keys[index]!;
    const numTokens = (index + 1) * this.store.expect.pageTokens;
    let read = this.reads.get(key);
    if (read === undefined) {
      const bytes = expectedFileBytes(this.store.expect, key, numTokens);
      if (this.heldBytes + bytes > this.budgetBytes || this.readsInFlight >= MAX_READS_IN_FLIGHT) {
        this.skippedForBudget++;
        return null;
      }
      const started = this.store.read(key, numTokens);
      const shared: SharedRead = { key, bytes, result: started.result, holders: 0, ended: false };
      this.heldBytes += bytes;
      this.readsInFlight++;
      this.reads.set(key, shared);
      void started.settled.then(() => {
        shared.ended = true;
        this.readsInFlight--;
        this.letGo(shared);
      });
      read = shared;
    }
    read.holders++;
    const shared = read;
    const snapshot = await shared.result;
    let released = false;
    return {
      key,
      snapshot,
      release: () => {
        if (released) return;
        released = true;
        shared.holders--;
        this.letGo(shared);
      },
    };
  }

  private letGo(read: SharedRead): void {
    if (read.holders > 0 || !read.ended || this.reads.get(read.key) !== read) return;
    this.reads.delete(read.key);
    this.heldBytes -= read.bytes;
  }
}
