// Soak test of the real server: many requests at many connections, a fifth of them aborted by the
// client mid-stream and a few clients that read slowly, then a check that nothing stayed behind.
// Starts the CLI (default model) on a free loopback port unless --url names a running server, sends
// --requests requests over --connections concurrent clients, and reports: outcomes by kind, request
// rate, the server's RSS and JS heap (from /metrics) at start, after a warm-up and at the end, and
// whether the running/waiting gauges, KV usage and recurrent state returned to idle. Exit status 1
// when they did not, or when any request failed in a way a client should never see (5xx, a broken
// stream). Prints one table for bench/README.md and writes bench/results/soak.json.
//
//   node --import tsx bench/soak.ts [--requests 10000] [--connections 32] [--abort-fraction 0.2]
//        [--slow-readers 3] [--slow-tokens 512] [--slow-bytes-per-second 1024] [--max-tokens 24]
//        [--seed 1] [--url http://127.0.0.1:8000]
//
// Request mix of the fast clients (seeded): abort-fraction streamed and aborted after 1–4 chunks;
// of the rest, half streamed to the end and half not streamed, chat or text completions at random.
// Slow readers ask for long streams (ignore_eos, --slow-tokens, ~100 KB of SSE) and read them at
// --slow-bytes-per-second, slower than the server writes, so their output waits in socket and server
// buffers for a minute or more; they count in the total. Loopback targets only.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadAverage } from './common.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '10000' },
    connections: { type: 'string', default: '32' },
    'abort-fraction': { type: 'string', default: '0.2' },
    'slow-readers': { type: 'string', default: '3' },
    'slow-tokens': { type: 'string', default: '512' },
    'slow-bytes-per-second': { type: 'string', default: '1024' },
    'max-tokens': { type: 'string', default: '24' },
    seed: { type: 'string', default: '1' },
    url: { type: 'string' },
    out: { type: 'string', default: 'bench/results/soak.json' },
  },
});
const numRequests = Number(args.requests);
const numConnections = Number(args.connections);
const abortFraction = Number(args['abort-fraction']);
const numSlowReaders = Number(args['slow-readers']);
const slowTokens = Number(args['slow-tokens']);
const slowBytesPerSecond = Number(args['slow-bytes-per-second']);
const maxTokens = Number(args['max-tokens']);
if (numSlowReaders >= numConnections) throw new Error('--slow-readers must be fewer than --connections');

/** mulberry32: a small seeded PRNG, so a run's request mix is reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = prng(Number(args.seed));

// ---- the server ---------------------------------------------------------------------------------

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

async function startServer(): Promise<{ base: URL; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/main/cli.ts'), 'serve', '--port', String(port), '--log-level', 'warn'], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' }, // as `npm start`
  });
  const base = new URL(`http://127.0.0.1:${port}`);
  const deadline = Date.now() + 600_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the server exited (code ${child.exitCode})`);
    try {
      if ((await fetch(new URL('/health', base))).status === 200) return { base, child };
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('the server did not become ready');
    await new Promise((r) => setTimeout(r, 250));
  }
}

// ---- /metrics -----------------------------------------------------------------------------------

interface ServerSample {
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly running: number;
  readonly waiting: number;
  readonly kvUsage: number;
  readonly kvPagesUsed: number;
  readonly stateBytes: number;
  readonly cpuSeconds: number;
}

function sampleValue(text: string, name: string): number {
  let total = 0;
  let found = false;
  for (const line of text.split('\n')) {
    const m = /^(\S+?)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    total += Number(m[3]);
    found = true;
  }
  if (!found) throw new Error(`/metrics has no ${name}`);
  return total;
}

async function sample(base: URL): Promise<ServerSample> {
  const text = await (await fetch(new URL('/metrics', base))).text();
  return {
    rssBytes: sampleValue(text, 'process_resident_memory_bytes'),
    heapUsedBytes: sampleValue(text, 'nodejs_heap_size_used_bytes'),
    running: sampleValue(text, 'spikeserve:num_requests_running'),
    waiting: sampleValue(text, 'spikeserve:num_requests_waiting'),
    kvUsage: sampleValue(text, 'spikeserve:kv_cache_usage_perc'),
    kvPagesUsed: sampleValue(text, 'spikeserve:kv_pages_used'),
    stateBytes: sampleValue(text, 'spikeserve:recurrent_state_bytes'),
    cpuSeconds: sampleValue(text, 'process_cpu_seconds_total'),
  };
}

const isIdle = (s: ServerSample): boolean => s.running === 0 && s.waiting === 0 && s.kvUsage === 0 && s.kvPagesUsed === 0 && s.stateBytes === 0;

// ---- clients ------------------------------------------------------------------------------------

type Outcome =
  | 'completed' // a whole answer (streamed to [DONE] or one JSON body)
  | 'aborted' // closed by this client mid-stream, as planned
  | 'slow-completed' // a slow reader read its whole stream
  | 'slow-cut' // the server ended a slow reader's stream early (an output-buffer bound)
  | 'rejected' // 429 / 503: the server refused, as it may under load
  | 'failed'; // anything else: 5xx, an error event, a broken stream, a network error

const outcomes = new Map<Outcome, number>();
const failures: string[] = [];
let issued = 0;

function record(o: Outcome, detail?: string): void {
  outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
  if (o === 'failed' && detail !== undefined && failures.length < 20) failures.push(detail);
}

function body(kind: 'chat' | 'text', stream: boolean, tokens: number, ignoreEos: boolean): string {
  const common = { max_tokens: tokens, temperature: 0.7, stream, ...(ignoreEos ? { ignore_eos: true } : {}) };
  return JSON.stringify(
    kind === 'chat' ? { ...common, messages: [{ role: 'user', content: `Tell me about the number ${issued % 997}.` }] } : { ...common, prompt: `And it came to pass in the ${issued % 997}th year` },
  );
}

async function post(base: URL, kind: 'chat' | 'text', payload: string, signal?: AbortSignal): Promise<Response> {
  return fetch(new URL(kind === 'chat' ? '/v1/chat/completions' : '/v1/completions', base), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: payload,
    ...(signal !== undefined ? { signal } : {}),
  });
}

/**
 * Reads an SSE body; `everyChunk` (given the chunk count and size) may stop early by returning false.
 * Resolves with the text read and whether it ended with [DONE].
 */
