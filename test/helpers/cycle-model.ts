// Test helper: a tiny gla_swa checkpoint (byte-level tokenizer, ChatML template) whose greedy reply
// is a chosen text repeated, so a test can make a real model stream say something exact — e.g.
// `<script>` for the page's HTML-injection test. Every layer's output projection (attention o_proj,
// MLP down_proj) is zero, so the residual stream keeps the current token's embedding untouched:
//
//   h = E[t]   (one-hot: E[t] = e_k, k the slot of byte t)       RMSNorm(h) = √D · e_k
//   logits[c] = lm_head[c] · RMSNorm(h) = 4·√D   if c follows t in the cycle, else 0
//
// a bigram table. The reply starts after the generation prompt's last byte, '\n', which leads to the
// text's first byte; so every byte of the text must have one successor (distinct bytes: `<script>`).
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/server/config.ts';
import { EMBEDDINGS, FINAL_NORM, LM_HEAD, layerTensorNames } from '../../src/engine/model/tensor-names.ts';
import { makeRandomTinyCheckpoint, writeCheckpoint } from './checkpoint-writer.ts';
import { BYTE_VOCAB_SIZE, writeByteTokenizer } from './server.ts';

/** Writes (every time: it takes milliseconds) the checkpoint of `text` and returns its directory. */
export function cycleModelDir(text: string): string {
  const bytes = [...Buffer.from(text, 'latin1')];
  if (new Set(bytes).size !== bytes.length || bytes.includes(10)) throw new Error(`"${text}" must be distinct bytes without '\\n'`);
  const dir = join(PACKAGE_ROOT, '.cache', `test-model-cycle-${Buffer.from(text).toString('hex')}`);
  const numLayers = 2;
  const tiny = makeRandomTinyCheckpoint(dir, { numLayers, slidingWindow: 16, vocabSize: BYTE_VOCAB_SIZE, seed: 5, headDim: 16, numHeads: 4 });
  const D = tiny.config.hiddenSize;
  const V = tiny.config.vocabSize;
  const tensors = new Map(tiny.tensors);
  const zero = (name: string): void => {
    const t = tensors.get(name);
    if (t === undefined) throw new Error(`no tensor ${name}`);
    tensors.set(name, { shape: t.shape, data: new Float32Array(t.data.length) });
  };
  for (let layer = 0; layer < numLayers; layer++) {
    const n = layerTensorNames(layer);
    zero(n.oWeight);
    zero(n.downWeight);
  }
  // Slot k of each byte of the cycle ('\n' first); every other token keeps its random embedding and
  // never wins: its lm_head row is zero.
  const order = [10, ...bytes];
  if (order.length > D) throw new Error(`at most ${D - 1} bytes`);
  const embeddings = new Float32Array((tensors.get(EMBEDDINGS) ?? { data: new Float32Array(V * D) }).data);
  const lmHead = new Float32Array(V * D);
  order.forEach((token, k) => {
    embeddings.fill(0, token * D, (token + 1) * D);
    embeddings[token * D + k] = 1;
    const next = k + 1 < order.length ? order[k + 1] : order[1]; // after the last byte, the first again
    lmHead[(next as number) * D + k] = 4;
  });
  tensors.set(EMBEDDINGS, { shape: [V, D], data: embeddings });
  tensors.set(LM_HEAD, { shape: [V, D], data: lmHead });
  tensors.set(FINAL_NORM, { shape: [D], data: new Float32Array(D).fill(1) });
  writeCheckpoint(dir, tiny.rawConfig, tensors, { dtype: 'F32', naming: 'gla_swa' });
  writeByteTokenizer(dir);
  return dir;
}
