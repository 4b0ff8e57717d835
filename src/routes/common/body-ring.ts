// The bytes of large request bodies on their way from the HTTP thread to the prompt worker
// (./prompt-worker-client.ts → ./prompt-worker.ts): one ring of RING_BYTES in shared memory, instead of
// a fresh copy of every socket chunk. A fresh 64 KiB copy costs the HTTP thread its page faults
// (~0.3 ms a chunk on a VM; a socket read burst hands over up to 32 chunks at once) and counts as
// external memory until the next garbage collection, which a body of tens of MiB then turns into a
// full mark-compact of the heap (bench/event-loop-stall.ts); a copy into pages touched before is a
// memcpy (~10 µs). When the ring is full (the worker is busy with another body), a chunk goes as a
// copy of its own, as before.
//
// The HTTP thread writes, the worker reads. The worker reads regions in the order they were posted
// (one message port) and gives each back once decoded, so the bytes in use are always the RING_BYTES-
// modular range that ends where the writer stands: one shared count (bytes in use) is the whole state.
// The worker touches every page (with atomic no-op writes) before it sets the ready flag; the writer
// uses the ring only after that, so neither thread faults a page in while the other writes it.

/** Bytes of the ring: 128 socket chunks of 64 KiB. */
export const RING_BYTES = 8 << 20;

/** Header: [bytes in use, ready flag], Int32 each. */
const HEADER_BYTES = 8;
const USED = 0;
const READY = 1;
const PAGE_BYTES = 4096;

/** A contiguous part of the ring holding the next bytes of a body. */
export interface RingRegion {
  readonly start: number;
  readonly length: number;
}

export class BodyRing {
  readonly #bytes: Uint8Array;
  readonly #header: Int32Array;
  /** Writer only: where the next byte goes. */
  #writeAt = 0;

  /** A new ring, or the view of one made by the other thread (its `buffer`). */
  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(HEADER_BYTES + RING_BYTES)) {
    this.#header = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    this.#bytes = new Uint8Array(buffer, HEADER_BYTES);
  }

  /** Writer: copies `chunk` in and returns where it lies (two regions when it wraps), or null when the ring is not ready or has no room now. */
  write(chunk: Uint8Array): RingRegion[] | null {
    const n = chunk.length;
    const size = this.#bytes.length;
    if (Atomics.load(this.#header, READY) !== 1 || n > size - Atomics.load(this.#header, USED)) return null;
    const first = Math.min(n, size - this.#writeAt);
    this.#bytes.set(chunk.subarray(0, first), this.#writeAt);
    const regions: RingRegion[] = [{ start: this.#writeAt, length: first }];
    if (first < n) {
      this.#bytes.set(chunk.subarray(first), 0);
      regions.push({ start: 0, length: n - first });
    }
    this.#writeAt = (this.#writeAt + n) % size;
    Atomics.add(this.#header, USED, n);
    return regions;
  }

  /** Reader: the bytes of a region; valid until it is released. */
  view(region: RingRegion): Uint8Array {
    return this.#bytes.subarray(region.start, region.start + region.length);
  }

  /** Reader: gives a region's bytes back to the writer. */
  release(region: RingRegion): void {
    Atomics.sub(this.#header, USED, region.length);
  }

  /** Reader, once, before anything is written: faults every page in (an atomic add of 0 changes nothing), then lets the writer use the ring. */
  prepare(): void {
    const words = new Int32Array(this.buffer, HEADER_BYTES, Math.floor(this.#bytes.length / 4));
    for (let at = 0; at < words.length; at += PAGE_BYTES / 4) Atomics.add(words, at, 0);
    Atomics.store(this.#header, READY, 1);
  }
}
