// Main-thread stalls of tokenizing and submitting a multi-megabyte prompt (DESIGN.md §1: "Tokenizing
// a multi-megabyte prompt must not block the HTTP thread either").
//
//   node --import tsx bench/tokenize.ts [--mb 13]
//
// A 1 ms setInterval probe runs on the main thread; "stall" is the longest gap between two ticks
// minus 1 ms, "total" the wall time of the step. Steps:
//   (a) encode of the whole text: default model models/spikingbrain-tiny (tokenizer.json, ByteLevel
//       pre-tokenizer: not split-safe, so one encode of the whole text) and the official Qwen2
//       tokenizer of test/fixtures/spikingbrain-7b (vocab.json + merges.txt, piecewise).
//   (b) handing the ids to the engine worker: postMessage({type:'submit', request}) to a worker that
//       only answers the length (the engine's worker does the same structured clone on receipt).
//
// PREDICTION (written before measuring):
//   (a) tiny, `encode` → number[]: ~5 M ids turned into a JS array in one block at ~45 ns/id: a stall
//       of ~250 ms, plus the 13 MB string → UTF-8 copy on the main thread (~10 ms).
//       Qwen2, piecewise `encode`: one ~20 K-id piece per turn, 1 MB strings handed to encodeBatch:
//       stalls of ~5-20 ms; total a few seconds (BPE on one pool thread).
//       Off-thread `encodeToInt32`: only the string clone into the worker (~10 ms for 13 MB Latin-1)
//       and receiving a transferred buffer (~0): stall ≤ 15 ms.
//   (b) number[] of 4 M Smis structured-cloned: ~10-20 ns/element → ~60 ms stall.
//       Int32Array cloned: one 16 MB memcpy, ~3 ms; transferred: ~0.
//
// MEASURED (2 cores, shared with a benchmark using ~1.8 of them, so stalls include waits for a core;
// "cpu" is what the main thread itself burned during its longest stall; two runs, 13 MB, 2026-11-28):
//                                         stall ms (cpu)           total s  ids
//   tiny  encode → number[] (in-thread)   405-672 (260-310)        14-19    3.56 M
//         + GC of the Encoding afterwards 825-1703 (560)           —        (not predicted: a Rust drop of
//                                                                            3.56 M token Strings on this thread)
//         encodeToInt32 (off-thread)      23-78 (0-10)             15-16    same ids
//   qwen2 encode → number[] (in-thread)   75-146 (0-80)            9-13     3.07 M
//         + GC of the Encodings           65-147 (40-60)
//         encodeToInt32 (off-thread)      16-143 (0-10)            10       same ids
//   submit number[] (tiny / qwen2)        207-254 (180-200) / 33-36 (20)   (tiny's binding array is slow to clone)
//   submit Int32Array, cloned             1.5-9 (0)
//   submit Int32Array, transferred        1.4-4.5 (0)
// So the prediction held for the submit (Int32Array ≈ free) and the off-thread encode (only waits for a
// core remain; the HTTP thread burns ≤ 10 ms); it missed the finalizer, the largest stall of all.

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { TextTokenizer } from '../src/engine/tokenizer.ts';

const args = process.argv.slice(2);
const mbArg = args.indexOf('--mb');
const targetMb = mbArg >= 0 ? Number(args[mbArg + 1]) : 13;
const root = resolve(import.meta.dirname, '..');
const TINY_DIR = resolve(root, 'models/spikingbrain-tiny');
const QWEN2_DIR = resolve(root, 'test/fixtures/spikingbrain-7b');

/** ~targetMb of varied English prose in paragraphs (deterministic), a little unicode mixed in. */
function buildText(bytes: number): string {
  const words = (
    'the of and to in that it was for on are as with his they at be this from have or one had by word but ' +
    'not what all were we when your can said there use an each which she do how their if will up other about ' +
    'out many then them these so some her would make like him into time has look two more write go see number ' +
    'no way could people my than first water been call who oil its now find long down day did get come made ' +
    'may part over new sound take only little work know place year live me back give most very after thing our ' +
    'just name good sentence man think say great where help through much before line right too mean old any ' +
    'same tell boy follow came want show also around form three small set put end does another well large must ' +
    'café naïve 42 1999 résumé Zürich'
  ).split(' ');
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const parts: string[] = [];
  let length = 0;
  while (length < bytes) {
    const sentences: string[] = [];
    for (let s = 3 + rand(5); s > 0; s--) {
      const n = 6 + rand(14);
      const ws: string[] = [];
      for (let i = 0; i < n; i++) ws.push(words[rand(words.length)] as string);
      const first = ws[0] as string;
      ws[0] = first.charAt(0).toUpperCase() + first.slice(1);
      sentences.push(ws.join(' ') + (rand(5) === 0 ? '?' : '.'));
    }
    const paragraph = sentences.join(' ') + '\n\n';
    parts.push(paragraph);
    length += paragraph.length;
  }
  return parts.join('');
}

