// Resident memory of the server with the default model (issue 18): each configuration is started as
// its own process, one after the other, and driven through the same phases — idle after start, one
// short chat, 8 connections of short chats for --load-seconds, one ~2,400-token prompt — with VmRSS
// read from /proc after each. The ladder adds one change at a time, so the differences account for
// the memory: TypeScript through tsx → compiled JavaScript → int8 weights → a decode session → a
// smaller V8 young generation → one malloc arena (the new `npm start`). The last configuration's mappings are then
// broken down from /proc/<pid>/smaps, and its main-thread V8 heap is read from /metrics.
//
//   node --import tsx bench/memory.ts [--before DIR] [--load-seconds 8] [--only name,name]
//
// --before DIR: first, the server of another checkout as its `npm start` ran it (TypeScript through
// tsx), e.g. `git worktree add /tmp/before <commit>` with its node_modules.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { basename, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadAverage } from './common.ts';

const { values: args } = parseArgs({
  options: {
    before: { type: 'string' },
    'load-seconds': { type: 'string', default: '8' },
    only: { type: 'string' },
  },
});
const REPO = resolve(import.meta.dirname, '..');
const LOAD_SECONDS = Number(args['load-seconds']);

interface Variant {
  readonly name: string;
  readonly cwd: string;
  /** node arguments (before the server's flags). */
  readonly argv: readonly string[];
  /** GLIBC_TUNABLES (default: huge pages only, as `npm start` set it before). */
  readonly tunables?: string;
}

const VARIANTS: readonly Variant[] = [
  ...(args.before !== undefined ? [{ name: 'before: npm start of that checkout (tsx, float32, one session)', cwd: resolve(args.before), argv: ['--import', 'tsx', 'src/main/cli.ts', 'serve'] }] : []),
  { name: 'tsx, float32, one session', cwd: REPO, argv: ['--import', 'tsx', 'src/main/cli.ts', 'serve', '--weights', 'float32', '--decode-threads', '0'] },
  { name: 'compiled, float32, one session', cwd: REPO, argv: ['bin/spikeserve.js', 'serve', '--weights', 'float32', '--decode-threads', '0'] },
  { name: 'compiled, int8, one session', cwd: REPO, argv: ['bin/spikeserve.js', 'serve', '--weights', 'int8', '--decode-threads', '0'] },
  { name: 'compiled, int8, decode session (the defaults)', cwd: REPO, argv: ['bin/spikeserve.js', 'serve'] },
  { name: 'the same, --max-semi-space-size=1', cwd: REPO, argv: ['--max-semi-space-size=1', 'bin/spikeserve.js', 'serve'] },
  { name: 'the same, one malloc arena (npm start)', cwd: REPO, argv: ['--max-semi-space-size=1', 'bin/spikeserve.js', 'serve'], tunables: 'glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1' },
];

// autocannon ships no type declarations: the part used here.
type Autocannon = (opts: Record<string, unknown>, done: (err: Error | null, result: unknown) => void) => unknown;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      srv.close(() => (typeof a === 'object' && a !== null ? res(a.port) : rej(new Error('no port'))));
    });
  });
}

/** KiB fields of /proc/<pid>/status. */
function status(pid: number): { rss: number; hwm: number; anon: number; file: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? NaN);
  return { rss: kib('VmRSS'), hwm: kib('VmHWM'), anon: kib('RssAnon'), file: kib('RssFile') };
}

/** Resident KiB by mapping, grouped: the node binary, onnxruntime, other shared objects, model files, anonymous. */
function smapsBreakdown(pid: number): [string, number][] {
  const groups = new Map<string, number>();
  let name = '';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head !== null) {
      const path = head[1] ?? '';
      name =
        path === '' || path.startsWith('[anon') ? 'anonymous (V8 heaps, malloc: onnxruntime weights and arenas, KV pages, stacks)'
          : path === '[heap]' ? 'malloc main arena ([heap])'
            : path.endsWith('/node') ? 'node binary'
              : path.includes('libonnxruntime') ? 'libonnxruntime.so'
                : path.endsWith('.data') || path.endsWith('.onnx') || path.endsWith('.safetensors') ? 'model files (mapped)'
                  : path.startsWith('[') ? path
                    : `other mapped files (${basename(path).replace(/\.so.*$/, '.so')}, …)`;
      if (name.startsWith('other mapped files')) name = 'other shared objects and files';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss !== null) groups.set(name, (groups.get(name) ?? 0) + Number(rss[1]));
  }
  return [...groups].sort((a, b) => b[1] - a[1]);
}

