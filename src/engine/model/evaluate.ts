// Scoring a text the model was given whole: from the logits of every position (prefill with
// allLogits), the negative log-likelihood of each next token and the model's most likely token
// there. Used by the quality checks of the default model, of quantized weights and by bench/weights.ts.

export interface NextTokenScore {
  /** Mean over positions 0…n−2 of −log p(ids[t+1] | ids[0..t]), in nats. */
  readonly meanNll: number;
  /** Sum of the same, in nats. */
  readonly totalNll: number;
  /** The most likely next token at each position 0…n−2 (ties: the lowest id). */
  readonly argmax: readonly number[];
}

/** `logits` is [n, V] row-major for the n tokens of `ids`. */
export function scoreNextTokens(logits: Float32Array, ids: readonly number[], V: number): NextTokenScore {
  if (logits.length !== ids.length * V) throw new Error(`scoreNextTokens: ${logits.length} logits for ${ids.length} tokens × ${V}`);
  let total = 0;
  const argmax: number[] = [];
  for (let t = 0; t + 1 < ids.length; t++) {
    const row = logits.subarray(t * V, (t + 1) * V);
    let max = -Infinity;
    let best = 0;
    for (let v = 0; v < V; v++) {
      const x = row[v] as number;
      if (x > max) {
        max = x;
        best = v;
      }
    }
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp((row[v] as number) - max);
    total += max + Math.log(sum) - (row[ids[t + 1] ?? 0] as number);
    argmax.push(best);
  }
  return { meanNll: total / Math.max(1, ids.length - 1), totalNll: total, argmax };
}
