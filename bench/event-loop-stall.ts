// The HTTP thread's worst stall while the server handles one large or heavy request (issue: "nothing
// long on the HTTP thread"). The server (default model, --max-model-len 65536, so a prompt too long
// to run is refused right after it is tokenized) runs in this process with a 1 ms interval probe;
// each request is built and sent by a child process, so the client's own work is not measured.
//
//   node --expose-gc --import tsx bench/event-loop-stall.ts [--only NAME] [--skip NAME] [--repeat N] [--gap-times]
//
// (--repeat: each request N times, then the median of the longest run between two ticks; --gap-times:
// where the gaps lie on the clock of a `node --cpu-prof` profile of this process.)
//
// Columns: status of the answer, request body MiB, response MiB, the probe's longest gap minus 1 ms
// ("stall") with the main thread's time running, waiting for a core (Linux schedstat: on a loaded
// 2-core machine much of a gap is waiting) and collecting garbage during it ('gc' performance
// entries), the most the main thread ran between two ticks and the garbage collection in that gap,
// and the request's wall time. The tool-call parser is measured on its own (no HTTP): a 256 KiB call
// streamed 4 characters at a time, total time and the longest single piece.
//
// PREDICTION (written before measuring, for the code before and after the change):
//   64 MiB chat body: before, Buffer.concat + UTF-8 check + JSON.parse + the clone into the tokenizer
//   worker, each in one block: ~1-2 s; after, each chunk is handed on as it arrives and the body is
//   parsed, rendered and tokenized in the prompt worker: stalls ≤ 10-20 ms (the machine's load adds
//   waits for a core).
//   48 MiB token-id body: before ~2-3 s (JSON.parse of 8 M numbers, schema check, Int32Array.from);
//   after ≤ 20 ms.
//   2,000 messages / 128 tools: before ~100-500 ms of template rendering; after ≤ 10-20 ms.
//   /detokenize of 262,144 ids: before ~50-100 ms; after ≤ 10 ms.
//   /tokenize of 16 MiB (~4 M ids in the answer): before ~1 s (serializing the array); after ≤ 20 ms.
//   echo + 20 logprobs of 4,096 prompt tokens: ~50-100 ms of formatting before and after (bounded by
//   --max-prompt-logprobs-tokens, not moved off the thread).
//   Tool-call parser, 256 KiB block in 4-char pieces: before quadratic (~10 s), after ~50 ms.
//
// PREDICTION, second round (the remaining 39-174 ms; written after profiling the server thread with
// --cpu-prof / --trace-gc, before measuring the changes, except three spot runs noted below):
//   What runs: (1) the response serializer compiles Ajv checks for the unions of a response schema on
//   the route's first answer (chat: ~60-140 ms; the 128-tools row is the first chat answer) and checks
//   every logprob against them; (2) echo + logprobs: the engine's message with 4,096 × 21 logprob
//   objects is deserialized here (~30-100 ms, src/engine, not changed here), the logprob records are
//   built, then the 2 MiB answer serialized and written at once; (3) /detokenize: the 1 MiB text
//   escaped, measured and written at once (~40 ms); (4) /tokenize: slices of 65,536 ids (~20 ms each
//   under load); (5) large bodies: each 64 KiB chunk is copied into fresh memory before it is posted to
//   the prompt worker (page faults: ~0.3 ms a chunk on this VM, up to 32 chunks per socket read burst),
//   and those copies count as external memory until a GC, which then runs a full mark-compact of the
//   ~20-30 MiB heap (30-100 ms); (6) the tool-call parser joins 65,536 pieces when the call closes.
//   After (schemas without unions, answers in slices, shared-memory body ring, amortized joins):
//   128 tools ≤ 15 ms (spot runs, cold, longest run between two ticks: 57 → 14 ms); /detokenize
//   ≤ 20 ms (spot: 44 → 22); /tokenize ≤ 15 ms; echo + logprobs ≥ 30 ms left, all of it the engine
//   message's deserialization (spot: 159 → 57); large bodies ≤ 20 ms running outside GC, GC pauses
//   less frequent but not gone (Node's own socket buffers remain); tool-call parser's longest piece
//   ~30 → ≤ 5 ms. Measured: bench/README.md, last section.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { PerformanceObserver } from 'node:perf_hooks';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { Engine } from '../src/engine/engine.ts';
import { TextTokenizer } from '../src/engine/tokenizer.ts';
import { buildApp } from '../src/main/app.ts';
import { ToolCallParser } from '../src/routes/chat-completions/tool-calls.ts';
import { loadChatAssets } from '../src/routes/chat-template.ts';
import { DEFAULT_MODEL_DIR, parseServerConfig } from '../src/server/config.ts';
import { ServerMetrics } from '../src/server/metrics.ts';
import { loadAverage } from './common.ts';

