// The shared snapshot folder's metrics (spikeserve:prefix_store_*) fed from EngineStats.prefixStore:
// counters advance by the difference of the engine's cumulative values (and start over after an
// engine restart), read failures are counted by reason, the folder gauges follow the last scan; and
// --metrics-compat vllm exports the three gauges an endpoint picker reads under vLLM's names.
// The exposition is checked with promtool where it is installed.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { EngineStats, SnapshotDiskStats } from '../src/engine/types.ts';
import { parseServerConfig } from '../src/server/config.ts';
import { ServerMetrics } from '../src/server/metrics.ts';

const BASE: EngineStats = {
  numRunning: 2,
  numWaiting: 3,
  waitingPromptTokens: 0,
  kvPagesUsed: 10,
  kvPagesTotal: 40,
  stateSlotsUsed: 2,
  stateSlotsTotal: 64,
  stateBytesInUse: 0,
  prefixCacheBytes: 0,
  spikeZeros: 0,
  spikeValues: 0,
  numPreemptions: 0,
};

const store = (over: Partial<SnapshotDiskStats> = {}): SnapshotDiskStats => ({
  hits: 0,
  bytesRead: 0,
  readFailures: { missing: 0, io: 0, timeout: 0, format: 0, checksum: 0, header: 0, truncated: 0 },
  writes: 0,
  bytesWritten: 0,
  writeFailures: 0,
  writesSkipped: 0,
  diskFiles: 0,
  diskBytes: 0,
  readBufferBytes: 0,
  readsSkippedForBudget: 0,
  ...over,
});

/** `name{labels} value` lines of the exposition, as a map. */
async function samples(m: ServerMetrics): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await m.render()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

describe('prefix store metrics', () => {
  it('advance by the engine’s cumulative counters, by reason, and start over after a restart', async () => {
    const m = new ServerMetrics('m', { collectDefault: false });
    let s = await samples(m);
    expect(s.get('spikeserve:prefix_store_hits_total{model_name="m"}')).toBe(0);
    expect(s.get('spikeserve:prefix_store_read_failures_total{model_name="m",reason="checksum"}')).toBe(0);
    const failures = { ...store().readFailures, checksum: 2, timeout: 1 };
    m.updateEngineStats({ ...BASE, prefixStore: store({ hits: 3, bytesRead: 300, writes: 4, bytesWritten: 400, readFailures: failures, diskFiles: 7, diskBytes: 7000, readBufferBytes: 50 }) });
    m.updateEngineStats({ ...BASE, prefixStore: store({ hits: 5, bytesRead: 500, writes: 4, bytesWritten: 400, readFailures: { ...failures, checksum: 3 }, diskFiles: 6, diskBytes: 6000 }) });
    s = await samples(m);
    expect(s.get('spikeserve:prefix_store_hits_total{model_name="m"}')).toBe(5);
    expect(s.get('spikeserve:prefix_store_read_bytes_total{model_name="m"}')).toBe(500);
    expect(s.get('spikeserve:prefix_store_writes_total{model_name="m"}')).toBe(4);
    expect(s.get('spikeserve:prefix_store_written_bytes_total{model_name="m"}')).toBe(400);
    expect(s.get('spikeserve:prefix_store_read_failures_total{model_name="m",reason="checksum"}')).toBe(3);
    expect(s.get('spikeserve:prefix_store_read_failures_total{model_name="m",reason="timeout"}')).toBe(1);
    expect(s.get('spikeserve:prefix_store_files{model_name="m"}')).toBe(6);
    expect(s.get('spikeserve:prefix_store_bytes{model_name="m"}')).toBe(6000);
    expect(s.get('spikeserve:prefix_store_read_buffer_bytes{model_name="m"}')).toBe(0);
    // A restarted engine counts from 0 again: its values are added, not subtracted.
    m.updateEngineStats({ ...BASE, prefixStore: store({ hits: 1 }) });
    s = await samples(m);
    expect(s.get('spikeserve:prefix_store_hits_total{model_name="m"}')).toBe(6);
    // No vLLM names unless asked.
    expect([...s.keys()].some((k) => k.startsWith('vllm:'))).toBe(false);
  });

  it('--metrics-compat vllm also exports the picker’s gauges under vLLM’s names', async () => {
    const config = parseServerConfig(['--metrics-compat', 'vllm'], {});
    expect(config.metricsCompat).toBe('vllm');
    expect(parseServerConfig([], {}).metricsCompat).toBe('none');
    expect(() => parseServerConfig(['--metrics-compat', 'sglang'], {})).toThrow(/--metrics-compat must be one of none, vllm/);
    const m = new ServerMetrics('m', { collectDefault: false, compat: config.metricsCompat });
    m.updateEngineStats(BASE);
    const s = await samples(m);
    expect(s.get('vllm:num_requests_waiting{model_name="m"}')).toBe(3);
    expect(s.get('vllm:num_requests_running{model_name="m"}')).toBe(2);
    expect(s.get('vllm:kv_cache_usage_perc{model_name="m"}')).toBe(0.25);
    expect(s.get('spikeserve:num_requests_waiting{model_name="m"}')).toBe(3);
    // Counters end in _total, gauges never do (checked on the registry, and by promtool's lint where installed).
    for (const metric of await m.registry.getMetricsAsJSON()) {
      if (!/prefix_store_|^vllm:/.test(metric.name)) continue;
      expect(metric.name.endsWith('_total'), metric.name).toBe(String(metric.type) === 'counter');
    }
    let lint: string;
    try {
      lint = execFileSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' });
    } catch {
      process.stdout.write('promtool not installed: exposition lint skipped\n');
      return;
    }
    expect(lint).toMatch(/promtool/);
    const dir = mkdtempSync(join(tmpdir(), 'spikeserve-promtool-'));
    try {
      const file = join(dir, 'metrics.txt');
      writeFileSync(file, await m.render());
      let problems = '';
      try {
        execFileSync('sh', ['-c', `promtool check metrics < ${file} 2>&1`], { encoding: 'utf8' });
      } catch (err) {
        problems = String((err as { stdout?: unknown }).stdout ?? '');
      }
      // promtool parses the whole exposition; its only complaints about these metrics may be the
      // prefix's colon, which Prometheus allows and vLLM's names carry too.
      const ours = problems.split('\n').filter((l) => /prefix_store_|^vllm:/.test(l));
      expect(ours.filter((l) => !l.endsWith("metric names should not contain ':'"))).toEqual([]);
      expect(problems).not.toMatch(/error while linting|parse/i);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
