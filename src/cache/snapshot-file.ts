// The bytes of one prefix-snapshot file (snapshot-store.ts writes and reads them). Generic: a header
// that says what the file holds, then a list of float32 arrays (the recurrent states) and the page
// blocks (KV pages) of one or more page groups (a sliding-window pool, a full-attention pool …), so a
// model with other state tensors (a conv state, a DeltaNet state) or more page groups needs no new
// format, only another layout.
//
//   offset  bytes
//   0       8     magic "SPKSNAP2"
//   8       4     u32 LE: header JSON bytes (J)
//   12      4     u32 LE: payload offset (a multiple of 64, so the payload can be viewed as float32 in place)
//   16      32    sha256 of bytes [48, end): header JSON, padding and payload
//   48      J     header JSON (SnapshotHeader)
//   …             zero padding
//   payload       float32 LE: arrays[0] … arrays[n-1], then blocks[0] … blocks[m-1] (group 0's pages,
//                 then group 1's …; header.groups says how many each has and its first logical page)
//
// A reader checks the magic, the checksum and every header field against what it expects (model
// identity, page size, key, token count = the key's prefix length, layout, first page); any
// difference makes the file a miss, never a restore (SnapshotFileError says which check failed).
// The checksum is computed in slices of HASH_SLICE_BYTES with a yield between them, so a 228 MiB
// SpikingBrain-7B snapshot never holds the thread for more than a few milliseconds at a time.
import { createHash } from 'node:crypto';

export const SNAPSHOT_MAGIC = 'SPKSNAP2';
export const SNAPSHOT_FORMAT_VERSION = 2;
/** Bytes before the header JSON (magic, lengths, checksum). */
export const SNAPSHOT_FIXED_BYTES = 48;
const FIXED_BYTES = SNAPSHOT_FIXED_BYTES;
const CHECKSUM_OFFSET = 16;
const PAYLOAD_ALIGN = 64;
/** Bytes hashed between two yields to the event loop (~2-3 ms of sha256). */
const HASH_SLICE_BYTES = 4 * 1024 * 1024;

/** Float lengths of what a snapshot holds: the state arrays, then the page blocks (all groups), in order. */
export interface SnapshotLayout {
  readonly arrays: readonly number[];
  readonly blocks: readonly number[];
}

export interface SnapshotHeader {
  readonly version: number;
  /** The model build that wrote it (built-model folder name: weights identity, builder, variant). */
  readonly modelIdentity: string;
  readonly pageTokens: number;
  /** Prefix length s: the state is the one after s tokens. */
  readonly numTokens: number;
  /** Prefix-cache key (hash chain) of those s tokens. */
  readonly key: string;
  /** Per page group: its first logical page and its number of blocks (they follow each other in `blocks`). */
  readonly groups: readonly PageRange[];
  readonly layout: SnapshotLayout;
}

/** Logical pages [firstPage, firstPage + numPages) of one page group. */
export interface PageRange {
  readonly firstPage: number;
  readonly numPages: number;
}

/** The pages of one group as a snapshot holds them. */
export interface PageGroupData {
  readonly firstPage: number;
  readonly blocks: readonly Float32Array[];
}

/** What a reader expects of a file: its model, page size and the layout for any prefix length. */
export interface SnapshotExpectation {
  readonly modelIdentity: string;
  readonly pageTokens: number;
  /** Float lengths of the state arrays (the same for every prefix). */
  readonly arrays: readonly number[];
  /** Per page group: floats of one of its page blocks. */
  readonly floatsPerPage: readonly number[];
  /** Per page group: the pages a snapshot of `numTokens` tokens holds. */
  pagesFor(numTokens: number): readonly PageRange[];
}

/** A decoded snapshot: views into the file's bytes (no copy). */
export interface SnapshotData {
  readonly numTokens: number;
  readonly arrays: readonly Float32Array[];
  /** Per page group: its first logical page and one view per page block. */
  readonly groups: readonly PageGroupData[];
  /** Bytes of the file. */
  readonly bytes: number;
}

/** Why a file was not accepted; `reason` is a metric label. */
export class SnapshotFileError extends Error {
  override readonly name = 'SnapshotFileError';
  constructor(
    readonly reason: 'format' | 'checksum' | 'header' | 'truncated',
    message: string,
  ) {
    super(message);
  }
}

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);
const alignUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/** Total bytes of a file with this header JSON and layout. */
function fileBytesFor(jsonBytes: number, layout: SnapshotLayout): { payloadOffset: number; bytes: number } {
  const payloadOffset = alignUp(FIXED_BYTES + jsonBytes, PAYLOAD_ALIGN);
  return { payloadOffset, bytes: payloadOffset + 4 * (sum(layout.arrays) + sum(layout.blocks)) };
}

