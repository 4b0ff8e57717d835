// The server's one error table: every failure a client can see becomes an ApiError with an HTTP
// status, an OpenAI `type`, the offending `param` and a `code`, rendered as the OpenAI envelope
// `{error:{message,type,param,code}}`. Engine errors, Fastify's own errors (body limit, content
// type, bad JSON) and schema-validation failures are all translated here, in one function.
// A 5xx never shows internals: the cause is logged, the client reads "internal server error".
import { EngineUnavailableError, ModelLoadError, QueueFullError, RequestRejectedError } from '../engine/errors.ts';

export interface ErrorEnvelope {
  readonly error: {
    readonly message: string;
    readonly type: string;
    readonly param: string | null;
    readonly code: string | number | null;
  };
}

/** An error whose message is safe to show the client. */
export class ApiError extends Error {
  override readonly name: string = 'ApiError';
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (e.g. Retry-After). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }

  toEnvelope(): ErrorEnvelope {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400: the request is malformed or asks for something this server cannot do. */
export class InvalidRequestError extends ApiError {
  override readonly name: string = 'InvalidRequestError';
  constructor(message: string, param: string | null = null, code: string | null = null) {
    super(400, 'invalid_request_error', message, param, code);
  }
}

/** 401: missing or wrong API key. */
export class AuthenticationError extends ApiError {
  override readonly name: string = 'AuthenticationError';
  constructor(message: string) {
    super(401, 'authentication_error', message, null, 'invalid_api_key');
  }
}

/** 404: unknown model or route. */
export class NotFoundError extends ApiError {
  override readonly name: string = 'NotFoundError';
  constructor(message: string, param: string | null = null, code: string | null = null) {
    super(404, 'not_found_error', message, param, code);
  }
}

/** 429: the waiting queue (code queue_full) or the budget of waiting prompt tokens (waiting_tokens_full) is full. */
export class RateLimitError extends ApiError {
  override readonly name: string = 'RateLimitError';
  constructor(message: string, retryAfterSeconds: number, code: 'queue_full' | 'waiting_tokens_full' = 'queue_full') {
    super(429, 'rate_limit_error', message, null, code, { 'retry-after': String(retryAfterSeconds) });
  }
}

/** 503: the model is loading or the server is draining. */
export class UnavailableError extends ApiError {
  override readonly name: string = 'UnavailableError';
  constructor(message: string, code: string) {
    super(503, 'service_unavailable_error', message, null, code, { 'retry-after': '1' });
  }
}

/** 500 with a fixed message; the real cause goes to the log only. */
export class InternalError extends ApiError {
  override readonly name: string = 'InternalError';
  constructor() {
    super(500, 'server_error', 'internal server error', null, null);
  }
}

/** One Ajv/TypeBox-style validation failure (the shape Fastify's `error.validation` holds). */
interface ValidationIssue {
  readonly keyword: string;
  readonly instancePath: string;
  readonly params: Record<string, unknown>;
  readonly message?: string | undefined;
}

/** "/messages/0/role" → "messages[0].role". */
function jsonPointerToParam(pointer: string): string {
  let out = '';
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (/^\d+$/.test(seg) && out !== '') out += `[${seg}]`;
    else out += out === '' ? seg : `.${seg}`;
  }
  return out;
}

/** Fields whose value is a map: a bad entry is blamed on the field, not on `field.key`. */
const MAP_FIELDS = new Set(['logit_bias', 'chat_template_kwargs']);

const TYPE_KEYWORDS = new Set(['type', 'const', 'enum']);

function describeAllowed(issue: ValidationIssue): string | undefined {
  if (issue.keyword === 'const') return JSON.stringify(issue.params['allowedValue']);
  if (issue.keyword === 'enum') return (issue.params['allowedValues'] as unknown[] | undefined)?.map((v) => JSON.stringify(v)).join(', ');
  return issue.params['type'] as string | undefined;
}

