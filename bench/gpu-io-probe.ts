// Probe (issue 7): can the GLA states stay on the GPU between decode steps? onnxruntime-node 1.30
// returns outputs as GPU buffers with the session option `preferredOutputLocation` ('gpu-buffer':
// the tensor carries a native handle in `tensor.gpuBuffer`; it cannot be read back in Node, its
// `download` is not implemented) and takes such tensors as inputs. An earlier test of feeding one back
// aborted the Node process, so the probe runs in a child process (the bench's own script, re-run with
// `--probe-gpu-io ARGS`) and the parent turns an abort into a table row.
//
// The child reports, one line per stage on stdout (PROBE_PREFIX + JSON), so a crash still leaves the
// stages before it:
//   tiny   y = x + 1 on the device, y fed back as x for 5 steps (the mechanism alone);
//   model  a random model prefilled past its window, then N decode steps two ways, step by step:
//          host  decodeBatch: states and window copied host → GPU → host every step (the engine's path);
//          gpu   a second session whose new_state.* outputs stay on the GPU and are fed back as the next
//                step's state.* inputs; logits and present_* come back to the host. Both get the same
//                window (the host sequence's, before its step), so max |Δ logit| tests the state path.
// Only the states can stay: the graph takes the whole window past_key/past_value [B, Hkv, P, d] but
// outputs only the chunk's keys present_* [B, Hkv, T, d], so there is no output to feed back for it.
// A GPU-resident window needs a graph that writes the new slot into a device buffer (e.g. a ring
// updated in place, or GroupQueryAttention's shared past/present buffer).
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { parseModelConfig } from '../src/engine/model/config.ts';
import { resolveExecutionProviders, type Device } from '../src/engine/model/device.ts';
import { INPUT_IDS, LOGITS, NUM_LOGITS, PAST_POSITIONS, POSITIONS, pastKey, pastValue, presentKey, presentValue } from '../src/engine/model/io-names.ts';
import { Model } from '../src/engine/model/model.ts';
import { GraphBuilder, type WeightDtype } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { decodeBatch, newSequence, prefill, type Sequence } from '../src/engine/model/sequence.ts';

/** The flag that makes the bench script run as the probe's child. */
export const PROBE_FLAG = 'probe-gpu-io';
const PROBE_PREFIX = '@@gpu-io-probe ';

export interface IoProbeArgs {
  readonly device: Device;
  readonly name: string;
  /** The model's config.json (random weights, seed 1: the bench's own, so its build cache is hit). */
  readonly config: Record<string, unknown>;
  readonly fused: boolean;
  readonly weightDtype?: WeightDtype;
  readonly cacheDir: string;
  readonly threads: number;
  readonly promptTokens: number;
  readonly steps: number;
}

export interface TinyProbe {
  readonly steps: number;
  readonly outputLocation: string;
  readonly maxAbsDiff: number;
}

export interface ModelProbe {
  readonly name: string;
  readonly promptTokens: number;
  readonly steps: number;
  /** Where the session put new_state.* ('gpu-buffer' on a GPU; 'cpu' in the cpu dry run). */
  readonly stateLocation: string;
  readonly maxAbsDiff: number;
  readonly maxAbsLogit: number;
  /** Mean ms per decode step after 2 warm steps: session.run of the gpu path; decodeBatch of the host path. */
  readonly msPerStepGpuStates: number;
  readonly msPerStepHost: number;
  /** Bytes per step the gpu path no longer copies (states in + out), and the window it still copies in. */
  readonly stateBytesAvoided: number;
  readonly windowBytesStillCopied: number;
}

export interface IoProbeResult {
  readonly status: 'ok' | 'failed' | 'crashed' | 'timeout';
  readonly device: Device;
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly seconds: number;
  readonly tiny?: TinyProbe;
  readonly model?: ModelProbe;
  /** The child's own error message (a JS exception it caught), if any. */
  readonly error?: string;
  /** The last lines of the child's stderr: an abort's message is there. */
  readonly stderrTail: string;
}

type ProbeEvent = { stage: 'tiny'; result: TinyProbe } | { stage: 'model'; result: ModelProbe } | { stage: 'error'; message: string };

// ---- parent --------------------------------------------------------------------------------------

/**
 * Runs the probe in a child process (this script again, with the same node flags, e.g. tsx's loader)
 * and reports how it ended. Never throws for what happens in the child.
 */
