// Which onnxruntime execution providers a `--device` means, and a probe that fails fast, with one
// line saying what is missing, when the device cannot be used: never a native crash later, never a
// silent run on the CPU.
//   cpu    → CPU EP.
//   webgpu → onnxruntime-node's bundled WebGPU EP (Dawn; on Linux through Vulkan: needs the loader
//            libvulkan.so.1 and the GPU vendor's Vulkan driver). Ops it lacks fall back to the CPU EP.
//   cuda   → the CUDA EP, whose libraries onnxruntime-node does not bundle (installed on demand).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { EngineError } from '../errors.ts';
import { GraphBuilder } from './onnx/graph-builder.ts';
import { DataType, encodeModel } from './onnx/proto.ts';

export type Device = 'cpu' | 'webgpu' | 'cuda';

/** The device asked for cannot be used on this machine; the message is one line that says why. */
export class DeviceUnavailableError extends EngineError {
  override readonly name = 'DeviceUnavailableError';
}

/** The command that installs onnxruntime-node's CUDA provider libraries (CUDA 12 build). */
export const CUDA_INSTALL_COMMAND = 'ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js';

/** Execution providers for a session on `device`, in priority order. */
export function resolveExecutionProviders(device: Device): string[] {
  switch (device) {
    case 'cpu':
      return ['cpu'];
    case 'webgpu':
      return ['webgpu', 'cpu'];
    case 'cuda':
      return ['cuda', 'cpu'];
  }
}

/** Folder of onnxruntime-node's native binding, where installed provider libraries go too. */
export function ortBindingDir(): string {
  const entry = createRequire(import.meta.url).resolve('onnxruntime-node'); // …/onnxruntime-node/dist/index.js
  return join(dirname(entry), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

/** Whether the dynamic loader can find the Vulkan loader (Linux): ld.so.cache or LD_LIBRARY_PATH. */
export function vulkanLoaderPresent(): boolean {
  const lib = 'libvulkan.so.1';
  try {
    if (readFileSync('/etc/ld.so.cache').includes(lib)) return true;
  } catch {
    // no cache: look in the usual folders below
  }
  const dirs = [
    ...(process.env['LD_LIBRARY_PATH'] ?? '').split(delimiter).filter((d) => d !== ''),
    '/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib/aarch64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
    '/lib64', '/usr/lib64', '/lib', '/usr/lib', '/usr/local/lib',
  ];
  return dirs.some((d) => existsSync(join(d, lib)));
}

/** One-node graph (Relu on [2]) used to start a provider. */
function probeGraph(): Uint8Array {
  const g = new GraphBuilder('probe.data');
  const x = g.input('x', DataType.FLOAT, [2]);
  g.output('y', g.op('Relu', [x]), DataType.FLOAT, [2]);
  return encodeModel(g.toModel('device-probe', new Map([['', 17]])));
}

/**
 * Starts `provider` alone (CPU fallback disabled) on the probe graph and runs it once.
 * Returns null on success, else onnxruntime's reason.
 */
async function tryProvider(provider: string): Promise<string | null> {
  try {
    const session = await ort.InferenceSession.create(probeGraph(), {
      executionProviders: [provider],
      extra: { session: { disable_cpu_ep_fallback: '1' } },
      logSeverityLevel: 3,
    });
    try {
      const out = await session.run({ x: new ort.Tensor('float32', Float32Array.of(-1, 2), [2]) });
      const y = out['y']?.data;
      if (!(y instanceof Float32Array) || y[0] !== 0 || y[1] !== 2) return 'the probe graph gave a wrong result';
    } finally {
      await session.release();
    }
    return null;
  } catch (err) {
    return shortReason(err instanceof Error ? err.message : String(err));
  }
}

/** onnxruntime's messages carry source paths and assertion text: keep the readable tail of line 1. */
export function shortReason(message: string): string {
  const line = message.split('\n')[0]?.trim() ?? '';
  const adapter = /Failed to get a WebGPU adapter:?\s*(.*)$/.exec(line);
  if (adapter !== null) return `Failed to get a WebGPU adapter${adapter[1] ? `: ${adapter[1]}` : ''}`;
  const tail = line.replace(/^.*? was false\.\s*/, '').replace(/^\/\S+:\d+\s+/, '');
  return tail.length > 200 ? `${tail.slice(0, 197)}...` : tail;
}

const probed = new Map<Device, Promise<void>>();

/**
 * Resolves when `device` can run a session here; otherwise rejects with DeviceUnavailableError whose
 * message is one line naming what is missing and ending "use --device cpu". A success is remembered
 * for the process (a failure is not: the user may install what was missing and retry).
 */
export function probeDevice(device: Device): Promise<void> {
  const known = probed.get(device);
  if (known !== undefined) return known;
  const p = runProbe(device);
  probed.set(device, p);
  p.catch(() => probed.delete(device));
  return p;
}

async function runProbe(device: Device): Promise<void> {
  if (device === 'cpu') return;
  const fail = (what: string): never => {
    throw new DeviceUnavailableError(`--device ${device}: ${what}; use --device cpu`);
  };
  const backends = ort.listSupportedBackends();
  if (!backends.some((b) => b.name === device)) {
    fail(`this onnxruntime-node build (${process.platform}/${process.arch}) has no ${device} execution provider`);
  }
  if (device === 'cuda') {
    const dir = ortBindingDir();
    const missing = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'].filter((f) => !existsSync(join(dir, f)));
    if (process.platform === 'linux' && missing.length > 0) {
      fail(`onnxruntime-node's CUDA provider is not installed (no ${missing.join(', ')}; install it with: ${CUDA_INSTALL_COMMAND})`);
    }
    const reason = await tryProvider('cuda');
    if (reason !== null) fail(`the CUDA provider did not start (needs an NVIDIA GPU with its driver, CUDA 12 and cuDNN 9): ${reason}`);
    return;
  }
  const reason = await tryProvider('webgpu');
  if (reason === null) return;
  if (process.platform === 'linux' && !vulkanLoaderPresent()) {
    fail('no WebGPU adapter found: the Vulkan loader libvulkan.so.1 is not installed (Debian/Ubuntu: apt-get install libvulkan1, plus the GPU vendor\'s Vulkan driver)');
  }
  const hint = process.platform === 'linux'
    ? 'libvulkan.so.1 is installed, so no GPU with a Vulkan driver is visible: install the vendor\'s Vulkan driver, e.g. NVIDIA\'s, or point VK_DRIVER_FILES at its ICD file'
    : 'no GPU with a driver for WebGPU is visible';
  fail(`no WebGPU adapter found (${reason}; ${hint})`);
}