const MiB = 2 ** 20;

interface Scenario {
  readonly name: string;
  readonly path: string;
  /** Builds the request body (in the client process). */
  readonly body: () => string;
}

const VERSE = 'And it came to pass, in the days of the judges, that there was a famine in the land. ';

const SCENARIOS: readonly Scenario[] = [
  {
    name: 'chat, one message of 63.9 MiB',
    path: '/v1/chat/completions',
    body: () => JSON.stringify({ messages: [{ role: 'user', content: VERSE.repeat(Math.floor((64 * MiB - 4096) / VERSE.length)) }], max_tokens: 1 }),
  },
  {
    name: 'completions, 8 M token ids',
    path: '/v1/completions',
    body: () => JSON.stringify({ prompt: Array.from({ length: 8_000_000 }, (_, i) => 3 + ((i * 7919) % 4000)), max_tokens: 1 }),
  },
  {
    name: 'chat, 2,000 messages',
    path: '/v1/chat/completions',
    body: () =>
      JSON.stringify({
        messages: Array.from({ length: 2000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `${VERSE} (${i})` })),
        max_tokens: 1,
      }),
  },
  {
    name: 'chat, 128 tools',
    path: '/v1/chat/completions',
    body: () =>
      JSON.stringify({
        messages: [{ role: 'user', content: 'What is the weather?' }],
        tools: Array.from({ length: 128 }, (_, i) => ({
          type: 'function',
          function: { name: `tool_${i}`, description: VERSE.repeat(8), parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } } } },
        })),
        max_tokens: 1,
      }),
  },
  {
    name: '/detokenize, 262,144 ids',
    path: '/detokenize',
    body: () => JSON.stringify({ tokens: Array.from({ length: 262_144 }, (_, i) => 3 + ((i * 7919) % 4000)) }),
  },
  {
    name: '/tokenize, 16 MiB prompt',
    path: '/tokenize',
    body: () => JSON.stringify({ prompt: VERSE.repeat(Math.floor((16 * MiB) / VERSE.length)) }),
  },
  {
    name: 'echo + 20 logprobs, 4,096 prompt tokens',
    path: '/v1/completions',
    body: () => JSON.stringify({ prompt: Array.from({ length: 4096 }, (_, i) => 3 + ((i * 7919) % 4000)), max_tokens: 1, echo: true, logprobs: 20 }),
  },
];

/**
 * Sent before the measured ones, unmeasured: the first large body starts the prompt worker (and its
 * shared ring), the first answer of each route warms its code. The table is the steady state of a
 * server that has served such requests before; one-time costs of a cold process are not in it.
 */
const WARM_UPS: readonly Scenario[] = [
  { name: 'warm-up: /tokenize, 384 KiB prompt', path: '/tokenize', body: () => JSON.stringify({ prompt: VERSE.repeat(Math.floor((384 * 1024) / VERSE.length)) }) },
  { name: 'warm-up: chat', path: '/v1/chat/completions', body: () => JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, logprobs: true, top_logprobs: 2 }) },
  { name: 'warm-up: echo + logprobs', path: '/v1/completions', body: () => JSON.stringify({ prompt: [5, 6, 7], max_tokens: 1, echo: true, logprobs: 2 }) },
  { name: 'warm-up: /detokenize', path: '/detokenize', body: () => JSON.stringify({ tokens: [5, 6, 7] }) },
];

/** Client mode: build the body, send it, print status and response size. */
async function client(name: string, port: number): Promise<void> {
  const scenario = [...WARM_UPS, ...SCENARIOS].find((s) => s.name === name);
  if (scenario === undefined) throw new Error(`no scenario ${name}`);
  const body = Buffer.from(scenario.body());
  process.send?.({ ready: body.length });
  await new Promise<void>((r) => process.once('message', () => r()));
  const result = await new Promise<{ status: number; bytes: number }>((resolvePromise, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: scenario.path, headers: { 'content-type': 'application/json', 'content-length': body.length } }, (res) => {
      let bytes = 0;
      res.on('data', (d: Buffer) => (bytes += d.length));
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, bytes }));
    });
    req.on('error', reject);
    req.end(body);
  });
  process.send?.({ done: result });
}

/** The main thread's time on a core and waiting for one, ns (Linux schedstat; zeros elsewhere). */
function mainThreadSched(): { runNs: number; waitNs: number } {
  try {
    const [run, wait] = readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ');
    return { runNs: Number(run), waitNs: Number(wait) };
  } catch {
    return { runNs: 0, waitNs: 0 };
  }
}