async function readSse(res: Response, everyChunk?: (n: number, bytes: number) => Promise<boolean> | boolean): Promise<{ text: string; done: boolean }> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let n = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    n++;
    if (everyChunk !== undefined && !(await everyChunk(n, value.byteLength))) {
      await reader.cancel();
      return { text, done: false };
    }
  }
  return { text, done: text.trimEnd().endsWith('data: [DONE]') };
}

async function fastRequest(base: URL): Promise<void> {
  const kind = random() < 0.5 ? 'chat' : 'text';
  const tokens = 4 + Math.floor(random() * maxTokens);
  const r = random();
  try {
    if (r < abortFraction) {
      // Closed by the client after 1–4 chunks: the connection goes away mid-stream.
      const after = 1 + Math.floor(random() * 4);
      const ctl = new AbortController();
      const res = await post(base, kind, body(kind, true, tokens + 16, true), ctl.signal);
      if (res.status !== 200) return record(res.status === 429 || res.status === 503 ? 'rejected' : 'failed', `HTTP ${res.status}`);
      const { done } = await readSse(res, (n) => n < after);
      ctl.abort();
      return record(done ? 'completed' : 'aborted');
    }
    const stream = random() < 0.5;
    const res = await post(base, kind, body(kind, stream, tokens, false));
    if (res.status !== 200) return record(res.status === 429 || res.status === 503 ? 'rejected' : 'failed', `HTTP ${res.status}: ${await res.text()}`);
    if (!stream) {
      const json = (await res.json()) as { choices?: { finish_reason?: string }[] };
      return record(json.choices?.[0]?.finish_reason !== undefined ? 'completed' : 'failed', 'no finish_reason');
    }
    const { text, done } = await readSse(res);
    record(done && !text.includes('"error"') ? 'completed' : 'failed', `stream: ${text.slice(-200)}`);
  } catch (err) {
    record('failed', (err as Error).message);
  }
}

async function slowRequest(base: URL): Promise<void> {
  const kind = random() < 0.5 ? 'chat' : 'text';
  try {
    const res = await post(base, kind, body(kind, true, slowTokens, true));
    if (res.status !== 200) return record(res.status === 429 || res.status === 503 ? 'rejected' : 'failed', `HTTP ${res.status}`);
    // Throttled by bytes, not chunks: a chunk holds whatever the socket had, many events when behind.
    const { text, done } = await readSse(res, async (_n, bytes) => {
      await new Promise((r) => setTimeout(r, (1000 * bytes) / slowBytesPerSecond));
      return true;
    });
    if (done && !text.includes('"error"')) record('slow-completed');
    else if (text.includes('"error"')) record('slow-cut');
    else record('failed', `slow stream broken: ${text.slice(-200)}`);
  } catch (err) {
    // A server that disconnects a reader that fell too far behind ends its stream this way.
    record('slow-cut', (err as Error).message);
  }
}

async function client(base: URL, slow: boolean): Promise<void> {
  while (issued < numRequests) {
    issued++;
    await (slow ? slowRequest(base) : fastRequest(base));
  }
}

// ---- main ---------------------------------------------------------------------------------------

const MiB = 2 ** 20;