interface Measured {
  readonly stallMs: number;
  readonly totalMs: number;
  /** CPU time this thread spent during its longest stall (Linux; NaN elsewhere): ≈ stallMs means it
   * was busy (a real stall), ≈ 0 that it was only waiting for a core (the machine was loaded). */
  readonly stallCpuMs: number;
}

/** CPU time of the main thread so far, in ms (10 ms resolution), from /proc; NaN where there is none. */
function mainThreadCpuMs(): number {
  try {
    const fields = (readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8').split(') ')[1] ?? '').split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, in 10 ms ticks
  } catch {
    return NaN;
  }
}

/** Runs `fn` with a 1 ms probe on this thread: the longest gap between ticks, less the 1 ms period. */
async function measure(fn: () => Promise<unknown>): Promise<Measured> {
  let last = 0;
  let lastCpu = 0;
  let maxGap = 0;
  let maxGapCpu = 0;
  const tick = (): void => {
    const now = performance.now();
    const cpu = mainThreadCpuMs();
    if (now - last > maxGap) {
      maxGap = now - last;
      maxGapCpu = cpu - lastCpu;
    }
    last = now;
    lastCpu = cpu;
  };
  const probe = setInterval(tick, 1);
  await new Promise((r) => setTimeout(r, 20)); // let the probe settle
  last = performance.now();
  lastCpu = mainThreadCpuMs();
  maxGap = 0;
  const t0 = performance.now();
  await fn();
  const totalMs = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 5)); // catch a stall at the very end
  tick();
  clearInterval(probe);
  return { stallMs: Math.max(0, maxGap - 1), totalMs, stallCpuMs: maxGapCpu };
}

function row(step: string, m: Measured, note: string): void {
  console.log(
    `${step.padEnd(44)} stall ${m.stallMs.toFixed(1).padStart(7)} ms (cpu ${m.stallCpuMs.toFixed(0).padStart(4)} ms)  ` +
      `total ${m.totalMs.toFixed(0).padStart(6)} ms  ${note}`,
  );
}

/** A worker that answers the length of what it received, like the engine worker's submit. */
function echoWorker(): Worker {
  const src =
    "const { parentPort } = require('node:worker_threads');" +
    'parentPort.on(\'message\', (m) => parentPort.postMessage(m.request.promptTokenIds.length));';
  return new Worker(src, { eval: true });
}

async function submit(worker: Worker, ids: readonly number[] | Int32Array<ArrayBuffer>, transfer: boolean): Promise<number> {
  const answered = new Promise<number>((r) => worker.once('message', r));
  const request = { requestId: 'bench', promptTokenIds: ids, reportProgress: false };
  if (transfer && ids instanceof Int32Array) worker.postMessage({ type: 'submit', request }, [ids.buffer]);
  else worker.postMessage({ type: 'submit', request });
  return answered;
}

/** A full GC on demand, to charge the native binding's finalizers to the step that made the garbage. */
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const text = buildText(targetMb * 1e6);
console.log(`prompt: ${(text.length / 1e6).toFixed(1)} M chars\n`);

const worker = echoWorker();
const only = args.includes('--tiny') ? ['tiny'] : args.includes('--qwen2') ? ['qwen2'] : ['tiny', 'qwen2'];
for (const [name, dir] of ([['tiny', TINY_DIR], ['qwen2', QWEN2_DIR]] as const).filter(([n]) => only.includes(n))) {
  const tok = await TextTokenizer.load(dir);
  let ids: number[] = [];
  gc();
  row(`(a) ${name}: encode → number[] (in-thread)`, await measure(async () => (ids = await tok.encode(text))), `${(ids.length / 1e6).toFixed(2)} M ids`);
  // The binding's Encoding objects (Rust structs: a String per token, offsets, …) are freed by their
  // finalizers when a GC collects them, on this thread: a deferred part of the in-thread encode.
  row(`(a) ${name}: GC after it (Encoding finalizers)`, await measure(async () => gc()), 'forced here; else at a random later GC');
  {
    // Start the tokenizer worker and load its tokenizer first (once per process, not per prompt).
    await tok.encodeToInt32(text.slice(0, 100_000));
    let out = new Int32Array(0);
    gc();
    row(`(a) ${name}: encodeToInt32 (off-thread)`, await measure(async () => (out = await tok.encodeToInt32(text))), `${(out.length / 1e6).toFixed(2)} M ids`);
    row(`(a) ${name}: GC after it`, await measure(async () => gc()), 'the Encoding was freed in the worker');
    const same = out.length === ids.length && out.every((v, i) => v === ids[i]);
    console.log(`    off-thread ids ${same ? 'equal' : 'DIFFER FROM'} the in-thread ids`);
    row(`(b) ${name}: submit Int32Array (cloned)`, await measure(() => submit(worker, out, false)), 'one memcpy');
    row(`(b) ${name}: submit Int32Array (transferred)`, await measure(() => submit(worker, out.slice(), true)), 'incl. a slice() copy');
  }
  row(`(b) ${name}: submit number[] (cloned)`, await measure(() => submit(worker, ids, false)), `${(ids.length / 1e6).toFixed(2)} M elements`);
  await tok.close();
}
await worker.terminate();
