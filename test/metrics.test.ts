// ServerMetrics fed with synthetic TokenEvent sequences and a fake clock: no engine, no HTTP.
import { describe, expect, it } from 'vitest';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import { ServerMetrics } from '../src/server/metrics.ts';
import type { EngineStats, FinishReason, TokenEvent } from '../src/engine/types.ts';

const MODEL = 'tiny-gla';

/** A sample as getMetricsAsJSON gives it (histograms add the series name). */
type Sample = MetricValue<string> & { readonly metricName?: string };

class FakeClock {
  seconds = 1000;
  readonly now = (): number => this.seconds;
  advance(seconds: number): void {
    this.seconds += seconds;
  }
}

function make(clock = new FakeClock()): { m: ServerMetrics; clock: FakeClock } {
  return { m: new ServerMetrics(MODEL, { collectDefault: false, now: clock.now }), clock };
}

async function metric(m: ServerMetrics, suffix: string): Promise<MetricObjectWithValues<Sample>> {
  const all = (await m.registry.getMetricsAsJSON()) as MetricObjectWithValues<Sample>[];
  const found = all.find((x) => x.name === `spikeserve:${suffix}`);
  if (found === undefined) throw new Error(`metric spikeserve:${suffix} not registered`);
  return found;
}

/** Value of a sample of `suffix`; for histograms pick e.g. `_count` / `_sum` by metricName. */
async function value(m: ServerMetrics, suffix: string, labels: Record<string, string> = {}, metricName?: string): Promise<number> {
  const mt = await metric(m, suffix);
  const want = { model_name: MODEL, ...labels };
  const hit = mt.values.find(
    (v) =>
      (metricName === undefined || v.metricName === `spikeserve:${suffix}${metricName}`) &&
      Object.entries(want).every(([k, val]) => v.labels[k] === val),
  );
  if (hit === undefined) throw new Error(`no sample of ${suffix}${metricName ?? ''} with ${JSON.stringify(want)}`);
  return hit.value;
}

const histCount = (m: ServerMetrics, suffix: string): Promise<number> => value(m, suffix, {}, '_count');
const histSum = (m: ServerMetrics, suffix: string): Promise<number> => value(m, suffix, {}, '_sum');

const token = (tokenId: number): TokenEvent => ({ type: 'token', tokenId });
function done(finishReason: FinishReason, promptTokens: number, completionTokens: number, cachedTokens = 0): TokenEvent {
  return {
    type: 'done',
    finishReason,
    stopTokenId: null,
    promptTokens,
    completionTokens,
    cachedTokens,
    timing: { queueSeconds: 0.5, prefillSeconds: 2, decodeSeconds: 3 },
  };
}

/** Runs one request: `gaps[i]` seconds pass before token i, then 'done'. */
function runRequest(m: ServerMetrics, clock: FakeClock, promptTokens: number, gaps: number[], reason: FinishReason = 'stop'): void {
  const r = m.trackRequest();
  for (const [i, gap] of gaps.entries()) {
    clock.advance(gap);
    r.onEvent(token(i));
  }
  clock.advance(0.25);
  r.onEvent(done(reason, promptTokens, gaps.length));
  r.onFinish();
}

