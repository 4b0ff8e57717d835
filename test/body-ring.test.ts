// The shared ring large bodies cross to the prompt worker through (src/routes/common/body-ring.ts): a
// writer and a reader that lags behind, over a small ring, with chunks that wrap, fill it and fall back
// to copies of their own: the reader, taking messages in order, gets back every byte in order; nothing
// is written before the reader has prepared the ring.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BodyRing, type RingRegion } from '../src/routes/common/body-ring.ts';

/** A ring of `bytes` (the header is 8 bytes), seen from both sides. */
function smallRing(bytes: number): { writer: BodyRing; reader: BodyRing } {
  const writer = new BodyRing(new SharedArrayBuffer(8 + bytes));
  return { writer, reader: new BodyRing(writer.buffer) };
}

describe('BodyRing', () => {
  it('takes nothing before the reader prepared it, then wraps and refuses what does not fit', () => {
    const { writer, reader } = smallRing(10);
    const bytes = (n: number, from: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => from + i);
    expect(writer.write(bytes(4, 0))).toBeNull();
    reader.prepare();
    const a = writer.write(bytes(6, 0)) as RingRegion[];
    expect(a).toEqual([{ start: 0, length: 6 }]);
    expect(writer.write(bytes(5, 6))).toBeNull(); // 4 free
    const b = writer.write(bytes(4, 6)) as RingRegion[];
    expect(b).toEqual([{ start: 6, length: 4 }]);
    expect(Array.from(reader.view(a[0] as RingRegion))).toEqual([0, 1, 2, 3, 4, 5]);
    reader.release(a[0] as RingRegion);
    const c = writer.write(bytes(5, 10)) as RingRegion[]; // wraps: nothing was free at the end
    expect(c).toEqual([{ start: 0, length: 5 }]);
    reader.release(b[0] as RingRegion);
    expect(writer.write(bytes(4, 15))).toEqual([{ start: 5, length: 4 }]);
    reader.release(c[0] as RingRegion);
    const e = writer.write(bytes(3, 19)) as RingRegion[]; // wraps: one byte at the end, two at the start
    expect(e).toEqual([
      { start: 9, length: 1 },
      { start: 0, length: 2 },
    ]);
    expect(e.flatMap((r) => Array.from(reader.view(r)))).toEqual([19, 20, 21]);
  });

  it('a lagging reader gets every byte back in order, through the ring or as copies', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 64 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 3 })), { maxLength: 60 }),
        (ringBytes, steps) => {
          const { writer, reader } = smallRing(ringBytes);
          reader.prepare();
          const sent: number[] = [];
          const queue: ({ regions: RingRegion[] } | { copy: Uint8Array })[] = [];
          const got: number[] = [];
          const readOne = (): void => {
            const msg = queue.shift();
            if (msg === undefined) return;
            if ('copy' in msg) got.push(...msg.copy);
            else
              for (const r of msg.regions) {
                got.push(...reader.view(r));
                reader.release(r);
              }
          };
          let next = 0;
          for (const [length, reads] of steps) {
            const chunk = Uint8Array.from({ length }, () => next++ % 251);
            sent.push(...chunk);
            const regions = writer.write(chunk);
            queue.push(regions === null ? { copy: chunk.slice() } : { regions });
            for (let i = 0; i < reads; i++) readOne();
          }
          while (queue.length > 0) readOne();
          expect(got).toEqual(sent);
        },
      ),
      { numRuns: 300 },
    );
  });
});
