// Load benchmark of a running spikeserve: short chat completions (max_tokens 16) fired by autocannon
// at 1, 8, 32 and 64 connections for a bounded duration each. Prints requests/s, client latency
// p50/p99, server-side TTFT (from /metrics histogram deltas over each level) and error counts, and
// writes bench/results/load.json. Loopback targets only: this is a benchmark, not a load generator
// for other people's hosts.
//
//   npm start &                                  # a server on 127.0.0.1:8000
//   node --import tsx bench/load.ts [--url http://127.0.0.1:8000] [--duration 10]
//        [--connections 1,8,32,64] [--max-tokens 16] [--api-key KEY] [--out bench/results/load.json]
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';

// autocannon ships no type declarations: the part of its API used here.
interface HistogramSummary {
  readonly average: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}
interface AutocannonResult {
  readonly latency: HistogramSummary; // ms
  readonly requests: HistogramSummary & { readonly total: number };
  readonly duration: number; // s
  readonly errors: number;
  readonly timeouts: number;
  readonly non2xx: number;
  readonly statusCodeStats: Readonly<Record<string, { readonly count: number }>>;
}
interface AutocannonOptions {
  readonly url: string;
  readonly connections: number;
  readonly duration: number;
  readonly method: 'POST';
  readonly headers: Record<string, string>;
  readonly body: string;
  readonly timeout: number;
}
type Autocannon = (opts: AutocannonOptions, done: (err: Error | null, result: AutocannonResult) => void) => unknown;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

const { values: args } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:8000' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '1,8,32,64' },
    'max-tokens': { type: 'string', default: '16' },
    'api-key': { type: 'string' },
    out: { type: 'string', default: 'bench/results/load.json' },
  },
});

const base = new URL(args.url);
if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(base.hostname)) {
  throw new Error(`--url ${args.url}: only loopback addresses are allowed`);
}
const durationSeconds = Number(args.duration);
const maxTokens = Number(args['max-tokens']);
const levels = args.connections.split(',').map(Number);
const headers: Record<string, string> = { 'content-type': 'application/json' };
if (args['api-key'] !== undefined) headers['authorization'] = `Bearer ${args['api-key']}`;

// ---- Prometheus text: just the samples of one histogram --------------------------------------

interface HistogramSnapshot {
  readonly count: number;
  readonly sum: number;
  /** Cumulative counts by upper bound, ascending, +Inf last. */
  readonly buckets: readonly (readonly [number, number])[];
}

function parseHistogram(text: string, name: string): HistogramSnapshot | null {
  let count = 0;
  let sum = 0;
  let found = false;
  const buckets = new Map<number, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^(\S+?)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m === null) continue;
    const [, series, labels = '', raw] = m;
    const v = Number(raw);
    found = true;
    if (series === `${name}_count`) count += v;
    else if (series === `${name}_sum`) sum += v;
    else if (series === `${name}_bucket`) {
      const le = /le="([^"]+)"/.exec(labels)?.[1];
      if (le === undefined) continue;
      const bound = le === '+Inf' ? Infinity : Number(le);
      buckets.set(bound, (buckets.get(bound) ?? 0) + v);
    }
  }
  return found ? { count, sum, buckets: [...buckets.entries()].sort((a, b) => a[0] - b[0]) } : null;
}

function histogramDelta(after: HistogramSnapshot, before: HistogramSnapshot | null): HistogramSnapshot {
  if (before === null) return after;
  const prev = new Map(before.buckets);
  return {
    count: after.count - before.count,
    sum: after.sum - before.sum,
    buckets: after.buckets.map(([le, c]) => [le, c - (prev.get(le) ?? 0)] as const),
  };
}