/**
 * The file bytes of a snapshot, checksum not yet set (sealSnapshot sets it). The arrays and blocks
 * are copied exactly once, into the returned buffer, so the caller may reuse their memory at once.
 */
export function encodeSnapshot(
  header: Omit<SnapshotHeader, 'version' | 'layout' | 'groups'>,
  arrays: readonly Float32Array[],
  pageGroups: readonly PageGroupData[],
): Buffer {
  const blocks = pageGroups.flatMap((g) => g.blocks);
  const layout: SnapshotLayout = { arrays: arrays.map((a) => a.length), blocks: blocks.map((b) => b.length) };
  const groups: PageRange[] = pageGroups.map((g) => ({ firstPage: g.firstPage, numPages: g.blocks.length }));
  const json = Buffer.from(JSON.stringify({ version: SNAPSHOT_FORMAT_VERSION, ...header, groups, layout } satisfies SnapshotHeader), 'utf8');
  const { payloadOffset, bytes } = fileBytesFor(json.length, layout);
  // An ArrayBuffer of its own (not Node's pool): the payload offset is then aligned for Float32Array.
  const buf = Buffer.from(new ArrayBuffer(bytes));
  buf.write(SNAPSHOT_MAGIC, 0, 'latin1');
  buf.writeUInt32LE(json.length, 8);
  buf.writeUInt32LE(payloadOffset, 12);
  json.copy(buf, FIXED_BYTES);
  const floats = new Float32Array(buf.buffer, buf.byteOffset + payloadOffset, (bytes - payloadOffset) / 4);
  let at = 0;
  for (const a of [...arrays, ...blocks]) {
    floats.set(a, at);
    at += a.length;
  }
  return buf;
}

/** sha256 of buf[from, end), computed in slices with a yield between them. */
async function checksum(buf: Buffer, from: number): Promise<Buffer> {
  const h = createHash('sha256');
  for (let at = from; at < buf.length; at += HASH_SLICE_BYTES) {
    if (at > from) await new Promise<void>((resolve) => setImmediate(resolve));
    h.update(buf.subarray(at, Math.min(buf.length, at + HASH_SLICE_BYTES)));
  }
  return h.digest();
}

/** Writes the checksum into an encoded snapshot. */
export async function sealSnapshot(buf: Buffer): Promise<void> {
  (await checksum(buf, FIXED_BYTES)).copy(buf, CHECKSUM_OFFSET);
}

/** The header of a file's first bytes (at least FIXED_BYTES + its JSON), without checking the checksum. */
export function readSnapshotHeader(buf: Buffer): SnapshotHeader {
  if (buf.length < FIXED_BYTES || buf.toString('latin1', 0, SNAPSHOT_MAGIC.length) !== SNAPSHOT_MAGIC) {
    throw new SnapshotFileError('format', 'not a snapshot file of this format (magic)');
  }
  const jsonBytes = buf.readUInt32LE(8);
  if (FIXED_BYTES + jsonBytes > buf.length) throw new SnapshotFileError('truncated', 'the header is cut short');
  let parsed: unknown;
  try {
    parsed = JSON.parse(buf.toString('utf8', FIXED_BYTES, FIXED_BYTES + jsonBytes));
  } catch {
    throw new SnapshotFileError('header', 'the header is not JSON');
  }
  const h = parsed as Partial<SnapshotHeader> | null;
  const isInts = (xs: unknown): xs is number[] => Array.isArray(xs) && xs.every((x) => Number.isInteger(x) && x >= 0);
  if (
    h === null ||
    typeof h !== 'object' ||
    h.version !== SNAPSHOT_FORMAT_VERSION ||
    typeof h.modelIdentity !== 'string' ||
    typeof h.key !== 'string' ||
    !Number.isInteger(h.pageTokens) ||
    !Number.isInteger(h.numTokens) ||
    !Array.isArray(h.groups) ||
    !h.groups.every((g: unknown) => typeof g === 'object' && g !== null && Number.isInteger((g as PageRange).firstPage) && Number.isInteger((g as PageRange).numPages) && (g as PageRange).numPages >= 0) ||
    typeof h.layout !== 'object' ||
    h.layout === null ||
    !isInts(h.layout.arrays) ||
    !isInts(h.layout.blocks)
  ) {
    throw new SnapshotFileError('header', 'the header lacks a field or has one of the wrong type');
  }
  return h as SnapshotHeader;
}

