// Structured outputs on the wire → the engine's GrammarConstraint. Both generation endpoints take
//
//   response_format: {type: "text"} | {type: "json_object"}
//                  | {type: "json_schema", json_schema: {name, description?, schema, strict?}}   (OpenAI)
//   structured_outputs: {json | regex | choice | grammar | json_object}                         (vLLM)
//
// at most one of them (and, in chat, not together with a forced tool call). What XGrammar cannot
// compile is refused by the engine with a 400 naming the field; here only what can be said without
// compiling: shapes, and in strict mode (`strict: true`) the JSON Schema keywords, each of which must be
// one the grammar enforces or a pure annotation. Without strict, unknown keywords are ignored, as by
// OpenAI's non-strict mode: the answer follows the rest of the schema.
import { Type, type Static } from 'typebox';
import type { GrammarConstraint } from '../../engine/types.ts';
import { InvalidRequestError } from '../../server/errors.ts';

const JsonSchemaObject = Type.Record(Type.String(), Type.Unknown());

export const ResponseFormat = Type.Union([
  Type.Object({ type: Type.Literal('text') }),
  Type.Object({ type: Type.Literal('json_object') }),
  Type.Object({
    type: Type.Literal('json_schema'),
    json_schema: Type.Object({
      name: Type.String({ minLength: 1, maxLength: 64 }),
      description: Type.Optional(Type.String()),
      schema: Type.Optional(JsonSchemaObject),
      strict: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
    }),
  }),
  Type.Null(),
]);
export type ResponseFormat = Static<typeof ResponseFormat>;

export const StructuredOutputs = Type.Union([
  Type.Object({
    json: Type.Optional(Type.Union([JsonSchemaObject, Type.String()])),
    regex: Type.Optional(Type.String({ minLength: 1 })),
    choice: Type.Optional(Type.Array(Type.String(), { minItems: 1, maxItems: 1024 })),
    grammar: Type.Optional(Type.String({ minLength: 1 })),
    json_object: Type.Optional(Type.Boolean()),
  }),
  Type.Null(),
]);
export type StructuredOutputs = Static<typeof StructuredOutputs>;

/** The request fields both endpoints accept. */
export const structuredOutputFields = {
  response_format: Type.Optional(ResponseFormat),
  structured_outputs: Type.Optional(StructuredOutputs),
};

/** Keywords that shape what XGrammar generates. */
const ENFORCED_KEYWORDS = new Set([
  'type', 'properties', 'required', 'additionalProperties', 'items', 'prefixItems', 'minItems', 'maxItems', 'enum', 'const',
  'anyOf', 'oneOf', 'allOf', '$ref', '$defs', 'definitions', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum',
  'minLength', 'maxLength', 'pattern', 'format', 'minProperties', 'maxProperties', 'patternProperties', 'propertyNames',
  'unevaluatedProperties', 'unevaluatedItems',
]);
/** Keywords that only describe (nothing to enforce). */
const ANNOTATION_KEYWORDS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly']);
/** Keywords whose value is a map of name → subschema. */
const SCHEMA_MAPS = new Set(['properties', 'patternProperties', '$defs', 'definitions']);
/** Keywords whose value is a subschema or a list of them. */
const SUBSCHEMAS = new Set(['items', 'prefixItems', 'anyOf', 'oneOf', 'allOf', 'additionalProperties', 'unevaluatedProperties', 'unevaluatedItems', 'propertyNames']);
const MAX_SCHEMA_DEPTH = 64;

/**
 * Strict mode: every keyword of `schema` and its subschemas must be enforced or an annotation.
 * Throws a 400 naming `param` and the keyword's place (`properties.tags.items.uniqueItems`).
 */