/** Quantile by linear interpolation inside the bucket, as Prometheus' histogram_quantile. */
function histogramQuantile(h: HistogramSnapshot, q: number): number | null {
  if (h.count <= 0) return null;
  const rank = q * h.count;
  let lower = 0;
  let below = 0;
  for (const [le, cumulative] of h.buckets) {
    if (cumulative >= rank) {
      if (!Number.isFinite(le)) return lower; // in +Inf: the largest finite bound is all we know
      const inBucket = cumulative - below;
      return inBucket > 0 ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = cumulative;
  }
  return lower;
}

// ---- HTTP helpers ------------------------------------------------------------------------------

async function scrapeTtft(): Promise<HistogramSnapshot | null> {
  try {
    const res = await fetch(new URL('/metrics', base));
    if (!res.ok) return null;
    return parseHistogram(await res.text(), 'spikeserve:time_to_first_token_seconds');
  } catch {
    return null;
  }
}

/** Waits (up to 60 s) until the server reports no running or waiting request, so levels do not overlap. */
async function settle(): Promise<void> {
  for (let i = 0; i < 120; i++) {
    try {
      const text = await (await fetch(new URL('/metrics', base))).text();
      const busy = /^spikeserve:num_requests_(running|waiting)\{[^}]*\} ([0-9.e+]+)$/gm;
      if ([...text.matchAll(busy)].every((m) => Number(m[2]) === 0)) return;
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function modelId(): Promise<string> {
  const res = await fetch(new URL('/v1/models', base), { headers });
  if (!res.ok) throw new Error(`GET /v1/models: HTTP ${res.status}`);
  const body = (await res.json()) as { data?: { id?: string }[] };
  const id = body.data?.[0]?.id;
  if (id === undefined) throw new Error('GET /v1/models: no model listed');
  return id;
}

function chatBody(model: string, stream: boolean): string {
  return JSON.stringify({
    model,
    messages: [{ role: 'user', content: 'Write one short sentence about rivers.' }],
    max_tokens: maxTokens,
    temperature: 0,
    stream,
  });
}

/** Seconds from sending a streaming request to its first content chunk, on an otherwise idle server. */
async function streamingTtftProbe(model: string): Promise<number | null> {
  const t0 = performance.now();
  const res = await fetch(new URL('/v1/chat/completions', base), { method: 'POST', headers, body: chatBody(model, true) });
  if (!res.ok || res.body === null) return null;
  const decoder = new TextDecoder();
  let firstSeconds: number | null = null;
  let buffered = '';
  for await (const chunk of res.body) {
    buffered += decoder.decode(chunk as Uint8Array, { stream: true });
    if (firstSeconds === null && /"content":"[^"]/.test(buffered)) firstSeconds = (performance.now() - t0) / 1000;
  }
  return firstSeconds;
}

function runLevel(model: string, connections: number): Promise<AutocannonResult> {
  return new Promise((resolve, reject) => {
    autocannon(
      {
        url: new URL('/v1/chat/completions', base).toString(),
        connections,
        duration: durationSeconds,
        method: 'POST',
        headers,
        body: chatBody(model, false),
        timeout: 120,
      },
      (err, result) => (err !== null && err !== undefined ? reject(err) : resolve(result)),
    );
  });
}

// ---- main --------------------------------------------------------------------------------------

interface LevelResult {
  readonly connections: number;
  readonly durationSeconds: number;
  readonly requests2xx: number;
  readonly requestsPerSecond: number;
  readonly latencyP50Ms: number;
  readonly latencyP99Ms: number;
  readonly ttftMeanSeconds: number | null;
  readonly ttftP50Seconds: number | null;
  readonly ttftP99Seconds: number | null;
  readonly errors: number;
  readonly timeouts: number;
  readonly non2xx: number;
}

const fmt = (v: number | null, digits = 3): string => (v === null ? '-' : v.toFixed(digits));

async function main(): Promise<void> {
  const model = await modelId();
  const idleTtftSeconds = await streamingTtftProbe(model);
  console.log(`model ${model}; idle streaming TTFT probe: ${fmt(idleTtftSeconds)} s`);
  const results: LevelResult[] = [];
  for (const connections of levels) {
    await settle();
    const before = await scrapeTtft();
    const r = await runLevel(model, connections);
    const after = await scrapeTtft();
    const ttft = after === null ? null : histogramDelta(after, before);
    const ok = Object.entries(r.statusCodeStats)
      .filter(([code]) => code.startsWith('2'))
      .reduce((n, [, s]) => n + Number(s.count), 0);
    results.push({
      connections,
      durationSeconds: r.duration,
      requests2xx: ok,
      requestsPerSecond: ok / r.duration,
      latencyP50Ms: r.latency.p50,
      latencyP99Ms: r.latency.p99,
      ttftMeanSeconds: ttft !== null && ttft.count > 0 ? ttft.sum / ttft.count : null,
      ttftP50Seconds: ttft === null ? null : histogramQuantile(ttft, 0.5),
      ttftP99Seconds: ttft === null ? null : histogramQuantile(ttft, 0.99),
      errors: r.errors,
      timeouts: r.timeouts,
      non2xx: r.non2xx,
    });
    console.log(`  ${connections} connections: ${ok} ok in ${r.duration.toFixed(1)} s`);
  }

  console.log(`\nchat completions, max_tokens ${maxTokens}, ${durationSeconds} s per level, ${base.origin}`);
  console.log('conns  req/s   lat p50 ms  lat p99 ms  TTFT mean s  TTFT p50 s  TTFT p99 s  errors  timeouts  non2xx');
  for (const r of results) {
    console.log(
      `${String(r.connections).padStart(5)}  ${r.requestsPerSecond.toFixed(2).padStart(6)}  ${r.latencyP50Ms.toFixed(0).padStart(10)}  ` +
        `${r.latencyP99Ms.toFixed(0).padStart(10)}  ${fmt(r.ttftMeanSeconds).padStart(11)}  ${fmt(r.ttftP50Seconds).padStart(10)}  ` +
        `${fmt(r.ttftP99Seconds).padStart(10)}  ${String(r.errors).padStart(6)}  ${String(r.timeouts).padStart(8)}  ${String(r.non2xx).padStart(6)}`,
    );
  }
  const first = results[0];
  const last = results[results.length - 1];
  if (first !== undefined && last !== undefined && first.requestsPerSecond > 0) {
    console.log(`throughput ratio ${last.connections} vs ${first.connections} connections: ${(last.requestsPerSecond / first.requestsPerSecond).toFixed(2)}×`);
  }
  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(
    args.out,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        url: base.origin,
        model,
        maxTokens,
        durationSecondsPerLevel: durationSeconds,
        machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? null, node: process.version },
        idleStreamingTtftSeconds: idleTtftSeconds,
        ttftSource: 'server /metrics spikeserve:time_to_first_token_seconds delta per level',
        levels: results,
      },
      null,
      2,
    ) + '\n',
  );
  console.log(`wrote ${args.out}`);
}

await main();
