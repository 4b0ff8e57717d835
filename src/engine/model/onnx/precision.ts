// IEEE 754 half precision (fp16) for weights stored on the GPU path: fp32 → fp16 with
// round-to-nearest-even (subnormals kept, |x| ≥ 65520 → ±inf, NaN stays NaN), and fp16 → fp32.
//
// fp16 bits: s eeeee mmmmmmmmmm, value (−1)^s · 2^(e−15) · 1.m (e = 1…30), (−1)^s · 2^−14 · 0.m (e = 0).
// fp32 bits: s eeeeeeee m×23, bias 127. A normal fp32 with exponent E maps to fp16 exponent E − 112.
import { ModelLoadError } from '../../errors.ts';

/** The largest finite fp16 value. */
export const FLOAT16_MAX = 65504;

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** fp32 bits (as an unsigned 32-bit integer) → fp16 bits, round to nearest, ties to even. */
export function float32BitsToFloat16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const abs = bits & 0x7fffffff;
  if (abs >= 0x7f800000) {
    // inf stays inf; NaN stays a (quiet) NaN.
    return abs === 0x7f800000 ? sign | 0x7c00 : sign | 0x7e00;
  }
  // 65520 = 65504 + half an ulp: ties go to the even neighbour, which is 2^16 = inf.
  if (abs >= 0x477ff000) return sign | 0x7c00;
  if (abs >= 0x38800000) {
    // Normal fp16: rebias the exponent (−112 << 10 after the shift) and round away 13 mantissa bits.
    const rest = abs & 0x1fff;
    let h = (abs >>> 13) - (112 << 10);
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // a carry into the exponent is right
    return sign | h;
  }
  // Subnormal fp16 (or zero): the value in units of 2^−24 is m · 2^(E−126) with the implicit bit in m.
  // |x| ≤ 2^−25 (half of the smallest subnormal) rounds to 0 (the tie goes to even, 0).
  if (abs <= 0x33000000) return sign;
  const exp = abs >>> 23; // 102 … 112 here
  const mant = (abs & 0x7fffff) | 0x800000;
  const shift = 126 - exp; // 14 … 24
  let h = mant >>> shift;
  const rest = mant & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  if (rest > halfway || (rest === halfway && (h & 1) === 1)) h++; // may carry into the smallest normal: right
  return sign | h;
}

/** One number → fp16 bits (the number is first rounded to fp32, as every weight already is). */
export function float32ToFloat16Bits(x: number): number {
  f32[0] = x;
  return float32BitsToFloat16Bits(u32[0] ?? 0);
}

/** fp16 bits → the exact number they encode. */
export function float16BitsToNumber(h: number): number {
  const sign = (h & 0x8000) !== 0 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/** fp32 array → fp16 bits, element by element (round to nearest even). */
export function float32ArrayToFloat16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = float32BitsToFloat16Bits(bits[i] ?? 0);
  return out;
}

/** fp16 bits → fp32 array (exact). */
export function float16ArrayToFloat32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = float16BitsToNumber(src[i] ?? 0);
  return out;
}

/**
 * A weight for an fp16 initializer. A finite value beyond ±65504 would become ±inf and silently
 * break the model, so it is refused with the tensor's name instead.
 */
export function weightToFloat16(name: string, data: Float32Array): Uint16Array {
  // One pass (this runs over every weight of a GPU build: 7.6 G values for SpikingBrain-7B). A result
  // of ±inf from a finite input (fp32 exponent not all ones) is an overflow.
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < out.length; i++) {
    const b = bits[i] ?? 0;
    const h = float32BitsToFloat16Bits(b);
    if ((h & 0x7fff) === 0x7c00 && (b & 0x7f800000) !== 0x7f800000) {
      throw new ModelLoadError(
        `weight "${name}" holds ${data[i]}, beyond the fp16 range ±${FLOAT16_MAX}: it cannot be stored in fp16 for the GPU path; use --device cpu`,
      );
    }
    out[i] = h;
  }
  return out;
}