export function runIoProbe(args: IoProbeArgs, timeoutSec: number): Promise<IoProbeResult> {
  const script = process.argv[1];
  if (script === undefined) throw new Error('io probe: no script path in process.argv');
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...process.execArgv, script, `--${PROBE_FLAG}`, JSON.stringify(args)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr = (stderr + s).slice(-20000);
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutSec * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      let tiny: TinyProbe | undefined;
      let model: ModelProbe | undefined;
      let error: string | undefined;
      for (const line of stdout.split('\n')) {
        if (!line.startsWith(PROBE_PREFIX)) continue;
        const ev = JSON.parse(line.slice(PROBE_PREFIX.length)) as ProbeEvent;
        if (ev.stage === 'tiny') tiny = ev.result;
        else if (ev.stage === 'model') model = ev.result;
        else error = ev.message;
      }
      const status = timedOut ? 'timeout' : signal !== null ? 'crashed' : code === 0 && error === undefined ? 'ok' : 'failed';
      // Dawn's harmless warnings and the loader's XDG line are noise next to an abort message.
      const tail = stderr
        .split('\n')
        .filter((l) => l.trim() !== '' && !/XDG_RUNTIME_DIR|artificially reduced|^Warning: Couldn't load Vulkan/.test(l))
        .slice(-12)
        .join('\n');
      resolve({
        status,
        device: args.device,
        exitCode: code,
        signal,
        seconds: (performance.now() - t0) / 1000,
        ...(tiny !== undefined ? { tiny } : {}),
        ...(model !== undefined ? { model } : {}),
        ...(error !== undefined ? { error } : {}),
        stderrTail: tail,
      });
    });
  });
}

// ---- child ---------------------------------------------------------------------------------------

function report(ev: ProbeEvent): void {
  process.stdout.write(`${PROBE_PREFIX}${JSON.stringify(ev)}\n`);
}

function sessionOptions(args: IoProbeArgs): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: resolveExecutionProviders(args.device),
    graphOptimizationLevel: 'all',
    intraOpNumThreads: args.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  };
}

/** y = x + 1 with y on the device, fed back 5 times: x ends at x0 + 5 (checked through z = y·1 on the host). */
async function tinyStage(args: IoProbeArgs): Promise<TinyProbe> {
  const g = new GraphBuilder('tiny.onnx.data');
  const x = g.input('x', DataType.FLOAT, [4]);
  const y = g.op('Add', [x, g.f32([1, 1, 1, 1])]);
  g.output('y', y, DataType.FLOAT, [4]);
  g.output('z', g.op('Mul', [y, g.f32([1, 1, 1, 1])]), DataType.FLOAT, [4]);
  const session = await ort.InferenceSession.create(encodeModel(g.toModel('tiny', new Map([['', 17]]))), {
    ...sessionOptions(args),
    preferredOutputLocation: { y: 'gpu-buffer', z: 'cpu' },
  });
  const x0 = [0, 1, 2, 3];
  let feed: ort.Tensor = new ort.Tensor('float32', Float32Array.from(x0), [4]);
  let maxAbsDiff = 0;
  let location = '';
  const steps = 5;
  for (let step = 1; step <= steps; step++) {
    const out = await session.run({ x: feed });
    const yt = out['y'];
    const z = out['z']?.data;
    if (yt === undefined || !(z instanceof Float32Array)) throw new Error('tiny probe: outputs missing');
    location = yt.location;
    for (let i = 0; i < 4; i++) maxAbsDiff = Math.max(maxAbsDiff, Math.abs((z[i] as number) - ((x0[i] as number) + step)));
    if (feed.location === 'gpu-buffer') feed.dispose(); // consumed: its run is over
    feed = yt;
  }
  if (feed.location === 'gpu-buffer') feed.dispose();
  await session.release();
  return { steps, outputLocation: location, maxAbsDiff };
}

/** The feeds Model.run builds for one decode step of `seq` (B = 1, T = 1), with the given state tensors. */
function decodeFeeds(model: Model, seq: Sequence, token: number, states: readonly ort.Tensor[]): Record<string, ort.Tensor> {
  const { numKvHeads: Hkv, headDim: d } = model.config;
  const P = seq.keptTokens;
  const feeds: Record<string, ort.Tensor> = {
    [INPUT_IDS]: new ort.Tensor('int32', Int32Array.of(token), [1, 1]),
    [POSITIONS]: new ort.Tensor('int32', Int32Array.of(seq.numTokens), [1, 1]),
    [PAST_POSITIONS]: new ort.Tensor('int32', seq.keptPositions, [1, P]),
    [NUM_LOGITS]: new ort.Tensor('int64', BigInt64Array.of(1n), [1]),
  };
  model.stateSpecs.forEach((spec, i) => {
    const s = states[i];
    if (s === undefined) throw new Error(`io probe: no state for ${spec.inputName}`);
    feeds[spec.inputName] = s;
  });
  model.attentionLayers.forEach((layer, i) => {
    feeds[pastKey(layer)] = new ort.Tensor('float32', seq.keys[i] ?? new Float32Array(0), [1, Hkv, P, d]);
    feeds[pastValue(layer)] = new ort.Tensor('float32', seq.values[i] ?? new Float32Array(0), [1, Hkv, P, d]);
  });
  return feeds;
}

