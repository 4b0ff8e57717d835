// A safetensors reader written against the format: an 8-byte little-endian header length N, then N
// bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {…}}`, then the
// data block (offsets are relative to its start). Single files and shards listed by
// `model.safetensors.index.json` (`weight_map`). Tensors are read on demand with positioned reads,
// converted to float32 chunk by chunk, so a tensor is never held twice and the file is never mapped.
import { closeSync, existsSync, fstatSync, openSync, readSync, readFileSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ModelLoadError } from '../errors.ts';
import type { Tensor32 } from './checkpoint.ts';

/** Element types we convert to float32. */
export type SupportedDtype = 'F32' | 'BF16' | 'F16';

const ITEM_BYTES: Record<string, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, U16: 2, U32: 4, U64: 8,
  F8_E4M3: 1, F8_E5M2: 1,
};

/** Upper bound on the JSON header; real ones are a few hundred KiB. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** Positioned reads are done in pieces of this many bytes (and Linux caps one read near 2 GiB). */
const READ_CHUNK_BYTES = 16 * 1024 * 1024;

export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** Path of the file holding it. */
  readonly file: string;
  /** Absolute byte offset of the first element in the file. */
  readonly fileOffset: number;
  readonly byteLength: number;
}

/** One parsed `.safetensors` file (header only; data is read on demand). */
export interface SafetensorsFile {
  readonly path: string;
  readonly fileBytes: number;
  /** The raw 8-byte length prefix plus JSON header, as stored (used for content hashing). */
  readonly headerBytes: Buffer;
  readonly metadata: Readonly<Record<string, string>>;
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
}

function fail(path: string, what: string): never {
  throw new ModelLoadError(`${basename(path)}: ${what}`);
}

function readExactly(fd: number, target: Uint8Array, position: number, path: string, what: string): void {
  let done = 0;
  while (done < target.length) {
    const want = Math.min(READ_CHUNK_BYTES, target.length - done);
    const got = readSync(fd, target, done, want, position + done);
    if (got === 0) fail(path, `file is truncated while reading ${what} (got ${done} of ${target.length} bytes)`);
    done += got;
  }
}

/** Parses the header of one safetensors file; checks every entry against the file size. */
export function openSafetensorsFile(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new ModelLoadError(`cannot open ${path}: ${(err as Error).message}`);
  }
  try {
    const fileBytes = fstatSync(fd).size;
    if (fileBytes < 8) fail(path, `file is truncated: ${fileBytes} bytes, shorter than the 8-byte header length`);
    const prefix = Buffer.alloc(8);
    readExactly(fd, prefix, 0, path, 'the header length');
    const headerLen = prefix.readBigUInt64LE(0);
    if (headerLen > BigInt(MAX_HEADER_BYTES)) fail(path, `header length ${headerLen} is implausible (bad file?)`);
    const n = Number(headerLen);
    if (8 + n > fileBytes) fail(path, `file is truncated: header of ${n} bytes does not fit in ${fileBytes} bytes`);
    const headerBytes = Buffer.alloc(8 + n);
    prefix.copy(headerBytes, 0);
    readExactly(fd, headerBytes.subarray(8), 8, path, 'the header');
    let header: unknown;
    try {
      header = JSON.parse(headerBytes.subarray(8).toString('utf8'));
    } catch (err) {
      fail(path, `header is not valid JSON: ${(err as Error).message}`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(path, 'header is not a JSON object');
    const dataStart = 8 + n;
    const dataBytes = fileBytes - dataStart;
    const entries = new Map<string, SafetensorsEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof value === 'object' && value !== null) metadata = value as Record<string, string>;
        continue;
      }
      entries.set(name, parseEntry(path, name, value, dataStart, dataBytes));
    }
    return { path, fileBytes, headerBytes, metadata: Object.freeze(metadata), entries };
  } finally {
    closeSync(fd);
  }
}

