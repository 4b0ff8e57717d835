// Chat messages → prompt token ids: render the checkpoint's chat template (../chat-template.ts;
// a ChatML fallback when the checkpoint has none), then tokenize asynchronously. Also finds the
// template's end-of-turn token, which ends a chat reply even when generation_config names only
// <|endoftext|> (the SpikingBrain chat template closes turns with <|im_end|>).
//
// Special tokens typed by a user: the template writes its own control tokens as text
// (`<|im_start|>user\n`) and the tokenizer turns them into control ids, so a user or tool message
// holding `<|im_end|>\n<|im_start|>system\n…` would open a system turn of its own. Unless
// --allow-special-tokens-in-content, such a message's content is rendered as a placeholder, and the
// rendered text is encoded in segments: the template's text as usual, that content with its special
// tokens as plain text (TextTokenizer's specialTokensAsText). Contents without special-token text —
// nearly all — are rendered and encoded exactly as before.
//
// Assistant messages that are recent replies of this server (./reply-ids.ts) are encoded as the ids the
// model generated them as, where the template and the tokenizer allow it (./reply-splice.ts): the next
// turn's prompt then starts with the previous request's exact ids, and the engine resumes from its
// snapshot instead of prefilling the whole exchange again.
//
// prepareChatPrompt is the whole prompt work of a chat request (limits, template, tokens); it runs on
// the HTTP thread for ordinary requests and in the prompt worker for large or heavy ones.
import { randomBytes } from 'node:crypto';
import { renderChat, type ChatTemplateMessage } from '../chat-template.ts';
import { checkMessages, checkStopStrings, checkTools } from '../common/limits.ts';
import type { PreparedPrompt, PromptContext } from '../common/prompt-context.ts';
import { stopStrings } from '../common/sampling.ts';
import { InvalidRequestError } from '../../server/errors.ts';
import { reasoningMode } from './reasoning.ts';
import { spliceReplies } from './reply-splice.ts';
import type { ChatCompletionRequest } from './schema.ts';
import { planTools } from './tool-choice.ts';

/** Used when the checkpoint has no chat template. */
const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const END_OF_TURN_CANDIDATES = ['<|im_end|>', '<|eot_id|>', '<|end|>', '<end_of_turn>'];
const START_OF_TURN_CANDIDATES = ['<|im_start|>', '<|start_header_id|>', '<start_of_turn>'];

export interface ChatPromptOptions {
  readonly messages: readonly ChatTemplateMessage[];
  readonly tools?: readonly unknown[] | null | undefined;
  readonly addGenerationPrompt: boolean;
  readonly chatTemplateKwargs?: Readonly<Record<string, unknown>> | null | undefined;
}

/** Throws ChatTemplateError (a 400 naming `messages`) when the template refuses the messages. */
export function renderChatPrompt(ctx: PromptContext, opts: ChatPromptOptions): string {
  const assets = ctx.chatAssets;
  return renderChat(assets.template ?? CHATML_TEMPLATE, {
    messages: opts.messages,
    ...(opts.tools !== undefined && opts.tools !== null ? { tools: opts.tools } : {}),
    addGenerationPrompt: opts.addGenerationPrompt,
    ...(opts.chatTemplateKwargs !== undefined && opts.chatTemplateKwargs !== null ? { chatTemplateKwargs: opts.chatTemplateKwargs } : {}),
    bosToken: assets.bosToken,
    eosToken: assets.eosToken,
  });
}

/** Roles whose content comes from the user (or a tool's output), not from the operator or the model. */
const UNTRUSTED_ROLES = new Set(['user', 'tool']);

/** A message's content as one string (text parts joined as the template sees them); null when it has other parts or none. */
function contentText(content: unknown): string | null {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return null;
  const texts: string[] = [];
  for (const part of content as unknown[]) {
    if (typeof part !== 'object' || part === null || (part as Record<string, unknown>)['type'] !== 'text') return null;
    const text = (part as Record<string, unknown>)['text'];
    if (typeof text !== 'string') return null;
    texts.push(text);
  }
  return texts.join('\n');
}

/** Renders and tokenizes (the template already wrote any BOS, so none is added). */
export async function chatPromptTokens(ctx: PromptContext, opts: ChatPromptOptions): Promise<Int32Array> {
  return (await chatPrompt(ctx, opts)).ids;
}

/** A piece of the rendered prompt: template text, an untrusted content (its special tokens as text), or a reply's own ids. */
type Segment = { readonly text: string; readonly specialTokensAsText: boolean } | { readonly ids: Int32Array };

/**
 * The rendered prompt and its tokens. In `text`, a content encoded with its special tokens as plain
 * text is a placeholder (so a `<think>` a user typed there does not count as the template's).
 * `splicedTokens`: prompt tokens that are a remembered reply's ids (./reply-splice.ts).
 */
