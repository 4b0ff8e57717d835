// The tokenizer worker (worker_threads entry; client: off-thread-encoder.ts). Loads the checkpoint's
// tokenizer once and answers each EncodeJob with its ids as an Int32Array whose buffer is transferred.
// Jobs may overlap (the binding encodes on the libuv pool); each answer carries its job's id.
import { parentPort, workerData } from 'node:worker_threads';
import type { EncodeAnswer, EncodeJob, TokenizerWorkerInit } from './off-thread-encoder.ts';
import { TextTokenizer } from './tokenizer.ts';

const port = parentPort;
if (port === null) throw new Error('tokenizer-worker.ts must run in a worker thread');
const init = workerData as TokenizerWorkerInit;
const loaded = TextTokenizer.load(init.dir, init.options);
loaded.catch(() => undefined); // reported to each job below

port.on('message', (job: EncodeJob) => {
  loaded
    .then((tok) => tok.encodeInThreadToInt32(job.text, { addSpecialTokens: job.addSpecialTokens, specialTokensAsText: job.specialTokensAsText }))
    .then(
      (ids) => port.postMessage({ id: job.id, ids } satisfies EncodeAnswer, [ids.buffer]),
      (err: unknown) => port.postMessage({ id: job.id, error: err instanceof Error ? err.message : String(err) } satisfies EncodeAnswer),
    );
});
