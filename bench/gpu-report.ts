// What bench/gpu.ts measured, as JSON (written after every step) and as one markdown table.
// Every number in the table is measured in that run, except rows marked EXTRAPOLATED (a full-prompt
// TTFT computed from measured chunks, never printed as a measurement).
import type { Device } from '../src/engine/model/device.ts';
import type { CopyCost } from './gpu-copy-cost.ts';
import type { IoProbeResult } from './gpu-io-probe.ts';

export interface ModelRow {
  readonly model: string;
  readonly what: string;
  /** 'measured', or 'extrapolated': computed from measured chunks, not a measurement. */
  readonly kind: 'measured' | 'extrapolated';
  readonly tokens: number;
  readonly tokPerSec: number;
  readonly tflops: number;
  /** Wall time of what the row covers (prefill: the TTFT from position 0; decode: ms per step / 1000). */
  readonly seconds: number;
  readonly note?: string;
}

export interface CopyCostEntry {
  /** P: past slots the decode step feeds (the window once it is full). */
  readonly pastTokens: number;
  readonly decodeMsPerStep: number;
  readonly rows: readonly CopyCost[];
}

export interface ModelEntry {
  readonly name: string;
  readonly params: number;
  readonly layers: number;
  /** Build of the random-weight model (null: the cache had it). */
  build: { seconds: number; bytes: number; processes: number } | null;
  /** Model.load after the build: onnxruntime session creation (weights to the device). */
  sessionSec: number;
  readonly rows: ModelRow[];
  copyCost?: CopyCostEntry;
}

export interface Results {
  device: Device;
  gpu: string;
  onnxruntime: string;
  node: string;
  graph: string;
  executionProviders: string[];
  matmul?: { m: number; n: number; chain: number; tflops: number; secPerRun: number };
  parity: { graph: string; maxAbsDiff: number; maxAbsLogit: number; tokens: number; weightDtype: string }[];
  models: ModelEntry[];
  ioProbe?: IoProbeResult | { status: 'skipped'; reason: string };
  /** --build-only: the build alone. */
  buildOnly?: { model: string; seconds: number; bytes: number; processes: number; cached: boolean };
  errors: string[];
  skipped: string[];
}

export const kTok = (n: number): string => (n % 1024 === 0 ? `${n / 1024}K` : `${n}`);

