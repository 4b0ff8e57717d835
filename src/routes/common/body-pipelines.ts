// The routes whose bodies the prompt worker (./prompt-worker.ts) takes over when they are large, and
// what it does with each: validate the body against the route's schema, derive what the route needs
// from its bulk (the prompt's token ids, /detokenize's text) with the same code the route runs on the
// HTTP thread, and hand back a lean body — the fields the schema declares, with the bulk replaced by
// empty values of the same type — for the route's own validation and checks. Undeclared fields are
// dropped (the routes ignore them anyway), so nothing large crosses back to the HTTP thread.
import { Compile, type Validator } from 'typebox/compile';
import type { TObject, TSchema, TUnion } from 'typebox';
import { prepareChatPrompt } from '../chat-completions/prompt.ts';
import { ChatCompletionRequest } from '../chat-completions/schema.ts';
import { prepareCompletionPrompt } from '../completions/prompt.ts';
import { CompletionRequest } from '../completions/schema.ts';
import { DetokenizeRequest } from '../detokenize/schema.ts';
import { prepareWarmPrompt } from '../prefix-cache/prompt.ts';
import { WarmRequest } from '../prefix-cache/schema.ts';
import { detokenizeText } from '../detokenize/text.ts';
import { prepareTokenizePrompt } from '../tokenize/prompt.ts';
import { TokenizeRequest } from '../tokenize/schema.ts';
import { toWireApiError, type Derived, type PromptContext } from './prompt-context.ts';

export type BodyRoute = 'chat' | 'completions' | 'tokenize' | 'detokenize' | 'prefix-cache';

/** Route URL → pipeline name, for the routes that have one. */
export const BODY_ROUTES: Readonly<Record<string, BodyRoute>> = {
  '/v1/chat/completions': 'chat',
  '/v1/completions': 'completions',
  '/tokenize': 'tokenize',
  '/detokenize': 'detokenize',
  '/v1/prefix-cache': 'prefix-cache',
};

type Body = Record<string, unknown>;

interface Pipeline {
  readonly validator: Validator<{}, TSchema>;
  readonly declared: readonly string[];
  /** The bulk replaced (the body is valid). */
  strip(body: Body): Body;
  derive(ctx: PromptContext, body: Body, modelVocabSize: number | null): Promise<Derived>;
}

/** The properties a body may keep: an object's, or those of every branch of a union of objects. */
function declaredKeys(schema: TObject | TUnion<TObject[]>): string[] {
  if ('anyOf' in schema) return [...new Set(schema.anyOf.flatMap((branch) => Object.keys(branch.properties)))];
  return Object.keys(schema.properties);
}

/** Messages as the route still needs them once their prompt is made: the roles (the schema needs each message). */
function roles(messages: unknown): { role: unknown }[] {
  return (messages as Body[]).map((m) => ({ role: m['role'] }));
}

function pipeline(schema: TObject | TUnion<TObject[]>, strip: Pipeline['strip'], derive: Pipeline['derive']): Pipeline {
  return { validator: Compile(schema), declared: declaredKeys(schema), strip, derive };
}

const PIPELINES: Readonly<Record<BodyRoute, Pipeline>> = {
  chat: pipeline(
    ChatCompletionRequest,
    (b) => ({ ...b, messages: roles(b['messages']) }),
    async (ctx, b) => ({ prompt: await prepareChatPrompt(ctx, b as ChatCompletionRequest) }),
  ),
  completions: pipeline(
    CompletionRequest,
    (b) => ({ ...b, prompt: '' }),
    async (ctx, b, vocab) => ({ prompt: await prepareCompletionPrompt(ctx, b as CompletionRequest, vocab) }),
  ),
  tokenize: pipeline(
    TokenizeRequest,
    (b) => ({ ...b, ...(b['prompt'] !== undefined ? { prompt: '' } : {}), ...(b['messages'] !== undefined ? { messages: roles(b['messages']) } : {}) }),
    async (ctx, b) => ({ prompt: await prepareTokenizePrompt(ctx, b as TokenizeRequest) }),
  ),
  // A warm-up's document: text becomes one character, token ids one id (the schema wants a non-empty
  // prompt); the route reads the ids the worker made, never these.
  'prefix-cache': pipeline(
    WarmRequest,
    (b) => ({ ...b, ...(typeof b['prompt'] === 'string' ? { prompt: ' ' } : Array.isArray(b['prompt']) ? { prompt: [0] } : {}), ...(b['messages'] !== undefined ? { messages: roles(b['messages']) } : {}) }),
    async (ctx, b, vocab) => ({ prompt: await prepareWarmPrompt(ctx, b as WarmRequest, vocab) }),
  ),
  detokenize: pipeline(
    DetokenizeRequest,
    (b) => ({ ...b, tokens: [] }),
    async (ctx, b) => ({ text: detokenizeText(ctx, b as DetokenizeRequest) }),
  ),
};

/** One validation failure, as Fastify reports it (errors.ts turns a list into the 400). */
export interface Issue {
  readonly keyword: string;
  readonly instancePath: string;
  readonly params: Record<string, unknown>;
  readonly message?: string | undefined;
}

export type PipelineResult =
  | { readonly kind: 'invalid'; readonly issues: readonly Issue[] }
  | { readonly kind: 'ok'; readonly body: unknown; readonly derived: Derived };

/** A parsed body of `route`: invalid (its issues), or the lean body and what was derived from it. */
export async function runPipeline(ctx: PromptContext, route: BodyRoute, value: unknown, modelVocabSize: number | null): Promise<PipelineResult> {
  const p = PIPELINES[route];
  if (!p.validator.Check(value)) {
    return { kind: 'invalid', issues: [...p.validator.Errors(value)].map((e) => ({ keyword: e.keyword, instancePath: e.instancePath, params: e.params as Record<string, unknown>, message: e.message })) };
  }
  const body = value as Body;
  const declared: Body = {};
  for (const key of p.declared) if (body[key] !== undefined) declared[key] = body[key];
  return { kind: 'ok', body: p.strip(declared), derived: await deriveOf(ctx, route, body, modelVocabSize) };
}

/** What `route` derives from a valid body: its value, or the 4xx the work raised (other errors are thrown). */
export async function deriveOf(ctx: PromptContext, route: BodyRoute, body: unknown, modelVocabSize: number | null): Promise<Derived> {
  try {
    return await PIPELINES[route].derive(ctx, body as Body, modelVocabSize);
  } catch (err) {
    const error = toWireApiError(err);
    if (error === null) throw err;
    return { error };
  }
}
