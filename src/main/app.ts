// src/main/ is the composition root, a layer above routes/ so that it alone may import every layer
// (routes → server → engine → cache never import back up; test/layering.test.ts checks it).
//
// Builds the Fastify app around already-constructed parts (engine or its promise, tokenizer, chat
// template, metrics, config) without listening, so tests drive it with inject() and the CLI with
// listen(). Every feature is a plugin; the decorators all routes rely on are typed in
// src/server/decorators.ts and set here.
//
// Request ids: an incoming `x-request-id` (if sane) is kept, otherwise one is generated; it labels
// every log line of the request and is echoed in the `x-request-id` response header.
import { randomUUID } from 'node:crypto';
import websocket from '@fastify/websocket';
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { IncomingMessage } from 'node:http';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify';
import fp from 'fastify-plugin';
import { ENGINE_DEFAULTS } from '../engine/engine-core.ts';
import { ReplyIdsCache } from '../routes/chat-completions/reply-ids.ts';
import { PromptWorker } from '../routes/common/prompt-worker-client.ts';
import { registerRoutes } from '../routes/index.ts';
import admissionPlugin from '../server/admission.ts';
import authPlugin from '../server/auth.ts';
import corsPlugin from '../server/cors.ts';
import type { ServerConfig } from '../server/config.ts';
import type {} from '../server/decorators.ts';
import errorHandlerPlugin from '../server/error-handler.ts';
import { toApiError } from '../server/errors.ts';
import jsonBodyPlugin from '../server/json-body.ts';
import { withRedactedRequests } from '../server/logging.ts';
import openSocketsPlugin from '../server/open-sockets.ts';
import type { ChatAssets, EnginePort, MetricsPort, TokenizerPort } from '../server/ports.ts';
import { ServingState } from '../server/serving-state.ts';

export interface AppDeps {
  /** The engine, or its start-up promise: /health answers 503 until it resolves. */
  readonly engine: EnginePort | Promise<EnginePort>;
  readonly tokenizer: TokenizerPort;
  readonly chatAssets: ChatAssets;
  readonly config: ServerConfig;
  readonly metrics: MetricsPort;
  readonly version: string;
  /** Pino options, or false for silence (tests). */
  readonly logger?: FastifyServerOptions['logger'];
}

const SANE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Node hands a request with `Connection: upgrade` and an `Upgrade` header to 'upgrade' listeners, not to 'request'. */
function isUpgradeRequest(req: IncomingMessage): boolean {
  return req.headers.upgrade !== undefined && /(^|,)\s*upgrade\s*(,|$)/i.test(req.headers.connection ?? '');
}

export function buildApp(deps: AppDeps): FastifyInstance {
  const app = Fastify({
    logger: withRedactedRequests(deps.logger),
    bodyLimit: deps.config.bodyLimitBytes,
    genReqId: (req) => {
      const incoming = req.headers['x-request-id'];
      return typeof incoming === 'string' && SANE_REQUEST_ID.test(incoming) ? incoming : randomUUID();
    },
    requestIdHeader: false,
    // Our own draining check answers with the OpenAI envelope.
    return503OnClosing: false,
    // close() ends every HTTP connection at once: a graceful drain (src/server/shutdown.ts) runs before it.
    forceCloseConnections: true,
    routerOptions: { ignoreTrailingSlash: true },
    // Errors Fastify raises before routing (a malformed URL) skip every hook: answer them with the
    // envelope here, and close the socket of an upgrade request (it left the HTTP server's keeping
    // when it was handed to the WebSocket plugin, so nothing else would ever close it).
    frameworkErrors: (err, request, reply: FastifyReply) => {
      const { apiError } = toApiError(err);
      request.log.info({ status: apiError.status, type: apiError.type, param: apiError.param }, apiError.message);
      if (isUpgradeRequest(request.raw)) reply.raw.once('finish', () => request.raw.socket.destroy());
      void reply.code(apiError.status).headers({ ...apiError.headers, 'x-request-id': request.id }).send(apiError.toEnvelope());
    },
  })
    .setValidatorCompiler(TypeBoxValidatorCompiler)
    .withTypeProvider<TypeBoxTypeProvider>();

  const serving = new ServingState();
  serving.attach(deps.engine, (err) => app.log.error({ err }, 'the model failed to load'));
  // Recent chat replies and their generated ids: the next turn of a conversation resumes after them.
  const replies = new ReplyIdsCache(deps.tokenizer, { maxEntries: deps.config.conversationCacheEntries, maxTokens: deps.config.conversationCacheTokens });
  app.decorate('replies', replies);
  // Large bodies and heavy prompts are parsed, rendered and tokenized off the HTTP thread.
  const promptWorker = new PromptWorker(
    { modelDir: deps.config.modelDir, chatAssets: deps.chatAssets, serverConfig: deps.config },
    () => serving.loadedEngine?.config.vocabSize ?? null,
    (err, message) => app.log.error({ err }, message),
    replies,
  );
  app.decorate('promptWorker', promptWorker);
  app.addHook('onClose', async () => promptWorker.close());
  app.decorate('serving', serving);
  app.decorate('tokenizer', deps.tokenizer);
  app.decorate('chatAssets', deps.chatAssets);
  app.decorate('serverConfig', deps.config);
  app.decorate('metrics', deps.metrics);
  app.decorate('appVersion', deps.version);

  app.register(
    fp(async (root) => {
      root.addHook('onRequest', async (request, reply) => {
        reply.header('x-request-id', request.id);
      });
      // close() marks the server not-ready first: /health turns 503 and new generations are refused.
      root.addHook('preClose', async () => {
        serving.beginDrain();
      });
    }),
  );
  app.register(openSocketsPlugin);
  app.register(errorHandlerPlugin);
  app.register(jsonBodyPlugin, { bodyLimitBytes: deps.config.bodyLimitBytes, largeBodies: promptWorker });
  app.register(corsPlugin, { allowedOrigins: deps.config.allowedOrigins }); // before auth: preflights carry no key
  // Before auth: the plugin's own onRequest hook marks a request that arrived as an upgrade, and its
  // onResponse hook destroys the socket of one that was answered instead of upgraded. Registered after
  // auth, a 401 thrown by auth skipped the marking and every refused upgrade left its socket open.
  app.register(websocket, {
    options: { maxPayload: deps.config.bodyLimitBytes },
    // A drain (src/server/shutdown.ts) has already let WebSocket requests finish; a plain close() does not wait.
    preClose: async function (this: FastifyInstance) {
      for (const client of this.websocketServer.clients) client.close(1001, 'server shutting down');
    },
  });
  app.register(authPlugin, { apiKeys: deps.config.apiKeys });
  // After auth: a request without a key never takes a share of the budgets.
  app.register(admissionPlugin, { maxQueue: deps.config.maxQueue ?? ENGINE_DEFAULTS.maxQueue, maxWaitingTokens: deps.config.maxWaitingTokens });
  app.register(registerRoutes);
  return app;
}
