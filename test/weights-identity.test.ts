// Model identity from the whole weight files (src/engine/model/weights-identity.ts): a fine-tune that
// keeps the first and last MiB of its weight file is a different model (different built-graph folder,
// hence different prefix-snapshot folder); the digests are remembered by path + size + mtime, so a
// second start does not hash the weights again, and a changed file is hashed again.
import { cpSync, mkdtempSync, openSync, readFileSync, readSync, closeSync, rmSync, statSync, utimesSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/engine/model/hf-checkpoint.ts';
import { BUILDER_VERSION, checkpointIdentity, ensureBuiltModel } from '../src/engine/model/onnx/build-cache.ts';
import { fileSha256, IDENTITY_CACHE_FILE, weightsIdentity } from '../src/engine/model/weights-identity.ts';
import { makeRandomTinyCheckpoint } from './helpers/checkpoint-writer.ts';

const root = mkdtempSync(join(tmpdir(), 'spikeserve-identity-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const MIB = 1024 * 1024;

function bytesAt(path: string, position: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, position);
    return buf;
  } finally {
    closeSync(fd);
  }
}

describe('model identity', () => {
  // vocab 8192 × hidden 64 fp32: embeddings and lm_head are 2 MiB each, so the file is > 4 MiB.
  const base = makeRandomTinyCheckpoint(join(root, 'base'), { numLayers: 2, vocabSize: 8192, headDim: 16, numHeads: 4, seed: 3 });
  const weightFile = join(base.dir, 'model.safetensors');

  /** A copy of the base checkpoint with one float in the middle of its weight file changed, same size, same mtime. */
  function fineTune(name: string): string {
    const dir = join(root, name);
    cpSync(base.dir, dir, { recursive: true });
    const file = join(dir, 'model.safetensors');
    const { size, mtime } = statSync(file);
    const middle = Math.floor(size / 2 / 4) * 4;
    const old = bytesAt(file, middle, 4).readFloatLE(0);
    const patch = Buffer.alloc(4);
    patch.writeFloatLE(old + 0.5, 0);
    const fd = openSync(file, 'r+');
    writeSync(fd, patch, 0, 4, middle);
    closeSync(fd);
    utimesSync(file, mtime, mtime);
    return dir;
  }

  it('a fine-tune that keeps the first and last MiB of its weight file gets another identity and another built model', () => {
    const tuned = fineTune('tuned');
    const tunedFile = join(tuned, 'model.safetensors');
    const size = statSync(weightFile).size;
    expect(size).toBeGreaterThan(3 * MIB);
    expect(statSync(tunedFile).size).toBe(size);
    // What the old edge hash read is identical: first and last MiB, header, size, config.
    expect(bytesAt(tunedFile, 0, MIB).equals(bytesAt(weightFile, 0, MIB))).toBe(true);
    expect(bytesAt(tunedFile, size - MIB, MIB).equals(bytesAt(weightFile, size - MIB, MIB))).toBe(true);
    expect(openCheckpoint(tuned).hash).toBe(openCheckpoint(base.dir).hash); // the layout fingerprint cannot tell
    expect(fileSha256(tunedFile)).not.toBe(fileSha256(weightFile));

    const cacheDir = join(root, 'built');
    const a = checkpointIdentity(openCheckpoint(base.dir), cacheDir);
    const b = checkpointIdentity(openCheckpoint(tuned), cacheDir);
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(b).not.toBe(a);
    const graph = { fusedOps: true, glaSubChunk: 16 };
    const pathA = ensureBuiltModel(openCheckpoint(base.dir), graph, { cacheDir });
    const pathB = ensureBuiltModel(openCheckpoint(tuned), graph, { cacheDir });
    expect(pathA).toBe(join(cacheDir, `${a}-${BUILDER_VERSION}-fused`, 'model.onnx'));
    expect(pathB).toBe(join(cacheDir, `${b}-${BUILDER_VERSION}-fused`, 'model.onnx'));
  });

  it('remembers digests by path, size and mtime: a restart hashes nothing, a changed file is hashed again', () => {
    const cacheDir = join(root, 'identity-cache');
    const configPath = join(base.dir, 'config.json');
    const hashed: string[] = [];
    const first = weightsIdentity(configPath, [weightFile], { cacheDir, onHash: (p) => hashed.push(p) });
    expect(hashed).toHaveLength(1);
    const cache = JSON.parse(readFileSync(join(cacheDir, IDENTITY_CACHE_FILE), 'utf8')) as Record<string, { sha256: string }>;
    expect(Object.values(cache).map((e) => e.sha256)).toEqual([fileSha256(weightFile)]);
    // A second process reads the cache file: same identity, nothing hashed.
    expect(weightsIdentity(configPath, [weightFile], { cacheDir, onHash: (p) => hashed.push(p) })).toBe(first);
    expect(hashed).toHaveLength(1);
    // The cache is trusted only for the same size and mtime: touching the file rehashes it (same content, same identity).
    const later = new Date(statSync(weightFile).mtimeMs + 5000);
    utimesSync(weightFile, later, later);
    expect(weightsIdentity(configPath, [weightFile], { cacheDir, onHash: (p) => hashed.push(p) })).toBe(first);
    expect(hashed).toHaveLength(2);
    // Without a cache folder every call hashes.
    expect(weightsIdentity(configPath, [weightFile], { onHash: (p) => hashed.push(p) })).toBe(first);
    expect(hashed).toHaveLength(3);
  });

  it('config.json and the shard order are part of the identity', () => {
    const configPath = join(base.dir, 'config.json');
    const other = join(root, 'config-other.json');
    cpSync(configPath, other);
    const fd = openSync(other, 'a');
    writeSync(fd, '\n');
    closeSync(fd);
    expect(weightsIdentity(other, [weightFile])).not.toBe(weightsIdentity(configPath, [weightFile]));
    const second = join(root, 'second.safetensors');
    cpSync(join(fineTune('shards'), 'model.safetensors'), second);
    expect(weightsIdentity(configPath, [weightFile, second])).not.toBe(weightsIdentity(configPath, [second, weightFile]));
  });
});
