// Prometheus metrics of the server: one registry, vLLM's metric suffixes under our prefix
// `spikeserve:` (dashboards and the Gateway API inference extension port by a prefix swap), every
// series labelled with `model_name`. Fed by three things only: the TokenEvent stream of each engine
// request (trackRequest), and EngineStats and EngineHealth snapshots taken at each scrape
// (updateEngineStats, updateEngineHealth). No HTTP here.
//
// Per request (t0 = trackRequest(), times from the injected clock, seconds):
//   TTFT   = t(first 'token') − t0                      observed once per request
//   ITL    = t(token k) − t(token k−1)                  observed for every token after the first
//   e2e    = t('done' or onFinish) − t0
//   queue / prefill / decode                            from the 'done' event's engine timing
// prefill_tokens_per_second is the prompt tokens actually computed (cached ones excluded) in the
// last `prefillRateWindowSeconds`, divided by that window (or by the time since the first sample
// when that is shorter); it is computed at scrape time and decays to 0 when the engine is idle.
//
// The shared prefix-snapshot folder (--prefix-cache-dir): the engine's cumulative counters arrive in
// EngineStats.prefixStore and the `prefix_store_*` counters advance by their difference (a smaller
// value means a new engine, counting from 0 again). With `compat: 'vllm'` the three gauges an endpoint
// picker reads by default are also exported under vLLM's names (deploy/README.md, Gateway API).
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineHealth, EngineStats, FinishReason, SnapshotDiskStats, TokenEvent } from '../engine/types.ts';
import type { MetricsCompat } from './config.ts';

export const METRIC_PREFIX = 'spikeserve:';

const FINISH_REASONS: readonly FinishReason[] = ['stop', 'length', 'abort', 'error'];

// vLLM's buckets, with the long tail extended to 4 h and 8 h: a multi-million-token prompt takes
// minutes to prefill on CPU, and a request that falls past the last bucket tells nothing.
const LONG_TAIL_SECONDS = [5120, 10240, 14400, 28800];
export const TTFT_BUCKETS_SECONDS: readonly number[] = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640,
  2560, ...LONG_TAIL_SECONDS,
];
export const REQUEST_LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 2560,
  ...LONG_TAIL_SECONDS,
];
export const INTER_TOKEN_BUCKETS_SECONDS: readonly number[] = [
  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
];

export interface ServerMetricsOptions {
  /** Registry to register into; default a new one. */
  readonly registry?: Registry;
  /** Also collect Node process metrics (prom-client defaults, no prefix). Default true. */
  readonly collectDefault?: boolean;
  /** Monotonic clock in seconds; default performance.now()/1000. Tests inject a fake one. */
  readonly now?: () => number;
  /** Sliding window of the prefill throughput gauge, seconds. Default 10. */
  readonly prefillRateWindowSeconds?: number;
  /** 'vllm': also export vllm:num_requests_waiting / num_requests_running / kv_cache_usage_perc. Default 'none'. */
  readonly compat?: MetricsCompat;
}

/** Reasons a snapshot read from the folder was a miss (the engine's labels; see snapshot-store.ts). */
const READ_FAILURE_REASONS = ['missing', 'io', 'timeout', 'format', 'checksum', 'header', 'truncated'] as const;

type StoreCounter = 'hits' | 'bytesRead' | 'writes' | 'bytesWritten' | 'writeFailures' | 'writesSkipped';

/** Handle of one engine request's event stream. */
export interface RequestTracker {
  onEvent(ev: TokenEvent): void;
  /** End of the request (after 'done', or on client abort / error without one). Idempotent. */
  onFinish(): void;
}

/** Prompt tokens computed during [startSeconds, endSeconds], assumed spread evenly over it. */
interface PrefillSample {
  readonly startSeconds: number;
  readonly endSeconds: number;
  readonly tokens: number;
}

export class ServerMetrics {
  readonly registry: Registry;
  readonly contentType: string;

  private readonly now: () => number;
  private readonly windowSeconds: number;
  private prefillSamples: PrefillSample[] = [];