async function modelStage(args: IoProbeArgs): Promise<ModelProbe> {
  const config = parseModelConfig(args.config);
  const ckpt = randomCheckpoint(config, { seed: 1, gkLayout: 'lowrank' });
  const model = await Model.load(ckpt, {
    cacheDir: args.cacheDir,
    device: args.device,
    intraOpThreads: args.threads,
    fusedOps: args.fused,
    ...(args.weightDtype !== undefined ? { weightDtype: args.weightDtype } : {}),
  });
  const onGpu = args.device !== 'cpu';
  // Every new_state.* on the device; logits and present_* to the host. (On cpu: all on the host, which
  // runs the same loop as a dry run of the probe itself.)
  const where: Record<string, 'cpu' | 'gpu-buffer'> = { [LOGITS]: 'cpu' };
  for (const spec of model.stateSpecs) where[spec.outputName] = onGpu ? 'gpu-buffer' : 'cpu';
  for (const l of model.attentionLayers) {
    where[presentKey(l)] = 'cpu';
    where[presentValue(l)] = 'cpu';
  }
  const session = await ort.InferenceSession.create(model.modelPath, { ...sessionOptions(args), preferredOutputLocation: where });
  const { numKvHeads: Hkv, headDim: d, vocabSize: V } = config;
  try {
    const seq = newSequence(model);
    let token = 11;
    const prompt = Array.from({ length: args.promptTokens }, () => (token = (token * 31 + 7) % V));
    await prefill(model, seq, prompt, { chunkTokens: 4096 });
    // Step 0 feeds the host states of the prefilled sequence; later steps the previous step's outputs.
    let states: ort.Tensor[] = seq.states.map((s, i) => new ort.Tensor('float32', s, [1, ...(model.stateSpecs[i]?.dims ?? [])]));
    let maxAbsDiff = 0;
    let maxAbsLogit = 0;
    let stateLocation = '';
    const gpuMs: number[] = [];
    const hostMs: number[] = [];
    const windowBytes = seq.kvBytes;
    for (let step = 0; step < args.steps; step++) {
      token = (token * 31 + 7) % V;
      let t = performance.now();
      const out = await session.run(decodeFeeds(model, seq, token, states));
      gpuMs.push(performance.now() - t);
      t = performance.now();
      const [host] = await decodeBatch(model, [seq], [token]);
      hostMs.push(performance.now() - t);
      const logits = out[LOGITS]?.data;
      if (host === undefined || !(logits instanceof Float32Array) || logits.length !== host.length) throw new Error('io probe: logits missing');
      for (let i = 0; i < host.length; i++) {
        maxAbsDiff = Math.max(maxAbsDiff, Math.abs((logits[i] as number) - (host[i] as number)));
        maxAbsLogit = Math.max(maxAbsLogit, Math.abs(host[i] as number));
      }
      for (const s of states) if (s.location === 'gpu-buffer') s.dispose(); // consumed by the run above
      states = model.stateSpecs.map((spec) => {
        const s = out[spec.outputName];
        if (s === undefined) throw new Error(`io probe: ${spec.outputName} missing`);
        return s;
      });
      stateLocation = states[0]?.location ?? 'none';
    }
    for (const s of states) if (s.location === 'gpu-buffer') s.dispose();
    const mean = (xs: number[]): number => {
      const warm = xs.slice(Math.min(2, xs.length - 1));
      return warm.reduce((a, b) => a + b, 0) / warm.length;
    };
    return {
      name: args.name,
      promptTokens: args.promptTokens,
      steps: args.steps,
      stateLocation,
      maxAbsDiff,
      maxAbsLogit,
      msPerStepGpuStates: mean(gpuMs),
      msPerStepHost: mean(hostMs),
      stateBytesAvoided: 2 * model.stateBytesPerSequence,
      windowBytesStillCopied: windowBytes,
    };
  } finally {
    await session.release();
    await model.close();
  }
}

/** The child's main: runs the stages, one report line each; exits 0 unless a stage threw. */
export async function ioProbeChild(argsJson: string): Promise<void> {
  const args = JSON.parse(argsJson) as IoProbeArgs;
  try {
    if (args.device !== 'cpu') report({ stage: 'tiny', result: await tinyStage(args) });
    report({ stage: 'model', result: await modelStage(args) });
  } catch (err) {
    report({ stage: 'error', message: err instanceof Error ? err.message.split('\n')[0] ?? '' : String(err) });
    process.exitCode = 1;
  }
}
