// Scratch: a reused typed array that hands out views of the length a step needs, for buffers whose
// size follows the batch (gathered windows, batched states, RoPE tables and masks). It grows when a
// view does not fit, and shrinks again after a burst (see below), so a spike of large batches does
// not hold its memory forever.
/** Views requested between two checks of whether a scratch buffer should shrink. */
const SHRINK_CHECK_VIEWS = 256;

/**
 * A reused Float32Array / Int32Array: views of the requested length are handed out, and the array
 * grows when one does not fit. A burst of large batches (64 decodes gather 64 windows: 42 MiB at the
 * default model) would otherwise hold its peak forever: every SHRINK_CHECK_VIEWS views, an array more
 * than twice the largest view since the last check is replaced by one of that size. `generation`
 * counts replacements (after one, earlier contents are gone).
 */
export class Scratch<A extends Float32Array | Int32Array | Uint8Array> {
  private data: A;
  private peakLength = 0;
  private viewsSinceCheck = 0;
  generation = 0;

  constructor(private readonly make: (length: number) => A) {
    this.data = make(0);
  }

  view(length: number): A {
    this.peakLength = Math.max(this.peakLength, length);
    if (++this.viewsSinceCheck >= SHRINK_CHECK_VIEWS) {
      if (this.data.length > 2 * this.peakLength) this.replace(this.peakLength);
      this.viewsSinceCheck = 0;
      this.peakLength = length;
    }
    if (this.data.length < length) this.replace(Math.max(length, Math.ceil(this.data.length * 1.5)));
    return this.data.subarray(0, length) as A;
  }

  private replace(length: number): void {
    this.data = this.make(length);
    this.generation++;
  }
}

export const f32Scratch = (): Scratch<Float32Array> => new Scratch((n) => new Float32Array(n));
export const i32Scratch = (): Scratch<Int32Array> => new Scratch((n) => new Int32Array(n));

export const u8Scratch = (): Scratch<Uint8Array> => new Scratch((n) => new Uint8Array(n));