  private readonly ttft: Histogram.Internal<string>;
  private readonly interToken: Histogram.Internal<string>;
  private readonly e2e: Histogram.Internal<string>;
  private readonly queueTime: Histogram.Internal<string>;
  private readonly prefillTime: Histogram.Internal<string>;
  private readonly decodeTime: Histogram.Internal<string>;
  private readonly running: Gauge.Internal<string>;
  private readonly waiting: Gauge.Internal<string>;
  private readonly waitingPromptTokens: Gauge.Internal<string>;
  private readonly kvUsage: Gauge.Internal<string>;
  private readonly kvPagesUsed: Gauge.Internal<string>;
  private readonly kvPagesCapacity: Gauge.Internal<string>;
  private readonly stateBytes: Gauge.Internal<string>;
  private readonly promptTokens: Counter.Internal;
  private readonly prefixQueries: Counter.Internal;
  private readonly prefixHits: Counter.Internal;
  private readonly spikeZeros: Counter.Internal;
  private readonly spikeValues: Counter.Internal;
  /** The engine's cumulative spike counts at the last stats update (the counters advance by the difference). */
  private lastSpikes = { zeros: 0, values: 0 };
  private readonly preemptions: Counter.Internal;
  private lastPreemptions = 0;
  private readonly generationTokens: Counter.Internal;
  private readonly engineRestarts: Counter.Internal;
  /** The engine's restart count at the last health update (the counter advances by the difference). */
  private lastRestarts = 0;
  private readonly success: Counter<'model_name' | 'finished_reason'>;
  private readonly storeCounters: Record<StoreCounter, Counter.Internal>;
  private readonly storeReadFailures: Counter<'model_name' | 'reason'>;
  private readonly storeBytes: Gauge.Internal<string>;
  private readonly storeFiles: Gauge.Internal<string>;
  private readonly storeReadBuffer: Gauge.Internal<string>;
  /** The engine's cumulative store counters at the last stats update. */
  private lastStore: SnapshotDiskStats | null = null;
  /** vLLM-named copies of the picker's gauges (compat 'vllm'), else null. */
  private readonly vllm: { waiting: Gauge.Internal<string>; running: Gauge.Internal<string>; kvUsage: Gauge.Internal<string> } | null;

