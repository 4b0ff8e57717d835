// Response schemas as Fastify's serializer (fast-json-stringify) gets them. The serializer writes a
// union (`anyOf`) by checking the value against each branch with Ajv: the checks are compiled on the
// route's first answer (~60-140 ms of the HTTP thread, bench/event-loop-stall.ts: "chat, 128 tools"),
// and then every answer is checked again, every logprob of it (a `number | null` item, a `logprobs`
// block that may be null). The unions our answers use have a form it writes without any check:
//
//   anyOf [X, {type: null}]                      → X with nullable: true
//   anyOf [{type: string, const: a}, …]          → {type: string, enum: [a, …]}
//
// and the bytes written are the same (test/server-large-answers.test.ts). Any other union is left as
// it is (test/server-large-answers.test.ts asserts that no route's response schema keeps one).
import type { FastifyInstance, RouteOptions } from 'fastify';

type JsonSchema = Record<string, unknown>;

function isObject(value: unknown): value is JsonSchema {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const isNull = (s: JsonSchema): boolean => s['type'] === 'null' && Object.keys(s).length === 1;
const isStringConst = (s: JsonSchema): boolean => s['type'] === 'string' && typeof s['const'] === 'string' && Object.keys(s).length === 2;

/** `schema` (JSON data: TypeBox's own markers are not enumerable and are left behind) with those unions rewritten. */
export function serializerSchema(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(serializerSchema);
  if (!isObject(schema)) return schema;
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(schema)) out[key] = serializerSchema(value);
  const anyOf = out['anyOf'];
  if (!Array.isArray(anyOf) || !anyOf.every(isObject)) return out;
  const { anyOf: _, ...siblings } = out;
  const nonNull = anyOf.filter((branch) => !isNull(branch));
  if (anyOf.length === 2 && nonNull.length === 1) return { ...siblings, ...nonNull[0], nullable: true };
  if (anyOf.every(isStringConst)) return { ...siblings, type: 'string', enum: anyOf.map((branch) => branch['const']) };
  return out;
}

/** Rewrites the response schemas of every route registered after it in `app`'s context. */
export function useSerializerSchemas(app: FastifyInstance): void {
  app.addHook('onRoute', (route: RouteOptions) => {
    const response = route.schema?.response;
    if (!isObject(response)) return;
    route.schema = { ...route.schema, response: Object.fromEntries(Object.entries(response).map(([status, s]) => [status, serializerSchema(s)])) };
  });
}
