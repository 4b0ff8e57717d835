// GET /version — the server's name and package version (no auth, like the probes).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';

const Version = Type.Object({ name: Type.Literal('spikeserve'), version: Type.String() });

const versionRoute: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/version', { schema: { response: { 200: Version } } }, async () => ({ name: 'spikeserve' as const, version: app.appVersion }));
};

export default versionRoute;