  constructor(
    private readonly modelName: string,
    opts: ServerMetricsOptions = {},
  ) {
    this.registry = opts.registry ?? new Registry();
    this.contentType = this.registry.contentType;
    this.now = opts.now ?? (() => performance.now() / 1000);
    this.windowSeconds = opts.prefillRateWindowSeconds ?? 10;
    if (opts.collectDefault ?? true) {
      collectDefaultMetrics({ register: this.registry });
      // Prometheus keeps the `_total` suffix for counters (`promtool check metrics` warns), but three
      // of prom-client's default gauges carry it (nodejs_active_handles_total, …). Their per-type
      // gauges (nodejs_active_handles{type}) hold the same counts, so those three go.
      for (const m of this.registry.getMetricsAsArray()) {
        if (m.name.endsWith('_total') && String(m.type) !== 'counter') this.registry.removeSingleMetric(m.name);
      }
    }

    const registers = [this.registry];
    const labels = { model_name: modelName };
    // Every series is created at zero up front, so the first scrape already shows it.
    const histogram = (name: string, help: string, buckets: readonly number[]): Histogram.Internal<string> => {
      const h = new Histogram({ name: METRIC_PREFIX + name, help, labelNames: ['model_name'], buckets: [...buckets], registers });
      h.zero(labels);
      return h.labels(labels);
    };
    const gauge = (name: string, help: string): Gauge.Internal<string> => {
      const g = new Gauge({ name: METRIC_PREFIX + name, help, labelNames: ['model_name'], registers }).labels(labels);
      g.set(0);
      return g;
    };
    const counter = (name: string, help: string): Counter.Internal => {
      const c = new Counter({ name: METRIC_PREFIX + name, help, labelNames: ['model_name'], registers }).labels(labels);
      c.inc(0);
      return c;
    };

    this.ttft = histogram('time_to_first_token_seconds', 'Time from engine submission to the first generated token.', TTFT_BUCKETS_SECONDS);
    this.interToken = histogram('inter_token_latency_seconds', 'Time between consecutive generated tokens.', INTER_TOKEN_BUCKETS_SECONDS);
    this.e2e = histogram('e2e_request_latency_seconds', 'Time from engine submission to the end of the request.', REQUEST_LATENCY_BUCKETS_SECONDS);
    this.queueTime = histogram('request_queue_time_seconds', 'Time a request waited before its first scheduled step.', REQUEST_LATENCY_BUCKETS_SECONDS);
    this.prefillTime = histogram('request_prefill_time_seconds', 'Time spent prefilling the prompt.', REQUEST_LATENCY_BUCKETS_SECONDS);
    this.decodeTime = histogram('request_decode_time_seconds', 'Time spent generating tokens after the prompt.', REQUEST_LATENCY_BUCKETS_SECONDS);

    this.running = gauge('num_requests_running', 'Requests being prefilled or decoded.');
    this.waiting = gauge('num_requests_waiting', 'Requests waiting to be scheduled.');
    this.waitingPromptTokens = gauge('num_waiting_prompt_tokens', 'Prompt tokens of the requests waiting to be scheduled (bounded by --max-waiting-tokens).');
    this.kvUsage = gauge('kv_cache_usage_perc', 'Share of KV cache pages in use, 0 to 1.');
    this.kvPagesUsed = gauge('kv_pages_used', 'KV cache pages in use.');
    this.kvPagesCapacity = gauge('kv_pages_capacity', 'KV cache pages in the pool.');
    this.stateBytes = gauge('recurrent_state_bytes', 'Bytes of GLA recurrent state held by live sequences.');
    const prefillRate = (): number => this.prefillTokensPerSecond();
    new Gauge({
      name: METRIC_PREFIX + 'prefill_tokens_per_second',
      help: `Prompt tokens computed per second over the last ${this.windowSeconds} s (cached tokens excluded).`,
      labelNames: ['model_name'],
      registers,
      collect() {
        this.set(labels, prefillRate());
      },
    });

    this.promptTokens = counter('prompt_tokens_total', 'Prompt tokens of finished requests.');
    // vLLM v1's pair: hit rate = rate(hits) / rate(queries), in tokens.
    this.prefixQueries = counter('prefix_cache_queries_total', 'Prompt tokens looked up in the prefix-state cache (finished requests).');
    this.prefixHits = counter('prefix_cache_hits_total', 'Prompt tokens resumed from a prefix-state snapshot instead of computed.');
    // W8ASpike models (0 otherwise): sparsity = rate(spike_zeros_total) / rate(spike_values_total).
    this.spikeZeros = counter('spike_zeros_total', 'Spike-coded linear-layer inputs that were 0 spikes (W8ASpike models).');
    this.spikeValues = counter('spike_values_total', 'Spike-coded linear-layer inputs computed (W8ASpike models).');
    this.generationTokens = counter('generation_tokens_total', 'Generated tokens of finished requests.');
    // vLLM's name: requests whose memory was taken back when a full-attention pool ran out (they recompute).
    this.preemptions = counter('num_preemptions_total', 'Requests preempted (their KV pages freed, their tokens recomputed later).');
    this.engineRestarts = counter('engine_restarts_total', 'Inference workers restarted after one was lost (crash, exit, out of memory, hung step).');
    this.success = new Counter({
      name: METRIC_PREFIX + 'request_success_total',
      help: 'Finished requests, by finish reason.',
      labelNames: ['model_name', 'finished_reason'],
      registers,
    });
    // Every reason exists from the start, so rate() over a fresh series works.
    for (const reason of FINISH_REASONS) this.success.inc({ model_name: modelName, finished_reason: reason }, 0);

    // The prefix-snapshot folder shared by the replicas (--prefix-cache-dir); zero without one.
    this.storeCounters = {
      hits: counter('prefix_store_hits_total', 'Prefix snapshots read from the shared snapshot folder and used.'),
      bytesRead: counter('prefix_store_read_bytes_total', 'Bytes of prefix snapshots read from the shared snapshot folder.'),
      writes: counter('prefix_store_writes_total', 'Prefix snapshots written to the shared snapshot folder by this server.'),
      bytesWritten: counter('prefix_store_written_bytes_total', 'Bytes of prefix snapshots written to the shared snapshot folder by this server.'),
      writeFailures: counter('prefix_store_write_failures_total', 'Prefix snapshot writes that failed (the cause is logged).'),
      writesSkipped: counter('prefix_store_writes_skipped_total', 'Prefix snapshot writes not attempted: larger than the folder bound, or too many bytes already being written.'),
    };
    this.storeReadFailures = new Counter({
      name: METRIC_PREFIX + 'prefix_store_read_failures_total',
      help: 'Prefix snapshot reads that were a miss, by reason (missing, io, timeout, format, checksum, header, truncated).',
      labelNames: ['model_name', 'reason'],
      registers,
    });
    for (const reason of READ_FAILURE_REASONS) this.storeReadFailures.inc({ model_name: modelName, reason }, 0);
    this.storeBytes = gauge('prefix_store_bytes', 'Bytes of the shared snapshot folder (every server’s files) at its last scan.');
    this.storeFiles = gauge('prefix_store_files', 'Snapshot files in the shared snapshot folder at its last scan.');
    this.storeReadBuffer = gauge('prefix_store_read_buffer_bytes', 'Bytes of snapshot reads in flight or held for waiting requests.');

    if (opts.compat === 'vllm') {
      const vllmGauge = (name: string, help: string): Gauge.Internal<string> => {
        const g = new Gauge({ name: `vllm:${name}`, help, labelNames: ['model_name'], registers }).labels(labels);
        g.set(0);
        return g;
      };
      this.vllm = {
        waiting: vllmGauge('num_requests_waiting', 'Requests waiting to be scheduled (= spikeserve:num_requests_waiting).'),
        running: vllmGauge('num_requests_running', 'Requests being prefilled or decoded (= spikeserve:num_requests_running).'),
        kvUsage: vllmGauge('kv_cache_usage_perc', 'Share of KV cache pages in use, 0 to 1 (= spikeserve:kv_cache_usage_perc).'),
      };
    } else {
      this.vllm = null;
    }
  }