export function mb(bytes: number): string {
  if (bytes < 1e3) return `${bytes} B`;
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} KB`;
}

const rate = (tokPerSec: number): string => `${tokPerSec.toFixed(tokPerSec < 100 ? 1 : 0)} tok/s`;

function ioProbeRows(p: IoProbeResult | { status: 'skipped'; reason: string }): string[] {
  if (p.status === 'skipped') return [`| GPU-resident GLA states (io probe) | skipped: ${p.reason} | | |`];
  const rows: string[] = [];
  const how = p.status === 'ok'
    ? 'ok'
    : p.status === 'crashed'
      ? `**CRASHED** (signal ${p.signal ?? '?'}, exit code ${p.exitCode ?? 'none'})`
      : p.status === 'timeout'
        ? '**TIMED OUT** (child killed)'
        : `**FAILED** (exit code ${p.exitCode ?? 'none'}${p.error !== undefined ? `: ${p.error}` : ''})`;
  const where = p.device === 'cpu' ? 'not applicable on cpu: no device memory; the probe\'s loop ran with outputs on the host' : `child process, ${p.seconds.toFixed(0)} s`;
  rows.push(`| GPU-resident GLA states (io probe): ${where} | ${how} | | |`);
  if (p.tiny !== undefined) {
    rows.push(`| io probe, tiny graph: y = x + 1 kept on the device and fed back ${p.tiny.steps}× | output location ${p.tiny.outputLocation}, max abs diff ${p.tiny.maxAbsDiff.toExponential(1)} | | |`);
  }
  if (p.model !== undefined) {
    const m = p.model;
    const saved = m.msPerStepHost - m.msPerStepGpuStates;
    rows.push(
      `| io probe, ${m.name}: ${m.steps} decode steps after a ${kTok(m.promptTokens)} prompt, new_state.* at ${m.stateLocation} fed back vs host round trip | ` +
        `max abs diff ${m.maxAbsDiff.toExponential(2)} (logits up to ${m.maxAbsLogit.toFixed(1)}); ${m.msPerStepGpuStates.toFixed(2)} vs ${m.msPerStepHost.toFixed(2)} ms/step ` +
        `(${saved >= 0 ? '−' : '+'}${Math.abs(saved).toFixed(2)} ms; ` +
        (p.device === 'cpu' ? 'cpu: nothing is copied either way) | | |' : `${mb(m.stateBytesAvoided)} of state copies avoided, window ${mb(m.windowBytesStillCopied)} still copied in) | | |`),
    );
    rows.push('| io probe: past_key/past_value | not probed: the graph outputs only the new slot (present_*), not the updated window, so there is nothing to feed back | | |');
  }
  if (p.status !== 'ok' && p.stderrTail !== '') {
    rows.push(`| io probe stderr (last lines) | ${p.stderrTail.replace(/\|/g, '\\|').replace(/\n/g, ' ⏎ ').slice(0, 600)} | | |`);
  }
  return rows;
}

function copyCostRows(name: string, c: CopyCostEntry, onGpu: boolean): string[] {
  const label = { window: 'all of it (states + window)', states: 'without the window (as if it stayed on the device)', none: 'without window and states (both resident)' } as const;
  return c.rows.map((r) => {
    const share = `${((100 * r.msPerRun) / c.decodeMsPerStep).toFixed(0)}% of the measured decode step (${c.decodeMsPerStep.toFixed(1)} ms)`;
    const what = `${name}: decode-step IO at P = ${c.pastTokens}, ${label[r.variant]}: ${r.tensorsIn} tensors in (${mb(r.hostToDeviceBytes)}), ${r.tensorsOut} out (${mb(r.deviceToHostBytes)})`;
    const cpuNote = onGpu ? '' : ' (cpu: no device copies, run overhead only)';
    return `| ${what} | ${r.msPerRun.toFixed(2)} ms per run${cpuNote} = ${share} | | |`;
  });
}

export function printTable(r: Results, chunkTokens: number, weightDtype: string, jsonPath: string | null): void {
  const onGpu = r.device !== 'cpu';
  const mm = r.matmul?.tflops;
  console.log(`\nspikeserve GPU bench — device ${r.device} (${r.executionProviders.join(' → ')}), GPU: ${r.gpu}`);
  console.log(`onnxruntime-node ${r.onnxruntime}, node ${r.node}, ${r.graph} graph, weights ${weightDtype} (${weightDtype === 'int8' || weightDtype === 'int4' ? 'MatMulNBits, activations int8 per block' : 'compute float32'}), prefill chunk ${chunkTokens}`);
  console.log('');
  console.log('| measure | value | TFLOP/s | share of MatMul rate |');
  console.log('|---|---|---|---|');
  if (r.buildOnly !== undefined) {
    const b = r.buildOnly;
    console.log(`| ${b.model}: build only (random weights ${weightDtype}) | ${b.cached ? 'cached, nothing built' : `${b.seconds.toFixed(1)} s, ${mb(b.bytes)}, ${b.processes} process${b.processes === 1 ? '' : 'es'}`} | | |`);
  }
  if (r.matmul !== undefined) {
    const m = r.matmul;
    console.log(`| MatMul rate: ${m.chain} × [${m.m}×${m.n}]·[${m.n}×${m.n}] fp32 | ${(m.secPerRun * 1000).toFixed(1)} ms/run | ${m.tflops.toFixed(2)} | 100% |`);
  }
  for (const p of r.parity) {
    console.log(`| parity vs CPU fp32 (tiny model, ${p.graph} graph, ${p.tokens} tokens, device weights ${p.weightDtype}) | max abs diff ${p.maxAbsDiff.toExponential(2)} (target ≤ 1e-2; logits up to ${p.maxAbsLogit.toFixed(1)}) | | |`);
  }
  if (r.ioProbe !== undefined) for (const row of ioProbeRows(r.ioProbe)) console.log(row);
  for (const m of r.models) {
    const build = m.build === null ? 'cached' : `built in ${m.build.seconds.toFixed(1)} s (${mb(m.build.bytes)}, ${m.build.processes} process${m.build.processes === 1 ? '' : 'es'})`;
    console.log(`| ${m.name}: ${(m.params / 1e9).toFixed(2)}B params, ${m.layers} layers | ${build}; session ${m.sessionSec.toFixed(1)} s | | |`);
    for (const row of m.rows) {
      const share = mm === undefined || row.tflops === 0 ? '' : `${((100 * row.tflops) / mm).toFixed(1)}%`;
      const tf = row.tflops === 0 ? '' : row.tflops.toFixed(3);
      if (row.kind === 'extrapolated') {
        console.log(`| ${m.name}: ${row.what} — **EXTRAPOLATED, not measured**${row.note !== undefined ? ` (${row.note})` : ''} | ≈ ${row.seconds.toFixed(row.seconds < 10 ? 1 : 0)} s TTFT (≈ ${rate(row.tokPerSec)}) | | |`);
      } else if (row.what.startsWith('decode')) {
        console.log(`| ${m.name}: ${row.what} | ${rate(row.tokPerSec)} (${(row.seconds * 1000).toFixed(1)} ms/step) | ${tf} | ${share} |`);
      } else {
        console.log(`| ${m.name}: ${row.what}${row.note !== undefined ? ` (${row.note})` : ''} | ${rate(row.tokPerSec)} (${row.seconds.toFixed(1)} s) | ${tf} | ${share} |`);
      }
    }
    if (m.copyCost !== undefined) for (const row of copyCostRows(m.name, m.copyCost, onGpu)) console.log(row);
  }
  for (const s of r.skipped) console.log(`| skipped | ${s} | | |`);
  for (const e of r.errors) console.log(`| error | ${e} | | |`);
  if (jsonPath !== null) console.log(`\nJSON: ${jsonPath}`);
}
