// Helpers shared by the engine, GPU and throughput benchmarks: the reference-size model they all
// measure, CPU seconds, this process's memory, and the machine's load average (printed beside every table, since each
// ratio is only comparable under the load it was measured at).
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';

/**
 * The reference size, as a raw config.json: hidden 256, 8 layers (GLA even, SWA odd), 8 heads,
 * 2 kv heads, ffn 1024, vocab 4096, window 1024. Benches run it with random weights.
 */
export const REFERENCE_CONFIG_JSON = {
  model_type: 'gla_swa',
  vocab_size: 4096,
  hidden_size: 256,
  num_hidden_layers: 8,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  intermediate_size: 1024,
  sliding_window: 1024,
  rope_theta: 10000,
  norm_eps: 1e-6,
} as const;

/** CPU seconds (user + system, all threads of this process) since `from`. */
export function cpuSeconds(from: NodeJS.CpuUsage): number {
  const c = process.cpuUsage(from);
  return (c.user + c.system) / 1e6;
}

/** The 1, 5 and 15 minute load averages, e.g. "1.9 2.0 2.1". */
export function loadAverage(): string {
  return loadavg().map((x) => x.toFixed(1)).join(' ');
}

/** A memory figure of this process from /proc/self/status, MiB: VmHWM (peak RSS) or VmRSS. */
export function procStatusMiB(field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return m?.[1] === undefined ? Number.NaN : Number(m[1]) / 1024;
}