export function checkStrictSchema(schema: unknown, param: string): void {
  const visit = (node: unknown, path: string, depth: number): void => {
    if (typeof node === 'boolean') return;
    if (typeof node !== 'object' || node === null || Array.isArray(node)) {
      throw new InvalidRequestError(`'${param}': the schema at '${path || '(root)'}' is not an object or a boolean`, param);
    }
    if (depth > MAX_SCHEMA_DEPTH) throw new InvalidRequestError(`'${param}': the schema is nested more than ${MAX_SCHEMA_DEPTH} levels deep`, param);
    for (const [keyword, value] of Object.entries(node)) {
      const where = path === '' ? keyword : `${path}.${keyword}`;
      if (ANNOTATION_KEYWORDS.has(keyword)) continue;
      if (!ENFORCED_KEYWORDS.has(keyword)) {
        throw new InvalidRequestError(
          `'${param}': strict mode does not support the JSON Schema keyword '${keyword}' (at '${where}'); remove it or set strict to false`,
          param,
        );
      }
      if (SCHEMA_MAPS.has(keyword) && typeof value === 'object' && value !== null) {
        for (const [name, sub] of Object.entries(value)) visit(sub, `${where}.${name}`, depth + 1);
      } else if (SUBSCHEMAS.has(keyword)) {
        if (Array.isArray(value)) value.forEach((sub, i) => visit(sub, `${where}[${i}]`, depth + 1));
        else visit(value, where, depth + 1);
      }
    }
  };
  visit(schema, '', 0);
}

/** A JSON Schema given as an object, or as JSON text (vLLM accepts both). */
function schemaText(value: Record<string, unknown> | string, param: string): { text: string; schema: unknown } {
  if (typeof value !== 'string') return { text: JSON.stringify(value), schema: value };
  try {
    return { text: value, schema: JSON.parse(value) as unknown };
  } catch {
    throw new InvalidRequestError(`'${param}' is not valid JSON`, param);
  }
}

/** The constraint of `response_format` / `structured_outputs`, or undefined when the output is free text. */
export function outputConstraint(body: { response_format?: ResponseFormat | undefined; structured_outputs?: StructuredOutputs | undefined }): GrammarConstraint | undefined {
  const format = body.response_format ?? null;
  const outputs = body.structured_outputs ?? null;
  const fromFormat = format === null || format.type === 'text' ? undefined : responseFormatConstraint(format);
  const fromOutputs = outputs === null ? undefined : structuredOutputsConstraint(outputs);
  if (fromFormat !== undefined && fromOutputs !== undefined) {
    throw new InvalidRequestError("give either 'response_format' or 'structured_outputs', not both", 'structured_outputs');
  }
  return fromFormat ?? fromOutputs;
}

function responseFormatConstraint(format: Exclude<ResponseFormat, null | { type: 'text' }>): GrammarConstraint {
  const param = 'response_format';
  if (format.type === 'json_object') return { param, kind: 'json_object' };
  const { schema, strict } = format.json_schema;
  if (schema === undefined) return { param, kind: 'json_object' };
  if (strict === true) checkStrictSchema(schema, param);
  return { param, kind: 'json_schema', schema: JSON.stringify(schema) };
}

function structuredOutputsConstraint(outputs: Exclude<StructuredOutputs, null>): GrammarConstraint | undefined {
  const param = 'structured_outputs';
  const given = (['json', 'regex', 'choice', 'grammar', 'json_object'] as const).filter((k) => outputs[k] !== undefined && outputs[k] !== false);
  if (given.length > 1) throw new InvalidRequestError(`'structured_outputs' takes one of json, regex, choice, grammar, json_object; got ${given.join(', ')}`, param);
  if (outputs.json !== undefined) {
    const p = `${param}.json`;
    return { param: p, kind: 'json_schema', schema: schemaText(outputs.json, p).text };
  }
  if (outputs.regex !== undefined) return { param: `${param}.regex`, kind: 'regex', pattern: outputs.regex };
  if (outputs.choice !== undefined) return { param: `${param}.choice`, kind: 'choice', choices: outputs.choice };
  if (outputs.grammar !== undefined) return { param: `${param}.grammar`, kind: 'ebnf', grammar: outputs.grammar };
  if (outputs.json_object === true) return { param, kind: 'json_object' };
  return undefined;
}