/** Bytes the file of a snapshot of `numTokens` tokens under `key` must have (for a size check before reading). */
export function expectedFileBytes(expect: SnapshotExpectation, key: string, numTokens: number, modelIdentity = expect.modelIdentity): number {
  const groups = expect.pagesFor(numTokens);
  const header: SnapshotHeader = {
    version: SNAPSHOT_FORMAT_VERSION,
    modelIdentity,
    pageTokens: expect.pageTokens,
    numTokens,
    key,
    groups,
    layout: { arrays: expect.arrays, blocks: groups.flatMap((g, i) => Array.from({ length: g.numPages }, () => expect.floatsPerPage[i] ?? 0)) },
  };
  return fileBytesFor(Buffer.byteLength(JSON.stringify(header), 'utf8'), header.layout).bytes;
}

const sameList = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * Checks a whole file against what the reader expects of `key` (a prefix of `numTokens` tokens) and
 * returns views of its arrays and blocks; throws SnapshotFileError naming the first failed check.
 * `buf` must start at a 4-byte aligned offset of its ArrayBuffer (the store reads into its own).
 */
export async function decodeSnapshot(buf: Buffer, expect: SnapshotExpectation, key: string, numTokens: number): Promise<SnapshotData> {
  const header = readSnapshotHeader(buf);
  const payloadOffset = buf.readUInt32LE(12);
  const { payloadOffset: wantOffset, bytes } = fileBytesFor(buf.readUInt32LE(8), header.layout);
  if (payloadOffset !== wantOffset) throw new SnapshotFileError('header', 'the payload offset does not match the header');
  if (buf.length < bytes) throw new SnapshotFileError('truncated', `the file has ${buf.length} bytes; its header describes ${bytes}`);
  if (buf.length > bytes) throw new SnapshotFileError('format', `the file has ${buf.length} bytes; its header describes ${bytes}`);
  const stored = buf.subarray(CHECKSUM_OFFSET, FIXED_BYTES);
  if (!(await checksum(buf, FIXED_BYTES)).equals(stored)) throw new SnapshotFileError('checksum', 'the checksum does not match the contents');
  const want = expect.pagesFor(numTokens);
  const wantBlocks = want.flatMap((g, i) => Array.from({ length: g.numPages }, () => expect.floatsPerPage[i] ?? 0));
  const sameGroups = header.groups.length === want.length && header.groups.every((g, i) => g.firstPage === want[i]?.firstPage && g.numPages === want[i]?.numPages);
  const mismatch =
    header.modelIdentity !== expect.modelIdentity
      ? `model ${header.modelIdentity.slice(0, 16)}…, not this one`
      : header.pageTokens !== expect.pageTokens
        ? `page size ${header.pageTokens}, not ${expect.pageTokens}`
        : header.key !== key
          ? 'another prefix key'
          : header.numTokens !== numTokens
            ? `${header.numTokens} tokens, but its key names a prefix of ${numTokens}`
            : !sameList(header.layout.arrays, expect.arrays)
              ? 'another state layout'
              : !sameGroups
                ? `page groups ${JSON.stringify(header.groups)}, not ${JSON.stringify(want)}`
                : !sameList(header.layout.blocks, wantBlocks)
                  ? 'another page layout'
                  : null;
  if (mismatch !== null) throw new SnapshotFileError('header', `the header says ${mismatch}`);
  if ((buf.byteOffset + payloadOffset) % 4 !== 0) throw new Error('snapshot buffer is not 4-byte aligned'); // a caller bug
  const views = (lengths: readonly number[], from: number): Float32Array[] => {
    let at = buf.byteOffset + from;
    return lengths.map((n) => {
      const v = new Float32Array(buf.buffer, at, n);
      at += 4 * n;
      return v;
    });
  };
  const arrays = views(header.layout.arrays, payloadOffset);
  const blocks = views(header.layout.blocks, payloadOffset + 4 * sum(header.layout.arrays));
  let at = 0;
  const groups = header.groups.map((g) => ({ firstPage: g.firstPage, blocks: blocks.slice(at, (at += g.numPages)) }));
  return { numTokens, arrays, groups, bytes: buf.length };
}