function parseEntry(path: string, name: string, value: unknown, dataStart: number, dataBytes: number): SafetensorsEntry {
  if (typeof value !== 'object' || value === null) fail(path, `tensor "${name}": header entry is not an object`);
  const v = value as Record<string, unknown>;
  const dtype = v['dtype'];
  const shape = v['shape'];
  const offsets = v['data_offsets'];
  if (typeof dtype !== 'string') fail(path, `tensor "${name}": missing "dtype"`);
  if (!Array.isArray(shape) || !shape.every((x) => Number.isInteger(x) && x >= 0)) {
    fail(path, `tensor "${name}": "shape" must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((x) => Number.isInteger(x) && x >= 0) || (offsets[1] as number) < (offsets[0] as number)
  ) {
    fail(path, `tensor "${name}": "data_offsets" must be [begin, end], got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  const item = ITEM_BYTES[dtype];
  const numel = (shape as number[]).reduce((a, b) => a * b, 1);
  if (item !== undefined && numel * item !== end - begin) {
    fail(path, `tensor "${name}": ${dtype}${JSON.stringify(shape)} needs ${numel * item} bytes, data_offsets span ${end - begin}`);
  }
  if (end > dataBytes) {
    fail(path, `file is truncated: tensor "${name}" ends at data byte ${end} but the data block has ${dataBytes} bytes`);
  }
  return { name, dtype, shape: Object.freeze([...(shape as number[])]), file: path, fileOffset: dataStart + begin, byteLength: end - begin };
}

/** bf16 bits → float32: the bf16 is the high half of the float32. */
export function bf16ToF32(bits: number): number {
  const buf = new Uint32Array([(bits & 0xffff) << 16]);
  return new Float32Array(buf.buffer)[0] as number;
}

/** IEEE half bits → number (exact; subnormals, ±Inf and NaN included). */
export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

let f16Table: Float32Array | null = null;
function f16Lut(): Float32Array {
  if (f16Table === null) {
    f16Table = new Float32Array(65536);
    for (let b = 0; b < 65536; b++) f16Table[b] = f16ToF32(b);
  }
  return f16Table;
}

/** Reads one tensor as float32, converting bf16/f16 piecewise. */
export function readSafetensorsEntry(entry: SafetensorsEntry): Tensor32 {
  const { dtype, name, file } = entry;
  if (dtype !== 'F32' && dtype !== 'BF16' && dtype !== 'F16') {
    throw new ModelLoadError(`tensor "${name}" in ${basename(file)} has dtype ${dtype}; supported: F32, BF16, F16`);
  }
  const numel = entry.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(numel);
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    throw new ModelLoadError(`cannot open ${file}: ${(err as Error).message}`);
  }
  try {
    if (fstatSync(fd).size < entry.fileOffset + entry.byteLength) {
      fail(file, `file is truncated: tensor "${name}" lies past the end of the file`);
    }
    if (dtype === 'F32') {
      // Little-endian host: the stored bytes are the Float32Array's bytes.
      readExactly(fd, new Uint8Array(out.buffer), entry.fileOffset, file, `tensor "${name}"`);
    } else {
      const out32 = new Uint32Array(out.buffer);
      const lut = dtype === 'F16' ? f16Lut() : null;
      const chunkElems = READ_CHUNK_BYTES / 2;
      const raw = new Uint16Array(Math.min(numel, chunkElems));
      const rawBytes = new Uint8Array(raw.buffer);
      for (let start = 0; start < numel; start += chunkElems) {
        const count = Math.min(chunkElems, numel - start);
        readExactly(fd, rawBytes.subarray(0, count * 2), entry.fileOffset + start * 2, file, `tensor "${name}"`);
        if (lut === null) {
          for (let i = 0; i < count; i++) out32[start + i] = (raw[i] as number) << 16;
        } else {
          for (let i = 0; i < count; i++) out[start + i] = lut[raw[i] as number] as number;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return { shape: entry.shape, data: out };
}

export const INDEX_FILE = 'model.safetensors.index.json';

/** All safetensors files of a checkpoint directory, and which file holds each tensor. */
export interface SafetensorsStore {
  readonly files: readonly SafetensorsFile[];
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
}

/**
 * Opens the weights of a directory: the files named by `model.safetensors.index.json` if present,
 * else `model.safetensors`, else every `*.safetensors` file. Throws ModelLoadError when there are none.
 */
export function openSafetensorsDir(dir: string): SafetensorsStore {
  const indexPath = join(dir, INDEX_FILE);
  let fileNames: string[];
  let weightMap: Record<string, string> | null = null;
  if (existsSync(indexPath)) {
    let index: unknown;
    try {
      index = JSON.parse(readFileSync(indexPath, 'utf8'));
    } catch (err) {
      throw new ModelLoadError(`${INDEX_FILE}: cannot parse: ${(err as Error).message}`);
    }
    const wm = (index as Record<string, unknown> | null)?.['weight_map'];
    if (typeof wm !== 'object' || wm === null) throw new ModelLoadError(`${INDEX_FILE}: missing "weight_map"`);
    weightMap = wm as Record<string, string>;
    fileNames = [...new Set(Object.values(weightMap))].sort();
  } else if (existsSync(join(dir, 'model.safetensors'))) {
    fileNames = ['model.safetensors'];
  } else {
    fileNames = listSafetensors(dir);
  }
  if (fileNames.length === 0) throw new ModelLoadError(`no *.safetensors files in ${dir}`);
  const files = fileNames.map((f) => openSafetensorsFile(join(dir, f)));
  const entries = new Map<string, SafetensorsEntry>();
  for (const file of files) {
    for (const [name, e] of file.entries) {
      if (entries.has(name)) throw new ModelLoadError(`tensor "${name}" is stored twice (${basename(file.path)})`);
      entries.set(name, e);
    }
  }
  if (weightMap !== null) {
    for (const [name, f] of Object.entries(weightMap)) {
      const e = entries.get(name);
      if (e === undefined) throw new ModelLoadError(`${INDEX_FILE}: tensor "${name}" is not in ${f}`);
      if (basename(e.file) !== f) throw new ModelLoadError(`${INDEX_FILE}: tensor "${name}" is listed in ${f} but stored in ${basename(e.file)}`);
    }
  }
  return { files, entries };
}

/** `*.safetensors` files of a directory, sorted; [] when the directory has none. */
export function listSafetensors(dir: string): string[] {
  try {
    return readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
  } catch {
    return [];
  }
}
