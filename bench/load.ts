// Load benchmark of running spikeserve servers: short chat completions (max_tokens 16) fired by
// autocannon at 1, 8, 32 and 64 connections for a bounded duration each. Prints requests/s, client
// latency p50/p99, server-side TTFT (from /metrics histogram deltas over each level), server CPU per
// request (with --pid) and error counts, and writes bench/results/load.json. Loopback targets only:
// this is a benchmark, not a load generator for other people's hosts.
//
// Side by side: several --url (comma-separated; with --pid in the same order) are measured in
// --rounds alternating rounds per level (each gets duration/rounds seconds a round), so every server
// sees the same machine load; the last table gives each one's ratio to the first.
//
//   npm start &                                  # a server on 127.0.0.1:8000
//   node --import tsx bench/load.ts [--url http://127.0.0.1:8000[,http://127.0.0.1:8001]] [--pid P[,P2]]
//        [--rounds 1] [--duration 10] [--connections 1,8,32,64] [--max-tokens 16] [--api-key KEY]
//        [--out bench/results/load.json]
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
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
    pid: { type: 'string' },
    rounds: { type: 'string', default: '1' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '1,8,32,64' },
    'max-tokens': { type: 'string', default: '16' },
    'api-key': { type: 'string' },
    out: { type: 'string', default: 'bench/results/load.json' },
  },
});

const bases = args.url.split(',').map((u) => new URL(u.trim()));
for (const base of bases) {
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(base.hostname)) throw new Error(`--url ${base.href}: only loopback addresses are allowed`);
}
const pids = args.pid === undefined ? [] : args.pid.split(',').map(Number);
if (pids.length > 0 && pids.length !== bases.length) throw new Error('--pid needs one process id per --url');
const rounds = Number(args.rounds);
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

async function scrapeTtft(base: URL): Promise<HistogramSnapshot | null> {
  try {
    const res = await fetch(new URL('/metrics', base));
    if (!res.ok) return null;
    return parseHistogram(await res.text(), 'spikeserve:time_to_first_token_seconds');
  } catch {
    return null;
  }
}

