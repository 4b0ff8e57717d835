// Chat messages → prompt text, by rendering the checkpoint's Jinja `chat_template` with
// @huggingface/jinja the way transformers' apply_chat_template does (messages, tools,
// add_generation_prompt, bos/eos token strings, plus the request's chat_template_kwargs). Also finds
// the template in a checkpoint directory. Any failure (bad template, a message the template refuses,
// an unsupported content part) is a ChatTemplateError, a 400 for the client. loadChatAssets gives the
// app the template with the special-token strings it refers to.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { ModelLoadError } from '../engine/errors.ts';
import type { TextTokenizer } from '../engine/tokenizer.ts';
import { ApiError } from '../server/errors.ts';
import type { ChatAssets } from '../server/ports.ts';

/** The template or the messages cannot be rendered; the server answers 400. */
export class ChatTemplateError extends ApiError {
  override readonly name: string = 'ChatTemplateError';
  constructor(message: string) {
    super(400, 'invalid_request_error', message, 'messages', 'chat_template_error');
  }
}

/**
 * A chat message as the template sees it: `role`, `content` (a string, null, or OpenAI content parts `{type: 'text', text}`),
 * and any other fields (tool_calls, tool_call_id, name), which pass through. The request schema has
 * already checked the shape; this module only reads `content` and `tool_calls`.
 */
export type ChatTemplateMessage = Readonly<Record<string, unknown>>;

export interface RenderChatOptions {
  readonly messages: readonly ChatTemplateMessage[];
  readonly tools?: readonly unknown[];
  readonly addGenerationPrompt: boolean;
  /** Extra template variables from the request (e.g. enable_thinking). */
  readonly chatTemplateKwargs?: Readonly<Record<string, unknown>>;
  readonly bosToken: string;
  readonly eosToken: string;
}

/** Variables the request may not set through chat_template_kwargs. */
const RESERVED_KWARGS = new Set(['messages', 'tools', 'add_generation_prompt']);

/** Parsed templates, by source text (a server renders one template many times). */
const compiled = new Map<string, Template>();

/** Renders `template` for these messages; throws ChatTemplateError on any failure. */
export function renderChat(template: string, options: RenderChatOptions): string {
  const messages = options.messages.map(prepareMessage);
  const kwargs = options.chatTemplateKwargs ?? {};
  for (const key of Object.keys(kwargs)) {
    if (RESERVED_KWARGS.has(key)) throw new ChatTemplateError(`chat_template_kwargs may not set '${key}'`);
  }
  let parsed = compiled.get(template);
  if (parsed === undefined) {
    try {
      parsed = new Template(template);
    } catch (err) {
      throw new ChatTemplateError(`the chat template does not parse: ${errorMessage(err)}`);
    }
    if (compiled.size >= 16) compiled.clear();
    compiled.set(template, parsed);
  }
  try {
    // As transformers: special-token strings first, then the caller's kwargs, then the fixed inputs.
    // (raise_exception and strftime_now are built into @huggingface/jinja.)
    return parsed.render({
      bos_token: options.bosToken,
      eos_token: options.eosToken,
      ...kwargs,
      messages,
      tools: options.tools === undefined ? null : [...options.tools],
      add_generation_prompt: options.addGenerationPrompt,
    });
  } catch (err) {
    throw new ChatTemplateError(`the chat template failed on these messages: ${errorMessage(err)}`);
  }
}

/**
 * Content parts → one string (text parts joined with "\n", as vLLM), and tool-call `arguments` given
 * as a JSON string → the object, since templates write `arguments | tojson` (vLLM does the same).
 */
function prepareMessage(message: ChatTemplateMessage, index: number): Record<string, unknown> {
  const out: Record<string, unknown> = { ...message };
  const content = message['content'];
  if (Array.isArray(content)) {
    const texts: string[] = [];
    for (const part of content as unknown[]) {
      if (!isRecord(part) || part['type'] !== 'text' || typeof part['text'] !== 'string') {
        const type = isRecord(part) ? String(part['type']) : typeof part;
        throw new ChatTemplateError(
          `messages[${index}]: content part type '${type}' is not supported; this model takes text parts only`,
        );
      }
      texts.push(part['text']);
    }
    out['content'] = texts.join('\n');
  }
  const toolCalls = message['tool_calls'];
  if (Array.isArray(toolCalls)) {
    out['tool_calls'] = toolCalls.map((call: unknown) => {
      if (!isRecord(call) || !isRecord(call['function'])) return call;
      const fn = call['function'];
      const args = fn['arguments'];
      if (typeof args !== 'string') return call;
      let parsed: unknown;
      try {
        parsed = JSON.parse(args);
      } catch {
        return call; // not JSON: the template gets the string as sent
      }
      return { ...call, function: { ...fn, arguments: parsed } };
    });
  }
  return out;
}

/**
 * tokenizer_config.json's `chat_template` is a string or a list of `{name, template}`; returns the
 * named one ("default" unless asked otherwise), or null when there is none.
 */
export function selectChatTemplate(value: unknown, name = 'default'): string | null {
  if (typeof value === 'string') return value;
  if (!Array.isArray(value)) return null;
  for (const entry of value) {
    if (isRecord(entry) && entry['name'] === name && typeof entry['template'] === 'string') return entry['template'];
  }
  return null;
}

/**
 * The chat template of a checkpoint directory: `chat_template.jinja`, else `chat_template.json`,
 * else tokenizer_config.json's `chat_template` (the order transformers uses); null when none.
 * Unreadable JSON is a ModelLoadError.
 */
export async function loadChatTemplate(dir: string, name = 'default'): Promise<string | null> {
  const jinja = await readTextIfExists(join(dir, 'chat_template.jinja'));
  if (jinja !== null) return jinja;
  for (const file of ['chat_template.json', 'tokenizer_config.json']) {
    const text = await readTextIfExists(join(dir, file));
    if (text === null) continue;
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new ModelLoadError(`${join(dir, file)}: ${errorMessage(err)}`);
    }
    if (isRecord(json) && json['chat_template'] !== undefined) return selectChatTemplate(json['chat_template'], name);
  }
  return null;
}

/**
 * The chat template of the served checkpoint and the special-token strings it refers to. No template
 * is not an error: chat requests then use a ChatML fallback (routes/chat-completions).
 */
export async function loadChatAssets(modelDir: string, tokenizer: Pick<TextTokenizer, 'bosToken' | 'eosToken'>): Promise<ChatAssets> {
  return { template: await loadChatTemplate(modelDir), bosToken: tokenizer.bosToken ?? '', eosToken: tokenizer.eosToken ?? '' };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

async function readTextIfExists(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return null;
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