/** One gap between two ticks: its length (minus the interval) and the main thread's running and waiting during it, ms; where it lies (performance.now()). */
interface Gap {
  readonly ms: number;
  readonly runMs: number;
  readonly waitMs: number;
  readonly fromMs: number;
  readonly toMs: number;
}
const NO_GAP: Gap = { ms: 0, runMs: 0, waitMs: 0, fromMs: 0, toMs: 0 };

/** A gap as reported: with the main thread's garbage collection inside it, ms. */
type ReportedGap = Gap & { readonly gcMs: number };

/**
 * 1 ms interval probe: the longest gap between ticks (minus the interval) and the gap in which the
 * main thread ran longest, each with how much of it the main thread spent running (its own work, GC
 * included), waiting for a core (the machine's load) and collecting garbage (the 'gc' performance
 * entries, which only ever name this thread's heap).
 */
class StallProbe {
  #last = performance.now();
  #lastSched = mainThreadSched();
  #longest: Gap = NO_GAP;
  #busiest: Gap = NO_GAP;
  #gcs: { startTime: number; duration: number }[] = [];
  readonly #gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) this.#gcs.push({ startTime: e.startTime, duration: e.duration });
  });
  readonly #timer = setInterval(() => {
    const now = performance.now();
    const sched = mainThreadSched();
    const gap: Gap = {
      ms: now - this.#last - 1,
      runMs: (sched.runNs - this.#lastSched.runNs) / 1e6,
      waitMs: (sched.waitNs - this.#lastSched.waitNs) / 1e6,
      fromMs: this.#last,
      toMs: now,
    };
    if (gap.ms > this.#longest.ms) this.#longest = gap;
    if (gap.runMs > this.#busiest.runMs) this.#busiest = gap;
    this.#last = now;
    this.#lastSched = sched;
  }, 1);

  constructor() {
    this.#gcObserver.observe({ entryTypes: ['gc'] });
  }

  reset(): void {
    this.#last = performance.now();
    this.#lastSched = mainThreadSched();
    this.#longest = NO_GAP;
    this.#busiest = NO_GAP;
    this.#gcs = [];
  }

  /** The longest gap since reset() and the one the main thread ran longest in. */
  get worst(): { longest: ReportedGap; busiest: ReportedGap } {
    return { longest: this.#withGc(this.#longest), busiest: this.#withGc(this.#busiest) };
  }

  #withGc(gap: Gap): ReportedGap {
    let gcMs = 0;
    for (const g of this.#gcs) gcMs += Math.max(0, Math.min(gap.toMs, g.startTime + g.duration) - Math.max(gap.fromMs, g.startTime));
    return { ...gap, gcMs };
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#gcObserver.disconnect();
  }
}

function runScenario(scenario: Scenario, port: number, probe: StallProbe): Promise<{ status: number; bodyBytes: number; responseBytes: number; stall: StallProbe['worst']; wallMs: number }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', import.meta.filename, '--client', scenario.name, '--port', String(port)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let bodyBytes = 0;
    let start = 0;
    child.on('message', (msg: { ready?: number; done?: { status: number; bytes: number } }) => {
      if (msg.ready !== undefined) {
        bodyBytes = msg.ready;
        probe.reset();
        start = performance.now();
        child.send('go');
      } else if (msg.done !== undefined) {
        const wallMs = performance.now() - start;
        const done = msg.done;
        // The 'gc' entries of the last moments reach the observer a turn or two later.
        setTimeout(() => resolvePromise({ status: done.status, bodyBytes, responseBytes: done.bytes, stall: probe.worst, wallMs }), 20);
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) reject(new Error(`client ${scenario.name} exited ${code}`));
    });
  });
}