  trackRequest(): RequestTracker {
    const startSeconds = this.now();
    let finished = false;
    let firstTokenSeconds: number | null = null;
    let lastTokenSeconds = 0;
    let tokenEvents = 0;
    let promptTokensSeen = 0; // from progress events, for an abort without 'done'
    let computedPrefillTokens = 0; // prompt tokens already put into the prefill window
    let lastPrefillSeconds = startSeconds;

    const addPrefill = (tokens: number, fromSeconds: number, toSeconds: number): void => {
      if (tokens <= 0) return;
      this.addPrefillSample({ startSeconds: fromSeconds, endSeconds: Math.max(toSeconds, fromSeconds), tokens });
      computedPrefillTokens += tokens;
    };

    const finish = (reason: FinishReason, promptTokens: number, completionTokens: number, t: number): void => {
      finished = true;
      this.e2e.observe(t - startSeconds);
      this.promptTokens.inc(promptTokens);
      this.generationTokens.inc(completionTokens);
      this.success.inc({ model_name: this.modelName, finished_reason: reason });
    };

    return {
      onEvent: (ev: TokenEvent): void => {
        if (finished) return;
        const t = this.now();
        switch (ev.type) {
          case 'progress':
            promptTokensSeen = ev.totalTokens;
            addPrefill(ev.processedTokens - ev.cachedTokens - computedPrefillTokens, lastPrefillSeconds, t);
            lastPrefillSeconds = t;
            return;
          case 'prompt_logprobs':
            return;
          case 'token':
            tokenEvents++;
            if (firstTokenSeconds === null) {
              firstTokenSeconds = t;
              this.ttft.observe(t - startSeconds);
            } else {
              this.interToken.observe(t - lastTokenSeconds);
            }
            lastTokenSeconds = t;
            return;
          case 'done': {
            const { queueSeconds, prefillSeconds, decodeSeconds } = ev.timing;
            this.queueTime.observe(queueSeconds);
            this.prefillTime.observe(prefillSeconds);
            this.decodeTime.observe(decodeSeconds);
            // Prompt tokens no progress event reported: spread over the engine's prefill interval.
            const prefillEnd = t - decodeSeconds;
            const from = computedPrefillTokens > 0 ? lastPrefillSeconds : prefillEnd - prefillSeconds;
            addPrefill(ev.promptTokens - ev.cachedTokens - computedPrefillTokens, from, prefillEnd);
            this.prefixQueries.inc(ev.promptTokens);
            this.prefixHits.inc(ev.cachedTokens);
            finish(ev.finishReason, ev.promptTokens, ev.completionTokens, t);
            return;
          }
        }
      },
      onFinish: (): void => {
        // Ended without a 'done' event (client went away, stream broke): count what was seen.
        if (!finished) finish('abort', promptTokensSeen, tokenEvents, this.now());
      },
    };
  }

