// JSON answers too large to serialize in one block on the HTTP thread (a completion's echo + logprobs,
// /detokenize's text, /tokenize's ids), written as a stream of slices: the same bytes as
// JSON.stringify(value) (and as the response schema's serializer, for an answer built in the schema's
// key order: test/server-large-answers.test.ts checks both), made about SLICE_CHARS characters at a
// time, one slice per turn of the event loop. Serializing a 2 MiB answer at once — and the schema
// serializer's union checks on every logprob — held the thread ~0.1-0.2 s (bench/event-loop-stall.ts).
import { Readable } from 'node:stream';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { FastifyReply } from 'fastify';

/** Characters of JSON made per turn of the event loop (~0.5-2 ms of work). */
export const SLICE_CHARS = 128 * 1024;

/**
 * Answers of more JSON values than this (estimated by the route: a logprob entry is a few) are written
 * in slices; smaller ones go through the response schema's serializer (~1 µs a value on a busy core).
 */
export const SLICED_ANSWER_MIN_VALUES = 8192;

/** A container or long string being written: what is left of it. */
type Frame =
  | { readonly kind: 'array'; readonly items: readonly unknown[]; at: number }
  | { readonly kind: 'object'; readonly obj: Readonly<Record<string, unknown>>; readonly keys: readonly string[]; at: number; wrote: boolean }
  | { readonly kind: 'string'; readonly pieces: Iterator<string> };

/** True for the values JSON.stringify leaves out of an object (and writes as null in an array). */
function isOmitted(value: unknown): boolean {
  return value === undefined || typeof value === 'function' || typeof value === 'symbol';
}

/**
 * A long string's JSON in pieces of at most `maxChars` characters of input each. A cut never falls
 * between the two halves of a surrogate pair: JSON.stringify keeps a pair as it is but escapes a lone
 * half (\udXXX), so the pieces, unquoted and joined, are exactly JSON.stringify(text).
 */
export function* stringJsonPieces(text: string, maxChars: number): Generator<string> {
  if (text.length <= maxChars) {
    yield JSON.stringify(text);
    return;
  }
  yield '"';
  for (let at = 0; at < text.length; ) {
    let end = Math.min(at + maxChars, text.length);
    const last = text.charCodeAt(end - 1);
    // keep a high surrogate with the low one after it (in this piece when the piece would be empty)
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end += end - 1 > at ? -1 : 1;
    yield JSON.stringify(text.slice(at, end)).slice(1, -1);
    at = end;
  }
  yield '"';
}

/**
 * JSON.stringify(value) in slices of about `sliceChars` characters (a string longer than a slice is cut
 * too). For plain data — what the routes build: objects, arrays, strings, numbers, booleans, null — with
 * no toJSON methods and no cycles. Objects' keys come in their own order (Object.keys, as JSON.stringify).
 */
export function* jsonSlices(value: unknown, sliceChars = SLICE_CHARS): Generator<string> {
  if (isOmitted(value)) return; // JSON.stringify(undefined) is undefined: nothing to write
  let out = '';
  const stack: Frame[] = [];
  // Writes one value that is not omitted: a primitive or short string at once, the rest through a frame.
  const write = (v: unknown): void => {
    if (typeof v === 'string') {
      if (v.length <= sliceChars) out += JSON.stringify(v);
      else stack.push({ kind: 'string', pieces: stringJsonPieces(v, sliceChars) });
    } else if (typeof v === 'number') {
      out += Number.isFinite(v) ? String(v) : 'null';
    } else if (typeof v === 'boolean') {
      out += v ? 'true' : 'false';
    } else if (v === null) {
      out += 'null';
    } else if (typeof v === 'bigint') {
      throw new TypeError('a BigInt cannot be written as JSON');
    } else if (Array.isArray(v)) {
      out += '[';
      stack.push({ kind: 'array', items: v, at: 0 });
    } else {
      out += '{';
      stack.push({ kind: 'object', obj: v as Record<string, unknown>, keys: Object.keys(v as object), at: 0, wrote: false });
    }
  };
  write(value);
  for (;;) {
    if (out.length >= sliceChars) {
      yield out;
      out = '';
    }
    const top = stack[stack.length - 1];
    if (top === undefined) break;
    if (top.kind === 'string') {
      const next = top.pieces.next();
      if (next.done === true) stack.pop();
      else out += next.value;
    } else if (top.kind === 'array') {
      if (top.at === top.items.length) {
        out += ']';
        stack.pop();
        continue;
      }
      if (top.at > 0) out += ',';
      const item = top.items[top.at++];
      if (isOmitted(item)) out += 'null';
      else write(item);
    } else {
      if (top.at === top.keys.length) {
        out += '}';
        stack.pop();
        continue;
      }
      const key = top.keys[top.at++] as string;
      const v = top.obj[key];
      if (isOmitted(v)) continue;
      out += `${top.wrote ? ',' : ''}${JSON.stringify(key)}:`;
      top.wrote = true;
      write(v);
    }
  }
  if (out !== '') yield out;
}

/** The slices of `pieces`, one per turn of the event loop, as a byte stream. */
export function sliceStream(pieces: Iterable<string>): Readable {
  async function* turns(): AsyncGenerator<string> {
    let first = true;
    for (const piece of pieces) {
      if (!first) await nextTurn();
      first = false;
      yield piece;
    }
  }
  return Readable.from(turns(), { objectMode: false });
}

/** Answers with `value` as JSON written in slices (the content type Fastify gives serialized JSON). */
export function sendJsonSlices(reply: FastifyReply, value: unknown): FastifyReply {
  return reply.type('application/json; charset=utf-8').send(sliceStream(jsonSlices(value)));
}