/** The tool-call parser alone: one call of `bytes` streamed `pieceChars` at a time; all of it, and the longest single piece, ms. */
function toolCallParserMs(bytes: number, pieceChars: number): { totalMs: number; longestPieceMs: number } {
  const reply = `<tool_call>\n{"name": "f", "arguments": {"data": "${'y'.repeat(bytes)}"}}\n</tool_call>`;
  const start = performance.now();
  const parser = new ToolCallParser();
  let calls = 0;
  let longestPieceMs = 0;
  for (let at = 0; at < reply.length; at += pieceChars) {
    const t = performance.now();
    calls += parser.push(reply.slice(at, at + pieceChars)).calls.length;
    longestPieceMs = Math.max(longestPieceMs, performance.now() - t);
  }
  calls += parser.finish().calls.length;
  if (calls !== 1) throw new Error('the parser missed the call');
  return { totalMs: performance.now() - start, longestPieceMs };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const clientAt = args.indexOf('--client');
  if (clientAt >= 0) return client(args[clientAt + 1] as string, Number(args[args.indexOf('--port') + 1]));
  const onlyAt = args.indexOf('--only');
  const only = onlyAt >= 0 ? args[onlyAt + 1] : undefined;
  const gapTimes = args.includes('--gap-times');
  const skipAt = args.indexOf('--skip');
  const skip = skipAt >= 0 ? args[skipAt + 1] : undefined;
  const repeatAt = args.indexOf('--repeat');
  const repeat = repeatAt >= 0 ? Number(args[repeatAt + 1]) : 1;

  const modelDir = DEFAULT_MODEL_DIR;
  const tokenizer = await TextTokenizer.load(modelDir);
  const engine = await Engine.start({ modelDir, maxModelLen: 65536, intraOpThreads: 1, cacheDir: resolve(import.meta.dirname, '..', '.cache', 'bench-onnx') });
  const config = parseServerConfig(['--model', modelDir, '--max-model-len', '65536'], {});
  const app = buildApp({ engine, tokenizer, chatAssets: await loadChatAssets(modelDir, tokenizer), config, metrics: new ServerMetrics(config.servedModelName), version: 'bench', logger: false });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const port = (app.server.address() as AddressInfo).port;
  const probe = new StallProbe();

  console.log(`load average at start: ${loadAverage()}`);
  console.log('| request | status | body MiB | response MiB | worst stall ms | of it: running / waiting for a core / GC ms | longest run between two ticks ms | of it: GC ms | wall s |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  // Where a gap lies on the clock of a --cpu-prof profile (CLOCK_MONOTONIC µs, its samples' clock).
  const onProfileClock = (gap: ReportedGap): string => {
    const offsetUs = Number(process.hrtime.bigint() / 1000n) - performance.now() * 1000;
    return `${Math.round(gap.fromMs * 1000 + offsetUs)}..${Math.round(gap.toMs * 1000 + offsetUs)} µs`;
  };
  for (const warmUp of WARM_UPS) await runScenario(warmUp, port, probe);
  // With --expose-gc: start from a collected heap, so the start-up's garbage is not collected inside the first row.
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((r) => setTimeout(r, 1000));
  for (const scenario of SCENARIOS) {
    if (only !== undefined && !scenario.name.includes(only)) continue;
    if (skip !== undefined && scenario.name.includes(skip)) continue;
    const busiestRuns: number[] = [];
    for (let run = 0; run < repeat; run++) {
      const r = await runScenario(scenario, port, probe);
      const { longest, busiest } = r.stall;
      busiestRuns.push(busiest.runMs);
      console.log(
        `| ${scenario.name} | ${r.status} | ${(r.bodyBytes / MiB).toFixed(1)} | ${(r.responseBytes / MiB).toFixed(2)} | ${longest.ms.toFixed(1)} | ${longest.runMs.toFixed(1)} / ${longest.waitMs.toFixed(1)} / ${longest.gcMs.toFixed(1)} | ${busiest.runMs.toFixed(1)} | ${busiest.gcMs.toFixed(1)} | ${(r.wallMs / 1000).toFixed(2)} |`,
      );
      if (gapTimes) console.log(`  longest gap ${onProfileClock(longest)}, busiest gap ${onProfileClock(busiest)}`);
    }
    if (repeat > 1) {
      const sorted = busiestRuns.sort((a, b) => a - b);
      console.log(`|   ${scenario.name}: longest run between two ticks over ${repeat} runs, median (min-max) | | | | | | ${(sorted[Math.floor(repeat / 2)] as number).toFixed(1)} (${(sorted[0] as number).toFixed(1)}-${(sorted[repeat - 1] as number).toFixed(1)}) | | |`);
    }
  }
  if (only === undefined || 'tool-call parser'.includes(only)) {
    // In the server each piece is one token's text, pushed as it is sampled: the longest push is the stall.
    const { totalMs, longestPieceMs } = toolCallParserMs(256 * 1024, 4);
    console.log(`| tool-call parser, a 256 KiB call in 4-char pieces (no HTTP) | — | — | — | ${totalMs.toFixed(1)} (all 65,563 pieces) | — | ${longestPieceMs.toFixed(1)} (one piece) | — | ${(totalMs / 1000).toFixed(2)} |`);
  }
  console.log(`load average at end: ${loadAverage()}`);
  probe.stop();
  await app.close();
  await engine.shutdown();
  await tokenizer.close();
}

await main();
