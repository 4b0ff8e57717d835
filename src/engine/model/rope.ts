// Rotary position embedding angles, shared by the graph (which computes them for a chunk from its
// positions) and the Model (which computes them in JS for the decode graph, one position per row):
//   inv_freq_i = θ^(−2i/d), angle(p, i) = p · inv_freq_i  (float64: exact enough for p up to 2^24 and more),
//   cos/sin rounded to float32 only at the end, so both paths give the same float32 tables.

/** inv_freq_i = θ^(−2i/d) for i = 0 … d/2 − 1, in float64. */
export function ropeInverseFrequencies(theta: number, headDim: number): Float64Array {
  return Float64Array.from({ length: headDim / 2 }, (_, i) => Math.pow(theta, (-2 * i) / headDim));
}

/**
 * cos and sin [n, d/2] (row r = position positions[r]) into `cos` and `sin` (float32, at least
 * n · d/2 long), from float64 angles.
 */
export function writeRopeTables(positions: ArrayLike<number>, n: number, invFreq: Float64Array, cos: Float32Array, sin: Float32Array): void {
  const half = invFreq.length;
  for (let r = 0; r < n; r++) {
    const p = positions[r] as number;
    for (let i = 0; i < half; i++) {
      const angle = p * (invFreq[i] as number);
      cos[r * half + i] = Math.cos(angle);
      sin[r * half + i] = Math.sin(angle);
    }
  }
}
