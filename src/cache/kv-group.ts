// KV groups: the attention layers of one kind share a page pool and a block table per sequence. The
// kinds differ only in how long keys/values live and therefore in how pages are allotted:
//
//   kind     keeps                   pages per sequence             allotted
//   window   the last W positions    ≤ ⌈(W+C)/P⌉+1 (C = max chunk)   reserved in full at admission
//   full     every position          grows with the sequence         lazily, chunk by chunk; when the
//                                                                     pool runs out the scheduler preempts
//
// A window sequence's worst case is small and bounded, so reserving it buys "never fails mid-step" for
// little memory. A full-attention sequence's worst case is prompt + max_tokens: reserving that would let
// one chat without max_tokens hold the whole pool, so full groups allocate as the sequence grows.
// The rest of the cache (CacheManager, prefix snapshots) treats groups alike through this table.
import { BlockPool, bytesPerPage } from './block-pool.ts';
import { PagedKvManager } from './paged-kv.ts';

export type KvKind = 'window' | 'full';

/** Frozen geometry of one group. */
export interface KvGroupSpec {
  readonly kind: KvKind;
  /** Attention layers in the group (a page holds all of them). */
  readonly numLayers: number;
  readonly numKvHeads: number; // Hkv
  readonly headDim: number; // d
  /** W for window groups (a query at p attends p−W…p); null for full attention. */
  readonly windowTokens: number | null;
}

interface KindRules {
  /** Pages reserved at admission for a sequence of at most `totalTokens` positions. */
  reservePages(spec: KvGroupSpec, totalTokens: number, maxChunkTokens: number, pageTokens: number): number;
  /** Pool size when no size is given: enough for `maxNumSeqs` sequences (window) or a byte default (full). */
  defaultPages(spec: KvGroupSpec, maxNumSeqs: number, maxChunkTokens: number, pageTokens: number, defaultBytes: number): number;
}

/** Pool bytes of a full-attention group when neither kvPages nor kvCacheBytes is given. */
export const DEFAULT_FULL_ATTENTION_BYTES = 1 << 30;

const KINDS: Record<KvKind, KindRules> = {
  window: {
    reservePages: (spec, totalTokens, maxChunkTokens, P) =>
      Math.min(Math.ceil(totalTokens / P), PagedKvManager.maxPagesSwa(spec.windowTokens ?? 0, maxChunkTokens, P)),
    defaultPages: (spec, maxNumSeqs, maxChunkTokens, P) => maxNumSeqs * PagedKvManager.maxPagesSwa(spec.windowTokens ?? 0, maxChunkTokens, P),
  },
  full: {
    reservePages: () => 0,
    defaultPages: (spec, _maxNumSeqs, _maxChunkTokens, P, defaultBytes) => Math.floor(defaultBytes / bytesPerPage({ numAttnLayers: spec.numLayers, numKvHeads: spec.numKvHeads, headDim: spec.headDim, pageTokens: P })),
  },
};

export class KvGroup {
  readonly spec: KvGroupSpec;
  readonly pool: BlockPool;
  readonly kv: PagedKvManager;
  private readonly rules: KindRules;
  /** Σ reservations of admitted sequences (window groups; 0 for full). */
  reservedPages = 0;

  constructor(spec: KvGroupSpec, numPages: number, pageTokens: number) {
    if (spec.kind === 'window' && (spec.windowTokens === null || spec.windowTokens < 1)) throw new RangeError('a window group needs windowTokens ≥ 1');
    if (spec.kind === 'full' && spec.windowTokens !== null) throw new RangeError('a full-attention group has no window');
    this.spec = Object.freeze({ ...spec });
    this.rules = KINDS[spec.kind];
    this.pool = new BlockPool({ numAttnLayers: spec.numLayers, numKvHeads: spec.numKvHeads, headDim: spec.headDim, pageTokens }, numPages);
    this.kv = new PagedKvManager(this.pool, spec.windowTokens);
  }

  static defaultPages(spec: KvGroupSpec, maxNumSeqs: number, maxChunkTokens: number, pageTokens: number, defaultBytes = DEFAULT_FULL_ATTENTION_BYTES): number {
    return KINDS[spec.kind].defaultPages(spec, maxNumSeqs, maxChunkTokens, pageTokens, defaultBytes);
  }

  get isLazy(): boolean {
    return this.spec.kind === 'full';
  }

  reservePages(totalTokens: number, maxChunkTokens: number): number {
    return this.rules.reservePages(this.spec, totalTokens, maxChunkTokens, this.pool.spec.pageTokens);
  }

  /** Pages a sequence of `totalTokens` positions holds at most at once (can it ever run alone?). */
  peakPages(totalTokens: number, maxChunkTokens: number): number {
    const all = Math.ceil(totalTokens / this.pool.spec.pageTokens);
    return this.spec.kind === 'full' ? all : this.reservePages(totalTokens, maxChunkTokens);
  }
}