async function main(): Promise<void> {
  const started = args.url === undefined ? await startServer() : null;
  const base = started?.base ?? new URL(args.url as string);
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(base.hostname)) throw new Error(`--url ${base}: only loopback addresses are allowed`);
  const loadBefore = loadAverage();
  try {
    const atStart = await sample(base);
    // Warm-up: the first few hundred requests fill pools, JIT and allocator arenas; growth is measured after them.
    const warmupRequests = Math.min(500, Math.floor(numRequests / 10));
    let warm: ServerSample | null = null;
    // RSS at each tenth of the run: a leak shows as a line that keeps rising, not a plateau.
    const rssCurve: { requests: number; rssMiB: number }[] = [];
    const t0 = performance.now();
    let running = true;
    const clients = Promise.all(Array.from({ length: numConnections }, (_, i) => client(base, i < numSlowReaders))).finally(() => (running = false));
    while (running) {
      await new Promise((r) => setTimeout(r, 200));
      if (warm === null && issued >= warmupRequests) warm = await sample(base);
      if (issued >= ((rssCurve.length + 1) * numRequests) / 10 && rssCurve.length < 9) {
        rssCurve.push({ requests: issued, rssMiB: Math.round((await sample(base)).rssBytes / MiB) });
      }
    }
    await clients;
    const seconds = (performance.now() - t0) / 1000;
    const atEnd = await sample(base);
    // The last aborts reach the engine a step later: wait (bounded) for the gauges to settle.
    let settled = atEnd;
    const settleStart = performance.now();
    while (!isIdle(settled) && performance.now() - settleStart < 30_000) {
      await new Promise((r) => setTimeout(r, 250));
      settled = await sample(base);
    }
    const settleSeconds = (performance.now() - settleStart) / 1000;
    const loadAfter = loadAverage();
    const warmSample = warm ?? atStart;

    const count = (o: Outcome): number => outcomes.get(o) ?? 0;
    const total = [...outcomes.values()].reduce((a, b) => a + b, 0);
    const rows: [string, string][] = [
      ['requests (connections; slow readers)', `${total.toLocaleString('en')} (${numConnections}; ${numSlowReaders})`],
      ['completed / aborted mid-stream by the client', `${count('completed').toLocaleString('en')} / ${count('aborted').toLocaleString('en')} (${((100 * count('aborted')) / total).toFixed(1)}%)`],
      ['slow readers: read to the end / cut by the server', `${count('slow-completed')} / ${count('slow-cut')}`],
      ['refused (429/503) / failed (5xx, broken stream)', `${count('rejected')} / ${count('failed')}`],
      ['wall time; requests/s', `${seconds.toFixed(0)} s; ${(total / seconds).toFixed(1)}`],
      ['server CPU seconds (per request)', `${(atEnd.cpuSeconds - atStart.cpuSeconds).toFixed(0)} (${((1000 * (atEnd.cpuSeconds - atStart.cpuSeconds)) / total).toFixed(1)} ms)`],
      ['server RSS: start / after warm-up / end', `${(atStart.rssBytes / MiB).toFixed(0)} / ${(warmSample.rssBytes / MiB).toFixed(0)} / ${(atEnd.rssBytes / MiB).toFixed(0)} MiB`],
      ['RSS growth after warm-up', `${((atEnd.rssBytes - warmSample.rssBytes) / MiB).toFixed(1)} MiB (${((100 * (atEnd.rssBytes - warmSample.rssBytes)) / warmSample.rssBytes).toFixed(1)}%)`],
      ['server RSS at each tenth of the run', rssCurve.map((p) => p.rssMiB).join(', ') + ' MiB'],
      ['JS heap used: after warm-up / end', `${(warmSample.heapUsedBytes / MiB).toFixed(0)} / ${(atEnd.heapUsedBytes / MiB).toFixed(0)} MiB`],
      [
        'after the run: running, waiting, KV usage, KV pages, state bytes',
        `${settled.running}, ${settled.waiting}, ${settled.kvUsage}, ${settled.kvPagesUsed}, ${settled.stateBytes} (${isIdle(settled) ? `idle ${settleSeconds.toFixed(1)} s after the last response` : 'NOT IDLE'})`,
      ],
      ['load average (1/5/15 min) before → after', `${loadBefore} → ${loadAfter}`],
    ];
    console.log('\n| measure | value |\n|---|---|');
    for (const [k, v] of rows) console.log(`| ${k} | ${v} |`);
    if (failures.length > 0) console.log(`\nfirst failures:\n${failures.join('\n')}`);
    mkdirSync(dirname(args.out), { recursive: true });
    writeFileSync(
      args.out,
      JSON.stringify({ requests: total, connections: numConnections, slowReaders: numSlowReaders, slowTokens, slowBytesPerSecond, abortFraction, maxTokens, seconds, outcomes: Object.fromEntries(outcomes), rssCurve, atStart, warm: warmSample, atEnd, settled, settleSeconds, loadBefore, loadAfter }, null, 2) + '\n',
    );
    if (!isIdle(settled) || count('failed') > 0) process.exitCode = 1;
  } finally {
    if (started !== null) {
      started.child.kill('SIGTERM');
      await new Promise((r) => started.child.once('exit', r));
    }
  }
}

await main();
