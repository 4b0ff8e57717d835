// Weight quantization for MatMulNBits (com.microsoft): a linear layer's weight W [N, K] (out × in,
// the checkpoint layout) is cut along K into blocks of QUANT_BLOCK values; each block keeps one fp32
// scale s = max|w| / Q and the codes q = round(w / s) ∈ [−Q, Q], Q = 2^(bits−1) − 1 (127 for 8 bits,
// 7 for 4 bits), stored unsigned as q + 2^(bits−1) (MatMulNBits' default zero point, so no
// zero-point tensor is written). Dequantized: w ≈ (code − zero) · s, |error| ≤ s/2. K that is not a
// multiple of the block is padded with zero codes in the last block.
//
// Layouts (what MatMulNBits reads): codes [N, ⌈K/QUANT_BLOCK⌉, QUANT_BLOCK·bits/8] uint8 — for 4 bits
// two codes a byte, the first in the low nibble — and scales [N · ⌈K/QUANT_BLOCK⌉] float32, row-major.

/** Values of K per scale. 32 is the block size onnxruntime's n-bit kernels are tuned for. */
export const QUANT_BLOCK = 32;

export type QuantBits = 4 | 8;

/** The stored code of 0: MatMulNBits' default zero point. */
export const zeroCode = (bits: QuantBits): number => 1 << (bits - 1);

/** The largest |q|: codes span [zero − Q, zero + Q] (symmetric; code 0 of 4-bit is unused). */
export const maxLevel = (bits: QuantBits): number => (1 << (bits - 1)) - 1;

export interface QuantizedBlocks {
  /** [N, blocksPerRow, QUANT_BLOCK·bits/8] packed codes. */
  readonly codes: Uint8Array;
  /** [N · blocksPerRow] fp32 scales. */
  readonly scales: Float32Array;
  readonly blocksPerRow: number;
}

export const blocksPerRow = (K: number): number => Math.ceil(K / QUANT_BLOCK);

/** Bytes of one block's codes. */
export const blockBytes = (bits: QuantBits): number => (QUANT_BLOCK * bits) / 8;

/**
 * Quantizes W [N, K] (row-major, one output row per N). A block of zeros gets scale 1 (any scale
 * decodes the zero code to 0; 1 keeps the tensor free of zeros that a kernel could divide by).
 * The caller refuses non-finite weights by name (GraphBuilder.quantizedWeight).
 */
export function quantize(w: Float32Array, N: number, K: number, bits: QuantBits): QuantizedBlocks {
  if (w.length !== N * K) throw new Error(`quantize: ${w.length} values, expected ${N}·${K}`);
  const nb = blocksPerRow(K);
  const Q = maxLevel(bits);
  const zero = zeroCode(bits);
  const codes = new Uint8Array(N * nb * blockBytes(bits));
  const scales = new Float32Array(N * nb);
  const block = new Uint8Array(QUANT_BLOCK);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < nb; b++) {
      const start = n * K + b * QUANT_BLOCK;
      const end = n * K + Math.min(K, (b + 1) * QUANT_BLOCK);
      let absMax = 0;
      for (let i = start; i < end; i++) absMax = Math.max(absMax, Math.abs(w[i] as number));
      // The scale is rounded to fp32 first and the codes divide by that rounded value, so the codes are
      // nearest for the scale onnxruntime actually multiplies by.
      const scale = Math.fround(absMax === 0 ? 1 : absMax / Q);
      scales[n * nb + b] = scale;
      block.fill(zero);
      for (let i = start; i < end; i++) block[i - start] = Math.min(Q, Math.max(-Q, Math.round((w[i] as number) / scale))) + zero;
      const out = (n * nb + b) * blockBytes(bits);
      if (bits === 8) codes.set(block, out);
      else for (let j = 0; j < QUANT_BLOCK / 2; j++) codes[out + j] = (block[2 * j] as number) | ((block[2 * j + 1] as number) << 4);
    }
  }
  return { codes, scales, blocksPerRow: nb };
}

/** The code of element `k` (0 ≤ k < QUANT_BLOCK·blocksPerRow) of row `n`, unpacked. */
export function codeAt(q: QuantizedBlocks, bits: QuantBits, n: number, k: number): number {
  const b = Math.floor(k / QUANT_BLOCK);
  const j = k % QUANT_BLOCK;
  const base = (n * q.blocksPerRow + b) * blockBytes(bits);
  if (bits === 8) return q.codes[base + j] as number;
  const byte = q.codes[base + (j >> 1)] as number;
  return (j & 1) === 0 ? byte & 15 : byte >> 4;
}