  updateEngineStats(s: EngineStats): void {
    this.running.set(s.numRunning);
    this.waiting.set(s.numWaiting);
    this.waitingPromptTokens.set(s.waitingPromptTokens);
    this.kvPagesUsed.set(s.kvPagesUsed);
    this.kvPagesCapacity.set(s.kvPagesTotal);
    this.kvUsage.set(s.kvPagesTotal > 0 ? s.kvPagesUsed / s.kvPagesTotal : 0);
    this.stateBytes.set(s.stateBytesInUse);
    // Cumulative in the engine; a smaller value means a new engine (counting from 0 again).
    const zeros = s.spikeZeros < this.lastSpikes.zeros ? s.spikeZeros : s.spikeZeros - this.lastSpikes.zeros;
    const values = s.spikeValues < this.lastSpikes.values ? s.spikeValues : s.spikeValues - this.lastSpikes.values;
    this.spikeZeros.inc(zeros);
    this.spikeValues.inc(values);
    this.lastSpikes = { zeros: s.spikeZeros, values: s.spikeValues };
    this.preemptions.inc(s.numPreemptions < this.lastPreemptions ? s.numPreemptions : s.numPreemptions - this.lastPreemptions);
    this.lastPreemptions = s.numPreemptions;
    if (this.vllm !== null) {
      this.vllm.waiting.set(s.numWaiting);
      this.vllm.running.set(s.numRunning);
      this.vllm.kvUsage.set(s.kvPagesTotal > 0 ? s.kvPagesUsed / s.kvPagesTotal : 0);
    }
    if (s.prefixStore !== undefined) this.updateStoreStats(s.prefixStore);
  }

  private updateStoreStats(now: SnapshotDiskStats): void {
    const last = this.lastStore;
    // Cumulative in the engine: advance by the difference; a smaller value is a new engine's count.
    const delta = (a: number, b: number | undefined): number => (b === undefined || a < b ? a : a - b);
    for (const name of Object.keys(this.storeCounters) as StoreCounter[]) this.storeCounters[name].inc(delta(now[name], last?.[name]));
    for (const reason of READ_FAILURE_REASONS) {
      this.storeReadFailures.inc({ model_name: this.modelName, reason }, delta(now.readFailures[reason], last?.readFailures[reason]));
    }
    this.storeBytes.set(now.diskBytes);
    this.storeFiles.set(now.diskFiles);
    this.storeReadBuffer.set(now.readBufferBytes);
    this.lastStore = now;
  }

  updateEngineHealth(h: EngineHealth): void {
    if (h.restarts > this.lastRestarts) this.engineRestarts.inc(h.restarts - this.lastRestarts);
    this.lastRestarts = h.restarts;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** Prompt tokens computed per second over the sliding window ending now. */
  prefillTokensPerSecond(): number {
    const now = this.now();
    const windowStart = now - this.windowSeconds;
    this.prefillSamples = this.prefillSamples.filter((s) => s.endSeconds > windowStart);
    if (this.prefillSamples.length === 0) return 0;
    let tokens = 0;
    let earliest = now;
    for (const s of this.prefillSamples) {
      const span = s.endSeconds - s.startSeconds;
      const from = Math.max(s.startSeconds, windowStart);
      const to = Math.min(s.endSeconds, now);
      // A sample with no duration (two events in the same clock tick) counts whole.
      tokens += span > 0 ? (s.tokens * Math.max(0, to - from)) / span : s.tokens;
      earliest = Math.min(earliest, from);
    }
    const seconds = now - earliest;
    return seconds > 0 ? tokens / seconds : 0;
  }

  private addPrefillSample(sample: PrefillSample): void {
    this.prefillSamples.push(sample);
    // Bounded: samples older than the window are dropped here as well as at scrape time.
    if (this.prefillSamples.length > 4096) {
      const windowStart = this.now() - this.windowSeconds;
      this.prefillSamples = this.prefillSamples.filter((s) => s.endSeconds > windowStart);
    }
  }
}
