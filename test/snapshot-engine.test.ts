// Prefix snapshots on disk through the real Engine (worker thread, scheduler, onnxruntime) on a tiny
// random model: a restarted engine resumes from the folder with the same tokens; a damaged, truncated
// or foreign file, or one whose header lies about its token count, is never restored and the greedy
// answer equals the cold run's; a read that hangs times out and admission goes on; two engines on one
// folder share a prefix as soon as it is snapshotted (write-through), and a warm-up (prefillOnly)
// answers only once its snapshot is on disk.
import { execFileSync } from 'node:child_process';
import { closeSync, cpSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prefixKeys } from '../src/cache/prefix-keys.ts';
import { encodeSnapshot, readSnapshotHeader, sealSnapshot } from '../src/cache/snapshot-file.ts';
import { snapshotIdOf } from '../src/cache/snapshot-store.ts';
import { Engine, type EngineOptions } from '../src/engine/engine.ts';
import type { GenerateRequest, TokenEvent } from '../src/engine/types.ts';
import { makeRandomTinyCheckpoint } from './helpers/checkpoint-writer.ts';
import { greedy } from './helpers/sampling.ts';

const root = mkdtempSync(join(tmpdir(), 'spikeserve-snapshot-engine-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const P = 4;
let ckptDir = '';
let vocab = 0;
beforeAll(() => {
  const ckpt = makeRandomTinyCheckpoint(join(root, 'ckpt'), { numLayers: 4, slidingWindow: 8, seed: 21 });
  ckptDir = ckpt.dir;
  vocab = ckpt.config.vocabSize;
});

const options = (prefixCacheDir: string, over: Partial<EngineOptions> = {}): EngineOptions => ({
  modelDir: ckptDir,
  cacheDir: join(root, 'built'),
  intraOpThreads: 1,
  pageTokens: P,
  prefixCacheDir,
  ...over,
});
const prompt = (): number[] => Array.from({ length: 150 }, (_, i) => (i * 31 + 7) % vocab);

interface Run {
  readonly tokens: number[];
  readonly cached: number;
  readonly promptTokens: number;
  readonly finishReason: string;
}

async function collect(engine: Engine, req: Omit<GenerateRequest, 'reportProgress'> & { reportProgress?: boolean }): Promise<Run> {
  const tokens: number[] = [];
  let done: Extract<TokenEvent, { type: 'done' }> | null = null;
  for await (const e of engine.generate({ reportProgress: false, ...req })) {
    if (e.type === 'token') tokens.push(e.tokenId);
    if (e.type === 'done') done = e;
  }
  return { tokens, cached: done?.cachedTokens ?? -1, promptTokens: done?.promptTokens ?? -1, finishReason: done?.finishReason ?? '' };
}

/** The one model folder inside a snapshot folder, and the file of the prompt's last whole page. */
function snapshotFile(dir: string, tokens: readonly number[]): string {
  const [model] = readdirSync(dir);
  const keys = prefixKeys(tokens, P);
  return join(dir, model ?? '', `${snapshotIdOf(keys[keys.length - 1]!)}.snap`);
}

describe('Engine with a snapshot folder', () => {
  let cold: Run;
  const written = (): string => join(root, 'written');

  beforeAll(async () => {
    // One engine computes the prompt cold and writes its snapshots at shutdown.
    const first = await Engine.start(options(written()));
    cold = await collect(first, { requestId: 'cold', promptTokenIds: prompt(), sampling: greedy(6) });
    await first.shutdown();
  });

  it('a restarted engine resumes from the folder with the same tokens', async () => {
    expect(cold.cached).toBe(0);
    expect(statSync(snapshotFile(written(), prompt())).size).toBeGreaterThan(0);
    const dir = join(root, 'restart');
    cpSync(written(), dir, { recursive: true });
    const engine = await Engine.start(options(dir));
    try {
      const b = await collect(engine, { requestId: 'b', promptTokenIds: prompt(), sampling: greedy(6) });
      expect(b.cached).toBe(148); // the last whole page before the final token
      expect(b.tokens).toEqual(cold.tokens);
      expect(engine.stats().prefixStore).toMatchObject({ hits: 1 });
    } finally {
      await engine.shutdown();
    }
  });

  function flip(path: string): void {
    const buf = readFileSync(path);
    for (let i = buf.length - 200; i < buf.length - 100; i++) buf[i] = (buf[i] ?? 0) ^ 0xff;
    writeFileSync(path, buf);
  }

  /** Re-encodes the file with a valid checksum but header fields that lie. */
  async function lie(path: string, patch: { modelIdentity?: string; numTokens?: number }): Promise<void> {
    const buf = readFileSync(path);
    const h = readSnapshotHeader(buf);
    const payload = new Float32Array(buf.buffer.slice(buf.byteOffset + buf.readUInt32LE(12), buf.byteOffset + buf.length));
    let at = 0;
    const take = (n: number): Float32Array => payload.subarray(at, (at += n));
    const arrays = h.layout.arrays.map(take);
    const blocks = h.layout.blocks.map(take);
    let b = 0;
    const groups = h.groups.map((g) => ({ firstPage: g.firstPage, blocks: blocks.slice(b, (b += g.numPages)) }));
    const out = encodeSnapshot({ modelIdentity: patch.modelIdentity ?? h.modelIdentity, pageTokens: h.pageTokens, numTokens: patch.numTokens ?? h.numTokens, key: h.key }, arrays, groups);
    await sealSnapshot(out);
    writeFileSync(path, out);
  }

  it.each([
    ['flipped bytes', 'checksum', (p: string) => flip(p)],
    ['truncated', 'truncated', (p: string) => truncateSync(p, Math.floor(statSync(p).size / 2))],
    ['another model’s file', 'header', (p: string) => lie(p, { modelIdentity: 'another-model-g6-fused' })],
    ['a header whose token count does not match its key', 'header', (p: string) => lie(p, { numTokens: 144 })],
  ])('%s: never restored, and the answer at temperature 0 equals the cold run’s', async (name, reason, damage) => {
    const dir = join(root, `damaged-${reason}-${name.length}`);
    cpSync(written(), dir, { recursive: true });
    await damage(snapshotFile(dir, prompt()));
    const engine = await Engine.start(options(dir));
    try {
      const b = await collect(engine, { requestId: 'b', promptTokenIds: prompt(), sampling: greedy(6) });
      // The last page's file is refused; an earlier, intact one (the shared-prefix page, if any) may serve.
      expect(b.cached).toBeLessThan(148);
      expect(b.tokens).toEqual(cold.tokens);
      const stats = engine.stats().prefixStore;
      expect(stats?.readFailures[reason as 'checksum']).toBe(1);
    } finally {
      await engine.shutdown();
    }
  });

  it('a read that hangs times out: the request is a miss and admission goes on', async () => {
    const dir = join(root, 'hung');
    cpSync(written(), dir, { recursive: true });
    const file = snapshotFile(dir, prompt());
    rmSync(file);
    execFileSync('mkfifo', [file]); // opening it blocks, as a stuck network volume would
    const engine = await Engine.start(options(dir, { prefixCacheReadTimeoutSeconds: 0.5 }));
    try {
      const b = await collect(engine, { requestId: 'b', promptTokenIds: prompt(), sampling: greedy(6) });
      expect(b.cached).toBe(0);
      expect(b.tokens).toEqual(cold.tokens);
      expect(engine.stats().prefixStore?.readFailures.timeout).toBe(1);
      const after = await collect(engine, { requestId: 'c', promptTokenIds: [3, 1, 4, 1, 5], sampling: greedy(2) });
      expect(after.finishReason).toBe('length');
    } finally {
      closeSync(openSync(file, 'w')); // release the blocked open
      await engine.shutdown();
    }
  });
});

describe('two engines on one folder', () => {
  it('B, started before A computed anything, resumes A’s prefix (written through); a warm-up answers once its snapshot is on disk', async () => {
    const dir = join(root, 'shared');
    const a = await Engine.start(options(dir, { prefixShareMinTokens: 64 }));
    const b = await Engine.start(options(dir, { prefixShareMinTokens: 64 }));
    try {
      const doc = prompt();
      const fromA = await collect(a, { requestId: 'a', promptTokenIds: doc, sampling: greedy(6) });
      // The write-through is asynchronous: wait for A to report it (a condition, not a time).
      for (let i = 0; i < 400 && (a.stats().prefixStore?.writes ?? 0) < 1; i++) await new Promise((r) => setTimeout(r, 25));
      expect(a.stats().prefixStore?.writes).toBeGreaterThanOrEqual(1);
      const fromB = await collect(b, { requestId: 'b', promptTokenIds: doc, sampling: greedy(6) });
      expect(fromB.cached).toBe(148);
      expect(fromB.tokens).toEqual(fromA.tokens);

      // A warm-up on A of another document: no token, the whole pages cached, on disk when it answers.
      const other = Array.from({ length: 203 }, (_, i) => (i * 17 + 5) % vocab);
      const warm = await collect(a, { requestId: 'w', promptTokenIds: other, sampling: greedy(1), prefillOnly: true });
      expect(warm).toMatchObject({ tokens: [], cached: 0, promptTokens: 200, finishReason: 'length' });
      const listed = await a.listPrefixCache(100);
      const key = prefixKeys(other, P, true)[49]!;
      expect(listed.find((e) => e.key === key)).toMatchObject({ numTokens: 200, inMemory: true, onDisk: true });
      const question = [...other.slice(0, 200), 9, 8, 7];
      const onB = await collect(b, { requestId: 'q', promptTokenIds: question, sampling: greedy(4) });
      expect(onB.cached).toBe(200);
      // Deleting it on B removes the file A wrote; A keeps its memory copy.
      expect(await b.deletePrefixCache(key)).toEqual({ memory: true, disk: true });
      expect((await a.listPrefixCache(100)).find((e) => e.key === key)).toMatchObject({ inMemory: true, onDisk: false });
      // A warm-up shorter than a page is refused.
      await expect(collect(a, { requestId: 'short', promptTokenIds: [1, 2, 3], sampling: greedy(1), prefillOnly: true })).rejects.toThrow(/at least one page/);
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });
});
