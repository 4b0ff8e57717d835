// Number and list formats shared by the `spikeserve inspect` reports (./inspect.ts, ./spikingbrain2-inspect.ts).

/** 5166215168 → "5,166,215,168 (5.17 B)". */
export function formatCount(n: number): string {
  const grouped = n.toLocaleString('en-US');
  if (n >= 1e9) return `${grouped} (${(n / 1e9).toFixed(2)} B)`;
  if (n >= 1e6) return `${grouped} (${(n / 1e6).toFixed(2)} M)`;
  return grouped;
}

/** [0, 1, 35] → "3: 0, 1, 35"; [] → "none". */
export function layerList(layers: readonly number[]): string {
  return layers.length === 0 ? 'none' : `${layers.length}: ${layers.join(', ')}`;
}
