// tools + tool_choice + parallel_tool_calls → what the prompt offers, whether replies are parsed for
// calls, and, when a call is forced, the grammar that forces it:
//
//   tool_choice "none"         tools left out of the prompt; plain text
//   "auto" (default)           the model decides; calls are parsed from the reply
//   "required"                 one or more calls (one with parallel_tool_calls: false), any tool
//   {type: "function", function: {name}}   exactly one call of that function
//
// A forced call is written in the chat template's format (tool-calls.ts), each block's JSON
// `{"name": …, "arguments": …}` matching the function's `parameters`; calls are separated by a newline.
// parallel_tool_calls: false keeps at most one call of an "auto" reply too.
import type { GrammarConstraint } from '../../engine/types.ts';
import { InvalidRequestError } from '../../server/errors.ts';
import { checkStrictSchema } from '../common/structured-output.ts';
import { TOOL_CALL_CLOSE, TOOL_CALL_OPEN } from './tool-calls.ts';
import type { ChatCompletionRequest } from './schema.ts';

export interface ToolPlan {
  /** The tools the chat template renders, or null. */
  readonly promptTools: readonly Record<string, unknown>[] | null;
  /** Parse replies for tool calls. */
  readonly parseToolCalls: boolean;
  /** Most calls kept from one reply (null: all). */
  readonly maxToolCalls: number | null;
  /** The grammar of a forced call, if any. */
  readonly constraint?: GrammarConstraint;
}

interface FunctionTool {
  readonly name: string;
  readonly parameters: Record<string, unknown>;
}

/** The function of tools[i], checked: `{type: "function", function: {name, parameters?, strict?}}`. */
function functionOf(tool: Record<string, unknown>, i: number): FunctionTool {
  const fn = tool['function'];
  if (tool['type'] !== 'function' || typeof fn !== 'object' || fn === null || Array.isArray(fn)) {
    throw new InvalidRequestError(`'tools[${i}]' must be {"type": "function", "function": {"name": …}}`, `tools[${i}]`);
  }
  const { name, parameters, strict } = fn as Record<string, unknown>;
  if (typeof name !== 'string' || name === '') throw new InvalidRequestError(`'tools[${i}].function.name' must be a non-empty string`, `tools[${i}].function.name`);
  if (parameters !== undefined && (typeof parameters !== 'object' || parameters === null || Array.isArray(parameters))) {
    throw new InvalidRequestError(`'tools[${i}].function.parameters' must be a JSON Schema object`, `tools[${i}].function.parameters`);
  }
  const params = (parameters as Record<string, unknown> | undefined) ?? { type: 'object' };
  if (strict === true) checkStrictSchema(params, 'tools');
  return { name, parameters: params };
}

/** JSON Schema of one call of `fn`: {"name": "<fn>", "arguments": <its parameters>}. */
function callSchema(fn: FunctionTool): Record<string, unknown> {
  return {
    type: 'object',
    properties: { name: { const: fn.name }, arguments: fn.parameters },
    required: ['name', 'arguments'],
  };
}

export function planTools(body: Pick<ChatCompletionRequest, 'tools' | 'tool_choice' | 'parallel_tool_calls'>): ToolPlan {
  const choice = body.tool_choice ?? 'auto';
  const tools = body.tools ?? [];
  const maxToolCalls = body.parallel_tool_calls === false ? 1 : null;
  if (choice === 'none' || tools.length === 0) {
    if (choice === 'required' || typeof choice === 'object') {
      throw new InvalidRequestError(`tool_choice ${JSON.stringify(choice)} needs at least one tool in 'tools'`, 'tool_choice');
    }
    return { promptTools: null, parseToolCalls: false, maxToolCalls };
  }
  const functions = tools.map(functionOf);
  if (choice === 'auto') return { promptTools: tools, parseToolCalls: true, maxToolCalls };
  let forced: FunctionTool[] = functions;
  if (typeof choice === 'object') {
    const named = functions.find((f) => f.name === choice.function.name);
    if (named === undefined) {
      throw new InvalidRequestError(`tool_choice names the function '${choice.function.name}', which is not in 'tools'`, 'tool_choice');
    }
    forced = [named];
  }
  const schemas = forced.map(callSchema);
  const schema = schemas.length === 1 ? schemas[0] : { anyOf: schemas };
  const multiple = choice === 'required' && maxToolCalls === null;
  return {
    promptTools: tools,
    parseToolCalls: true,
    maxToolCalls: multiple ? null : 1,
    constraint: {
      param: 'tools',
      kind: 'tagged_json',
      begin: `${TOOL_CALL_OPEN}\n`,
      end: `\n${TOOL_CALL_CLOSE}`,
      separator: '\n',
      schema: JSON.stringify(schema),
      multiple,
    },
  };
}
