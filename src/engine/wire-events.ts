// How token events cross from the inference worker to the HTTP thread. Most are a few fields and go as
// they are; a `prompt_logprobs` event (echo + logprobs: an entry per prompt token, each with its top
// alternatives) crosses as typed arrays instead, transferred, and is rebuilt on arrival: the structured
// clone of 4,096 × 21 objects was the HTTP thread's longest remaining stall (bench/README.md, "HTTP
// thread"), while building them from arrays is a tight loop of a few milliseconds.
import type { PromptLogprobEntry, TokenEvent, TopLogprob } from './types.ts';

/** A prompt_logprobs event as arrays: entry i is null when present[i] is 0; its top alternatives are topCounts[i] pairs. */
export interface PackedPromptLogprobs {
  readonly type: 'prompt_logprobs_packed';
  readonly present: Uint8Array<ArrayBuffer>;
  readonly tokenIds: Int32Array<ArrayBuffer>;
  readonly logprobs: Float64Array<ArrayBuffer>;
  readonly topCounts: Int32Array<ArrayBuffer>;
  readonly topIds: Int32Array<ArrayBuffer>;
  readonly topLogprobs: Float64Array<ArrayBuffer>;
}

/** A token event as it crosses postMessage. */
export type WireEvent = Exclude<TokenEvent, { readonly type: 'prompt_logprobs' }> | PackedPromptLogprobs;

/** The wire form of an event, and the buffers to transfer with it (none for most events). */
export function packEvent(event: TokenEvent, transfer: ArrayBuffer[]): WireEvent {
  if (event.type !== 'prompt_logprobs') return event;
  const entries = event.entries;
  const n = entries.length;
  let tops = 0;
  for (const e of entries) tops += e === null ? 0 : e.top.length;
  const packed: PackedPromptLogprobs = {
    type: 'prompt_logprobs_packed',
    present: new Uint8Array(n),
    tokenIds: new Int32Array(n),
    logprobs: new Float64Array(n),
    topCounts: new Int32Array(n),
    topIds: new Int32Array(tops),
    topLogprobs: new Float64Array(tops),
  };
  let t = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i];
    if (e === null || e === undefined) continue;
    packed.present[i] = 1;
    packed.tokenIds[i] = e.tokenId;
    packed.logprobs[i] = e.logprob;
    packed.topCounts[i] = e.top.length;
    for (const alt of e.top) {
      packed.topIds[t] = alt.tokenId;
      packed.topLogprobs[t++] = alt.logprob;
    }
  }
  transfer.push(packed.present.buffer, packed.tokenIds.buffer, packed.logprobs.buffer, packed.topCounts.buffer, packed.topIds.buffer, packed.topLogprobs.buffer);
  return packed;
}

/** The event a wire form stands for (equal to what packEvent was given). */
export function unpackEvent(wire: WireEvent): TokenEvent {
  if (wire.type !== 'prompt_logprobs_packed') return wire;
  const n = wire.present.length;
  const entries: (PromptLogprobEntry | null)[] = new Array<PromptLogprobEntry | null>(n);
  let t = 0;
  for (let i = 0; i < n; i++) {
    if (wire.present[i] === 0) {
      entries[i] = null;
      continue;
    }
    const k = wire.topCounts[i]!;
    const top: TopLogprob[] = new Array<TopLogprob>(k);
    for (let j = 0; j < k; j++, t++) top[j] = { tokenId: wire.topIds[t]!, logprob: wire.topLogprobs[t]! };
    entries[i] = { tokenId: wire.tokenIds[i]!, logprob: wire.logprobs[i]!, top };
  }
  return { type: 'prompt_logprobs', entries };
}