/** Turns a list of schema-validation issues into one 400 naming the deepest offending field. */
export function validationError(issues: readonly ValidationIssue[], where = 'body'): InvalidRequestError {
  // The deepest path is the most precise. For a union (anyOf), its branches fail at the same path:
  // a branch that failed on a constraint (minimum, maxItems, …) is the one the client meant, so its
  // message wins; otherwise the message lists what each branch expected.
  let best: ValidationIssue | undefined;
  for (const issue of issues) {
    if (best === undefined || issue.instancePath.length > best.instancePath.length) best = issue;
  }
  if (best === undefined) return new InvalidRequestError(`invalid request ${where}`);
  const samePath = issues.filter((i) => i.instancePath === best.instancePath && i.keyword !== 'anyOf' && i.keyword !== 'oneOf');
  const constraint = samePath.find((i) => !TYPE_KEYWORDS.has(i.keyword));
  const chosen = constraint ?? samePath[0] ?? best;
  let param = jsonPointerToParam(chosen.instancePath);
  const top = param.split(/[.[]/)[0] ?? '';
  if (MAP_FIELDS.has(top)) param = top;
  let message: string;
  if (chosen.keyword === 'required') {
    const props = (chosen.params['requiredProperties'] ?? [chosen.params['missingProperty']]) as unknown[];
    const missing = String(props[0] ?? '');
    param = param === '' ? missing : `${param}.${missing}`;
    message = `'${param}' is a required property`;
  } else if (chosen.keyword === 'additionalProperties' || (chosen.keyword === 'pattern' && MAP_FIELDS.has(top))) {
    message = `invalid key in '${param === '' ? where : param}'`;
  } else if (TYPE_KEYWORDS.has(chosen.keyword)) {
    const allowed = [...new Set(samePath.map(describeAllowed).filter((t): t is string => t !== undefined))];
    message = `invalid value for '${param === '' ? where : param}': expected ${allowed.length > 1 ? 'one of ' : ''}${allowed.join(', ')}`;
  } else {
    message = `invalid value for '${param === '' ? where : param}': ${chosen.message ?? chosen.keyword}`;
  }
  return new InvalidRequestError(message, param === '' ? null : param);
}

/** Fastify's errors carry a `code` (FST_ERR_…) and sometimes a `validation` list. */
interface FastifyishError {
  readonly code?: unknown;
  readonly statusCode?: unknown;
  readonly validation?: readonly ValidationIssue[];
  readonly validationContext?: string;
  readonly message?: unknown;
}

/**
 * The one map from anything thrown to what the client sees. Returns the ApiError and whether the
 * cause must be logged as a server fault (true for every 5xx that is not a known state).
 */
export function toApiError(err: unknown): { readonly apiError: ApiError; readonly isFault: boolean } {
  if (err instanceof ApiError) return { apiError: err, isFault: err.status >= 500 && err instanceof InternalError };
  if (err instanceof RequestRejectedError) return { apiError: new InvalidRequestError(err.message, err.param), isFault: false };
  if (err instanceof QueueFullError) {
    return { apiError: new RateLimitError('the server is busy: the request queue is full; retry later', 1), isFault: false };
  }
  if (err instanceof EngineUnavailableError) return { apiError: new UnavailableError(err.message, 'engine_unavailable'), isFault: false };
  if (err instanceof ModelLoadError) return { apiError: new UnavailableError('the model failed to load', 'model_load_failed'), isFault: true };
  if (typeof err === 'object' && err !== null) {
    const e = err as FastifyishError;
    if (Array.isArray(e.validation)) return { apiError: validationError(e.validation, e.validationContext ?? 'body'), isFault: false };
    switch (e.code) {
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return { apiError: new ApiError(413, 'invalid_request_error', 'request body is larger than the server accepts', null, 'body_too_large'), isFault: false };
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return { apiError: new ApiError(415, 'invalid_request_error', 'unsupported content type: send application/json', null, 'unsupported_media_type'), isFault: false };
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
        return { apiError: new InvalidRequestError('request body is empty; expected a JSON object', null, 'invalid_json'), isFault: false };
      case 'FST_ERR_CTP_INVALID_JSON_BODY':
        return { apiError: new InvalidRequestError('request body is not valid JSON', null, 'invalid_json'), isFault: false };
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return { apiError: new InvalidRequestError('content-length does not match the body', null, 'invalid_content_length'), isFault: false };
      default:
        break;
    }
    // Other 4xx from Fastify itself (e.g. malformed URL) keep their status but get our envelope.
    if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500 && typeof e.code === 'string' && e.code.startsWith('FST_')) {
      return { apiError: new ApiError(e.statusCode, 'invalid_request_error', 'malformed request', null, e.code.toLowerCase()), isFault: false };
    }
  }
  return { apiError: new InternalError(), isFault: true };
}
