// Every HTTP endpoint, one plugin per folder. The order here is the order in the README.
import type { FastifyInstance } from 'fastify';
import chatCompletionsRoute from './chat-completions/index.ts';
import chatPageRoute from './chat-page/index.ts';
import { useSerializerSchemas } from './common/serializer-schemas.ts';
import completionsRoute from './completions/index.ts';
import detokenizeRoute from './detokenize/index.ts';
import healthRoute from './health/index.ts';
import metricsRoute from './metrics/index.ts';
import modelsRoute from './models/index.ts';
import prefixCacheRoute from './prefix-cache/index.ts';
import streamWsRoute from './stream-ws/index.ts';
import tokenizeRoute from './tokenize/index.ts';
import versionRoute from './version/index.ts';

export async function registerRoutes(app: FastifyInstance): Promise<void> {
  useSerializerSchemas(app); // response schemas the serializer writes without Ajv checks
  await app.register(chatCompletionsRoute);
  await app.register(completionsRoute);
  await app.register(modelsRoute);
  await app.register(tokenizeRoute);
  await app.register(detokenizeRoute);
  await app.register(prefixCacheRoute);
  await app.register(healthRoute);
  await app.register(versionRoute);
  await app.register(metricsRoute);
  await app.register(streamWsRoute);
  await app.register(chatPageRoute);
}