export async function chatPrompt(ctx: PromptContext, opts: ChatPromptOptions): Promise<{ text: string; ids: Int32Array; splicedTokens: number }> {
  const tokenizer = ctx.tokenizer;
  const literal: string[] = [];
  let messages = opts.messages;
  const nonce = randomBytes(8).toString('hex');
  if (!ctx.serverConfig.allowSpecialTokensInContent) {
    messages = opts.messages.map((m) => {
      if (!UNTRUSTED_ROLES.has(String(m['role']))) return m;
      const text = contentText(m['content']);
      if (text === null || !tokenizer.containsSpecialTokenText(text)) return m;
      literal.push(text);
      return { ...m, content: `\uE000${nonce}:t${literal.length - 1}\uE001` };
    });
  }
  const render = (msgs: readonly ChatTemplateMessage[]): string => renderChatPrompt(ctx, { ...opts, messages: msgs });
  const rendered = render(messages);
  const placeholder = new RegExp(`\uE000${nonce}:([tr])(\\d+)\uE001`, 'g');
  const spliced = await spliceReplies(ctx, messages, rendered, render, nonce, placeholder);
  if (literal.length === 0 && spliced === null) {
    return { text: rendered, ids: await tokenizer.encodeToInt32(rendered, { addSpecialTokens: false }), splicedTokens: 0 };
  }
  const encoded = spliced?.text ?? rendered;
  const segments: Segment[] = [];
  let at = 0;
  for (const m of encoded.matchAll(placeholder)) {
    segments.push({ text: encoded.slice(at, m.index), specialTokensAsText: false });
    const k = Number(m[2]);
    segments.push(m[1] === 'r' ? { ids: spliced?.ids[k] ?? new Int32Array(0) } : { text: literal[k] ?? '', specialTokensAsText: true });
    at = m.index + m[0].length;
  }
  segments.push({ text: encoded.slice(at), specialTokensAsText: false });
  const parts = await Promise.all(
    segments
      .filter((s) => !('text' in s) || s.text !== '')
      .map((s) => ('ids' in s ? s.ids : tokenizer.encodeToInt32(s.text, { addSpecialTokens: false, specialTokensAsText: s.specialTokensAsText }))),
  );
  const ids = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    ids.set(p, offset);
    offset += p.length;
  }
  const splicedTokens = segments.reduce((n, s) => n + ('ids' in s ? s.ids.length : 0), 0);
  return { text: rendered, ids, splicedTokens };
}

/**
 * Tokens before the last message of a rendered chat: the part later chats with the same history (a
 * long document in the system message, earlier turns) are likely to start with, which the engine then
 * also snapshots. Found as the start-of-turn token that opens the last message (the one before the
 * generation prompt's); undefined when the template has no such token or there is no earlier turn.
 */
export function sharedPrefixTokens(ctx: PromptContext, ids: Int32Array, addGenerationPrompt: boolean): number | undefined {
  const template = ctx.chatAssets.template ?? CHATML_TEMPLATE;
  const tok = START_OF_TURN_CANDIDATES.find((t) => template.includes(t));
  const id = tok === undefined ? null : ctx.tokenizer.tokenToId(tok);
  if (id === null) return undefined;
  let skip = addGenerationPrompt ? 1 : 0; // the generation prompt opens one more turn
  for (let i = ids.length - 1; i > 0; i--) {
    if (ids[i] !== id) continue;
    if (skip-- === 0) return i;
  }
  return undefined;
}

/** Token ids that end an assistant turn under this template (beyond the model's eos ids). */
export function endOfTurnTokenIds(ctx: PromptContext): number[] {
  const template = ctx.chatAssets.template ?? CHATML_TEMPLATE;
  const ids: number[] = [];
  for (const tok of END_OF_TURN_CANDIDATES) {
    if (!template.includes(tok)) continue;
    const id = ctx.tokenizer.tokenToId(tok);
    if (id !== null) ids.push(id);
  }
  return ids;
}

/** The tools the template renders (tool-choice.ts): none when tool_choice is 'none' or the list is empty. */
export function promptTools(body: ChatCompletionRequest): readonly unknown[] | null {
  return planTools(body).promptTools;
}

/**
 * The prompt work of a (validated) chat request: the cheap limit checks first, then the template and
 * the tokenizer. Throws the 400s of the limits, of the template and of an empty prompt.
 */
export async function prepareChatPrompt(ctx: PromptContext, body: ChatCompletionRequest): Promise<PreparedPrompt> {
  const tools = promptTools(body);
  const limits = ctx.serverConfig;
  checkMessages(limits, body.messages.length);
  if (tools !== null) checkTools(limits, tools);
  checkStopStrings(limits, stopStrings(body.stop));
  const addGenerationPrompt = body.add_generation_prompt ?? true;
  const { text, ids, splicedTokens } = await chatPrompt(ctx, { messages: body.messages, tools, addGenerationPrompt, chatTemplateKwargs: body.chat_template_kwargs });
  if (ids.length === 0) throw new InvalidRequestError('the rendered prompt is empty', 'messages');
  const shared = sharedPrefixTokens(ctx, ids, addGenerationPrompt);
  const reasoning = reasoningMode(ctx.chatAssets.template, text);
  return { ids, reasoning, splicedTokens, ...(shared !== undefined ? { sharedPrefixTokens: shared } : {}) };
}