async function chat(base: string, content: string): Promise<void> {
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content }], max_tokens: 16, temperature: 0 }),
  });
  if (!res.ok) throw new Error(`chat: HTTP ${res.status}`);
  await res.json();
}

interface Measured {
  readonly variant: Variant;
  readonly phases: [string, ReturnType<typeof status>][];
  readonly breakdown: [string, number][];
  readonly mainHeapBytes: number | null;
}

async function measure(variant: Variant): Promise<Measured> {
  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, [...variant.argv, '--port', String(port), '--log-level', 'warn'], {
    cwd: variant.cwd,
    env: { ...process.env, GLIBC_TUNABLES: variant.tunables ?? 'glibc.malloc.hugetlb=1' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const pid = child.pid!;
  const base = `http://127.0.0.1:${port}`;
  try {
    for (let i = 0; ; i++) {
      if (child.exitCode !== null) throw new Error(`${variant.name}: the server exited`);
      if (await fetch(`${base}/health`).then((r) => r.ok, () => false)) break;
      if (i > 600) throw new Error(`${variant.name}: not healthy after 5 minutes`);
      await new Promise((r) => setTimeout(r, 500));
    }
    await new Promise((r) => setTimeout(r, 1000));
    const phases: [string, ReturnType<typeof status>][] = [['idle', status(pid)]];
    await chat(base, 'Hello!');
    phases.push(['1 chat', status(pid)]);
    await new Promise((done) =>
      autocannon(
        {
          url: `${base}/v1/chat/completions`,
          connections: 8,
          duration: LOAD_SECONDS,
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ messages: [{ role: 'user', content: 'Write one short sentence about rivers.' }], max_tokens: 16, temperature: 0 }),
        },
        done,
      ),
    );
    phases.push([`8 connections, ${LOAD_SECONDS} s`, status(pid)]);
    await chat(base, 'In the beginning God created the heaven and the earth. '.repeat(200));
    await new Promise((r) => setTimeout(r, 2000));
    phases.push(['a 2,400-token prompt', status(pid)]);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    const heap = /^nodejs_heap_size_total_bytes (\d+)/m.exec(metrics)?.[1];
    return { variant, phases, breakdown: smapsBreakdown(pid), mainHeapBytes: heap === undefined ? null : Number(heap) };
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
}

const mib = (kib: number): string => (kib / 1024).toFixed(0);

async function main(): Promise<void> {
  const loadAtStart = loadAverage();
  const only = args.only?.split(',');
  const results: Measured[] = [];
  for (const [i, v] of VARIANTS.entries()) {
    if (only !== undefined && !only.includes(String(i))) continue;
    process.stderr.write(`measuring: ${v.name}\n`);
    results.push(await measure(v));
  }
  console.log(`\nserver resident memory (MiB, VmRSS; peak = VmHWM), models/spikingbrain-tiny; load average ${loadAtStart} → ${loadAverage()}`);
  const phaseNames = results[0]?.phases.map(([n]) => n) ?? [];
  console.log(`| configuration | ${phaseNames.join(' | ')} | peak | anon / file at the end | main-thread V8 heap |`);
  console.log(`|---|${phaseNames.map(() => '---|').join('')}---|---|---|`);
  for (const r of results) {
    const end = r.phases[r.phases.length - 1]![1];
    console.log(`| ${r.variant.name} | ${r.phases.map(([, s]) => mib(s.rss)).join(' | ')} | ${mib(end.hwm)} | ${mib(end.anon)} / ${mib(end.file)} | ${r.mainHeapBytes === null ? '-' : (r.mainHeapBytes / 2 ** 20).toFixed(0)} |`);
  }
  const last = results[results.length - 1];
  if (last !== undefined) {
    console.log(`\n${last.variant.name}, after the last phase, by mapping (MiB resident):`);
    for (const [name, kib] of last.breakdown) if (kib >= 512) console.log(`| ${name} | ${mib(kib)} |`);
  }
}

await main();