/** Waits (up to 60 s) until the server reports no running or waiting request, so levels do not overlap. */
async function settle(base: URL): Promise<void> {
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

async function modelId(base: URL): Promise<string> {
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
async function streamingTtftProbe(base: URL, model: string): Promise<number | null> {
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

function runLevel(base: URL, model: string, connections: number, seconds: number): Promise<AutocannonResult> {
  return new Promise((resolve, reject) => {
    autocannon(
      {
        url: new URL('/v1/chat/completions', base).toString(),
        connections,
        duration: seconds,
        method: 'POST',
        headers,
        body: chatBody(model, false),
        timeout: 120,
      },
      (err, result) => (err !== null && err !== undefined ? reject(err) : resolve(result)),
    );
  });
}

/** CPU seconds (user + system, all threads) a process has used, from /proc (clock ticks of 1/100 s). */
function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime (fields 14, 15 of stat(5))
}

// ---- main --------------------------------------------------------------------------------------

interface LevelResult {
  readonly connections: number;
  readonly durationSeconds: number;
  readonly requests2xx: number;
  readonly requestsPerSecond: number;
  /** Median over rounds of each round's p50 / p99. */
  readonly latencyP50Ms: number;
  readonly latencyP99Ms: number;
  readonly ttftMeanSeconds: number | null;
  readonly ttftP50Seconds: number | null;
  readonly ttftP99Seconds: number | null;
  /** Server process CPU per successful request (with --pid). */
  readonly serverCpuMsPerRequest: number | null;
  readonly errors: number;
  readonly timeouts: number;
  readonly non2xx: number;
}

const fmt = (v: number | null, digits = 3): string => (v === null ? '-' : v.toFixed(digits));
const median = (xs: readonly number[]): number => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : (sorted[Math.floor((sorted.length - 1) / 2)]! + sorted[Math.ceil((sorted.length - 1) / 2)]!) / 2;
};

function addHistograms(a: HistogramSnapshot | null, b: HistogramSnapshot | null): HistogramSnapshot | null {
  if (a === null) return b;
  if (b === null) return a;
  const byBound = new Map(a.buckets);
  return { count: a.count + b.count, sum: a.sum + b.sum, buckets: b.buckets.map(([le, c]) => [le, c + (byBound.get(le) ?? 0)] as const) };
}

async function main(): Promise<void> {
  const loadAtStart = loadavg().map((x) => x.toFixed(1)).join(' ');
  const models = await Promise.all(bases.map((b) => modelId(b)));
  const probes: (number | null)[] = [];
  for (const [i, b] of bases.entries()) probes.push(await streamingTtftProbe(b, models[i]!));
  console.log(bases.map((b, i) => `${b.origin}: model ${models[i]}, idle streaming TTFT ${fmt(probes[i] ?? null)} s`).join('\n'));
  const perRound = durationSeconds / rounds;
  const results: LevelResult[][] = bases.map(() => []);
  for (const connections of levels) {
    const acc = bases.map(() => ({ ok: 0, seconds: 0, p50: [] as number[], p99: [] as number[], ttft: null as HistogramSnapshot | null, cpu: 0, errors: 0, timeouts: 0, non2xx: 0 }));
    for (let r = 0; r < rounds; r++) {
      for (const [i, base] of bases.entries()) {
        const a = acc[i]!;
        await settle(base);
        const before = await scrapeTtft(base);
        const pid = pids[i];
        const cpu0 = pid === undefined ? 0 : processCpuSeconds(pid);
        const res = await runLevel(base, models[i]!, connections, perRound);
        if (pid !== undefined) a.cpu += processCpuSeconds(pid) - cpu0;
        const after = await scrapeTtft(base);
        if (after !== null) a.ttft = addHistograms(a.ttft, histogramDelta(after, before));
        a.ok += Object.entries(res.statusCodeStats)
          .filter(([code]) => code.startsWith('2'))
          .reduce((n, [, st]) => n + Number(st.count), 0);
        a.seconds += res.duration;
        a.p50.push(res.latency.p50);
        a.p99.push(res.latency.p99);
        a.errors += res.errors;
        a.timeouts += res.timeouts;
        a.non2xx += res.non2xx;
      }
    }
    for (const [i, a] of acc.entries()) {
      results[i]!.push({
        connections,
        durationSeconds: a.seconds,
        requests2xx: a.ok,
        requestsPerSecond: a.ok / a.seconds,
        latencyP50Ms: median(a.p50),
        latencyP99Ms: median(a.p99),
        ttftMeanSeconds: a.ttft !== null && a.ttft.count > 0 ? a.ttft.sum / a.ttft.count : null,
        ttftP50Seconds: a.ttft === null ? null : histogramQuantile(a.ttft, 0.5),
        ttftP99Seconds: a.ttft === null ? null : histogramQuantile(a.ttft, 0.99),
        serverCpuMsPerRequest: pids[i] === undefined || a.ok === 0 ? null : (1000 * a.cpu) / a.ok,
        errors: a.errors,
        timeouts: a.timeouts,
        non2xx: a.non2xx,
      });
    }
    console.log(`  ${connections} connections: ${acc.map((a) => `${a.ok} ok in ${a.seconds.toFixed(1)} s`).join(', ')}`);
  }

  const loadAtEnd = loadavg().map((x) => x.toFixed(1)).join(' ');
  console.log(`\nchat completions, max_tokens ${maxTokens}, ${durationSeconds} s per level and server in ${rounds} alternating round${rounds === 1 ? '' : 's'}; load average ${loadAtStart} → ${loadAtEnd} (${cpus().length} cores)`);
  for (const [i, base] of bases.entries()) {
    console.log(`\n${base.origin}`);
    console.log('conns  req/s   lat p50 ms  lat p99 ms  TTFT mean s  TTFT p50 s  TTFT p99 s  CPU ms/req  errors  timeouts  non2xx');
    for (const r of results[i]!) {
      console.log(
        `${String(r.connections).padStart(5)}  ${r.requestsPerSecond.toFixed(2).padStart(6)}  ${r.latencyP50Ms.toFixed(0).padStart(10)}  ` +
          `${r.latencyP99Ms.toFixed(0).padStart(10)}  ${fmt(r.ttftMeanSeconds).padStart(11)}  ${fmt(r.ttftP50Seconds).padStart(10)}  ` +
          `${fmt(r.ttftP99Seconds).padStart(10)}  ${fmt(r.serverCpuMsPerRequest, 1).padStart(10)}  ${String(r.errors).padStart(6)}  ${String(r.timeouts).padStart(8)}  ${String(r.non2xx).padStart(6)}`,
      );
    }
    const first = results[i]![0];
    const last = results[i]![results[i]!.length - 1];
    if (first !== undefined && last !== undefined && first.requestsPerSecond > 0 && last !== first) {
      console.log(`throughput ratio ${last.connections} vs ${first.connections} connections: ${(last.requestsPerSecond / first.requestsPerSecond).toFixed(2)}×`);
    }
  }
  if (bases.length > 1) {
    console.log(`\nratio to ${bases[0]!.origin} (requests/s; server CPU per request)`);
    for (const [i, base] of bases.entries()) {
      if (i === 0) continue;
      const cells = results[i]!.map((r, l) => {
        const ref = results[0]![l]!;
        const cpu = r.serverCpuMsPerRequest !== null && ref.serverCpuMsPerRequest !== null ? `, CPU ${(r.serverCpuMsPerRequest / ref.serverCpuMsPerRequest).toFixed(2)}×` : '';
        return `${r.connections} conns ${(r.requestsPerSecond / ref.requestsPerSecond).toFixed(2)}×${cpu}`;
      });
      console.log(`${base.origin}: ${cells.join('; ')}`);
    }
  }
  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(
    args.out,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        maxTokens,
        durationSecondsPerLevel: durationSeconds,
        rounds,
        loadAverage: { start: loadAtStart, end: loadAtEnd },
        machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? null, node: process.version },
        ttftSource: 'server /metrics spikeserve:time_to_first_token_seconds delta per level',
        servers: bases.map((b, i) => ({ url: b.origin, model: models[i], idleStreamingTtftSeconds: probes[i], levels: results[i] })),
      },
      null,
      2,
    ) + '\n',
  );
  console.log(`wrote ${args.out}`);
}

await main();
