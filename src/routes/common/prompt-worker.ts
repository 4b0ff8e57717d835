// The prompt worker (worker_threads entry; client and protocol: ./prompt-worker-client.ts). Holds its
// own tokenizer, the chat template and the server's limits, and does for a request what the HTTP
// thread would otherwise do in one long block: read a large body's chunks (from the shared ring,
// ./body-ring.ts, or as copies), check its UTF-8, join and parse it,
// validate it and make its prompt (./body-pipelines.ts), or make the prompt of a heavy chat. Prompt ids
// go back in a SharedArrayBuffer, so the HTTP thread and the engine's worker read them without a copy.
// Remembered chat replies live on the HTTP thread: a job's chat prompt asks for them by content key.
import { TextDecoder } from 'node:util';
import { parentPort, workerData } from 'node:worker_threads';
import { TextTokenizer } from '../../engine/tokenizer.ts';
import type { TokenizerPort } from '../../server/ports.ts';
import { contentKey, type RememberedReplies, type RememberedReply } from '../chat-completions/reply-ids.ts';
import { deriveOf, runPipeline, type BodyRoute, type PipelineResult } from './body-pipelines.ts';
import type { Derived, PromptContext } from './prompt-context.ts';
import { BodyRing } from './body-ring.ts';
import type { PromptWorkerAnswer, PromptWorkerData, ToPromptWorker } from './prompt-worker-client.ts';

const port = parentPort;
if (port === null) throw new Error('prompt-worker.ts must run in a worker thread');
const init = workerData as PromptWorkerData;
const ring = new BodyRing(init.bodyRing);
ring.prepare(); // the page faults happen here, not on the HTTP thread

const context: Promise<PromptContext> = TextTokenizer.load(init.modelDir).then((tok) => {
  // This is already off the HTTP thread: long text is encoded here, not handed to yet another worker.
  const tokenizer: TokenizerPort = {
    encode: (text, options) => tok.encode(text, options),
    encodeToInt32: (text, options) => tok.encodeInThreadToInt32(text, options),
    decode: (ids, options) => tok.decode(ids, options),
    tokenToId: (token) => tok.tokenToId(token),
    tokenBytes: (id) => tok.tokenBytes(id),
    isSpecial: (id) => tok.isSpecial(id),
    containsSpecialTokenText: (text) => tok.containsSpecialTokenText(text),
    vocabSize: tok.vocabSize,
  };
  return { tokenizer, chatAssets: init.chatAssets, serverConfig: init.serverConfig };
});
context.catch(() => undefined); // reported to each job below

/** Lookups of remembered replies waiting for the HTTP thread's answer, by lookup number. */
const lookups = new Map<number, (entries: readonly (RememberedReply | null)[]) => void>();
let nextLookup = 0;

/** The remembered replies as job `job` sees them: one round trip to the HTTP thread per lookup. */
function remoteReplies(job: number): RememberedReplies {
  return {
    idsOf: async (contents) => {
      const lookup = nextLookup++;
      const entries = await new Promise<readonly (RememberedReply | null)[]>((resolve) => {
        lookups.set(lookup, resolve);
        answer({ job, kind: 'replies', lookup, keys: contents.map(contentKey) });
      });
      return contents.map((c, i) => {
        const e = entries[i];
        return e !== null && e !== undefined && e.content === c ? e.ids : null;
      });
    },
  };
}

/** The context of one job: the worker's, with the remembered replies when the server keeps them. */
async function jobContext(job: number): Promise<PromptContext> {
  const base = await context;
  const config = base.serverConfig;
  return config.conversationCacheEntries > 0 && config.conversationCacheTokens > 0 ? { ...base, replies: remoteReplies(job) } : base;
}

/**
 * Bodies being received: their route and their text so far, decoded chunk by chunk as it arrives (a
 * streaming UTF-8 decoder holds back a character split between chunks), so the bytes are not kept.
 */
interface IncomingBody {
  readonly route: BodyRoute;
  readonly decoder: TextDecoder;
  readonly parts: string[];
  validUtf8: boolean;
}
const bodies = new Map<number, IncomingBody>();

function answer(msg: PromptWorkerAnswer): void {
  port!.postMessage(msg);
}

/** Prompt ids moved into shared memory (one copy here; none later). */
function shareIds(derived: Derived): Derived {
  if (!('prompt' in derived)) return derived;
  const ids = derived.prompt.ids;
  const shared = new Int32Array(new SharedArrayBuffer(ids.byteLength));
  shared.set(ids);
  return { prompt: { ...derived.prompt, ids: shared } };
}

function decodeInto(body: IncomingBody, bytes?: Uint8Array): void {
  if (!body.validUtf8) return;
  try {
    body.parts.push(bytes === undefined ? body.decoder.decode() : body.decoder.decode(bytes, { stream: true }));
  } catch {
    body.validUtf8 = false;
    body.parts.length = 0;
  }
}

async function parse(job: number, body: IncomingBody, modelVocabSize: number | null): Promise<void> {
  decodeInto(body);
  if (!body.validUtf8) {
    answer({ job, kind: 'bad-body', error: { status: 400, type: 'invalid_request_error', message: 'request body is not valid UTF-8', param: null, code: 'invalid_utf8' } });
    return;
  }
  const text = body.parts.join('');
  body.parts.length = 0;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const message = text.trim() === '' ? 'request body is empty; expected a JSON object' : `request body is not valid JSON: ${(err as Error).message}`;
    answer({ job, kind: 'bad-body', error: { status: 400, type: 'invalid_request_error', message, param: null, code: 'invalid_json' } });
    return;
  }
  const result: PipelineResult = await runPipeline(await jobContext(job), body.route, value, modelVocabSize);
  answer({ job, kind: 'parsed', result: result.kind === 'ok' ? { ...result, derived: shareIds(result.derived) } : result });
}

async function handle(msg: ToPromptWorker): Promise<void> {
  switch (msg.type) {
    case 'open':
      bodies.set(msg.job, { route: msg.route, decoder: new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }), parts: [], validUtf8: true });
      return;
    case 'chunk': {
      const body = bodies.get(msg.job);
      if ('bytes' in msg) {
        if (body !== undefined) decodeInto(body, msg.bytes);
        return;
      }
      // Every region goes back to the ring, whether the body is still wanted or not.
      for (const region of msg.regions) {
        try {
          if (body !== undefined) decodeInto(body, ring.view(region));
        } finally {
          ring.release(region);
        }
      }
      return;
    }
    case 'abort':
      bodies.delete(msg.job);
      return;
    case 'end': {
      const body = bodies.get(msg.job);
      bodies.delete(msg.job);
      if (body !== undefined) await parse(msg.job, body, msg.modelVocabSize);
      return;
    }
    case 'derive':
      answer({ job: msg.job, kind: 'derived', derived: shareIds(await deriveOf(await jobContext(msg.job), msg.route, msg.body, msg.modelVocabSize)) });
      return;
    case 'replies': {
      const resolve = lookups.get(msg.lookup);
      lookups.delete(msg.lookup);
      resolve?.(msg.entries);
      return;
    }
  }
}

port.on('message', (msg: ToPromptWorker) => {
  handle(msg).catch((err: unknown) => {
    answer({ job: msg.job, kind: 'fault', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  });
});
