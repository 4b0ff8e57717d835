// The prefix-cache API, behind the API key like every /v1 route (what llama.cpp's server offers as
// slot save / restore / erase, by prompt instead of by slot, and shared by every replica on one
// snapshot folder):
//   GET    /v1/prefix-cache?limit=N  the most recently used snapshots: tokens, bytes, where (memory,
//                                    disk), hits, last use
//   POST   /v1/prefix-cache          warm: prefill `{prompt}` or `{messages}` and snapshot it, generate
//                                    nothing; answers once the snapshot is stored (and on disk, with a
//                                    snapshot folder); `stream: true` sends `prefill.progress` events
//                                    as a completion does, then the result, then [DONE]
//   DELETE /v1/prefix-cache/{id}     drop a snapshot from memory and from the folder (404 if absent)
import { randomUUID } from 'node:crypto';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { keyOfSnapshotId, snapshotIdOf } from '../../cache/snapshot-store.ts';
import type { PrefixCacheEntryInfo, SamplingParams } from '../../engine/types.ts';
import { NotFoundError } from '../../server/errors.ts';
import { runGeneration, type GenerationEvent } from '../../server/generation.ts';
import { beginRequestLifetime } from '../../server/request-lifetime.ts';
import { streamSse } from '../../server/sse.ts';
import { promptOf, type DerivedPrompt } from '../common/prompt-context.ts';
import { progressObject, type StreamIdentity } from '../common/stream-chunks.ts';
import { checkModel, nowSeconds } from '../common/usage.ts';
import { prepareWarmPrompt } from './prompt.ts';
import { DeleteParams, DeleteResponse, ListQuery, ListResponse, WarmRequest, WarmResponse } from './schema.ts';

const DEFAULT_LIST_LIMIT = 100;

/** A warm-up samples nothing; the engine still wants complete sampling parameters (one token of room). */
const WARM_SAMPLING: SamplingParams = Object.freeze({
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  seed: null,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: new Map<number, number>(),
  logprobs: null,
  promptLogprobs: null,
  maxTokens: 1,
  minTokens: 0,
  stopTokenIds: [],
  ignoreEos: true,
});

const whereOf = (e: { readonly inMemory: boolean; readonly onDisk: boolean }): ('memory' | 'disk')[] => [
  ...(e.inMemory ? (['memory'] as const) : []),
  ...(e.onDisk ? (['disk'] as const) : []),
];

function entryObject(e: PrefixCacheEntryInfo) {
  return {
    id: snapshotIdOf(e.key),
    object: 'prefix_cache.entry' as const,
    tokens: e.numTokens,
    bytes: e.bytes,
    where: whereOf(e),
    hits: e.hits,
    last_used_at: Math.floor(e.lastUsedMs / 1000),
  };
}

type WarmResult = {
  id: string;
  object: 'prefix_cache.entry';
  prompt_tokens: number;
  cached_tokens: number;
  computed_tokens: number;
  where: ('memory' | 'disk')[];
};

/** The warm-up's result from its `finish` event. */
function warmResult(promptTokens: number, ev: Extract<GenerationEvent, { type: 'finish' }>): WarmResult {
  if (ev.snapshot === undefined) throw new Error('warm-up ended without storing its snapshot'); // logged as a 500
  return {
    id: snapshotIdOf(ev.snapshot.key),
    object: 'prefix_cache.entry',
    prompt_tokens: promptTokens,
    cached_tokens: ev.promptTokens,
    computed_tokens: ev.promptTokens - ev.cachedTokens,
    where: whereOf({ inMemory: true, onDisk: ev.snapshot.onDisk }),
  };
}

const prefixCacheRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/v1/prefix-cache', { schema: { querystring: ListQuery, response: { 200: ListResponse } } }, async (request) => {
    const engine = app.serving.requireEngine();
    const entries = await engine.listPrefixCache(request.query.limit ?? DEFAULT_LIST_LIMIT);
    return { object: 'list' as const, data: entries.map(entryObject) };
  });

  app.delete('/v1/prefix-cache/:id', { schema: { params: DeleteParams, response: { 200: DeleteResponse } } }, async (request) => {
    const engine = app.serving.requireEngine();
    const { id } = request.params;
    const deleted = await engine.deletePrefixCache(keyOfSnapshotId(id));
    if (!deleted.memory && !deleted.disk) throw new NotFoundError(`no prefix snapshot '${id}'`, 'id', 'snapshot_not_found');
    request.log.info({ snapshot: id, ...deleted }, 'prefix snapshot deleted');
    return { id, object: 'prefix_cache.entry.deleted' as const, deleted: true as const, where: whereOf({ inMemory: deleted.memory, onDisk: deleted.disk }) };
  });

  app.post('/v1/prefix-cache', { schema: { body: WarmRequest, response: { 200: WarmResponse } }, config: { admission: 'prompt' } }, async (request, reply) => {
    const body = request.body;
    checkModel(app, body.model);
    const engine = app.serving.requireEngine();
    // A large body's prompt was made by the prompt worker (json-body.ts); its shape is the pipeline's.
    const derived = request.derivedBody as DerivedPrompt | null;
    const { ids } = await promptOf(derived, () => prepareWarmPrompt(app, body, engine.config.vocabSize));
    const ticket = request.admissionTicket;
    ticket?.update(1, ids.length, 'messages' in body ? 'messages' : 'prompt');
    const identity: StreamIdentity = { id: `warm-${randomUUID().replace(/-/g, '')}`, created: nowSeconds(), model: app.serverConfig.servedModelName };
    const stream = body.stream === true;
    request.log.info({ warmId: identity.id, promptTokens: ids.length, stream }, 'prefix cache warm-up started');
    const life = beginRequestLifetime(app, reply);
    try {
      const events = runGeneration(
        { engine, tokenizer: app.tokenizer, metrics: app.metrics },
        {
          requestId: identity.id,
          promptTokenIds: ids,
          sampling: WARM_SAMPLING,
          n: 1,
          stop: [],
          skipSpecialTokens: true,
          reportProgress: stream,
          prefillOnly: true,
          ...(ticket !== null ? { onSubmitted: () => ticket.release() } : {}),
        },
        life.signal,
      );
      const promptTokens = ids.length;
      if (!stream) {
        for await (const ev of events) if (ev.type === 'finish') return warmResult(promptTokens, ev);
        throw new Error('warm-up ended without a result');
      }
      const chunks = async function* (): AsyncGenerator<object> {
        for await (const ev of events) {
          if (ev.type === 'progress') yield progressObject(identity, ev);
          else if (ev.type === 'finish') yield warmResult(promptTokens, ev);
        }
      };
      await streamSse(request, reply, chunks(), {
        keepaliveMs: app.serverConfig.keepaliveSeconds * 1000,
        maxBufferBytes: app.serverConfig.maxStreamBufferBytes,
      });
      return reply;
    } finally {
      life.release();
    }
  });
};

export default prefixCacheRoute;