describe('ServerMetrics', () => {
  it('keeps the _total suffix for counters: no gauge or histogram ends in _total, Node defaults included', async () => {
    const m = new ServerMetrics(MODEL);
    const metrics = await m.registry.getMetricsAsJSON();
    expect(metrics.some((x) => x.name.startsWith('nodejs_'))).toBe(true);
    const wrong = metrics.filter((x) => x.name.endsWith('_total') !== (String(x.type) === 'counter')).map((x) => `${x.name} (${String(x.type)})`);
    expect(wrong).toEqual([]);
    // The per-type gauges that replace prom-client's nodejs_active_handles_total stay.
    expect(metrics.map((x) => x.name)).toContain('nodejs_active_handles');
  });

  it('uses the spikeserve: prefix and the model_name label on every series', async () => {
    const { m } = make();
    const text = await m.render();
    for (const name of [
      'time_to_first_token_seconds',
      'inter_token_latency_seconds',
      'e2e_request_latency_seconds',
      'request_queue_time_seconds',
      'request_prefill_time_seconds',
      'request_decode_time_seconds',
      'num_requests_running',
      'num_requests_waiting',
      'kv_cache_usage_perc',
      'kv_pages_used',
      'kv_pages_capacity',
      'recurrent_state_bytes',
      'prefill_tokens_per_second',
      'prompt_tokens_total',
      'prefix_cache_queries_total',
      'prefix_cache_hits_total',
      'spike_zeros_total',
      'spike_values_total',
      'generation_tokens_total',
      'request_success_total',
    ]) {
      expect(text).toContain(`# TYPE spikeserve:${name} `);
    }
    expect(text).toContain(`spikeserve:num_requests_waiting{model_name="${MODEL}"} 0`);
    expect(m.contentType).toContain('text/plain');
  });

  it('observes TTFT once per request and inter-token latency between consecutive tokens', async () => {
    const { m, clock } = make();
    runRequest(m, clock, 10, [1.5, 0.5, 0.25, 0.25]);
    runRequest(m, clock, 20, [3, 1]);
    expect(await histCount(m, 'time_to_first_token_seconds')).toBe(2);
    expect(await histSum(m, 'time_to_first_token_seconds')).toBeCloseTo(4.5, 9);
    expect(await histCount(m, 'inter_token_latency_seconds')).toBe(3 + 1);
    expect(await histSum(m, 'inter_token_latency_seconds')).toBeCloseTo(2, 9);
    expect(await histCount(m, 'e2e_request_latency_seconds')).toBe(2);
    expect(await histSum(m, 'e2e_request_latency_seconds')).toBeCloseTo(2.5 + 0.25 + 4 + 0.25, 9);
    // Engine timing from 'done': 0.5 / 2 / 3 s per request.
    expect(await histSum(m, 'request_queue_time_seconds')).toBeCloseTo(1, 9);
    expect(await histSum(m, 'request_prefill_time_seconds')).toBeCloseTo(4, 9);
    expect(await histSum(m, 'request_decode_time_seconds')).toBeCloseTo(6, 9);
  });

  it('a request with no token records no TTFT', async () => {
    const { m, clock } = make();
    runRequest(m, clock, 7, [], 'length');
    expect(await histCount(m, 'time_to_first_token_seconds')).toBe(0);
    expect(await histCount(m, 'e2e_request_latency_seconds')).toBe(1);
  });

  it('token counters equal the event counts', async () => {
    const { m, clock } = make();
    runRequest(m, clock, 100, [0.1, 0.1, 0.1]);
    runRequest(m, clock, 250, [0.1, 0.1, 0.1, 0.1, 0.1]);
    runRequest(m, clock, 1, [0.1]);
    expect(await value(m, 'prompt_tokens_total')).toBe(351);
    expect(await value(m, 'generation_tokens_total')).toBe(9);
  });

  it('counts prefix-cache queries and hits in prompt tokens', async () => {
    const { m } = make();
    for (const [prompt, cached] of [[300, 0], [320, 256], [40, 0]] as const) {
      const r = m.trackRequest();
      r.onEvent(done('stop', prompt, 1, cached));
      r.onFinish();
    }
    expect(await value(m, 'prefix_cache_queries_total')).toBe(660);
    expect(await value(m, 'prefix_cache_hits_total')).toBe(256);
  });

  it('labels request_success_total by finished_reason', async () => {
    const { m, clock } = make();
    runRequest(m, clock, 5, [0.1], 'stop');
    runRequest(m, clock, 5, [0.1], 'stop');
    runRequest(m, clock, 5, [0.1, 0.1], 'length');
    runRequest(m, clock, 5, [], 'error');
    expect(await value(m, 'request_success_total', { finished_reason: 'stop' })).toBe(2);
    expect(await value(m, 'request_success_total', { finished_reason: 'length' })).toBe(1);
    expect(await value(m, 'request_success_total', { finished_reason: 'error' })).toBe(1);
    expect(await value(m, 'request_success_total', { finished_reason: 'abort' })).toBe(0);
  });

  it('onFinish is idempotent, and counts an abort when no done event came', async () => {
    const { m, clock } = make();
    const r = m.trackRequest();
    r.onEvent({ type: 'progress', processedTokens: 64, totalTokens: 300, cachedTokens: 0 });
    clock.advance(1);
    r.onEvent(token(1));
    clock.advance(1);
    r.onEvent(token(2));
    r.onFinish();
    r.onFinish();
    r.onEvent(token(3)); // after finish: ignored
    r.onEvent(done('stop', 300, 3));
    expect(await value(m, 'request_success_total', { finished_reason: 'abort' })).toBe(1);
    expect(await value(m, 'request_success_total', { finished_reason: 'stop' })).toBe(0);
    expect(await value(m, 'generation_tokens_total')).toBe(2);
    expect(await value(m, 'prompt_tokens_total')).toBe(300);
    expect(await histCount(m, 'e2e_request_latency_seconds')).toBe(1);
    expect(await histCount(m, 'time_to_first_token_seconds')).toBe(1);

    // After a 'done', onFinish (called again by the server on every path) adds nothing.
    runRequest(m, clock, 10, [0.5], 'length');
    const s = m.trackRequest();
    s.onEvent(done('stop', 4, 0));
    s.onFinish();
    s.onFinish();
    expect(await value(m, 'request_success_total', { finished_reason: 'stop' })).toBe(1);
    expect(await value(m, 'request_success_total', { finished_reason: 'length' })).toBe(1);
    expect(await value(m, 'request_success_total', { finished_reason: 'abort' })).toBe(1);
    expect(await histCount(m, 'e2e_request_latency_seconds')).toBe(3);
  });

  it('spike and preemption counters follow the engine\'s cumulative counts, also across an engine restart', async () => {
    const { m } = make();
    const base: EngineStats = { numRunning: 0, numWaiting: 0, waitingPromptTokens: 0, kvPagesUsed: 0, kvPagesTotal: 1, stateSlotsUsed: 0, stateSlotsTotal: 1, stateBytesInUse: 0, prefixCacheBytes: 0, spikeZeros: 0, spikeValues: 0, numPreemptions: 0 };
    m.updateEngineStats({ ...base, spikeZeros: 690, spikeValues: 1000, numPreemptions: 2 });
    m.updateEngineStats({ ...base, spikeZeros: 700, spikeValues: 1010, numPreemptions: 5 });
    m.updateEngineStats({ ...base, spikeZeros: 50, spikeValues: 100, numPreemptions: 1 }); // a new engine counts from 0
    expect(await value(m, 'spike_zeros_total')).toBe(750);
    expect(await value(m, 'spike_values_total')).toBe(1110);
    expect(await value(m, 'num_preemptions_total')).toBe(6);
  });

  it('gauges follow updateEngineStats', async () => {
    const { m } = make();
    const stats: EngineStats = {
      numRunning: 3,
      numWaiting: 7,
      waitingPromptTokens: 12_345,
      kvPagesUsed: 48,
      kvPagesTotal: 64,
      stateSlotsUsed: 3,
      stateSlotsTotal: 8,
      stateBytesInUse: 3 * 1835008,
      prefixCacheBytes: 0,
      spikeZeros: 0,
      spikeValues: 0,
      numPreemptions: 0,
    };
    m.updateEngineStats(stats);
    expect(await value(m, 'num_requests_running')).toBe(3);
    expect(await value(m, 'num_requests_waiting')).toBe(7);
    expect(await value(m, 'num_waiting_prompt_tokens')).toBe(12_345);
    expect(await value(m, 'kv_pages_used')).toBe(48);
    expect(await value(m, 'kv_pages_capacity')).toBe(64);
    expect(await value(m, 'kv_cache_usage_perc')).toBeCloseTo(0.75, 12);
    expect(await value(m, 'recurrent_state_bytes')).toBe(3 * 1835008);
    m.updateEngineStats({ ...stats, numRunning: 0, numWaiting: 0, kvPagesUsed: 0, kvPagesTotal: 0, stateBytesInUse: 0 });
    expect(await value(m, 'num_requests_running')).toBe(0);
    expect(await value(m, 'num_requests_waiting')).toBe(0);
    expect(await value(m, 'kv_cache_usage_perc')).toBe(0); // empty pool: 0, not NaN
  });

  it('TTFT and e2e buckets reach at least 4 hours', async () => {
    const { m, clock } = make();
    // A 4M-token prompt at ~4K tokens/s: TTFT ≈ 1000 s, beyond vLLM's 2560 s last bucket at ~3 h.
    runRequest(m, clock, 4 << 20, [3 * 3600]);
    for (const suffix of ['time_to_first_token_seconds', 'e2e_request_latency_seconds']) {
      const mt = await metric(m, suffix);
      const bounds = mt.values
        .filter((v) => v.metricName === `spikeserve:${suffix}_bucket` && v.labels.le !== '+Inf')
        .map((v) => Number(v.labels.le));
      expect(Math.max(...bounds)).toBeGreaterThanOrEqual(14_400);
      expect(bounds).toContain(2560);
      // The 3 h request lands in a finite bucket, not only in +Inf.
      const at4h = mt.values.find((v) => v.metricName === `spikeserve:${suffix}_bucket` && v.labels.le === 14400);
      expect(at4h?.value).toBe(1);
    }
  });

  it('prefill_tokens_per_second follows progress events over the window and decays when idle', async () => {
    const { m, clock } = make();
    expect(await value(m, 'prefill_tokens_per_second')).toBe(0);
    const r = m.trackRequest();
    for (let i = 1; i <= 8; i++) {
      clock.advance(0.5);
      r.onEvent({ type: 'progress', processedTokens: 100 + i * 1000, totalTokens: 20_000, cachedTokens: 100 });
    }
    // 8000 computed tokens in 4 s (the 100 cached ones do not count).
    expect(await value(m, 'prefill_tokens_per_second')).toBeCloseTo(2000, 6);
    clock.advance(1); // nothing for 1 s: the window now spans 5 s
    expect(await value(m, 'prefill_tokens_per_second')).toBeCloseTo(1600, 6);
    // 'done' adds the rest of the prompt over the engine's prefill interval (ending decodeSeconds before).
    clock.advance(5);
    r.onEvent(done('stop', 20_000, 1, 100));
    expect(await value(m, 'prompt_tokens_total')).toBe(20_000);
    clock.advance(60);
    expect(await value(m, 'prefill_tokens_per_second')).toBe(0);
  });

  it('collects Node default metrics into its own registry when asked', async () => {
    const m = new ServerMetrics(MODEL);
    const text = await m.render();
    expect(text).toContain('process_cpu_user_seconds_total');
    expect(text).toContain('nodejs_heap_size_used_bytes');
    const quiet = new ServerMetrics(MODEL, { collectDefault: false });
    expect(await quiet.render()).not.toContain('process_cpu_user_seconds_total');
  });
});
