// Shared by test/snapshot-store.test.ts and its child process: a snapshot expectation for files that
// hold one state array and no pages, and the keys the child writes.
import { createHash } from 'node:crypto';
import type { SnapshotExpectation } from '../../src/cache/snapshot-file.ts';

export function childExpectation(floats: number): SnapshotExpectation {
  return { modelIdentity: 'child-model', pageTokens: 64, arrays: [floats], floatsPerPage: [], pagesFor: () => [] };
}

/** A base64 sha256 digest, like the prefix-cache keys. */
export const childKey = (n: number): string => createHash('sha256').update(`child-${n}`).digest('base64');
