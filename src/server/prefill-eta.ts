// The time a prompt's prefill still needs, from the rate observed so far. The engine reports
// progress (prompt tokens in the sequence, cached ones included, and the prompt's length) at most
// every 250 ms, after a prefill chunk. The rate is measured from the first report on:
//
//   rate = (processed_now − processed_first) / (t_now − t_first)      tokens per second
//   eta  = (total − processed_now) / rate                             seconds
//
// so neither the time the request waited in the queue nor the tokens restored at once from a
// prefix snapshot (both before the first report) pass for prefill speed. Until a second report
// shows tokens computed after the first, there is no rate and the ETA is null (unknown).

export class PrefillEta {
  #first: { readonly processedTokens: number; readonly seconds: number } | null = null;

  /** Records a report at `seconds` (any monotonic clock); returns the ETA in seconds, or null. */
  observe(processedTokens: number, totalTokens: number, seconds: number): number | null {
    const first = this.#first;
    if (first === null) {
      this.#first = { processedTokens, seconds };
      return null;
    }
    const tokens = processedTokens - first.processedTokens;
    const elapsedSeconds = seconds - first.seconds;
    if (tokens <= 0 || elapsedSeconds <= 0) return null;
    return Math.max(0, totalTokens - processedTokens) / (tokens / elapsedSeconds);
  }
}
